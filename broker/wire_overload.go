package broker

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/warblerim/warbler/hooks"
)

// wireOverload installs the load shedder (limits.overload) as a hook,
// after the limits (bans and per-client limits answer first) and before
// the chat hook, which reports its in-flight sends to it, and its metrics.
func (s *Server) wireOverload() error {
	o := hooks.NewOverload(hooks.OverloadOptions{
		Policy: s.cfg.Limits.Overload.policy(),
		Logger: s.log.With("component", "overload"),
	})
	s.closers = append(s.closers, o.Stop)
	if err := s.addHook(o, nil); err != nil {
		return err
	}
	s.overload = o
	s.metrics.Registry.MustRegister(
		countersFunc("warbler_overload_refused_total",
			"Work refused while the server shed load, by what: connect, chat (uplink requests), publish (plain MQTT, heap only).",
			"what", o.Refused),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "warbler_overload_shedding", Help: "1 while the server sheds load (refuses new connections and sends)."},
			func() float64 {
				if o.Shedding() {
					return 1
				}
				return 0
			}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "warbler_overload_inflight_sends", Help: "Uplink requests waiting for the disk or their answer, server-wide."},
			func() float64 { return float64(o.Inflight()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "warbler_overload_episodes_total", Help: "Times the server started shedding load."},
			func() float64 { return float64(o.Episodes()) }),
	)
	return nil
}

// Overload returns the load shedder.
func (s *Server) Overload() *hooks.Overload { return s.overload }
