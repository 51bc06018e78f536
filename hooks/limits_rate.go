package hooks

import (
	"net/netip"
	"sync"
	"time"
)

// Clock tells the limits hook the time. Tests pass a clock they move by
// hand, so that windows of minutes are checked in microseconds.
type Clock interface{ Now() time.Time }

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// Rate is a token bucket's shape: Per tokens a second, up to Burst saved
// up. A zero Per means no limit.
type Rate struct {
	Per   float64
	Burst float64
}

// On reports whether the rate limits anything.
func (r Rate) On() bool { return r.Per > 0 }

// bucket is a token bucket. It starts full, refills continuously at
// Rate.Per and never holds more than Rate.Burst. It is not safe for
// concurrent use; its owner serializes access.
type bucket struct {
	tokens float64
	last   time.Time
}

func newBucket(r Rate, now time.Time) bucket { return bucket{tokens: r.Burst, last: now} }

// take removes n tokens if it can. If not, it removes nothing and says how
// long until n tokens will be there (n greater than the burst can never be
// taken; the wait is then for a full bucket).
func (b *bucket) take(r Rate, now time.Time, n float64) (ok bool, wait time.Duration) {
	if !r.On() {
		return true, 0
	}
	if el := now.Sub(b.last); el > 0 {
		b.tokens = min(r.Burst, b.tokens+el.Seconds()*r.Per)
		b.last = now
	}
	if b.tokens >= n {
		b.tokens -= n
		return true, 0
	}
	need := min(n, r.Burst) - b.tokens
	return false, time.Duration(need / r.Per * float64(time.Second))
}

// reserve takes n tokens now if the bucket has them (wait 0), or, if they
// will be there within maxWait, takes them on credit (the bucket goes
// negative and refills from there) and says how long the caller must wait
// before acting. If not even that, it takes nothing and returns ok false.
// n greater than the burst is never granted.
func (b *bucket) reserve(r Rate, now time.Time, n float64, maxWait time.Duration) (wait time.Duration, ok bool) {
	if !r.On() {
		return 0, true
	}
	if el := now.Sub(b.last); el > 0 {
		b.tokens = min(r.Burst, b.tokens+el.Seconds()*r.Per)
		b.last = now
	}
	if b.tokens >= n {
		b.tokens -= n
		return 0, true
	}
	if n > r.Burst {
		return 0, false
	}
	wait = time.Duration((n - b.tokens) / r.Per * float64(time.Second))
	if wait > maxWait {
		return 0, false
	}
	b.tokens -= n
	return wait, true
}

// refund gives back n tokens taken by reserve.
func (b *bucket) refund(n float64) { b.tokens += n }

// full reports whether the bucket would be full at now, i.e. forgetting it
// loses nothing.
func (b *bucket) full(r Rate, now time.Time) bool {
	return b.tokens+now.Sub(b.last).Seconds()*r.Per >= r.Burst
}

// ipKey is the unit of per-address limits: an IPv4 address, or the /64
// network of an IPv6 address (one subscriber's allocation, which an
// attacker can spread over at no cost).
type ipKey netip.Addr

func keyOf(ip netip.Addr) ipKey {
	ip = ip.Unmap()
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return ipKey(p.Addr())
	}
	return ipKey(ip)
}

// parseRemote returns the address of a "host:port" remote address.
func parseRemote(remote string) (netip.Addr, bool) {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		a, err := netip.ParseAddr(remote)
		return a.Unmap(), err == nil
	}
	return ap.Addr().Unmap(), true
}

// window counts events in a fixed window: the first event opens it, and
// it starts again with the first event after it ends. EMQX's flapping
// detection counts the same way.
type window struct {
	start time.Time
	n     int
}

// flapping counts connects per client ID and per address and reports the
// keys that exceed their threshold within the window.
type flapping struct {
	mu        sync.Mutex
	win       time.Duration
	m         map[string]*window
	lastSweep time.Time
}

func newFlapping(win time.Duration) *flapping {
	return &flapping{win: win, m: map[string]*window{}}
}

// add counts one event for key at now and returns the count within the
// current window.
func (f *flapping) add(key string, now time.Time) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sweep(now)
	w := f.m[key]
	if w == nil {
		w = &window{}
		f.m[key] = w
	}
	if w.n == 0 || now.Sub(w.start) >= f.win {
		w.start, w.n = now, 0
	}
	w.n++
	return w.n
}

// count returns the events of key in its current window.
func (f *flapping) count(key string, now time.Time) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	w := f.m[key]
	if w == nil || now.Sub(w.start) >= f.win {
		return 0
	}
	return w.n
}

// reset forgets key (after it has been banned).
func (f *flapping) reset(key string) {
	f.mu.Lock()
	delete(f.m, key)
	f.mu.Unlock()
}

// sweep drops closed windows, at most once per window length, so the map
// holds only keys seen recently.
func (f *flapping) sweep(now time.Time) {
	if now.Sub(f.lastSweep) < f.win {
		return
	}
	f.lastSweep = now
	for k, w := range f.m {
		if now.Sub(w.start) >= f.win {
			delete(f.m, k)
		}
	}
}
