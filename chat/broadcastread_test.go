package chat

import "testing"

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
