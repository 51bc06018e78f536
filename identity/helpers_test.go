package identity

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/warblerim/warbler/storage/badgerstore"
)

// testClock is an injectable clock that only moves when told to.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func newTestClock() *testClock {
	// Mid-step, so that ±1 TOTP step stays within the same minute.
	return &testClock{t: time.Unix(1_750_000_015, 0)}
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type fixture struct {
	svc    *Service
	clock  *testClock
	db     *badgerstore.DB
	store  *badgerstore.IdentityStore
	master []byte
	events chan RevokeEvent
	dir    string
}

func testMasterKey() []byte {
	k := make([]byte, 32)
	for i := range k {
		k[i] = byte(i + 1)
	}
	return k
}

// newFixture opens a real Badger store in a temporary directory and a
// service over it.
func newFixture(t testing.TB) *fixture {
	t.Helper()
	dir := t.TempDir()
	db, err := badgerstore.Open(dir, badgerstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	f := &fixture{clock: newTestClock(), db: db, store: badgerstore.NewIdentityStore(db), master: testMasterKey(),
		events: make(chan RevokeEvent, 64), dir: dir}
	f.svc = f.open(t)
	return f
}

func (f *fixture) open(t testing.TB) *Service {
	t.Helper()
	svc, err := New(context.Background(), Options{
		Store: f.store, MasterKey: f.master, Now: f.clock.Now,
		OnRevoke: func(ev RevokeEvent) { f.events <- ev },
	})
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

func (f *fixture) expectEvent(t *testing.T, want RevokeEvent) {
	t.Helper()
	select {
	case ev := <-f.events:
		if ev.App != want.App || ev.User != want.User || ev.Reason != want.Reason {
			t.Fatalf("revoke event %+v, want %+v", ev, want)
		}
	default:
		t.Fatalf("no revoke event, want %+v", want)
	}
}

func must[T any](t *testing.T) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}
