package broker

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"testing"

	"github.com/eclipse/paho.golang/paho"

	"github.com/warblerim/warbler/internal/mqtttest"
)

// BenchmarkAPISendMessage posts messages from the service to a group of
// four users over HTTP; each answer means the message is on disk. "serial"
// is one client waiting for each answer; "parallel" is many clients at
// once, whose appends share disk syncs.
func BenchmarkAPISendMessage(b *testing.B) {
	for _, mode := range []string{"serial", "parallel"} {
		b.Run(mode, func(b *testing.B) {
			e := newAPIEnv(b)
			members := []string{"alice", "bob", "cal", "dan"}
			e.must(e.do("POST", "/v1/apps/acme/conversations", e.admin, map[string]any{"id": "bench", "kind": "group", "members": members}), 201)
			url := e.base + "/v1/apps/acme/conversations/bench/messages"
			key := "Bearer " + e.keys["acme:publish"]
			var n atomic.Int64
			send := func(hc *http.Client) error {
				body := fmt.Appendf(nil, `{"body":{"text":"benchmark message %d"}}`, n.Add(1))
				req, _ := http.NewRequest("POST", url, bytes.NewReader(body))
				req.Header.Set("Authorization", key)
				resp, err := hc.Do(req)
				if err != nil {
					return err
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 201 {
					return fmt.Errorf("status %d", resp.StatusCode)
				}
				return nil
			}
			b.ResetTimer()
			if mode == "serial" {
				for range b.N {
					if err := send(e.hc); err != nil {
						b.Fatal(err)
					}
				}
			} else {
				b.SetParallelism(8)
				b.RunParallel(func(pb *testing.PB) {
					hc := &http.Client{Transport: &http.Transport{}}
					for pb.Next() {
						if err := send(hc); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// BenchmarkServiceBroadcast publishes at QoS 1 from a service connection
// on a channel's broadcast topic; each PUBACK means the message is stored.
// One connection stores one message per disk sync.
func BenchmarkServiceBroadcast(b *testing.B) {
	e := newAPIEnv(b)
	e.must(e.do("POST", "/v1/apps/acme/conversations", e.admin, map[string]any{"id": "promo", "kind": "channel", "members": []string{"alice", "bob"}}), 201)
	svc := mqtttest.MustConnect(b, mqtttest.DialTCP(b, e.s.Addrs().MQTT), "acme:_svc:bench", "acme:_svc", e.keys["acme:publish"])
	payload := []byte(`{"text":"benchmark broadcast"}`)
	b.ResetTimer()
	for range b.N {
		resp, err := svc.Client.Publish(context.Background(), &paho.Publish{Topic: "w/acme/b/promo", QoS: 1, Payload: payload})
		if err != nil || resp.ReasonCode != 0 {
			b.Fatalf("publish: %v", err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}
