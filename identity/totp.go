package identity

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/subtle"
	"errors"
	"image/png"
	"strings"
	"time"

	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"

	"github.com/warblerim/warbler/storage"
)

// TOTP parameters: the RFC 6238 defaults every authenticator app supports.
const (
	totpPeriod = 30
	totpDigits = otp.DigitsSix

	// RecoveryCodeCount codes are issued per set; each carries 60 random
	// bits, written as three groups of four base32 characters.
	RecoveryCodeCount = 10
)

var totpOpts = totp.ValidateOpts{Period: totpPeriod, Digits: totpDigits, Algorithm: otp.AlgorithmSHA1}

// errSkipWrite aborts a credential update that has nothing to write.
var errSkipWrite = errors.New("identity: nothing to write")

// Enrollment is a TOTP secret enrolled but not yet confirmed.
type Enrollment struct {
	Secret string // base32, for manual entry
	URI    string // otpauth:// URI
	QRPNG  []byte // PNG image of a QR code of URI
}

func totpAAD(app, user string) []byte { return []byte(app + "|" + user) }

// EnrollTOTP starts TOTP enrollment for a user: it stores a new secret,
// sealed, as pending and returns it once. It fails with ErrMFAEnabled if
// TOTP is already on. The secret takes effect only after ConfirmTOTP.
func (s *Service) EnrollTOTP(ctx context.Context, app, user string) (*Enrollment, error) {
	if _, err := s.activeApp(app); err != nil {
		return nil, err
	}
	if _, err := s.GetUser(ctx, app, user); err != nil {
		return nil, err
	}
	key, err := totp.Generate(totp.GenerateOpts{
		Issuer: s.opts.Issuer, AccountName: user + "@" + app, Period: totpPeriod,
		SecretSize: 20, Digits: totpDigits, Algorithm: otp.AlgorithmSHA1,
	})
	if err != nil {
		return nil, err
	}
	sealed, err := seal(s.keys.totp, []byte(key.Secret()), totpAAD(app, user))
	if err != nil {
		return nil, err
	}
	if _, err := s.store.UpdateCredential(ctx, app, user, func(c *storage.Credential) error {
		if c.TOTPSealed != nil {
			return ErrMFAEnabled
		}
		c.TOTPPendingSealed = sealed
		return nil
	}); err != nil {
		return nil, err
	}
	img, err := key.Image(256, 256)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		return nil, err
	}
	return &Enrollment{Secret: key.Secret(), URI: key.URL(), QRPNG: buf.Bytes()}, nil
}

// ConfirmTOTP turns the pending secret on if code is valid for it, and
// returns a new set of recovery codes, which are shown only this once.
// Wrong codes count toward the account lockout.
func (s *Service) ConfirmTOTP(ctx context.Context, app, user, code string) ([]string, error) {
	if _, err := s.activeApp(app); err != nil {
		return nil, err
	}
	codes, digests := s.newRecoveryCodes(app, user)
	ok, err := s.secondFactorUpdate(ctx, app, user, func(c *storage.Credential, now time.Time) (bool, error) {
		if c.TOTPSealed != nil {
			return false, ErrMFAEnabled
		}
		if c.TOTPPendingSealed == nil {
			return false, ErrNoEnrollment
		}
		secret, err := open(s.keys.totp, c.TOTPPendingSealed, totpAAD(app, user))
		if err != nil {
			return false, err
		}
		step, ok := matchTOTP(string(secret), code, c.TOTPLastStep, now)
		if !ok {
			return false, nil
		}
		c.TOTPSealed, c.TOTPPendingSealed = c.TOTPPendingSealed, nil
		c.TOTPLastStep = step
		c.RecoveryCodes = digests
		return true, nil
	})
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, ErrInvalidMFA
	}
	return codes, nil
}

// DisableTOTP turns TOTP off and deletes the recovery codes. It needs the
// password and a current TOTP code, so a stolen access token alone cannot
// strip the second factor.
func (s *Service) DisableTOTP(ctx context.Context, app, user, password, code string) error {
	return s.reauth(ctx, app, user, password, true, code, func(c *storage.Credential) {
		c.TOTPSealed, c.TOTPPendingSealed, c.RecoveryCodes = nil, nil, nil
	})
}

// RegenerateRecoveryCodes replaces the recovery codes after checking a
// current TOTP code. The old codes stop working.
func (s *Service) RegenerateRecoveryCodes(ctx context.Context, app, user, code string) ([]string, error) {
	codes, digests := s.newRecoveryCodes(app, user)
	err := s.reauth(ctx, app, user, "", false, code, func(c *storage.Credential) {
		c.RecoveryCodes = digests
	})
	if err != nil {
		return nil, err
	}
	return codes, nil
}

// reauth checks the password (if withPassword) and a TOTP code, counting
// failures toward the lockout, and on success applies change.
func (s *Service) reauth(ctx context.Context, app, user, password string, withPassword bool, code string, change func(*storage.Credential)) error {
	if _, err := s.activeApp(app); err != nil {
		return err
	}
	c, err := s.store.GetCredential(ctx, app, user)
	if errors.Is(err, ErrNotFound) {
		return ErrMFANotEnabled
	} else if err != nil {
		return err
	}
	if c.TOTPSealed == nil {
		return ErrMFANotEnabled
	}
	if err := accountLocked(&c, s.now()); err != nil {
		return err
	}
	pwOK := true
	if withPassword {
		hash := c.PasswordHash
		if hash == "" {
			hash = dummyHash
		}
		ok, err := s.hasher.verify(password, hash)
		pwOK = c.PasswordHash != "" && ok && err == nil
	}
	ok, err := s.secondFactorUpdate(ctx, app, user, func(c *storage.Credential, now time.Time) (bool, error) {
		if c.TOTPSealed == nil {
			return false, ErrMFANotEnabled
		}
		secret, err := open(s.keys.totp, c.TOTPSealed, totpAAD(app, user))
		if err != nil {
			return false, err
		}
		step, ok := matchTOTP(string(secret), code, c.TOTPLastStep, now)
		if !ok || !pwOK {
			return false, nil
		}
		c.TOTPLastStep = step
		change(c)
		return true, nil
	})
	if err != nil {
		return err
	}
	if !ok {
		if !pwOK {
			return ErrInvalidCredentials
		}
		return ErrInvalidMFA
	}
	return nil
}

// secondFactorUpdate runs check in a credential update with the lockout
// bookkeeping around it. A locked account is refused with a *LockedError
// without calling check. If check reports success the failure counter is
// reset, otherwise it is incremented and the lock extended; either way the
// record (with whatever check changed) is written. A non-nil error from
// check aborts the update without writing; errSkipWrite does so quietly,
// and the ok that check returned with it is passed on.
func (s *Service) secondFactorUpdate(ctx context.Context, app, user string, check func(c *storage.Credential, now time.Time) (bool, error)) (bool, error) {
	var locked error
	var ok bool
	_, err := s.store.UpdateCredential(ctx, app, user, func(c *storage.Credential) error {
		now := s.now()
		if locked = accountLocked(c, now); locked != nil {
			return errSkipWrite
		}
		var err error
		if ok, err = check(c, now); err != nil {
			return err
		}
		if ok {
			c.Failures, c.LockedUntil = 0, time.Time{}
		} else {
			s.opts.Lockout.recordFailure(c, now)
		}
		return nil
	})
	if errors.Is(err, errSkipWrite) {
		if locked != nil {
			return false, locked
		}
		return ok, nil // check asked to skip the write
	}
	return ok, err
}

// matchTOTP checks code against the time steps around now (one step of
// clock skew either way) and returns the step it matched. A step at or
// before lastStep is refused, so a code can never be used twice, and
// neither can an older one once a newer one was accepted.
func matchTOTP(secret, code string, lastStep int64, now time.Time) (int64, bool) {
	if len(code) != totpDigits.Length() {
		return 0, false
	}
	cur := now.Unix() / totpPeriod
	var matched int64 = -1
	for step := cur - 1; step <= cur+1; step++ {
		want, err := totp.GenerateCodeCustom(secret, time.Unix(step*totpPeriod, 0), totpOpts)
		if err != nil {
			return 0, false
		}
		if subtle.ConstantTimeCompare([]byte(want), []byte(code)) == 1 && matched < 0 {
			matched = step
		}
	}
	if matched < 0 || matched <= lastStep {
		return 0, false
	}
	return matched, true
}

// newRecoveryCodes returns a fresh set of codes and their digests.
func (s *Service) newRecoveryCodes(app, user string) ([]string, [][]byte) {
	codes := make([]string, RecoveryCodeCount)
	digests := make([][]byte, RecoveryCodeCount)
	for i := range codes {
		r := randomString(8)[:12] // 8 random bytes encode to 13 chars; keep 12 = 60 bits
		codes[i] = r[0:4] + "-" + r[4:8] + "-" + r[8:12]
		digests[i] = s.recoveryDigest(app, user, r)
	}
	return codes, digests
}

func (s *Service) recoveryDigest(app, user, normalized string) []byte {
	return hmacSHA256(s.keys.recovery, app, user, normalized)
}

func normalizeRecovery(code string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r == '-' || r == ' ':
			return -1
		case r >= 'A' && r <= 'Z':
			return r + ('a' - 'A')
		}
		return r
	}, code)
}

// useRecoveryCode removes the code from c if it is one of its unused codes.
func (s *Service) useRecoveryCode(c *storage.Credential, app, user, code string) bool {
	n := normalizeRecovery(code)
	if len(n) != 12 {
		return false
	}
	d := s.recoveryDigest(app, user, n)
	idx := -1
	for i, h := range c.RecoveryCodes {
		if hmac.Equal(h, d) && idx < 0 {
			idx = i
		}
	}
	if idx < 0 {
		return false
	}
	rest := make([][]byte, 0, len(c.RecoveryCodes)-1)
	rest = append(rest, c.RecoveryCodes[:idx]...)
	c.RecoveryCodes = append(rest, c.RecoveryCodes[idx+1:]...)
	return true
}
