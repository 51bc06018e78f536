package audience_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/warblerim/warbler/audience"
	"github.com/warblerim/warbler/storage"
	"github.com/warblerim/warbler/storage/badgerstore"
)

type env struct {
	ids *badgerstore.IdentityStore
	svc *audience.Service
	now time.Time
}

func newEnv(t testing.TB) *env {
	t.Helper()
	db, err := badgerstore.Open(t.TempDir(), badgerstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	e := &env{ids: badgerstore.NewIdentityStore(db), now: time.Now().UTC()}
	aud := badgerstore.NewAudienceStore(db)
	e.svc, err = audience.New(audience.Options{Index: e.ids, Users: e.ids, Events: aud, Segments: aud,
		Now: func() time.Time { return e.now }})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// brute evaluates n for one user the slow, obvious way.
func brute(n *audience.Node, u storage.User, events []storage.Event, now time.Time) bool {
	switch n.Op {
	case audience.OpTag:
		return slices.Contains(u.Tags, n.Value)
	case audience.OpAll:
		return true
	case audience.OpNot:
		return !brute(n.Kids[0], u, events, now)
	case audience.OpAnd:
		for _, k := range n.Kids {
			if !brute(k, u, events, now) {
				return false
			}
		}
		return true
	case audience.OpOr:
		for _, k := range n.Kids {
			if brute(k, u, events, now) {
				return true
			}
		}
		return false
	case audience.OpAttr:
		v, ok := u.Attrs[n.Key]
		switch n.Cmp {
		case "":
			return ok
		case "=":
			return ok && v == n.Value
		default:
			return !ok || v != n.Value
		}
	case audience.OpEvent:
		c, cnt := n.Event, 0
		for _, e := range events {
			if e.User != u.ID || e.Name != c.Name || e.Time.Before(now.Add(-c.Within)) {
				continue
			}
			ok := true
			for k, v := range c.Props {
				if e.Properties[k] != v {
					ok = false
				}
			}
			if ok {
				cnt++
			}
		}
		return cnt >= c.Min
	}
	panic("unknown op")
}

// TestEvaluateMatchesBruteForce stores users with random tags, attributes
// and events in a real store and checks many expressions against a
// per-user evaluation.
func TestEvaluateMatchesBruteForce(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(1, 2))
	tags := []string{"vip", "churned", "beta", "eu west"}
	var users []storage.User
	for i := range 300 {
		u := storage.User{App: "a1", ID: fmt.Sprintf("u%03d", i), CreatedAt: e.now}
		for _, tg := range tags {
			if rng.IntN(3) == 0 {
				u.Tags = append(u.Tags, tg)
			}
		}
		if rng.IntN(2) == 0 {
			u.Attrs = map[string]string{"country": []string{"DE", "FR"}[rng.IntN(2)]}
		}
		users = append(users, u)
	}
	if err := e.ids.CreateUsers(ctx, users); err != nil {
		t.Fatal(err)
	}
	// Another app's users with the same tags must never show up.
	if err := e.ids.CreateUsers(ctx, []storage.User{{App: "a2", ID: "u001", Tags: tags}}); err != nil {
		t.Fatal(err)
	}
	var events []storage.Event
	for range 600 {
		ev := storage.Event{User: users[rng.IntN(len(users))].ID, Name: []string{"login", "viewed_product"}[rng.IntN(2)],
			Time: e.now.Add(-time.Duration(rng.IntN(40*24)) * time.Hour)}
		if ev.Name == "viewed_product" {
			ev.Properties = map[string]string{"product": []string{"X", "Y"}[rng.IntN(2)]}
		}
		events = append(events, ev)
	}
	events = append(events, storage.Event{User: "ghost", Name: "login", Time: e.now}) // no such user
	for i := 0; i < len(events); i += 200 {
		if _, err := e.svc.RecordEvents(ctx, "a1", events[i:min(i+200, len(events))]); err != nil {
			t.Fatal(err)
		}
	}
	for _, src := range []string{
		"vip", "vip AND NOT churned", "NOT vip", `beta OR "eu west"`, "NOT (vip OR beta)", "vip OR NOT churned",
		"NOT vip AND NOT churned", "(vip OR NOT beta) AND NOT (churned AND NOT vip)", "all", "all AND NOT vip", "nosuchtag",
		`attr(country) = DE`, `attr(country) != DE`, `attr(country)`, `vip AND attr(country) = FR`,
		`event(login, 7d)`, `NOT event(login, 30d)`, `event(viewed_product, 7d, product=X)`,
		`event(login, 30d, min=3) AND NOT churned`, `vip OR event(viewed_product, 3d, product=Y)`,
	} {
		n, err := audience.ParseRule(src)
		if err != nil {
			t.Fatalf("%s: %v", src, err)
		}
		got, err := e.svc.Evaluate(ctx, "a1", n)
		if err != nil {
			t.Fatalf("%s: %v", src, err)
		}
		var want []string
		for _, u := range users {
			if brute(n, u, events, e.now) {
				want = append(want, u.ID)
			}
		}
		if !slices.Equal(got, want) && !(len(got) == 0 && len(want) == 0) {
			t.Errorf("%s: got %d users, want %d\ngot  %v\nwant %v", src, len(got), len(want), got, want)
		}
	}
}

// TestTagCacheInvalidation checks that a cached tag set follows writes.
func TestTagCacheInvalidation(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if err := e.ids.CreateUsers(ctx, []storage.User{{App: "a", ID: "x", Tags: []string{"vip"}}, {App: "a", ID: "y"}}); err != nil {
		t.Fatal(err)
	}
	n, _ := audience.ParseTags("vip")
	check := func(want ...string) {
		t.Helper()
		got, err := e.svc.Evaluate(ctx, "a", n)
		if err != nil || !slices.Equal(got, want) && len(want)+len(got) > 0 {
			t.Fatalf("vip = %v, %v; want %v", got, err, want)
		}
	}
	check("x")
	if _, err := e.ids.UpdateUser(ctx, "a", "y", func(u *storage.User) error { u.Tags = []string{"vip"}; return nil }); err != nil {
		t.Fatal(err)
	}
	check("x", "y")
	if _, err := e.ids.UpdateUser(ctx, "a", "x", func(u *storage.User) error { u.Tags = nil; return nil }); err != nil {
		t.Fatal(err)
	}
	check("y")
	if err := e.ids.CreateUser(ctx, storage.User{App: "a", ID: "z", Tags: []string{"vip"}}, nil); err != nil {
		t.Fatal(err)
	}
	check("y", "z")
	if err := e.ids.CreateUsers(ctx, []storage.User{{App: "a", ID: "w"}, {App: "a", ID: "z"}}); !errors.Is(err, storage.ErrExists) {
		t.Fatalf("bulk create over an existing user: %v", err)
	}
	if _, err := e.ids.GetUser(ctx, "a", "w"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("a refused bulk create wrote w: %v", err)
	}
}

func TestRecordEventsValidation(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	for _, evs := range [][]storage.Event{
		nil,
		{{User: "a/b", Name: "x"}},
		{{User: "u", Name: "bad name"}},
		{{User: "u", Name: "x", Time: e.now.Add(2 * time.Hour)}},
	} {
		if _, err := e.svc.RecordEvents(ctx, "a", evs); !errors.Is(err, audience.ErrInvalid) {
			t.Errorf("%v: err = %v, want invalid", evs, err)
		}
	}
	// An event older than the retention is accepted but not kept.
	n, err := e.svc.RecordEvents(ctx, "a", []storage.Event{{User: "u", Name: "x", Time: e.now.Add(-100 * 24 * time.Hour)}, {User: "u", Name: "x"}})
	if err != nil || n != 1 {
		t.Fatalf("kept %d, %v", n, err)
	}
	evs, err := e.svc.Events(ctx, "a", "u", "", 10)
	if err != nil || len(evs) != 1 || evs[0].Name != "x" || !evs[0].Time.Equal(e.now.Truncate(time.Millisecond)) {
		t.Fatalf("events = %+v, %v", evs, err)
	}
}

func TestSegments(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if _, err := e.svc.PutSegment(ctx, storage.Segment{App: "a", ID: "s1", Rule: "vip AND"}); !errors.Is(err, audience.ErrInvalid) {
		t.Fatalf("bad rule: %v", err)
	}
	sg, err := e.svc.PutSegment(ctx, storage.Segment{App: "a", ID: "s1", Name: "VIPs", Rule: "vip and not event(login,30d)"})
	if err != nil || sg.Rule != "vip AND NOT event(login, 30d)" {
		t.Fatalf("put: %+v %v", sg, err)
	}
	if err := e.ids.CreateUsers(ctx, []storage.User{{App: "a", ID: "x", Tags: []string{"vip"}}, {App: "a", ID: "y", Tags: []string{"vip"}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.RecordEvents(ctx, "a", []storage.Event{{User: "y", Name: "login"}}); err != nil {
		t.Fatal(err)
	}
	us, err := e.svc.SegmentUsers(ctx, "a", "s1")
	if err != nil || !slices.Equal(us, []string{"x"}) {
		t.Fatalf("segment users = %v, %v", us, err)
	}
	if _, err := e.svc.Segment(ctx, "b", "s1"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("another app's segment: %v", err)
	}
	if err := e.svc.DeleteSegment(ctx, "a", "s1"); err != nil {
		t.Fatal(err)
	}
	if err := e.svc.DeleteSegment(ctx, "a", "s1"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
}
