package badgerstore

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/warblerim/warbler/storage"
)

func openTest(t *testing.T) *DB {
	t.Helper()
	db, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// TestTagIndexBuiltForOlderStores removes the index (as in a store written
// before it existed) and checks that opening the store rebuilds it.
func TestTagIndexBuiltForOlderStores(t *testing.T) {
	db := openTest(t)
	ctx := context.Background()
	s := NewIdentityStore(db)
	if err := s.CreateUsers(ctx, []storage.User{{App: "a", ID: "x", Tags: []string{"vip", "beta"}}, {App: "a", ID: "y", Tags: []string{"vip"}}}); err != nil {
		t.Fatal(err)
	}
	if err := db.db.DropPrefix([]byte(pfxTag), []byte(keyTagMarker)); err != nil {
		t.Fatal(err)
	}
	if ids, _ := NewIdentityStore(db).UsersWithTag(ctx, "a", "vip"); !slices.Equal(ids, []string{"x", "y"}) {
		t.Fatalf("rebuilt index: vip = %v", ids)
	}
	if ids, _ := NewIdentityStore(db).UsersWithTag(ctx, "a", "beta"); !slices.Equal(ids, []string{"x"}) {
		t.Fatalf("rebuilt index: beta = %v", ids)
	}
}

// TestEventsExpire stores an event whose retention ends in a second and
// waits for the store to stop returning it.
func TestEventsExpire(t *testing.T) {
	db := openTest(t)
	ctx := context.Background()
	s := NewAudienceStore(db)
	now := time.Now()
	if err := s.AppendEvents(ctx, "a", []storage.Event{
		{User: "old", Name: "login", Time: now.Add(-time.Hour + time.Second)},
		{User: "new", Name: "login", Time: now},
	}, time.Hour); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		us, err := s.EventUsers(ctx, "a", storage.EventQuery{Name: "login"})
		if err != nil {
			t.Fatal(err)
		}
		if slices.Equal(us, []string{"new"}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("users with a login: %v, want the old event expired", us)
		}
	}
	// An event already past its retention is not stored at all.
	if err := s.AppendEvents(ctx, "a", []storage.Event{{User: "ancient", Name: "login", Time: now.Add(-2 * time.Hour)}}, time.Hour); err != nil {
		t.Fatal(err)
	}
	n := 0
	_ = db.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: eventPrefix("a", "login")})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			n++
		}
		return nil
	})
	if n != 1 {
		t.Fatalf("%d login events stored, want 1", n)
	}
}

func TestCampaignStore(t *testing.T) {
	db := openTest(t)
	ctx := context.Background()
	s := NewCampaignStore(db)
	for i := range 5 {
		c := storage.Campaign{App: "a", ID: fmt.Sprintf("c%02d", i), State: storage.CampaignScheduled}
		if _, created, err := s.CreateCampaign(ctx, c, time.Hour); err != nil || !created {
			t.Fatal(err)
		}
	}
	if _, _, err := s.CreateCampaign(ctx, storage.Campaign{App: "b", ID: "c99", State: storage.CampaignDone}, time.Hour); err != nil {
		t.Fatal(err)
	}
	page, err := s.ListCampaigns(ctx, "a", "c03", 2)
	if err != nil || len(page) != 2 || page[0].ID != "c02" || page[1].ID != "c01" {
		t.Fatalf("page before c03: %+v %v", page, err)
	}
	if all, _ := s.ListCampaigns(ctx, "a", "", 0); len(all) != 5 || all[0].ID != "c04" {
		t.Fatalf("all: %+v", all)
	}
	if p, _ := s.PendingCampaigns(ctx); len(p) != 5 {
		t.Fatalf("pending: %d", len(p))
	}
	// Dedupe keys are per app.
	d := storage.Campaign{App: "a", ID: "d1", DedupeKey: "k"}
	if _, created, _ := s.CreateCampaign(ctx, d, time.Hour); !created {
		t.Fatal("first with the key not created")
	}
	d.ID = "d2"
	if got, created, _ := s.CreateCampaign(ctx, d, time.Hour); created || got.ID != "d1" {
		t.Fatalf("second with the key: %s %v", got.ID, created)
	}
	d.App = "b"
	if _, created, _ := s.CreateCampaign(ctx, d, time.Hour); !created {
		t.Fatal("another app's key collided")
	}
	// Chunks: outcomes, stats and cap counters move together.
	ch := storage.CampaignChunk{Outcomes: map[string]string{"u1": "pushed", "u2": "skipped:quiet_hours"}, Capped: []string{"u1"}, Day: "20261127",
		Delta: storage.CampaignStats{Targeted: 2, Pushed: 1, Skipped: 1, SkippedBy: map[string]int64{"quiet_hours": 1}}}
	for range 2 {
		if err := s.CommitCampaignChunk(ctx, "a", "c00", ch); err != nil {
			t.Fatal(err)
		}
	}
	done, _ := s.CampaignDone(ctx, "a", "c00", []string{"u1", "u2", "u3"})
	caps, _ := s.CapCounts(ctx, "a", "20261127", []string{"u1", "u2"})
	c, _ := s.GetCampaign(ctx, "a", "c00")
	if len(done) != 2 || caps["u1"] != 2 || caps["u2"] != 0 || c.Stats.Targeted != 4 || c.Stats.SkippedBy["quiet_hours"] != 2 {
		t.Fatalf("done %v caps %v stats %+v", done, caps, c.Stats)
	}
	for i, want := range []bool{true, false} {
		if first, err := s.MarkOpened(ctx, "a", "c00", "u1"); err != nil || first != want {
			t.Fatalf("open %d: %v %v", i, first, err)
		}
	}
	if _, err := s.MarkOpened(ctx, "b", "c00", "u1"); err != storage.ErrNotFound {
		t.Fatalf("open of another app's campaign: %v", err)
	}
}
