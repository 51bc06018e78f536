package api

// This file serves the ban resources and holds the HTTP API's rate limiter.
//
//	POST   /v1/bans                  admin  set a ban (replaces one of the same kind and value)
//	GET    /v1/bans                  admin  the bans in force
//	DELETE /v1/bans/{kind}/{value}   admin  lift a ban; the value may hold '/' (a CIDR range)
//
// A ban is {"kind": "clientid"|"user"|"ip", "value": ..., "reason": ...},
// with "ttl" (seconds) or "expires_at" (RFC 3339) for a temporary ban; with
// neither it lasts until lifted. A user is named "{app}:{user}"; an address
// ban takes an address or a CIDR range. Setting a ban disconnects the
// clients it covers at once. Bans set by flapping detection are listed
// with "by": "flapping" and lift themselves.

import (
	"context"
	"errors"
	"hash/maphash"
	"math"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/warblerim/warbler/hooks"
	"github.com/warblerim/warbler/identity"
	"github.com/warblerim/warbler/storage"
)

// BanManager sets, lifts and lists bans; *hooks.Limits implements it.
type BanManager interface {
	Ban(ctx context.Context, b storage.Ban) (storage.Ban, error)
	Unban(ctx context.Context, kind, value string) error
	Bans() []storage.Ban
}

// BansOptions configure a BansAPI.
type BansOptions struct {
	Bans BanManager
	// Identity checks that the caller holds the admin key.
	Identity *identity.Service
	// Now is the clock; time.Now if nil.
	Now func() time.Time
}

// BansAPI serves /v1/bans. Create it with NewBansAPI and mount it with
// Register.
type BansAPI struct {
	bans BanManager
	id   *identity.Service
	now  func() time.Time
}

// NewBansAPI returns the ban routes.
func NewBansAPI(o BansOptions) *BansAPI {
	a := &BansAPI{bans: o.Bans, id: o.Identity, now: o.Now}
	if a.now == nil {
		a.now = time.Now
	}
	return a
}

// Register adds the ban routes to mux.
func (a *BansAPI) Register(mux Mux) {
	mux.Handle("POST /v1/bans", HandlerFunc(a.create))
	mux.Handle("GET /v1/bans", HandlerFunc(a.list))
	mux.Handle("DELETE /v1/bans/{kind}/{value...}", HandlerFunc(a.remove))
}

func (a *BansAPI) admin(r *http.Request) error {
	tok := BearerToken(r)
	if tok == "" {
		return ErrUnauthorized
	}
	k, err := a.id.VerifyKey(r.Context(), tok)
	if err != nil {
		if errors.Is(err, identity.ErrInvalidKey) || errors.Is(err, identity.ErrAppDisabled) {
			return ErrUnauthorized
		}
		return err
	}
	if !k.IsAdmin() {
		return ErrForbidden
	}
	return nil
}

type banRequest struct {
	Kind      string     `json:"kind"`
	Value     string     `json:"value"`
	Reason    string     `json:"reason"`
	TTL       int64      `json:"ttl"`
	ExpiresAt *time.Time `json:"expires_at"`
}

func (a *BansAPI) create(w http.ResponseWriter, r *http.Request) error {
	if err := a.admin(r); err != nil {
		return err
	}
	var req banRequest
	if err := DecodeJSON(w, r, 16<<10, &req); err != nil {
		return err
	}
	b := storage.Ban{Kind: req.Kind, Value: req.Value, Reason: req.Reason, By: "admin"}
	switch {
	case req.TTL != 0 && req.ExpiresAt != nil:
		return Errorf(http.StatusBadRequest, "invalid", "give ttl or expires_at, not both")
	case req.TTL < 0 || req.TTL > math.MaxInt64/int64(time.Second):
		return Errorf(http.StatusBadRequest, "invalid", "ttl must be a positive number of seconds")
	case req.TTL > 0:
		b.ExpiresAt = a.now().Add(time.Duration(req.TTL) * time.Second).UTC()
	case req.ExpiresAt != nil:
		b.ExpiresAt = req.ExpiresAt.UTC()
	}
	b, err := a.bans.Ban(r.Context(), b)
	if errors.Is(err, hooks.ErrInvalidBan) {
		return Errorf(http.StatusBadRequest, "invalid", "%v", err)
	}
	if err != nil {
		return err
	}
	WriteJSON(w, http.StatusCreated, map[string]any{"ban": b})
	return nil
}

func (a *BansAPI) list(w http.ResponseWriter, r *http.Request) error {
	if err := a.admin(r); err != nil {
		return err
	}
	WriteJSON(w, http.StatusOK, map[string]any{"bans": a.bans.Bans()})
	return nil
}

func (a *BansAPI) remove(w http.ResponseWriter, r *http.Request) error {
	if err := a.admin(r); err != nil {
		return err
	}
	err := a.bans.Unban(r.Context(), r.PathValue("kind"), r.PathValue("value"))
	switch {
	case errors.Is(err, hooks.ErrInvalidBan):
		return Errorf(http.StatusBadRequest, "invalid", "%v", err)
	case errors.Is(err, storage.ErrNotFound):
		return Errorf(http.StatusNotFound, "not_found", "no such ban")
	case err != nil:
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// RateLimitOptions configure a RateLimiter.
type RateLimitOptions struct {
	// PerIP limits the requests of one client address, PerKey those that
	// carry one bearer credential (whether valid or not). A zero rate is
	// no limit.
	PerIP, PerKey hooks.Rate
	// ClientIP returns the address a request is counted under; the host of
	// r.RemoteAddr by default. Behind a reverse proxy, supply one that
	// trusts only the proxy's header.
	ClientIP func(r *http.Request) string
	// Exempt, if set, exempts addresses from the per-address limit.
	Exempt func(ip string) bool
	// Banned, if set, refuses banned addresses with 403.
	Banned func(ip string) bool
	// Now is the clock; time.Now if nil.
	Now func() time.Time
}

// RateLimiter is HTTP middleware that limits requests per client address
// and per bearer credential with token buckets. A request over a limit is
// answered 429 with a Retry-After header (whole seconds) and the JSON
// error {"error": {"code": "rate_limited", ...}}; one from a banned address
// 403 "banned". Credentials are remembered only as keyed hashes.
type RateLimiter struct {
	o       RateLimitOptions
	seed    maphash.Seed
	mu      sync.Mutex
	ips     map[string]*httpBucket
	keys    map[uint64]*httpBucket
	swept   time.Time
	limited [3]atomic.Uint64 // http_ip, http_key, http_banned
}

type httpBucket struct {
	tokens float64
	last   time.Time
}

// take removes one token if there is one, else says how long until there is.
func (b *httpBucket) take(r hooks.Rate, now time.Time) (bool, time.Duration) {
	if el := now.Sub(b.last); el > 0 {
		b.tokens = min(r.Burst, b.tokens+el.Seconds()*r.Per)
		b.last = now
	}
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	return false, time.Duration((1 - b.tokens) / r.Per * float64(time.Second))
}

// NewRateLimiter returns the middleware.
func NewRateLimiter(o RateLimitOptions) *RateLimiter {
	if o.ClientIP == nil {
		o.ClientIP = remoteHost
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &RateLimiter{o: o, seed: maphash.MakeSeed(), ips: map[string]*httpBucket{}, keys: map[uint64]*httpBucket{}}
}

// Limited returns the refused requests by reason.
func (rl *RateLimiter) Limited() map[string]uint64 {
	return map[string]uint64{"http_ip": rl.limited[0].Load(), "http_key": rl.limited[1].Load(), "http_banned": rl.limited[2].Load()}
}

// Wrap returns h behind the limiter.
func (rl *RateLimiter) Wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ip := rl.o.ClientIP(r)
		if rl.o.Banned != nil && rl.o.Banned(ip) {
			rl.limited[2].Add(1)
			WriteError(w, Errorf(http.StatusForbidden, "banned", "this address is banned"))
			return
		}
		if ok, wait, which := rl.allow(r, ip); !ok {
			rl.limited[which].Add(1)
			w.Header().Set("Retry-After", strconv.Itoa(max(1, int(math.Ceil(wait.Seconds())))))
			WriteError(w, Errorf(http.StatusTooManyRequests, "rate_limited", "too many requests; retry after %s", wait.Round(time.Millisecond)))
			return
		}
		h.ServeHTTP(w, r)
	})
}

func (rl *RateLimiter) allow(r *http.Request, ip string) (bool, time.Duration, int) {
	now := rl.o.Now()
	rl.mu.Lock()
	defer rl.mu.Unlock()
	rl.sweep(now)
	if rl.o.PerIP.On() && (rl.o.Exempt == nil || !rl.o.Exempt(ip)) {
		b := rl.ips[ip]
		if b == nil {
			b = &httpBucket{tokens: rl.o.PerIP.Burst, last: now}
			rl.ips[ip] = b
		}
		if ok, wait := b.take(rl.o.PerIP, now); !ok {
			return false, wait, 0
		}
	}
	if tok := BearerToken(r); tok != "" && rl.o.PerKey.On() {
		k := maphash.String(rl.seed, tok)
		b := rl.keys[k]
		if b == nil {
			b = &httpBucket{tokens: rl.o.PerKey.Burst, last: now}
			rl.keys[k] = b
		}
		if ok, wait := b.take(rl.o.PerKey, now); !ok {
			return false, wait, 1
		}
	}
	return true, 0, 0
}

// sweep forgets buckets that have refilled, once a minute, so the maps
// hold only recent clients.
func (rl *RateLimiter) sweep(now time.Time) {
	if now.Sub(rl.swept) < time.Minute {
		return
	}
	rl.swept = now
	for k, b := range rl.ips {
		if b.tokens+now.Sub(b.last).Seconds()*rl.o.PerIP.Per >= rl.o.PerIP.Burst {
			delete(rl.ips, k)
		}
	}
	for k, b := range rl.keys {
		if b.tokens+now.Sub(b.last).Seconds()*rl.o.PerKey.Per >= rl.o.PerKey.Burst {
			delete(rl.keys, k)
		}
	}
}
