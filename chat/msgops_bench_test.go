package chat

import (
	"fmt"
	"sync/atomic"
	"testing"
)

// BenchmarkMessageOps measures operations on stored messages end to end on
// real Badger: reading the target, the durable batch that appends the
// event and rewrites the message, and fan-out. An operation holds its
// conversation's lock until it is durable, so "convs=one" (every user
// reacting to one message of one group) shows the per-conversation
// ceiling, one group commit per operation, while "convs=each" shows how
// operations on different conversations share commits.
func BenchmarkMessageOps(b *testing.B) {
	for _, tc := range []struct {
		name string
		one  bool
		edit bool
	}{{"react/convs=each", false, false}, {"react/convs=one", true, false}, {"edit/convs=each", false, true}} {
		b.Run(tc.name, func(b *testing.B) {
			e := newEnv(b, func(o *Options) { o.SendRate = -1 })
			e.svc.out = discard{}
			owner := dev("owner", "d")
			mustCreate(b, e.svc, owner, "shared", "group")
			shared, err := e.svc.Send(ctx, owner, SendRequest{Conv: "shared", CMID: "m", Type: "text", Body: text("react to me")})
			if err != nil {
				b.Fatal(err)
			}
			var n atomic.Int64
			b.SetParallelism(16)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				i := n.Add(1)
				user := fmt.Sprint("u", i)
				s := dev(user, "d")
				target := shared
				if tc.one {
					if _, err := e.svc.Add(ctx, owner, "shared", []string{user}, ""); err != nil {
						b.Error(err)
						return
					}
				} else {
					conv := fmt.Sprint("g", i)
					mustCreate(b, e.svc, s, conv, "group")
					var err error
					if target, err = e.svc.Send(ctx, s, SendRequest{Conv: conv, CMID: "m", Type: "text", Body: text("mine")}); err != nil {
						b.Error(err)
						return
					}
				}
				j := 0
				for pb.Next() {
					j++
					var err error
					switch {
					case tc.edit:
						_, err = e.svc.Edit(ctx, s, target.Conv, target.ID, target.Seq, text(fmt.Sprint("v", j%MaxEdits)))
						if j%(MaxEdits-1) == 0 { // stay under the edit limit: a fresh message
							target, err = e.svc.Send(ctx, s, SendRequest{Conv: target.Conv, CMID: fmt.Sprint("m", j), Type: "text", Body: text("next")})
						}
					default:
						_, err = e.svc.React(ctx, s, target.Conv, target.ID, target.Seq, "👍", j%2 == 1)
					}
					if err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
