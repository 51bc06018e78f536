package webhook

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the service's Prometheus collectors. Labels stay bounded:
// event types and attempt results come from fixed vocabularies.
type metrics struct {
	attempts   *prometheus.CounterVec
	events     *prometheus.CounterVec
	enqueueErr prometheus.Counter
	disabled   prometheus.Counter
	latency    prometheus.Histogram
}

func newMetrics() *metrics {
	ns := "warbler_webhook_"
	return &metrics{
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{Name: ns + "attempts_total",
			Help: "Delivery attempts by result: success, retry (failed, queued again), failed (failed for good), dropped (endpoint deleted or disabled)."}, []string{"result"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{Name: ns + "events_total",
			Help: "Events queued for at least one endpoint, by type."}, []string{"type"}),
		enqueueErr: prometheus.NewCounter(prometheus.CounterOpts{Name: ns + "events_lost_total",
			Help: "Events that could not be queued (store errors, or published during shutdown); each is logged."}),
		disabled: prometheus.NewCounter(prometheus.CounterOpts{Name: ns + "endpoints_disabled_total",
			Help: "Endpoints turned off after failing for webhooks.disable_after."}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: ns + "attempt_seconds", Help: "Duration of one delivery request.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}}),
	}
}

// Collector returns the service's Prometheus metrics, including the queue
// depth (queued deliveries, read from the store at scrape time) and the
// requests in flight.
func (s *Service) Collector() prometheus.Collector {
	return collector{s}
}

type collector struct{ s *Service }

var (
	depthDesc    = prometheus.NewDesc("warbler_webhook_queue_depth", "Deliveries queued (due now or waiting for a retry).", nil, nil)
	inflightDesc = prometheus.NewDesc("warbler_webhook_inflight", "Delivery requests in flight.", nil, nil)
)

func (c collector) all() []prometheus.Collector {
	m := c.s.m
	return []prometheus.Collector{m.attempts, m.events, m.enqueueErr, m.disabled, m.latency}
}

// Describe implements prometheus.Collector.
func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, x := range c.all() {
		x.Describe(ch)
	}
	ch <- depthDesc
	ch <- inflightDesc
}

// Collect implements prometheus.Collector.
func (c collector) Collect(ch chan<- prometheus.Metric) {
	for _, x := range c.all() {
		x.Collect(ch)
	}
	if n, err := c.s.store.WebhookQueueDepth(context.Background()); err == nil {
		ch <- prometheus.MustNewConstMetric(depthDesc, prometheus.GaugeValue, float64(n))
	}
	ch <- prometheus.MustNewConstMetric(inflightDesc, prometheus.GaugeValue, float64(len(c.s.sem)))
}
