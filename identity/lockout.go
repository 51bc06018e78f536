package identity

import (
	"sync"
	"time"

	"github.com/warblerim/warbler/storage"
)

// LockoutPolicy slows down password and second-factor guessing. After
// Threshold consecutive failures on an account, the account refuses
// attempts for Base, then 2×Base after the next failure, 4×Base, and so on
// up to Max. The same applies per client IP with IPThreshold, so that one
// address cannot sweep many accounts. A success resets the account's
// counter; an IP's counter is forgotten after Max without failures.
//
// Account state is stored with the credential and survives restarts; IP
// state is kept in memory for at most MaxTrackedIPs addresses.
type LockoutPolicy struct {
	Threshold     int           // default 5
	IPThreshold   int           // default 20
	Base          time.Duration // default 1 minute
	Max           time.Duration // default 1 hour
	MaxTrackedIPs int           // default 100000
}

func (p LockoutPolicy) withDefaults() LockoutPolicy {
	if p.Threshold <= 0 {
		p.Threshold = 5
	}
	if p.IPThreshold <= 0 {
		p.IPThreshold = 20
	}
	if p.Base <= 0 {
		p.Base = time.Minute
	}
	if p.Max < p.Base {
		p.Max = max(time.Hour, p.Base)
	}
	if p.MaxTrackedIPs <= 0 {
		p.MaxTrackedIPs = 100000
	}
	return p
}

// delay is the lock imposed after the given number of consecutive failures.
func (p LockoutPolicy) delay(failures, threshold int) time.Duration {
	if failures < threshold {
		return 0
	}
	d := p.Base
	for i := threshold; i < failures && d < p.Max; i++ {
		d *= 2
	}
	return min(d, p.Max)
}

// accountLocked returns a *LockedError if c is locked at now.
func accountLocked(c *storage.Credential, now time.Time) error {
	if now.Before(c.LockedUntil) {
		return &LockedError{RetryAfter: c.LockedUntil.Sub(now)}
	}
	return nil
}

// recordFailure counts a failed attempt on c and sets its lock.
func (p LockoutPolicy) recordFailure(c *storage.Credential, now time.Time) {
	c.Failures++
	if d := p.delay(c.Failures, p.Threshold); d > 0 {
		c.LockedUntil = now.Add(d)
	}
}

type ipState struct {
	failures    int
	lockedUntil time.Time
	last        time.Time
}

// ipLimiter is the in-memory per-IP failure counter.
type ipLimiter struct {
	p  LockoutPolicy
	mu sync.Mutex
	m  map[string]*ipState
}

func newIPLimiter(p LockoutPolicy) *ipLimiter {
	return &ipLimiter{p: p, m: map[string]*ipState{}}
}

// check returns a *LockedError if ip is locked at now. An empty ip is
// never limited.
func (l *ipLimiter) check(ip string, now time.Time) error {
	if ip == "" {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	st := l.m[ip]
	if st != nil && now.Before(st.lockedUntil) {
		return &LockedError{RetryAfter: st.lockedUntil.Sub(now)}
	}
	return nil
}

// fail records a failure from ip.
func (l *ipLimiter) fail(ip string, now time.Time) {
	if ip == "" {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	st := l.m[ip]
	if st != nil && now.Sub(st.last) > l.p.Max {
		st.failures = 0
	}
	if st == nil {
		if len(l.m) >= l.p.MaxTrackedIPs {
			l.prune(now)
		}
		st = &ipState{}
		l.m[ip] = st
	}
	st.failures++
	st.last = now
	if d := l.p.delay(st.failures, l.p.IPThreshold); d > 0 {
		st.lockedUntil = now.Add(d)
	}
}

// prune drops idle entries, and if none are idle, an arbitrary half, so
// memory stays bounded even under a spray from many addresses.
func (l *ipLimiter) prune(now time.Time) {
	for ip, st := range l.m {
		if now.Sub(st.last) > l.p.Max && !now.Before(st.lockedUntil) {
			delete(l.m, ip)
		}
	}
	if len(l.m) < l.p.MaxTrackedIPs {
		return
	}
	n := len(l.m) / 2
	for ip := range l.m {
		if n == 0 {
			break
		}
		delete(l.m, ip)
		n--
	}
}
