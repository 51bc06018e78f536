// Package identity owns who is who in Warbler: apps (tenants) and their
// signing secrets, users, devices, passwords, TOTP second factors and
// recovery codes, service API keys, access and refresh tokens, and their
// revocation.
//
// A Service is built over a storage.IdentityStore and a 32-byte master key.
// Secrets that must be read back (app signing secrets, TOTP secrets) are
// sealed with AES-GCM under keys derived from the master key; secrets that
// only need checking (passwords, API keys, recovery codes) are kept as
// digests. Nothing here speaks HTTP or MQTT: package api exposes the
// service over HTTP and package hooks uses it to authenticate MQTT clients.
//
// # Tokens
//
// Access and refresh tokens are compact JWS (JWT) strings. The server signs
// its own with HS256 under the app's secret; an app may also register an
// Ed25519 or RSA public key and have its own backend mint access tokens
// (alg EdDSA or RS256). The claims are:
//
//	app  app ID
//	sub  user ID
//	dev  device ID (always present in server tokens; optional in app-minted ones)
//	exp  expiry, iat issue time (Unix seconds; both required)
//	jti  token ID, used to revoke one token
//	typ  "access" or "refresh"
//	sid  sign-in session ID, shared by the tokens of one login (server tokens)
//
// VerifyAccess is called on every MQTT CONNECT, so it does no I/O: app
// secrets, public keys and every revocation are held in memory and updated
// by this process's own writes. Running two servers over one store is not
// supported by this design; a replicated backend must also replicate
// revocations to each server's cache.
//
// # Revocation
//
// A token stops working when it expires, when its jti or sid is revoked
// (logout, refresh-token rotation), when its user is disabled or has a
// not-before time after its iat, when its app is disabled, or, for HS256
// tokens, when the app's secret is rotated. Each of these but plain expiry
// calls the OnRevoke callbacks, so the broker can disconnect live sessions.
package identity

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"runtime"
	"sync"
	"time"

	"github.com/warblerim/warbler/storage"
)

// Errors returned by the service. Callers match them with errors.Is; the
// HTTP layer maps each to a status and a stable error code.
var (
	// ErrNotFound and ErrExists are the storage errors, passed through.
	ErrNotFound = storage.ErrNotFound
	ErrExists   = storage.ErrExists

	ErrInvalidToken = errors.New("identity: invalid token")
	ErrTokenExpired = errors.New("identity: token expired")
	ErrTokenRevoked = errors.New("identity: token revoked")
	ErrAppDisabled  = errors.New("identity: app disabled")
	ErrUserDisabled = errors.New("identity: user disabled")
	ErrInvalidKey   = errors.New("identity: invalid API key")

	// ErrInvalidCredentials is returned for an unknown user, a user
	// without a password, or a wrong password, without saying which.
	ErrInvalidCredentials = errors.New("identity: invalid credentials")
	// ErrMFARequired means the password was right and the account needs a
	// TOTP code or a recovery code as well.
	ErrMFARequired = errors.New("identity: second factor required")
	// ErrInvalidMFA is a wrong, reused or expired TOTP or recovery code.
	ErrInvalidMFA    = errors.New("identity: invalid second factor")
	ErrMFAEnabled    = errors.New("identity: second factor already enabled")
	ErrMFANotEnabled = errors.New("identity: second factor not enabled")
	ErrNoEnrollment  = errors.New("identity: no pending TOTP enrollment")
	// ErrLocked is matched by every *LockedError.
	ErrLocked = errors.New("identity: too many failed attempts")
	ErrQuota  = errors.New("identity: quota exceeded")
)

// LockedError says how long to wait before the next attempt.
type LockedError struct {
	RetryAfter time.Duration
}

func (e *LockedError) Error() string {
	return fmt.Sprintf("identity: too many failed attempts; retry after %s", e.RetryAfter.Round(time.Second))
}

// Is makes errors.Is(err, ErrLocked) true.
func (e *LockedError) Is(target error) bool { return target == ErrLocked }

// InvalidError reports a request field that breaks a rule.
type InvalidError struct {
	Field  string
	Reason string
}

func (e *InvalidError) Error() string { return e.Field + ": " + e.Reason }

func invalid(field, format string, a ...any) error {
	return &InvalidError{Field: field, Reason: fmt.Sprintf(format, a...)}
}

// Defaults of Options.
const (
	DefaultAccessTTL   = time.Hour
	DefaultRefreshTTL  = 30 * 24 * time.Hour
	DefaultMaxTokenTTL = 24 * time.Hour
	DefaultLeeway      = 30 * time.Second
	DefaultIssuer      = "Warbler"
)

// Options configures a Service. Store and MasterKey are required.
type Options struct {
	Store storage.IdentityStore
	// MasterKey is 32 bytes; the keys that seal app and TOTP secrets and
	// the key of recovery-code digests are derived from it.
	MasterKey []byte
	// Now is the clock; time.Now if nil. Tests inject their own.
	Now func() time.Time
	// AccessTTL and RefreshTTL are the lifetimes of tokens issued at login.
	AccessTTL  time.Duration
	RefreshTTL time.Duration
	// MaxTokenTTL caps the lifetime (exp - iat) of every access token,
	// including those minted by an app's backend and those issued by
	// IssueToken.
	MaxTokenTTL time.Duration
	// Leeway is the clock skew allowed for iat and nbf of app-minted tokens.
	Leeway time.Duration
	// Issuer names the service in authenticator apps.
	Issuer string
	// Lockout is the failed-login policy; zero fields take defaults.
	Lockout LockoutPolicy
	// MaxConcurrentHashes caps concurrent argon2id computations, each of
	// which holds 19 MiB; runtime.NumCPU() if 0.
	MaxConcurrentHashes int
	// OnRevoke, if set, is called after every revocation; see
	// Service.OnRevoke.
	OnRevoke func(RevokeEvent)
}

// RevokeEvent describes a revocation. A non-empty KeyID names one API key
// of App (deleted or rotated). Otherwise an empty User means everyone of
// App, and a non-empty SessionID or TokenID narrows a user's revocation to
// one sign-in.
type RevokeEvent struct {
	App       string
	User      string
	SessionID string
	TokenID   string
	KeyID     string
	// Reason is one of "logout", "user_disabled", "sessions_revoked",
	// "app_disabled", "secret_rotated", "refresh_reuse", "key_deleted",
	// "key_rotated".
	Reason string
}

// Service is the identity service. It is safe for concurrent use.
type Service struct {
	store  storage.IdentityStore
	now    func() time.Time
	opts   Options
	keys   derivedKeys
	hasher *hasher
	ips    *ipLimiter

	mu      sync.RWMutex
	apps    map[string]*appEntry
	denied  map[revKey]int64 // token or session ID -> until (Unix seconds)
	users   map[userKey]userRev
	nDenied int // inserts since the last prune of denied

	refreshLocks stripedLocks
	devMu        sync.Mutex // serializes device read-modify-writes

	revokeMu sync.Mutex
	onRevoke []func(RevokeEvent)
}

type revKey struct{ app, id string }
type userKey struct{ app, user string }
type userRev struct {
	disabled bool
	nb       int64 // tokens with iat < nb are revoked
}

// New builds a service and loads apps and revocations into memory.
func New(ctx context.Context, o Options) (*Service, error) {
	if o.Store == nil {
		return nil, errors.New("identity: Options.Store is required")
	}
	if len(o.MasterKey) != 32 {
		return nil, fmt.Errorf("identity: master key must be 32 bytes, got %d", len(o.MasterKey))
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.AccessTTL <= 0 {
		o.AccessTTL = DefaultAccessTTL
	}
	if o.RefreshTTL <= 0 {
		o.RefreshTTL = DefaultRefreshTTL
	}
	if o.MaxTokenTTL <= 0 {
		o.MaxTokenTTL = DefaultMaxTokenTTL
	}
	if o.AccessTTL > o.MaxTokenTTL {
		return nil, fmt.Errorf("identity: AccessTTL %s exceeds MaxTokenTTL %s", o.AccessTTL, o.MaxTokenTTL)
	}
	if o.Leeway <= 0 {
		o.Leeway = DefaultLeeway
	}
	if o.Issuer == "" {
		o.Issuer = DefaultIssuer
	}
	if o.MaxConcurrentHashes <= 0 {
		o.MaxConcurrentHashes = runtime.NumCPU()
	}
	o.Lockout = o.Lockout.withDefaults()
	s := &Service{
		store:  o.Store,
		now:    o.Now,
		opts:   o,
		keys:   deriveKeys(o.MasterKey),
		hasher: newHasher(o.MaxConcurrentHashes),
		ips:    newIPLimiter(o.Lockout),
		apps:   map[string]*appEntry{},
		denied: map[revKey]int64{},
		users:  map[userKey]userRev{},
	}
	s.refreshLocks.seed = maphash.MakeSeed()
	if o.OnRevoke != nil {
		s.onRevoke = append(s.onRevoke, o.OnRevoke)
	}
	apps, err := o.Store.ListApps(ctx)
	if err != nil {
		return nil, fmt.Errorf("identity: load apps: %w", err)
	}
	for _, a := range apps {
		e, err := s.newAppEntry(a)
		if err != nil {
			return nil, fmt.Errorf("identity: load app %s: %w", a.ID, err)
		}
		s.apps[a.ID] = e
	}
	toks, users, err := o.Store.LoadRevocations(ctx, o.Now())
	if err != nil {
		return nil, fmt.Errorf("identity: load revocations: %w", err)
	}
	for _, t := range toks {
		s.denied[revKey{t.App, t.ID}] = t.Until.Unix()
	}
	for _, u := range users {
		s.users[userKey{u.App, u.User}] = userRev{disabled: u.Disabled, nb: unixOrZero(u.NotBefore)}
	}
	return s, nil
}

// OnRevoke registers fn to be called, synchronously and after the
// revocation is durable, for every revocation made through this service.
// fn must not block for long; the broker uses it to disconnect sessions.
func (s *Service) OnRevoke(fn func(RevokeEvent)) {
	s.revokeMu.Lock()
	s.onRevoke = append(s.onRevoke, fn)
	s.revokeMu.Unlock()
}

func (s *Service) fireRevoke(ev RevokeEvent) {
	s.revokeMu.Lock()
	fns := append([]func(RevokeEvent){}, s.onRevoke...)
	s.revokeMu.Unlock()
	for _, fn := range fns {
		fn(ev)
	}
}

// TokenTTLs returns the access and refresh token lifetimes in force.
func (s *Service) TokenTTLs() (access, refresh time.Duration) {
	return s.opts.AccessTTL, s.opts.RefreshTTL
}

func unixOrZero(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}

// denyToken records a jti or sid revocation in the store and in memory.
func (s *Service) denyToken(ctx context.Context, app, id string, until time.Time) error {
	if err := s.store.RevokeToken(ctx, storage.TokenRevocation{App: app, ID: id, Until: until}); err != nil {
		return err
	}
	now := s.now().Unix()
	s.mu.Lock()
	s.denied[revKey{app, id}] = until.Unix()
	s.nDenied++
	if s.nDenied >= 1024 {
		s.nDenied = 0
		for k, u := range s.denied {
			if u < now {
				delete(s.denied, k)
			}
		}
	}
	s.mu.Unlock()
	return nil
}

// setUserRev records a user's revocation state in the store and in memory.
func (s *Service) setUserRev(ctx context.Context, app, user string, r userRev) error {
	if !r.disabled && r.nb == 0 {
		if err := s.store.DeleteUserRevocation(ctx, app, user); err != nil {
			return err
		}
		s.mu.Lock()
		delete(s.users, userKey{app, user})
		s.mu.Unlock()
		return nil
	}
	rec := storage.UserRevocation{App: app, User: user, Disabled: r.disabled}
	if r.nb != 0 {
		rec.NotBefore = time.Unix(r.nb, 0)
	}
	if err := s.store.PutUserRevocation(ctx, rec); err != nil {
		return err
	}
	s.mu.Lock()
	s.users[userKey{app, user}] = r
	s.mu.Unlock()
	return nil
}

func (s *Service) userRevState(app, user string) userRev {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.users[userKey{app, user}]
}
