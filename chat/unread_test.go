package chat

import (
	"fmt"
	"testing"

	"github.com/warblerim/warbler/protocol"
)

func unreadOf(t testing.TB, e *env, user, conv string) protocol.ConvInfo {
	t.Helper()
	res, err := e.svc.Convs(ctx, dev(user, "phone"), "", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range res.Convs {
		if c.Conv == conv {
			return c
		}
	}
	t.Fatalf("%s has no conversation %s: %+v", user, conv, res)
	return protocol.ConvInfo{}
}

func TestCountable(t *testing.T) {
	for _, c := range []struct {
		data string
		want bool
	}{
		{`{"type":"text","body":{"text":"hi"}}`, true},
		{`{"type":"image","body":{}}`, true},
		{`{"type":"app.poll","body":{"q":"?"}}`, true},
		{`{"type":"text","recalled":true}`, false},
		{`{"type":"edit","body":{"text":"x"}}`, false},
		{`{"type":"recall"}`, false},
		{`{"type":"reaction","body":{"emoji":"👍"}}`, false},
		{`{"type":"call","body":{"state":"ringing"}}`, false},
		{`{"type":"call","body":{"state":"ended","reason":"hangup"}}`, false},
		{`{"type":"call","body":{"state":"ended","reason":"declined"}}`, false},
		{`{"type":"call","body":{"state":"ended","reason":"canceled"}}`, true},
		{`{"type":"call","body":{"state":"ended","reason":"timeout"}}`, true},
		{`{"type":"system","body":{"event":"added"}}`, false},
		{`{"type":"system","body":{"event":"announcement","text":"standup"}}`, true},
		{`{"type":"system","body":{"event":"announcement","text":""}}`, false},
		{`not json`, false},
	} {
		if got := countable([]byte(c.data)); got != c.want {
			t.Errorf("countable(%s) = %v, want %v", c.data, got, c.want)
		}
	}
}

// Past the scan bound the count stops and says so; reading moves the
// window.
func TestUnreadScanBound(t *testing.T) {
	old := unreadScan
	unreadScan = 5
	t.Cleanup(func() { unreadScan = old })
	e := newEnv(t, nil)
	var conv string
	for i := range 8 {
		ack, err := e.svc.Send(ctx, dev("bob", "phone"), SendRequest{To: "alice", CMID: fmt.Sprint(i), Type: "text", Body: text("hi")})
		if err != nil {
			t.Fatal(err)
		}
		conv = ack.Conv
	}
	if c := unreadOf(t, e, "alice", conv); c.Unread != 5 || !c.UnreadMore || c.LastSeq != 8 {
		t.Fatalf("8 messages, scan bound 5: %+v, want unread 5 and unread_more", c)
	}
	if _, err := e.svc.MarkRead(ctx, dev("alice", "phone"), conv, 4); err != nil {
		t.Fatal(err)
	}
	if c := unreadOf(t, e, "alice", conv); c.Unread != 4 || c.UnreadMore {
		t.Fatalf("read up to 4 of 8: %+v, want unread 4", c)
	}
	if c := unreadOf(t, e, "bob", conv); c.Unread != 0 || c.UnreadMore {
		t.Fatalf("the author's own messages: %+v, want unread 0", c)
	}
}

// BenchmarkConvsUnread measures the "convs" op, whose unread counts read
// the log between each read position and the head: many conversations
// with a few unread messages each, and one at the scan bound.
func BenchmarkConvsUnread(b *testing.B) {
	run := func(b *testing.B, convs, unread int) {
		e := newEnv(b, nil)
		for c := range convs {
			if unread == 0 { // a conversation read to the head
				if _, err := e.svc.Send(ctx, dev("me", "phone"), SendRequest{To: fmt.Sprint("u", c), CMID: fmt.Sprint(c), Type: "text", Body: text("hi")}); err != nil {
					b.Fatal(err)
				}
			}
			for i := range unread {
				if _, err := e.svc.Send(ctx, dev(fmt.Sprint("u", c), "d"), SendRequest{To: "me", CMID: fmt.Sprint(i), Type: "text", Body: text("hello there")}); err != nil {
					b.Fatal(err)
				}
			}
		}
		b.ReportAllocs()
		b.ResetTimer()
		for b.Loop() {
			res, err := e.svc.Convs(ctx, dev("me", "phone"), "", 100)
			if err != nil || len(res.Convs) != convs || res.Convs[0].Unread != uint64(min(unread, unreadScan)) {
				b.Fatalf("%v %+v", err, res.Convs[0])
			}
		}
	}
	b.Run("convs=100,unread=0", func(b *testing.B) { run(b, 100, 0) })
	b.Run("convs=100,unread=10", func(b *testing.B) { run(b, 100, 10) })
	b.Run("convs=1,unread=1000", func(b *testing.B) { run(b, 1, 1000) })
}
