package chat

import (
	"slices"
	"testing"

	"github.com/warblerim/warbler/protocol"
)

// presenceTo returns the presence events delivered to user.
func presenceTo(r *recorder, user string) []protocol.PresenceInfo {
	var out []protocol.PresenceInfo
	for _, d := range r.all() {
		if !slices.Contains(d.users, user) {
			continue
		}
		out = append(out, presenceEvents(&recorder{sent: []delivery{d}})...)
	}
	return out
}

// A watch that a change takes away ends with the change: a member removed
// from (or leaving) the only group they shared with a user stops getting
// that user's presence, both ways, and so does a contact the user removes;
// members who still share something keep their watch.
func TestPresenceWatchEndsWithSharing(t *testing.T) {
	e := newEnv(t, nil)
	s := e.svc
	mustCreate(t, s, dev("ann", "p"), "g", "group", "ben", "cal")
	mustCreate(t, s, dev("cal", "p"), "h", "group", "ann")
	conn := map[string]*int{}
	for _, u := range []string{"ann", "ben", "cal", "dan"} {
		conn[u] = new(int)
		s.Connected("app", u, "p", conn[u])
	}
	watch := func(viewer string, users ...string) {
		t.Helper()
		r, err := s.WatchPresence(ctx, dev(viewer, "p"), users)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range r.Users {
			if p.State != protocol.PresenceOnline {
				t.Fatalf("%s sees %+v", viewer, p)
			}
		}
	}
	watch("ben", "ann", "cal")
	watch("ann", "ben", "cal")
	watch("cal", "ann")
	if _, err := s.Remove(ctx, dev("ann", "p"), "g", []string{"ben"}); err != nil {
		t.Fatal(err)
	}
	// dan is ann's contact only; ann removes him.
	if _, err := s.changeRelation(ctx, dev("ann", "p"), protocol.OpContactAdd, []string{"dan"}); err != nil {
		t.Fatal(err)
	}
	watch("dan", "ann")
	if _, err := s.changeRelation(ctx, dev("ann", "p"), protocol.OpContactRemove, []string{"dan"}); err != nil {
		t.Fatal(err)
	}

	watching := func(viewer string) []string {
		s.presence.mu.Lock()
		defer s.presence.mu.Unlock()
		return slices.Clone(s.presence.watching[devKey{"app", viewer, "p"}])
	}
	if w := watching("ben"); len(w) != 0 {
		t.Fatalf("ben, removed from the only group he shared with ann and cal, still watches %v", w)
	}
	if w := watching("ann"); len(w) != 1 || w[0] != "cal" { // still in g and h together
		t.Fatalf("ann watches %v", w)
	}
	s.Disconnected("app", "ann", "p", conn["ann"])
	if ev := presenceTo(e.rec, "ben"); len(ev) != 0 {
		t.Fatalf("ben gets %+v", ev)
	}
	if ev := presenceTo(e.rec, "dan"); len(ev) != 0 {
		t.Fatalf("dan, no longer ann's contact, still gets %+v", ev)
	}
	if ev := presenceTo(e.rec, "cal"); len(ev) != 1 || ev[0].User != "ann" || ev[0].State != protocol.PresenceOffline {
		t.Fatalf("cal (sharing g and h with ann) gets %+v", ev)
	}

	// Leaving ends only the watches of those who share nothing else.
	if _, err := s.Leave(ctx, dev("cal", "p"), "h"); err != nil {
		t.Fatal(err)
	}
	if w := watching("cal"); len(w) != 1 || w[0] != "ann" { // they still share g
		t.Fatalf("cal watches %v", w)
	}
	if _, err := s.Leave(ctx, dev("cal", "p"), "g"); err != nil {
		t.Fatal(err)
	}
	if w := watching("cal"); len(w) != 0 {
		t.Fatalf("cal, sharing nothing with ann now, watches %v", w)
	}
}
