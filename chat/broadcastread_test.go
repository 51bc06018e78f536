package chat

import (
	"fmt"
	"testing"
)

// TestMayReadBroadcast checks the membership answer behind the broadcast
// ACL: channels are for members, other names for everyone; a name looked
// up while it was no conversation is re-read once it becomes a channel,
// and a removed member is refused at once.
func TestMayReadBroadcast(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.ChannelBroadcast = true })
	owner := dev("olga", "d")
	if !e.svc.MayReadBroadcast("app", "news", "mia") {
		t.Fatal("plain broadcast name refused")
	}
	mustCreate(t, e.svc, owner, "news", "channel", "mia", "ned")
	mustCreate(t, e.svc, owner, "team", "group", "mia")
	for _, c := range []struct {
		conv, user string
		want       bool
	}{
		{"news", "mia", true}, {"news", "olga", true}, {"news", "zed", false},
		{"team", "zed", true}, {"other", "zed", true},
	} {
		if got := e.svc.MayReadBroadcast("app", c.conv, c.user); got != c.want {
			t.Errorf("%s/%s: %v, want %v", c.conv, c.user, got, c.want)
		}
	}
	if e.svc.MayReadBroadcast("app2", "news", "zed") != true {
		t.Error("another app's name of the same ID is a different name")
	}
	if _, err := e.svc.Remove(ctx, owner, "news", []string{"ned"}); err != nil {
		t.Fatal(err)
	}
	if e.svc.MayReadBroadcast("app", "news", "ned") {
		t.Error("removed member still allowed")
	}
	if !e.svc.MayReadBroadcast("app", "news", "mia") {
		t.Error("remaining member refused")
	}
}

// BenchmarkMayReadBroadcast is the membership check the ACL runs for every
// delivery of a channel message to a subscriber (a cached channel of 1000
// members), and for a plain broadcast name.
func BenchmarkMayReadBroadcast(b *testing.B) {
	e := newEnv(b, func(o *Options) { o.ChannelBroadcast = true })
	members := make([]string, 999)
	for i := range members {
		members[i] = fmt.Sprintf("u%04d", i)
	}
	mustCreate(b, e.svc, dev("olga", "d"), "news", "channel", members...)
	for _, c := range []struct{ name, conv string }{{"channel", "news"}, {"plain", "flash"}} {
		b.Run(c.name, func(b *testing.B) {
			e.svc.MayReadBroadcast("app", c.conv, "u0500")
			b.ReportAllocs()
			for b.Loop() {
				if !e.svc.MayReadBroadcast("app", c.conv, "u0500") {
					b.Fatal("refused")
				}
			}
		})
	}
}
