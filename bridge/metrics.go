package bridge

import (
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/warblerim/warbler/storage"
)

// metrics are the bridge's Prometheus collectors. Labels stay bounded:
// provider, the provider's reason codes (short, from a fixed vocabulary;
// free text is cut at the first ':'), and app only on the paused and
// auth-failure series that an operator must act on.
type metrics struct {
	queuedC   *prometheus.CounterVec
	sentC     *prometheus.CounterVec
	acceptedC *prometheus.CounterVec
	failedC   *prometheus.CounterVec
	droppedC  *prometheus.CounterVec
	retriedC  *prometheus.CounterVec
	prunedC   *prometheus.CounterVec
	authC     *prometheus.CounterVec
	pausedG   *prometheus.GaugeVec
	sendH     *prometheus.HistogramVec
	deliverH  *prometheus.HistogramVec
}

func newMetrics() *metrics {
	ns := "warbler_push_"
	return &metrics{
		queuedC:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: ns + "queued_total", Help: "Notifications enqueued."}, []string{"provider"}),
		sentC:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: ns + "sent_total", Help: "Requests sent to a provider (attempts)."}, []string{"provider"}),
		acceptedC: prometheus.NewCounterVec(prometheus.CounterOpts{Name: ns + "accepted_total", Help: "Notifications the provider accepted."}, []string{"provider"}),
		failedC:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: ns + "failed_total", Help: "Notifications that failed for good, by reason."}, []string{"provider", "reason"}),
		droppedC:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: ns + "dropped_total", Help: "Notifications dropped before sending (read, delivered, expired)."}, []string{"reason"}),
		retriedC:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: ns + "retries_total", Help: "Attempts that will be retried, by HTTP status (0: no answer)."}, []string{"provider", "status"}),
		prunedC:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: ns + "pruned_tokens_total", Help: "Device tokens pruned as dead."}, []string{"provider"}),
		authC:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: ns + "auth_failures_total", Help: "Refusals of an app's credentials; each pauses the app's queue."}, []string{"app", "provider"}),
		pausedG:   prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: ns + "paused", Help: "1 while an app's queue is paused because its credentials were refused: alert on it."}, []string{"app", "provider"}),
		sendH: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: ns + "send_seconds", Help: "Duration of one provider request.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}}, []string{"provider"}),
		deliverH: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: ns + "delivery_seconds", Help: "Time from enqueue to acceptance by the provider.",
			Buckets: []float64{.05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600}}, []string{"provider"}),
	}
}

func (m *metrics) all() []prometheus.Collector {
	return []prometheus.Collector{m.queuedC, m.sentC, m.acceptedC, m.failedC, m.droppedC, m.retriedC, m.prunedC, m.authC, m.pausedG, m.sendH, m.deliverH}
}

// Describe implements prometheus.Collector.
func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range m.all() {
		c.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	for _, c := range m.all() {
		c.Collect(ch)
	}
}

// shortReason keeps the code of a reason ("UNAVAILABLE", "BadDeviceToken")
// and drops free text after it.
func shortReason(r string) string {
	if i := strings.IndexAny(r, ": "); i > 0 {
		r = r[:i]
	}
	if len(r) > 40 {
		r = r[:40]
	}
	return r
}

func (m *metrics) queued(p string)      { m.queuedC.WithLabelValues(p).Inc() }
func (m *metrics) sent(p string)        { m.sentC.WithLabelValues(p).Inc() }
func (m *metrics) dropped(r string)     { m.droppedC.WithLabelValues(r).Inc() }
func (m *metrics) prunedToken(p string) { m.prunedC.WithLabelValues(p).Inc() }
func (m *metrics) failed(p, r string)   { m.failedC.WithLabelValues(p, shortReason(r)).Inc() }
func (m *metrics) retried(p string, status int) {
	m.retriedC.WithLabelValues(p, strconv.Itoa(status)).Inc()
}
func (m *metrics) accepted(p string, since time.Duration) {
	m.acceptedC.WithLabelValues(p).Inc()
	m.deliverH.WithLabelValues(p).Observe(since.Seconds())
}
func (m *metrics) observeSend(p string, d time.Duration) {
	m.sendH.WithLabelValues(p).Observe(d.Seconds())
}
func (m *metrics) authFailure(id storage.PushQueueID) {
	m.authC.WithLabelValues(id.App, id.Provider).Inc()
}
func (m *metrics) setPaused(id storage.PushQueueID, on bool) {
	v := 0.0
	if on {
		v = 1
	}
	m.pausedG.WithLabelValues(id.App, id.Provider).Set(v)
}

// Collector returns the bridge's Prometheus metrics, to register once:
// warbler_push_queued_total, sent_total, accepted_total,
// failed_total{reason}, dropped_total{reason}, retries_total{status},
// pruned_tokens_total, auth_failures_total{app}, paused{app} (the alert),
// send_seconds and delivery_seconds.
func (b *Bridge) Collector() prometheus.Collector { return b.m }
