package broker

import (
	"github.com/warblerim/warbler/chat"
	"github.com/warblerim/warbler/hooks"
)

// wireBroadcast installs the hook that turns services' publishes on a
// chat channel's broadcast topic into stored channel messages (plain
// broadcasts pass through), and its metrics.
func (s *Server) wireBroadcast(svc *chat.Service) error {
	h := hooks.NewBroadcast()
	if err := s.addHook(h, &hooks.BroadcastOptions{Service: svc, Logger: s.log.With("component", "broadcast")}); err != nil {
		return err
	}
	s.metrics.Registry.MustRegister(countersFunc("warbler_broadcasts_total",
		"Services' publishes on broadcast topics: stored as channel messages, passed on as plain broadcasts, or refused.", "result",
		func() map[string]uint64 {
			st := h.Stats()
			return map[string]uint64{"channel": st.Channel, "plain": st.Plain, "refused": st.Refused}
		}))
	return nil
}
