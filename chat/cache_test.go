package chat

import (
	"encoding/json"
	"fmt"
	"slices"
	"testing"

	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage"
)

// deliveredTo returns who got the message of conv with seq.
func (r *recorder) deliveredTo(t testing.TB, conv string, seq uint64) []string {
	t.Helper()
	for _, d := range r.all() {
		var m protocol.Message
		if json.Unmarshal(d.payload, &m) == nil && m.Kind == protocol.KindMsg && m.Conv == conv && m.Seq == seq {
			return d.users
		}
	}
	t.Fatalf("%s/%d was not delivered", conv, seq)
	return nil
}

// Every membership change made through the Service is seen by the very
// next send, although sends read members from the cache.
func TestCacheFollowsMembershipChanges(t *testing.T) {
	e := newEnv(t, nil)
	owner := dev("olga", "d")
	mustCreate(t, e.svc, owner, "g", "group", "ann")
	send := func(s Sender, cmid string) (protocol.Ack, error) {
		return e.svc.Send(ctx, s, SendRequest{Conv: "g", CMID: cmid, Type: "text", Body: text(cmid)})
	}
	ack, err := send(owner, "1")
	if err != nil {
		t.Fatal(err)
	}
	if got := e.rec.deliveredTo(t, "g", ack.Seq); !slices.Equal(got, []string{"ann", "olga"}) {
		t.Fatalf("delivered to %v", got)
	}
	if _, err := send(dev("bob", "d"), "x"); code(err) != protocol.CodeNotMember {
		t.Fatalf("non-member send: %v", err)
	}
	if _, err := e.svc.Add(ctx, owner, "g", []string{"bob"}, ""); err != nil {
		t.Fatal(err)
	}
	// The "added" event already goes to bob, and bob may send.
	if got := e.rec.deliveredTo(t, "g", ack.Seq+1); !slices.Contains(got, "bob") {
		t.Fatalf("added event delivered to %v", got)
	}
	if _, err := send(dev("bob", "d"), "b1"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Remove(ctx, owner, "g", []string{"ann"}); err != nil {
		t.Fatal(err)
	}
	if _, err := send(dev("ann", "d"), "a1"); code(err) != protocol.CodeNotMember {
		t.Fatalf("removed member send: %v", err)
	}
	ack, err = send(owner, "2")
	if err != nil {
		t.Fatal(err)
	}
	if got := e.rec.deliveredTo(t, "g", ack.Seq); !slices.Equal(got, []string{"bob", "olga"}) {
		t.Fatalf("after remove, delivered to %v", got)
	}
	// Roles: a channel admin may write, and stops being able to when
	// demoted.
	mustCreate(t, e.svc, owner, "news", "channel", "mia")
	post := func() error {
		_, err := e.svc.Send(ctx, dev("mia", "d"), SendRequest{Conv: "news", CMID: fmt.Sprint(e.svc.now().UnixNano()), Type: "text", Body: text("x")})
		return err
	}
	if code(post()) != protocol.CodeForbidden {
		t.Fatal("member wrote to a channel")
	}
	if _, err := e.svc.SetRole(ctx, owner, "news", "mia", protocol.RoleAdmin); err != nil {
		t.Fatal(err)
	}
	if err := post(); err != nil {
		t.Fatalf("admin post: %v", err)
	}
	if _, err := e.svc.SetRole(ctx, owner, "news", "mia", protocol.RoleMember); err != nil {
		t.Fatal(err)
	}
	if code(post()) != protocol.CodeForbidden {
		t.Fatal("demoted admin still wrote to the channel")
	}
	// A change made behind the Service's back is seen once it is told.
	if _, err := e.store.AddMembers(ctx, "app", "g", []storage.Member{{User: "zoe", Role: storage.RoleMember}}, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := send(dev("zoe", "d"), "z0"); code(err) != protocol.CodeNotMember {
		t.Fatalf("before Invalidate: %v (the cache should still say not a member)", err)
	}
	e.svc.Invalidate("app", "g")
	if _, err := send(dev("zoe", "d"), "z1"); err != nil {
		t.Fatalf("after Invalidate: %v", err)
	}
}

// The cache never holds more than its bound, and evicted conversations
// still work (they are reloaded).
func TestCacheIsBounded(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.CacheMembers = 10 })
	for i := range 20 {
		conv := fmt.Sprint("g", i)
		mustCreate(t, e.svc, dev("olga", "d"), conv, "group", "ann", "bob")
		if _, err := e.svc.Send(ctx, dev("ann", "d"), SendRequest{Conv: conv, CMID: "m", Type: "text", Body: text("x")}); err != nil {
			t.Fatal(err)
		}
		if e.svc.cache.size > 10 {
			t.Fatalf("cache holds %d members, bound 10", e.svc.cache.size)
		}
	}
	for i := range 20 {
		conv := fmt.Sprint("g", i)
		ack, err := e.svc.Send(ctx, dev("bob", "d"), SendRequest{Conv: conv, CMID: "m", Type: "text", Body: text("x")})
		if err != nil || ack.Seq != 3 {
			t.Fatalf("%s: %+v %v", conv, ack, err)
		}
	}
}
