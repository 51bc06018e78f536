package broker

import (
	"strconv"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metrics holds the server's Prometheus collectors, registered on a registry
// of their own (not the global one), so that several servers can run in one
// process, as tests do. Other packages add their collectors to Registry.
type Metrics struct {
	Registry *prometheus.Registry

	Accepted      prometheus.Counter
	AcceptErrors  prometheus.Counter
	Malformed     prometheus.Counter
	Panics        prometheus.Counter
	SlowConsumers prometheus.Counter
	WSRejected    *prometheus.CounterVec
	MessagesIn    *prometheus.CounterVec
	MessagesOut   *prometheus.CounterVec
	Dropped       prometheus.Counter
	ConnectsTotal prometheus.Counter

	connected atomic.Int64
}

func newMetrics(info func() (bytesIn, bytesOut, inflight, retained, subs int64)) *Metrics {
	reg := prometheus.NewRegistry()
	m := &Metrics{
		Registry: reg,
		Accepted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "warbler_sockets_accepted_total", Help: "Sockets accepted by the MQTT listeners (before CONNECT).",
		}),
		AcceptErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "warbler_accept_errors_total", Help: "Transient accept errors (e.g. out of file descriptors) survived by the listeners.",
		}),
		Malformed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "warbler_malformed_packets_total", Help: "Connections closed for a malformed, oversized or out-of-order packet.",
		}),
		Panics: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "warbler_connection_panics_total", Help: "Connection handlers that panicked and were contained.",
		}),
		SlowConsumers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "warbler_slow_consumer_disconnects_total", Help: "Connections closed because a write to the client did not finish within mqtt.write_timeout.",
		}),
		WSRejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warbler_websocket_rejected_total", Help: "WebSocket upgrades refused, by reason.",
		}, []string{"reason"}),
		MessagesIn: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warbler_messages_received_total", Help: "PUBLISH packets received from clients, by QoS.",
		}, []string{"qos"}),
		MessagesOut: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warbler_messages_sent_total", Help: "PUBLISH packets written to clients, by QoS.",
		}, []string{"qos"}),
		Dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "warbler_messages_dropped_total", Help: "Deliveries dropped because a client's outbound queue was full.",
		}),
		ConnectsTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "warbler_connects_total", Help: "Clients that completed CONNECT and were accepted.",
		}),
	}
	for q := 0; q <= 2; q++ {
		m.MessagesIn.WithLabelValues(strconv.Itoa(q))
		m.MessagesOut.WithLabelValues(strconv.Itoa(q))
	}
	reg.MustRegister(m.Accepted, m.AcceptErrors, m.Malformed, m.Panics, m.SlowConsumers, m.WSRejected,
		m.MessagesIn, m.MessagesOut, m.Dropped, m.ConnectsTotal,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "warbler_connections", Help: "Clients connected now.",
		}, func() float64 { return float64(m.connected.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "warbler_bytes_received_total", Help: "Bytes received from MQTT clients.",
		}, func() float64 { b, _, _, _, _ := info(); return float64(b) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "warbler_bytes_sent_total", Help: "Bytes sent to MQTT clients.",
		}, func() float64 { _, b, _, _, _ := info(); return float64(b) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "warbler_inflight_messages", Help: "QoS 1/2 messages awaiting acknowledgement.",
		}, func() float64 { _, _, n, _, _ := info(); return float64(n) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "warbler_retained_messages", Help: "Retained messages held by the broker.",
		}, func() float64 { _, _, _, n, _ := info(); return float64(n) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "warbler_subscriptions", Help: "Active subscriptions.",
		}, func() float64 { _, _, _, _, n := info(); return float64(n) }),
	)
	return m
}

// Connected returns the number of connected clients.
func (m *Metrics) Connected() int64 { return m.connected.Load() }

// metricsHook counts broker events into Metrics. It does no I/O and takes no
// locks, so it is cheap on the per-message path.
type metricsHook struct {
	mqtt.HookBase
	m   *Metrics
	in  [3]prometheus.Counter
	out [3]prometheus.Counter
}

func newMetricsHook(m *Metrics) *metricsHook {
	h := &metricsHook{m: m}
	for q := range 3 {
		h.in[q] = m.MessagesIn.WithLabelValues(strconv.Itoa(q))
		h.out[q] = m.MessagesOut.WithLabelValues(strconv.Itoa(q))
	}
	return h
}

func (h *metricsHook) ID() string { return "warbler-metrics" }

func (h *metricsHook) Provides(b byte) bool {
	switch b {
	case mqtt.OnSessionEstablished, mqtt.OnDisconnect, mqtt.OnPacketRead, mqtt.OnPacketSent, mqtt.OnPublishDropped:
		return true
	}
	return false
}

func (h *metricsHook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	h.m.connected.Add(1)
	h.m.ConnectsTotal.Inc()
}

func (h *metricsHook) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	// Also called for sessions restored from storage at start, which were
	// never counted as connected: only count live connections down.
	if cl.Net.Conn != nil && !cl.Net.Inline {
		h.m.connected.Add(-1)
	}
}

func (h *metricsHook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Type == packets.Publish && pk.FixedHeader.Qos <= 2 {
		h.in[pk.FixedHeader.Qos].Inc()
	}
	return pk, nil
}

func (h *metricsHook) OnPacketSent(cl *mqtt.Client, pk packets.Packet, _ []byte) {
	if pk.FixedHeader.Type == packets.Publish && pk.FixedHeader.Qos <= 2 {
		h.out[pk.FixedHeader.Qos].Inc()
	}
}

func (h *metricsHook) OnPublishDropped(cl *mqtt.Client, pk packets.Packet) { h.m.Dropped.Inc() }
