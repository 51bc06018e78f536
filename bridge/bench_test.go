package bridge_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/warblerim/warbler/bridge"
	"github.com/warblerim/warbler/storage"
)

// BenchmarkPush measures notifications per second from MessageStored to
// acceptance by a local provider: one app, 10 000 users with one device
// each, messages to 1 000 recipients at a time, 128 requests in flight.
// Every notification is enqueued, claimed, sent over HTTP/2 TLS (the APNs
// server verifies each ES256 JWT) and recorded in Badger.
//
//	go test -run '^$' -bench BenchmarkPush -benchtime 20000x ./bridge/
func BenchmarkPush(b *testing.B) {
	for _, prov := range []string{"apns", "fcm"} {
		b.Run(prov, func(b *testing.B) {
			platform := map[string]string{"apns": "ios", "fcm": "android"}[prov]
			var done atomic.Int64
			finished := make(chan struct{})
			target := int64(b.N)
			e := newEnv(b, func(o *bridge.Options) {
				o.Directory = &directory{gen: func(u string) []bridge.Device {
					return []bridge.Device{{ID: "d", Platform: platform, Token: "t-" + u, Topic: "com.acme.chat"}}
				}}
				o.Presence, o.Positions = nil, nil
				o.Defaults.Concurrency = 128
				o.OnFinish = func(r storage.PushRecord) {
					if r.State != storage.PushAccepted {
						b.Errorf("record %s: %s %s", r.ID, r.State, r.Reason)
					}
					if done.Add(1) == target {
						close(finished)
					}
				}
			})
			const users = 10000
			ctx := context.Background()
			b.ResetTimer()
			for sent, conv := 0, 0; sent < b.N; conv++ {
				n := min(1000, b.N-sent)
				rcpt := make([]string, n)
				for i := range rcpt {
					rcpt[i] = fmt.Sprintf("u%05d", (sent+i)%users)
				}
				if _, err := e.b.MessageStored(ctx, app, msgFor(fmt.Sprintf("c%d", conv), 1), rcpt); err != nil {
					b.Fatal(err)
				}
				sent += n
			}
			select {
			case <-finished:
			case <-time.After(10 * time.Minute):
				b.Fatalf("only %d of %d accepted", done.Load(), b.N)
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "notifs/s")
		})
	}
}
