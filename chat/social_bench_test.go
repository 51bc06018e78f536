package chat

import (
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/warblerim/warbler/protocol"
)

// BenchmarkWriteChecks measures what this part adds to every send: the
// block lookup of a direct conversation (a Badger point read of a missing
// key) and the mute check of a group (the cached group state).
func BenchmarkWriteChecks(b *testing.B) {
	e := newEnv(b, nil)
	e.svc.out = discard{}
	if _, err := e.svc.Send(ctx, dev("a", "d"), SendRequest{To: "b", CMID: "m", Type: "text", Body: text("x")}); err != nil {
		b.Fatal(err)
	}
	mustCreate(b, e.svc, dev("a", "d"), "g", "group", "b")
	for _, conv := range []string{protocol.DirectConvID("a", "b"), "g"} {
		v, r, err := e.svc.viewMember(ctx, dev("b", "d"), conv)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(string(v.conv.Kind), func(b *testing.B) {
			for b.Loop() {
				if err := e.svc.checkWrite(ctx, dev("b", "d"), v, r); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkTyping measures typing notices of many users in one group of
// 100 members: the membership check, the rate limit and the fan-out (to a
// Deliverer that discards). Each iteration is one notice, forwarded or
// dropped by the limit.
func BenchmarkTyping(b *testing.B) {
	e := newEnv(b, nil)
	e.svc.out = discard{}
	var members []string
	for i := range 99 {
		members = append(members, fmt.Sprint("u", i))
	}
	mustCreate(b, e.svc, dev("owner", "d"), "g", "group", members...)
	var n atomic.Int64
	b.RunParallel(func(pb *testing.PB) {
		s := dev(fmt.Sprint("u", n.Add(1)%99), "d")
		for pb.Next() {
			if _, err := e.svc.Typing(ctx, s, "g", ""); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
