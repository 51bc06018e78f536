package chat

import (
	"context"
	"errors"
	"time"

	"github.com/warblerim/warbler/storage"
)

// broadcastReadTimeout bounds the store lookup of MayReadBroadcast on a
// cache miss.
const broadcastReadTimeout = 5 * time.Second

// MayReadBroadcast reports whether user may subscribe to, and receive, the
// broadcast topic of name in app (w/{app}/b/{name}). It is the membership
// half of the broadcast ACL when channels are delivered by broadcast
// (Options.ChannelBroadcast):
//
//   - if name is a conversation of kind channel, only its members may
//     read it;
//   - if name is any other conversation or no conversation at all (a
//     plain broadcast channel), everyone of the app may, as without
//     ChannelBroadcast.
//
// The transport asks on every SUBSCRIBE and on every delivery, so the
// answer comes from memory: the conversation cache, which every change of
// membership drops (Invalidate), and a bounded set of names known to be
// no conversation, which creating one drops. A miss costs one store
// lookup, after which the answer is cached; a member removed from a
// channel is refused from the next delivery on, and a subscription taken
// to a plain name that later becomes a channel carries only members'
// deliveries. If the store cannot be read the answer is no.
func (s *Service) MayReadBroadcast(app, name, user string) bool {
	k := appConv{app, name}
	if v, _ := s.cache.get(k); v != nil {
		return v.conv.Kind != storage.KindChannel || v.role(user) != ""
	}
	if s.cache.isAbsent(k) {
		return true
	}
	_, gen := s.cache.get(k)
	ctx, cancel := context.WithTimeout(context.Background(), broadcastReadTimeout)
	defer cancel()
	v, err := s.view(ctx, app, name)
	switch {
	case errors.Is(err, storage.ErrNotFound):
		s.cache.putAbsent(k, gen)
		return true
	case err != nil:
		s.log.Warn("broadcast read check: read conversation", "app", app, "conv", name, "err", err)
		return false
	}
	return v.conv.Kind != storage.KindChannel || v.role(user) != ""
}
