package badgerstore

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/warblerim/warbler/storage"
)

func pushRec(id string, due time.Time) storage.PushRecord {
	return storage.PushRecord{ID: id, App: "a", User: "u", Device: "d", Provider: "apns", Token: "t", Kind: "alert", Due: due, CreatedAt: due}
}

// The claim cursor never hides a record: not one queued behind it by a
// clock that went back, not one requeued, not one recovered.
func TestPushClaimCursor(t *testing.T) {
	db, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	s := NewPushStore(db, PushOptions{})
	ctx := context.Background()
	q := storage.PushQueueID{App: "a", Provider: "apns"}
	base := time.UnixMilli(1_000_000)
	claim := func(now time.Time, want ...string) []storage.PushRecord {
		t.Helper()
		got, err := s.ClaimPush(ctx, q, now, 10)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, r := range got {
			ids = append(ids, r.ID)
			if r.State != storage.PushSent {
				t.Fatalf("claimed %s in state %s", r.ID, r.State)
			}
		}
		if fmt.Sprint(ids) != fmt.Sprint(want) {
			t.Fatalf("claim at %v: %v, want %v", now.UnixMilli(), ids, want)
		}
		return got
	}
	if err := s.EnqueuePush(ctx, []storage.PushRecord{pushRec("r1", base.Add(time.Second)), pushRec("r2", base.Add(3*time.Second))}, nil); err != nil {
		t.Fatal(err)
	}
	claim(base)
	got := claim(base.Add(2*time.Second), "r1")
	// The clock went back: a record due before the cursor is still found.
	if err := s.EnqueuePush(ctx, []storage.PushRecord{pushRec("r0", base)}, nil); err != nil {
		t.Fatal(err)
	}
	claim(base.Add(2*time.Second), "r0")
	// A retry of r1, due now, and r2 when due.
	r1 := got[0]
	r1.State, r1.Due = storage.PushQueued, base.Add(2*time.Second)
	if err := s.FinishPush(ctx, r1); err != nil {
		t.Fatal(err)
	}
	claim(base.Add(5*time.Second), "r1", "r2")
	claim(base.Add(10 * time.Second))
	if _, ok, _ := s.NextPushDue(ctx, q); ok {
		t.Fatal("queue not empty")
	}
	// Records left "sent" are recovered, due at the recovery time.
	if n, err := s.RecoverPush(ctx, base); err != nil || n != 3 {
		t.Fatalf("recovered %d, %v", n, err)
	}
	claim(base, "r0", "r1", "r2")
}
