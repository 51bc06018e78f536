package chat

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
)

type discard struct{}

func (discard) Deliver(string, []string, []byte) {}
func (discard) Broadcast(string, string, []byte) {}

// BenchmarkSend measures Service.Send end to end on real Badger: dedupe
// lookup, sequencing, the durable group-committed append and fan-out (to a
// Deliverer that discards). "convs=each" gives every sender its own
// group; "convs=one" makes them all contend for one conversation, whose
// sends are serialised by its lock.
func BenchmarkSend(b *testing.B) {
	for _, tc := range []struct {
		name string
		one  bool
		body int
	}{{"convs=each/body=200B", false, 200}, {"convs=one/body=200B", true, 200}, {"convs=each/body=60KiB", false, 60 << 10}} {
		b.Run(tc.name, func(b *testing.B) {
			e := newEnv(b, nil)
			e.svc.out = discard{}
			body := json.RawMessage(`"` + strings.Repeat("x", tc.body) + `"`)
			mustCreate(b, e.svc, dev("owner", "d"), "shared", "group")
			var n atomic.Int64
			b.SetParallelism(16)
			b.SetBytes(int64(tc.body))
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				i := n.Add(1)
				user := fmt.Sprint("u", i)
				conv := "shared"
				if !tc.one {
					conv = fmt.Sprint("g", i)
					mustCreate(b, e.svc, dev(user, "d"), conv, "group")
				} else if _, err := e.svc.store.AddMembers(ctx, "app", conv, nil, 0); err != nil {
					b.Error(err)
				}
				s := dev(user, "d")
				if tc.one {
					s = Sender{App: "app", User: "owner", Device: fmt.Sprint("d", i)}
				}
				j := 0
				for pb.Next() {
					j++
					if _, err := e.svc.Send(ctx, s, SendRequest{Conv: conv, CMID: fmt.Sprint("m", j), Type: "text", Body: body}); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
