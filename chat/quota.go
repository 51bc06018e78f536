package chat

import (
	"sync"
	"time"
)

// limiter is a token bucket per key (app/user): rate tokens per second up
// to burst. Idle full buckets are pruned so the map stays the size of the
// recently active users.
type limiter struct {
	mu          sync.Mutex
	rate, burst float64
	m           map[string]*bucket
	lastPrune   time.Time
}

type bucket struct {
	tokens float64
	at     time.Time
}

func newLimiter(rate, burst float64) *limiter {
	return &limiter{rate: rate, burst: burst, m: map[string]*bucket{}}
}

func (l *limiter) allow(key string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.lastPrune) > time.Minute {
		l.prune(now)
	}
	b, ok := l.m[key]
	if !ok {
		b = &bucket{tokens: l.burst, at: now}
		l.m[key] = b
	}
	if dt := now.Sub(b.at).Seconds(); dt > 0 {
		b.tokens = min(l.burst, b.tokens+dt*l.rate)
		b.at = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// prune drops buckets that would be full by now. Caller holds mu.
func (l *limiter) prune(now time.Time) {
	l.lastPrune = now
	for k, b := range l.m {
		if b.tokens+now.Sub(b.at).Seconds()*l.rate >= l.burst {
			delete(l.m, k)
		}
	}
}
