package identity

import (
	"context"
	"errors"
	"hash/maphash"
	"sync"
	"time"

	"github.com/warblerim/warbler/storage"
)

// LoginRequest is a password sign-in. Username is the user ID. Device is
// the device to sign in on; a new device ID is generated if it is empty.
// TOTP or RecoveryCode is needed when the user has TOTP enabled. IP is the
// client address used for per-IP limiting ("" disables it).
type LoginRequest struct {
	App          string
	Username     string
	Password     string
	Device       string
	TOTP         string
	RecoveryCode string
	IP           string
}

// Session is the result of a sign-in or refresh: an access token for the
// MQTT CONNECT and the HTTP API, and a refresh token to get the next one.
type Session struct {
	AccessToken    string
	AccessExpires  time.Time
	RefreshToken   string
	RefreshExpires time.Time
	App            string
	User           string
	Device         string
}

// Login checks a password and, if enabled, a second factor, and opens a
// sign-in session. Errors: ErrNotFound or ErrAppDisabled for the app,
// ErrInvalidCredentials, ErrMFARequired, ErrInvalidMFA, ErrUserDisabled,
// *LockedError (errors.Is ErrLocked) or an *InvalidError for the device.
//
// Every wrong password, TOTP code or recovery code counts as a failure for
// the account and for the IP; the account's count is reset by a complete
// sign-in. A locked account is refused before its password is checked.
func (s *Service) Login(ctx context.Context, r LoginRequest) (*Session, error) {
	e, err := s.activeApp(r.App)
	if err != nil {
		return nil, err
	}
	if err := s.ips.check(r.IP, s.now()); err != nil {
		return nil, err
	}
	if r.Device != "" && !validDeviceID(r.Device) {
		return nil, invalid("device", "not a valid identifier")
	}
	fail := func(err error) (*Session, error) {
		s.ips.fail(r.IP, s.now())
		return nil, err
	}
	// An unknown user, a user without a password and a wrong password all
	// cost one argon2id computation and give the same error.
	var cred storage.Credential
	u, err := s.GetUser(ctx, r.App, r.Username)
	if err == nil {
		cred, err = s.store.GetCredential(ctx, r.App, r.Username)
	}
	if err != nil && !errors.Is(err, ErrNotFound) {
		return nil, err
	}
	if err != nil || cred.PasswordHash == "" {
		_, _ = s.hasher.verify(r.Password, dummyHash)
		return fail(ErrInvalidCredentials)
	}
	if err := accountLocked(&cred, s.now()); err != nil {
		return nil, err
	}
	pwOK, err := s.hasher.verify(r.Password, cred.PasswordHash)
	if err != nil {
		return nil, err
	}

	mfaRequired := false
	ok, err := s.secondFactorUpdate(ctx, r.App, r.Username, func(c *storage.Credential, now time.Time) (bool, error) {
		mfaRequired = false
		if !pwOK {
			return false, nil
		}
		if c.TOTPSealed == nil {
			if c.Failures == 0 && c.LockedUntil.IsZero() {
				return true, errSkipWrite // nothing to reset: skip the write
			}
			return true, nil
		}
		switch {
		case r.TOTP != "":
			secret, err := open(s.keys.totp, c.TOTPSealed, totpAAD(r.App, r.Username))
			if err != nil {
				return false, err
			}
			step, ok := matchTOTP(string(secret), r.TOTP, c.TOTPLastStep, now)
			if ok {
				c.TOTPLastStep = step
			}
			return ok, nil
		case r.RecoveryCode != "":
			return s.useRecoveryCode(c, r.App, r.Username, r.RecoveryCode), nil
		default:
			// Right password, no second factor: neither a failure nor a
			// success, so nothing is written.
			mfaRequired = true
			return false, errSkipWrite
		}
	})
	switch {
	case err != nil:
		return nil, err
	case mfaRequired:
		return nil, ErrMFARequired
	case !ok && !pwOK:
		return fail(ErrInvalidCredentials)
	case !ok:
		return fail(ErrInvalidMFA)
	}
	if u.Disabled {
		return nil, ErrUserDisabled
	}
	device, err := s.ensureDevice(ctx, r.App, r.Username, r.Device)
	if err != nil {
		return nil, err
	}
	return s.openSession(e, r.Username, device, "s"+randomString(10), s.now()), nil
}

func (s *Service) openSession(e *appEntry, user, device, sid string, now time.Time) *Session {
	at, ac := s.mint(e, user, device, sid, TypeAccess, now, s.opts.AccessTTL)
	rt, rc := s.mint(e, user, device, sid, TypeRefresh, now, s.opts.RefreshTTL)
	return &Session{
		AccessToken: at, AccessExpires: ac.ExpiresAt(),
		RefreshToken: rt, RefreshExpires: rc.ExpiresAt(),
		App: e.app.ID, User: user, Device: device,
	}
}

// stripedLocks serializes refreshes of one session, so that a refresh
// token cannot be spent twice by racing requests.
type stripedLocks struct {
	seed maphash.Seed
	mu   [64]sync.Mutex
}

func (l *stripedLocks) get(k string) *sync.Mutex {
	return &l.mu[maphash.String(l.seed, k)%uint64(len(l.mu))]
}

// Refresh spends a refresh token of app and returns a new session with the
// same session ID and device. An unknown or disabled app is ErrNotFound or
// ErrAppDisabled. Each refresh token works once: the spent one
// is revoked, and presenting a spent token again is taken as a sign of
// theft, which revokes the whole session (both the thief's and the
// owner's tokens) and calls OnRevoke.
func (s *Service) Refresh(ctx context.Context, app, refresh string) (*Session, error) {
	if _, err := s.activeApp(app); err != nil {
		return nil, err
	}
	p, err := parseToken(refresh)
	if err != nil {
		return nil, err
	}
	mu := s.refreshLocks.get(p.claims.App + "/" + p.claims.Session)
	mu.Lock()
	defer mu.Unlock()
	c, err := s.verify(refresh, TypeRefresh)
	if err == ErrTokenRevoked && p.claims.Session != "" && s.spentRefresh(&p.claims) {
		// Reuse of a spent refresh token. A plain ErrTokenRevoked (not
		// errSecretRotated) means verify checked the signature and the
		// expiry before it looked at revocations.
		if err := s.denyToken(ctx, p.claims.App, "s."+p.claims.Session, s.now().Add(s.opts.RefreshTTL)); err != nil {
			return nil, err
		}
		s.fireRevoke(RevokeEvent{App: p.claims.App, User: p.claims.User, SessionID: p.claims.Session, Reason: "refresh_reuse"})
		return nil, ErrTokenRevoked
	}
	if err != nil {
		return nil, err
	}
	if c.App != app {
		return nil, ErrInvalidToken
	}
	e, err := s.activeApp(app)
	if err != nil {
		return nil, err
	}
	if err := s.denyToken(ctx, app, c.ID, c.ExpiresAt()); err != nil {
		return nil, err
	}
	if _, err := s.ensureDevice(ctx, app, c.User, c.Device); err != nil {
		return nil, err
	}
	return s.openSession(e, c.User, c.Device, c.Session, s.now()), nil
}

// spentRefresh reports whether a signature-verified refresh token was
// refused only because its own jti was revoked by an earlier refresh,
// while its session is still open.
func (s *Service) spentRefresh(c *Claims) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	_, jti := s.denied[revKey{c.App, c.ID}]
	_, sid := s.denied[revKey{c.App, "s." + c.Session}]
	ur := s.users[userKey{c.App, c.User}]
	return jti && !sid && !ur.disabled && c.Issued >= ur.nb
}

// Logout revokes the access token and, for server-issued tokens, the whole
// sign-in session it belongs to (so its refresh token dies too), and calls
// OnRevoke.
func (s *Service) Logout(ctx context.Context, access string) (*Claims, error) {
	c, err := s.VerifyAccess(access)
	if err != nil {
		return nil, err
	}
	if err := s.denyToken(ctx, c.App, c.ID, c.ExpiresAt()); err != nil {
		return nil, err
	}
	if c.Session != "" {
		if err := s.denyToken(ctx, c.App, "s."+c.Session, s.now().Add(s.opts.RefreshTTL)); err != nil {
			return nil, err
		}
	}
	s.fireRevoke(RevokeEvent{App: c.App, User: c.User, SessionID: c.Session, TokenID: c.ID, Reason: "logout"})
	return c, nil
}
