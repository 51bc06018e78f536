package hooks

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/warblerim/warbler/storage"
	"github.com/warblerim/warbler/storage/badgerstore"
)

// fakeClock is a Clock moved by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newClock() *fakeClock { return &fakeClock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)} }

func openBanStore(t *testing.T, dir string) (*badgerstore.BanStore, func()) {
	t.Helper()
	db, err := badgerstore.Open(dir, badgerstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return badgerstore.NewBanStore(db), func() { _ = db.Close() }
}

func newTestLimits(t *testing.T, p LimitsPolicy, c Clock) *Limits {
	t.Helper()
	st, closeDB := openBanStore(t, t.TempDir())
	l, err := NewLimits(LimitsOptions{Policy: p, Bans: st, Clock: c, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Stop(); closeDB() })
	return l
}

func TestBucket(t *testing.T) {
	c := newClock()
	r := Rate{Per: 10, Burst: 5}
	b := newBucket(r, c.Now())
	for i := range 5 {
		if ok, _ := b.take(r, c.Now(), 1); !ok {
			t.Fatalf("take %d of a full bucket of 5 refused", i)
		}
	}
	ok, wait := b.take(r, c.Now(), 1)
	if ok || wait != 100*time.Millisecond {
		t.Fatalf("empty bucket: ok=%v wait=%v, want refusal and 100ms", ok, wait)
	}
	c.Add(100 * time.Millisecond)
	if ok, _ := b.take(r, c.Now(), 1); !ok {
		t.Fatal("one token after 100ms at 10/s refused")
	}
	c.Add(time.Hour)
	if !b.full(r, c.Now()) {
		t.Fatal("bucket not full after an hour")
	}
	// Never more than the burst.
	for range 5 {
		b.take(r, c.Now(), 1)
	}
	if ok, _ := b.take(r, c.Now(), 1); ok {
		t.Fatal("bucket held more than its burst")
	}
	// A request larger than the burst waits for a full bucket only.
	if ok, wait := b.take(r, c.Now(), 50); ok || wait != 500*time.Millisecond {
		t.Fatalf("oversized take: ok=%v wait=%v", ok, wait)
	}
	// Off means unlimited.
	if ok, _ := b.take(Rate{}, c.Now(), 1e9); !ok {
		t.Fatal("a zero rate refused")
	}
}

func TestFlappingWindow(t *testing.T) {
	c := newClock()
	f := newFlapping(time.Minute)
	for i := 1; i <= 3; i++ {
		if n := f.add("k", c.Now()); n != i {
			t.Fatalf("count %d, want %d", n, i)
		}
		c.Add(10 * time.Second)
	}
	if n := f.count("k", c.Now()); n != 3 {
		t.Fatalf("count %d, want 3", n)
	}
	c.Add(time.Minute) // the window has closed
	if n := f.count("k", c.Now()); n != 0 {
		t.Fatalf("count after the window %d, want 0", n)
	}
	if n := f.add("k", c.Now()); n != 1 {
		t.Fatalf("new window starts at %d, want 1", n)
	}
	c.Add(2 * time.Minute)
	f.add("other", c.Now()) // sweeps
	f.mu.Lock()
	_, kept := f.m["k"]
	f.mu.Unlock()
	if kept {
		t.Fatal("stale window not swept")
	}
}

func TestNormalizeBan(t *testing.T) {
	for _, tc := range []struct{ kind, in, want string }{
		{storage.BanIP, "10.1.2.3/8", "10.0.0.0/8"},
		{storage.BanIP, "::ffff:192.0.2.1", "192.0.2.1"},
		{storage.BanIP, "2001:db8::1/128", "2001:db8::1"},
		{storage.BanIP, "2001:DB8::/32", "2001:db8::/32"},
		{storage.BanUser, "demo:alice", "demo:alice"},
		{storage.BanClientID, "demo:alice:phone", "demo:alice:phone"},
	} {
		b, err := NormalizeBan(storage.Ban{Kind: tc.kind, Value: tc.in})
		if err != nil || b.Value != tc.want {
			t.Errorf("%s %q: got %q %v, want %q", tc.kind, tc.in, b.Value, err, tc.want)
		}
	}
	for _, tc := range []struct{ kind, in string }{
		{storage.BanIP, "10.0.0.300"}, {storage.BanIP, "host.example"}, {storage.BanIP, "10.0.0.0/33"},
		{storage.BanUser, "alice"}, {storage.BanUser, "demo:al/ice"}, {storage.BanClientID, ""}, {"device", "x"},
	} {
		if _, err := NormalizeBan(storage.Ban{Kind: tc.kind, Value: tc.in}); !errors.Is(err, ErrInvalidBan) {
			t.Errorf("%s %q accepted (%v)", tc.kind, tc.in, err)
		}
	}
}

func TestBansExpirePersistAndSurviveRestart(t *testing.T) {
	c := newClock()
	dir := t.TempDir()
	st, closeDB := openBanStore(t, dir)
	l, err := NewLimits(LimitsOptions{Bans: st, Clock: c, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := l.Ban(ctx, storage.Ban{Kind: storage.BanIP, Value: "198.51.100.0/24"}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Ban(ctx, storage.Ban{Kind: storage.BanClientID, Value: "demo:bob:tab", ExpiresAt: c.Now().Add(5 * time.Minute)}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Ban(ctx, storage.Ban{Kind: storage.BanUser, Value: "demo:eve", ExpiresAt: c.Now().Add(-time.Second)}); !errors.Is(err, ErrInvalidBan) {
		t.Fatalf("a ban that has already lapsed was accepted: %v", err)
	}
	if !l.BannedIP("198.51.100.77:5000") || l.BannedIP("198.51.101.1") {
		t.Fatal("CIDR ban does not cover exactly its range")
	}
	if n := l.BanCounts(); n[storage.BanIP] != 1 || n[storage.BanClientID] != 1 || n[storage.BanUser] != 0 {
		t.Fatalf("ban counts %v", n)
	}
	_ = l.Stop()
	closeDB()

	// A new process over the same store has both; two minutes later, too.
	c.Add(2 * time.Minute)
	st, closeDB = openBanStore(t, dir)
	l, err = NewLimits(LimitsOptions{Bans: st, Clock: c, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if got := l.Bans(); len(got) != 2 || got[0].Kind != storage.BanClientID || got[1].Value != "198.51.100.0/24" {
		t.Fatalf("bans after restart: %+v", got)
	}
	// Past its expiry the client ID ban no longer applies, and the sweep
	// removes it from the store.
	c.Add(4 * time.Minute)
	if got := l.Bans(); len(got) != 1 {
		t.Fatalf("lapsed ban still listed: %+v", got)
	}
	l.SweepBans()
	stored, err := st.ListBans(ctx)
	if err != nil || len(stored) != 1 || stored[0].Kind != storage.BanIP {
		t.Fatalf("store after sweep: %+v %v", stored, err)
	}
	if err := l.Unban(ctx, storage.BanIP, "198.51.100.9/24"); err != nil { // normalized to the stored range
		t.Fatalf("unban by an equivalent range: %v", err)
	}
	if err := l.Unban(ctx, storage.BanIP, "198.51.100.0/24"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("second unban: %v, want not found", err)
	}
	_ = l.Stop()
	closeDB()
}

type nopCloser struct{ closed bool }

func (n *nopCloser) Close() error { n.closed = true; return nil }

func TestAdmission(t *testing.T) {
	c := newClock()
	l := newTestLimits(t, LimitsPolicy{
		MaxConnections: 6, MaxConnectionsPerIP: 2,
		ConnectRatePerIP: Rate{Per: 1, Burst: 3},
		Exempt:           []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
	}, c)
	a1, why := l.admit("192.0.2.1:1000", nil)
	a2, why2 := l.admit("192.0.2.1:1001", nil)
	if why != 0 || why2 != 0 {
		t.Fatalf("first two sockets refused: %v %v", why, why2)
	}
	if _, why := l.admit("192.0.2.1:1002", nil); why != reasonIPConnections {
		t.Fatalf("third socket of one address: %v, want %v", why, reasonIPConnections)
	}
	a1.release()
	a1.release() // idempotent
	// The place is free again; the third token of the burst admits one more
	// (a socket refused for the cap took no token).
	a3, why := l.admit("192.0.2.1:1003", nil)
	if why != 0 {
		t.Fatalf("after a release: %v", why)
	}
	a3.release()
	if _, why := l.admit("192.0.2.1:1004", nil); why != reasonIPConnectRate {
		t.Fatalf("fourth connect within a second: %v, want %v", why, reasonIPConnectRate)
	}
	c.Add(time.Second)
	a3, why = l.admit("192.0.2.1:1005", nil)
	if why != 0 {
		t.Fatalf("after a second: %v", why)
	}
	// IPv6 addresses of one /64 share a budget; another /64 has its own.
	if _, why := l.admit("[2001:db8:1:1::1]:1", nil); why != 0 {
		t.Fatal(why)
	}
	if _, why := l.admit("[2001:db8:1:1::2]:1", nil); why != 0 {
		t.Fatal(why)
	}
	if _, why := l.admit("[2001:db8:1:1::3]:1", nil); why != reasonIPConnections {
		t.Fatalf("third socket of one /64: %v", why)
	}
	// Exempt addresses skip per-address limits but count toward the global cap.
	if n := l.Sockets(); n != 4 {
		t.Fatalf("open sockets %d, want 4", n)
	}
	e1, _ := l.admit("127.0.0.1:1", nil)
	if _, why := l.admit("127.0.0.1:2", nil); why != 0 {
		t.Fatalf("exempt address limited: %v", why)
	}
	if _, why := l.admit("127.0.0.1:3", nil); why != reasonMaxConnections {
		t.Fatalf("seventh socket: %v, want the global cap", why)
	}
	e1.release()
	a2.release()
	a3.release()
	if n := l.Sockets(); n != 3 {
		t.Fatalf("open sockets after release %d, want 3", n)
	}
	// A ban closes the address's open sockets and refuses new ones.
	closer := &nopCloser{}
	c.Add(time.Minute)
	if _, why := l.admit("203.0.113.5:9", closer); why != 0 {
		t.Fatal(why)
	}
	if _, err := l.Ban(context.Background(), storage.Ban{Kind: storage.BanIP, Value: "203.0.113.0/24"}); err != nil {
		t.Fatal(err)
	}
	if !closer.closed {
		t.Fatal("banned address's socket left open")
	}
	if _, why := l.admit("203.0.113.6:9", nil); why != reasonBannedIP {
		t.Fatalf("banned range admitted: %v", why)
	}
	if got := l.Limited(); got["ip_connections"] != 2 || got["ip_connect_rate"] != 1 || got["max_connections"] != 1 || got["banned_ip"] != 1 {
		t.Fatalf("counters %v", got)
	}
}

func TestCheckTopic(t *testing.T) {
	l := newTestLimits(t, LimitsPolicy{MaxTopicLength: 64, MaxTopicLevels: 4}, newClock())
	for _, tc := range []struct {
		topic   string
		publish bool
		want    reason
	}{
		{"a/b/c/d", true, reasonNone},
		{"a/b/c/d/e", true, reasonTopicLevels},
		{"////", false, reasonTopicLevels},
		{string(make([]byte, 65)), true, reasonTopicLength},
		{"a/+/c", true, reasonTopicInvalid},
		{"a/+/c", false, reasonNone},
		{"a/#", true, reasonTopicInvalid},
		{"a/\x00", true, reasonTopicInvalid},
		{"a/\xff", false, reasonTopicInvalid},
		{"$sys/x", true, reasonTopicInvalid},
		{"$SYS/#", false, reasonNone}, // left to the ACL
	} {
		if got, _ := l.checkTopic(tc.topic, tc.publish); got != tc.want {
			t.Errorf("%q publish=%v: %v, want %v", tc.topic, tc.publish, got, tc.want)
		}
	}
}

func TestReserve(t *testing.T) {
	c := newClock()
	r := Rate{Per: 100, Burst: 2}
	b := newBucket(r, c.Now())
	for range 2 {
		if w, ok := b.reserve(r, c.Now(), 1, time.Second); !ok || w != 0 {
			t.Fatalf("within the burst: wait %v ok %v", w, ok)
		}
	}
	// On credit: each further token is 10ms further out.
	for i := 1; i <= 3; i++ {
		w, ok := b.reserve(r, c.Now(), 1, time.Second)
		if !ok || w != time.Duration(i)*10*time.Millisecond {
			t.Fatalf("reservation %d: wait %v ok %v", i, w, ok)
		}
	}
	// Past the allowed wait nothing is taken.
	if _, ok := b.reserve(r, c.Now(), 1, 35*time.Millisecond); ok {
		t.Fatal("a 40ms wait granted with 35ms allowed")
	}
	c.Add(40 * time.Millisecond) // the debt is repaid, and one token saved
	if w, ok := b.reserve(r, c.Now(), 1, 0); !ok || w != 0 {
		t.Fatalf("after repaying: wait %v ok %v", w, ok)
	}
	if _, ok := b.reserve(r, c.Now(), 3, time.Hour); ok {
		t.Fatal("more than the burst granted")
	}
}
