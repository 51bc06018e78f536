package api

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/warblerim/warbler/hooks"
)

type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *testClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func TestRateLimiter(t *testing.T) {
	clock := &testClock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	rl := NewRateLimiter(RateLimitOptions{
		PerIP: hooks.Rate{Per: 2, Burst: 3}, PerKey: hooks.Rate{Per: 0.5, Burst: 2},
		Exempt: func(ip string) bool { return ip == "10.0.0.9" },
		Banned: func(ip string) bool { return ip == "10.6.6.6" },
		Now:    clock.now,
	})
	h := rl.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(204) }))
	do := func(ip, key string) *httptest.ResponseRecorder {
		r := httptest.NewRequest("GET", "/v1/x", nil)
		r.RemoteAddr = ip + ":1234"
		if key != "" {
			r.Header.Set("Authorization", "Bearer "+key)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	for i := range 3 {
		if w := do("10.0.0.1", ""); w.Code != 204 {
			t.Fatalf("request %d within the burst: %d", i+1, w.Code)
		}
	}
	w := do("10.0.0.1", "")
	var body struct{ Error Error }
	_ = json.Unmarshal(w.Body.Bytes(), &body)
	if w.Code != 429 || w.Header().Get("Retry-After") != "1" || body.Error.Code != "rate_limited" {
		t.Fatalf("over the burst: %d Retry-After=%q %s", w.Code, w.Header().Get("Retry-After"), w.Body)
	}
	clock.add(500 * time.Millisecond) // one token at 2/s
	if w := do("10.0.0.1", ""); w.Code != 204 {
		t.Fatalf("after refilling: %d", w.Code)
	}
	// Another address has its own bucket; an exempt one none.
	if w := do("10.0.0.2", ""); w.Code != 204 {
		t.Fatalf("another address: %d", w.Code)
	}
	for range 10 {
		if w := do("10.0.0.9", ""); w.Code != 204 {
			t.Fatalf("exempt address limited: %d", w.Code)
		}
	}
	// Per key, whichever address it comes from; the wait is rounded up.
	do("10.0.0.9", "k1")
	do("10.0.0.9", "k1")
	if w := do("10.0.0.9", "k1"); w.Code != 429 || w.Header().Get("Retry-After") != "2" {
		t.Fatalf("third call with one key: %d Retry-After=%q", w.Code, w.Header().Get("Retry-After"))
	}
	if w := do("10.0.0.9", "k2"); w.Code != 204 {
		t.Fatalf("another key: %d", w.Code)
	}
	if w := do("10.6.6.6", ""); w.Code != 403 {
		t.Fatalf("banned address: %d", w.Code)
	}
	if got := rl.Limited(); got["http_ip"] != 1 || got["http_key"] != 1 || got["http_banned"] != 1 {
		t.Fatalf("counters %v", got)
	}
	// Idle buckets are forgotten.
	clock.add(2 * time.Minute)
	do("10.0.0.3", "")
	rl.mu.Lock()
	n := len(rl.ips) + len(rl.keys)
	rl.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d buckets kept after two idle minutes, want 1", n)
	}
}
