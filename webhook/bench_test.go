package webhook

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/warblerim/warbler/storage/badgerstore"
)

func benchService(b *testing.B) *Service {
	db, err := badgerstore.Open(b.TempDir(), badgerstore.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	svc, err := New(Options{Store: badgerstore.NewWebhookStore(db, badgerstore.WebhookOptions{}),
		MasterKey: make([]byte, 32), Guard: &Guard{AllowPrivate: true}})
	if err != nil {
		b.Fatal(err)
	}
	if err := svc.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = svc.Close(context.Background()) })
	return svc
}

// BenchmarkPublishNoEndpoint is what every chat message costs an app
// without webhooks: one cache lookup.
func BenchmarkPublishNoEndpoint(b *testing.B) {
	svc := benchService(b)
	msg := map[string]any{"message": map[string]any{"conv": "c", "seq": 1, "body": map[string]string{"text": "hi"}}}
	svc.Publish("none", EventMessageCreated, msg) // fills the cache
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		svc.Publish("none", EventMessageCreated, msg)
	}
}

// BenchmarkDeliver measures events delivered end to end to one loopback
// receiver: published, written to the durable queue, claimed, signed,
// POSTed, answered 200 and logged.
func BenchmarkDeliver(b *testing.B) {
	svc := benchService(b)
	var got atomic.Int64
	done := make(chan struct{}, 1)
	var want atomic.Int64
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if got.Add(1) == want.Load() {
			done <- struct{}{}
		}
	}))
	defer recv.Close()
	if _, _, err := svc.CreateEndpoint(context.Background(), "a", EndpointSpec{URL: ptr(recv.URL), Events: ptr([]string{"*"})}); err != nil {
		b.Fatal(err)
	}
	msg := map[string]any{"message": map[string]any{"conv": "c", "seq": 1, "body": map[string]string{"text": "hello, world"}}}
	want.Store(int64(b.N))
	start := time.Now()
	b.ResetTimer()
	for range b.N {
		svc.Publish("a", EventMessageCreated, msg)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Minute):
		b.Fatalf("%d of %d delivered", got.Load(), b.N)
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
}
