package badgerstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/warblerim/warbler/storage"
)

func hookDelivery(id, ep string, due time.Time) storage.WebhookDelivery {
	return storage.WebhookDelivery{ID: id, App: "a", Endpoint: ep, EventID: "evt_" + id, EventType: "user.online",
		Payload: []byte(`{"id":"evt_` + id + `"}`), Due: due, CreatedAt: due}
}

// The webhook queue: claims in Due order and only what is due, the cursor
// never hides a delivery queued behind it, outcomes requeue or finish,
// a crash's in-flight deliveries come back, and deleting an endpoint takes
// its queue and log along.
func TestWebhookQueue(t *testing.T) {
	dir := t.TempDir()
	db, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	s := NewWebhookStore(db, WebhookOptions{})
	ctx := context.Background()
	base := time.UnixMilli(1_000_000)
	claim := func(now time.Time, want ...string) []storage.WebhookDelivery {
		t.Helper()
		got, err := s.ClaimWebhooks(ctx, now, 10)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, d := range got {
			ids = append(ids, d.ID)
			if d.State != storage.WebhookSending {
				t.Fatalf("claimed %s in state %s", d.ID, d.State)
			}
		}
		if !slices.Equal(ids, want) {
			t.Fatalf("claimed %v, want %v", ids, want)
		}
		return got
	}
	if err := s.EnqueueWebhooks(ctx, []storage.WebhookDelivery{
		hookDelivery("d2", "e1", base.Add(2*time.Second)), hookDelivery("d1", "e1", base.Add(time.Second)),
		hookDelivery("d3", "e2", base.Add(time.Hour)),
	}, []storage.WebhookMark{{App: "a", Conv: "c1", Seq: 7}, {App: "a", Conv: "c2", Seq: 3}, {App: "b", Conv: "c1", Seq: 1}}); err != nil {
		t.Fatal(err)
	}
	// Marks only move forward.
	if err := s.EnqueueWebhooks(ctx, nil, []storage.WebhookMark{{App: "a", Conv: "c1", Seq: 5}, {App: "a", Conv: "c2", Seq: 4}}); err != nil {
		t.Fatal(err)
	}
	if m, err := s.WebhookMarks(ctx, "a"); err != nil || len(m) != 2 || m["c1"] != 7 || m["c2"] != 4 {
		t.Fatalf("marks %v %v", m, err)
	}
	if n, _ := s.WebhookQueueDepth(ctx); n != 3 {
		t.Fatalf("depth %d", n)
	}
	claim(base) // nothing due yet
	got := claim(base.Add(5*time.Second), "d1", "d2")
	// Queued behind the cursor (a clock that went back): still found.
	if err := s.EnqueueWebhooks(ctx, []storage.WebhookDelivery{hookDelivery("d0", "e1", base)}, nil); err != nil {
		t.Fatal(err)
	}
	claim(base.Add(5*time.Second), "d0")

	// d1 fails and is queued again; d2 succeeds and is logged.
	d1 := got[0]
	d1.State, d1.Due, d1.Tries = storage.WebhookQueued, base.Add(3*time.Second), 1
	d1.Attempts = []storage.WebhookAttempt{{At: base, Status: 500, Error: "HTTP 500"}}
	if err := s.FinishWebhook(ctx, d1); err != nil {
		t.Fatal(err)
	}
	d2 := got[1]
	d2.State, d2.Tries = storage.WebhookSucceeded, 1
	if err := s.FinishWebhook(ctx, d2); err != nil {
		t.Fatal(err)
	}
	claim(base.Add(5*time.Second), "d1")

	// A crash: d0 and d1 are "sending"; recovery queues them again.
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if db, err = Open(dir, Options{}); err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	s = NewWebhookStore(db, WebhookOptions{})
	if n, err := s.RecoverWebhooks(ctx, base.Add(10*time.Second)); err != nil || n != 2 {
		t.Fatalf("recovered %d %v", n, err)
	}
	claim(base.Add(10*time.Second), "d0", "d1")

	// The log, newest first, paged.
	for i := range 5 {
		d := hookDelivery(fmt.Sprintf("x%d", i), "e3", base)
		if err := s.EnqueueWebhooks(ctx, []storage.WebhookDelivery{d}, nil); err != nil {
			t.Fatal(err)
		}
	}
	page, err := s.ListWebhookDeliveries(ctx, "a", "e3", "", 2)
	if err != nil || len(page) != 2 || page[0].ID != "x4" || page[1].ID != "x3" {
		t.Fatalf("first page %v %v", page, err)
	}
	page, err = s.ListWebhookDeliveries(ctx, "a", "e3", "x3", 10)
	if err != nil || len(page) != 3 || page[0].ID != "x2" || page[2].ID != "x0" {
		t.Fatalf("second page %v %v", page, err)
	}
	if got, err := s.GetWebhookDelivery(ctx, "a", "e1", "d2"); err != nil || got.State != storage.WebhookSucceeded || got.Tries != 1 {
		t.Fatalf("logged delivery %+v %v", got, err)
	}

	// Deleting an endpoint takes its queued deliveries along.
	if err := s.PutWebhookEndpoint(ctx, storage.WebhookEndpoint{ID: "e3", App: "a", URL: "https://x.example/", Events: []string{"*"}}); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteWebhookEndpoint(ctx, "a", "e3"); err != nil {
		t.Fatal(err)
	}
	if page, _ := s.ListWebhookDeliveries(ctx, "a", "e3", "", 10); len(page) != 0 {
		t.Fatalf("log after delete: %v", page)
	}
	if err := s.DeleteWebhookEndpoint(ctx, "a", "e3"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
	// e2's d3 is the only one left queued; it comes when due.
	claim(base.Add(2*time.Hour), "d3")
	if n, _ := s.WebhookQueueDepth(ctx); n != 0 {
		t.Fatalf("depth %d at the end", n)
	}
}
