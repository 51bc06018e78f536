package chat

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/warblerim/warbler/protocol"
)

// presenceEvents decodes the presence events delivered so far.
func presenceEvents(r *recorder) []protocol.PresenceInfo {
	var out []protocol.PresenceInfo
	for _, d := range r.all() {
		var p protocol.PresenceInfo
		if json.Unmarshal(d.payload, &p) == nil && p.Kind == protocol.KindPresence {
			out = append(out, p)
		}
	}
	return out
}

// A user is online while any connection is open, including across a
// session takeover of the same device; a watch ends with the watching
// device's last connection; unknown connections change nothing.
func TestPresenceConnections(t *testing.T) {
	e := newEnv(t, nil)
	s := e.svc
	if _, err := s.Send(ctx, dev("a", "p"), SendRequest{To: "b", CMID: "m", Type: "text", Body: text("x")}); err != nil {
		t.Fatal(err)
	}
	c1, c2, cb := new(int), new(int), new(int)
	s.Connected("app", "a", "p", c1)
	s.Connected("app", "b", "x", cb)
	r, err := s.WatchPresence(ctx, dev("b", "x"), []string{"a"})
	if err != nil || r.Users[0].State != protocol.PresenceOnline {
		t.Fatalf("watch: %+v %v", r, err)
	}
	s.Connected("app", "a", "p", c2) // takeover: the new connection first
	s.Disconnected("app", "a", "p", c1)
	s.Disconnected("app", "a", "p", new(int)) // never connected
	if ev := presenceEvents(e.rec); len(ev) != 0 {
		t.Fatalf("events while still online: %+v", ev)
	}
	s.Disconnected("app", "a", "p", c2)
	ev := presenceEvents(e.rec)
	if len(ev) != 1 || ev[0].User != "a" || ev[0].State != protocol.PresenceOffline || ev[0].LastSeen == 0 {
		t.Fatalf("events: %+v", ev)
	}
	// The watcher goes: no more events.
	s.Disconnected("app", "b", "x", cb)
	s.Connected("app", "a", "p", c1)
	if ev := presenceEvents(e.rec); len(ev) != 1 {
		t.Fatalf("events after the watcher left: %+v", ev)
	}
	s.presence.mu.Lock()
	n := len(s.presence.watchers) + len(s.presence.watching)
	s.presence.mu.Unlock()
	if n != 0 {
		t.Fatalf("watch state left behind: %d entries", n)
	}
}

// The typing limiter forwards one notice per interval and forgets idle
// entries.
func TestTypingLimiter(t *testing.T) {
	var l typingLimiter
	k := typingKey{"app", "g", "u"}
	t0 := testTime(0)
	if !l.allow(k, t0, 3e9) || l.allow(k, testTime(2999), 3e9) || !l.allow(k, testTime(3000), 3e9) {
		t.Fatal("interval not applied")
	}
	if !l.allow(typingKey{"app", "g", "v"}, testTime(3001), 3e9) {
		t.Fatal("the limit is per user")
	}
	l.allow(typingKey{"app", "h", "w"}, testTime(10000), 3e9)
	if len(l.last) != 1 {
		t.Fatalf("idle entries kept: %v", l.last)
	}
}

func testTime(ms int64) time.Time { return time.UnixMilli(1_700_000_000_000 + ms) }
