package identity

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage"
)

// AdminApp is the reserved app ID of the cross-app admin key. IDs that
// start with '_' are reserved for the system, for apps as for users.
const AdminApp = "_admin"

// ServiceUser is the reserved user part of a service's MQTT identity:
// username "{app}:_svc", client ID "{app}:_svc:{name}".
const ServiceUser = "_svc"

// appEntry is the in-memory form of an app: the record, its opened secret,
// its parsed public key and its compiled rules.
type appEntry struct {
	app    storage.App
	secret []byte
	pub    crypto.PublicKey
	rules  *Rules
}

func (s *Service) newAppEntry(a storage.App) (*appEntry, error) {
	secret, err := open(s.keys.appSecret, a.SecretSealed, []byte(a.ID))
	if err != nil {
		return nil, err
	}
	e := &appEntry{app: a, secret: secret}
	if a.PublicKeyPEM != "" {
		if e.pub, err = parsePublicKey(a.PublicKeyPEM); err != nil {
			return nil, err
		}
	}
	if e.rules, err = CompileRules(a.ID, a.Settings.IoTRules); err != nil {
		return nil, err
	}
	return e, nil
}

func (s *Service) cacheApp(a storage.App) error {
	e, err := s.newAppEntry(a)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.apps[a.ID] = e
	s.mu.Unlock()
	return nil
}

func (s *Service) appEntry(id string) *appEntry {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.apps[id]
}

// activeApp returns the cached app, or ErrNotFound or ErrAppDisabled.
func (s *Service) activeApp(id string) (*appEntry, error) {
	e := s.appEntry(id)
	if e == nil {
		return nil, ErrNotFound
	}
	if e.app.Disabled {
		return nil, ErrAppDisabled
	}
	return e, nil
}

// AppActive reports whether app exists and is enabled. It does no I/O.
func (s *Service) AppActive(app string) bool {
	_, err := s.activeApp(app)
	return err == nil
}

// AppRules returns the compiled IoT topic rules of app, or nil if the app
// is unknown or has none. It does no I/O; the MQTT ACL calls it.
func (s *Service) AppRules(app string) *Rules {
	if e := s.appEntry(app); e != nil && e.rules.Len() > 0 {
		return e.rules
	}
	return nil
}

// AppQuotas returns the quotas of app, for the broker to enforce.
func (s *Service) AppQuotas(app string) (storage.AppQuotas, bool) {
	if e := s.appEntry(app); e != nil {
		return e.app.Quotas, true
	}
	return storage.AppQuotas{}, false
}

func validAppID(id string) bool   { return protocol.ValidID(id) && id[0] != '_' }
func validUserID(id string) bool  { return protocol.ValidID(id) && id[0] != '_' }
func validDeviceID(s string) bool { return protocol.ValidID(s) }

// checkText accepts 1..max bytes of UTF-8 without control characters (or
// 0 bytes if empty is true).
func checkText(field, s string, max int, empty bool) error {
	if (s == "" && !empty) || len(s) > max {
		return invalid(field, "must be 1 to %d bytes", max)
	}
	if !utf8.ValidString(s) || strings.IndexFunc(s, unicode.IsControl) >= 0 {
		return invalid(field, "must be UTF-8 text without control characters")
	}
	return nil
}

func checkQuotas(q storage.AppQuotas) error {
	if q.MaxUsers < 0 || q.MaxConnections < 0 || q.MsgsPerSec < 0 {
		return invalid("quotas", "must not be negative")
	}
	return nil
}

// AppSpec describes a new app. ID is generated if empty.
type AppSpec struct {
	ID       string
	Name     string
	Quotas   storage.AppQuotas
	Settings storage.AppSettings
}

// CreateApp creates an app with a fresh signing secret.
func (s *Service) CreateApp(ctx context.Context, spec AppSpec) (storage.App, error) {
	if spec.ID == "" {
		spec.ID = "a" + randomString(6)
	}
	if !validAppID(spec.ID) {
		return storage.App{}, invalid("id", "%v; IDs starting with '_' are reserved", protocol.ErrBadID)
	}
	if spec.Name == "" {
		spec.Name = spec.ID
	}
	if err := checkText("name", spec.Name, 128, false); err != nil {
		return storage.App{}, err
	}
	if err := checkQuotas(spec.Quotas); err != nil {
		return storage.App{}, err
	}
	if err := checkSettings(spec.ID, spec.Settings); err != nil {
		return storage.App{}, err
	}
	secret := make([]byte, 32)
	_, _ = rand.Read(secret)
	sealed, err := seal(s.keys.appSecret, secret, []byte(spec.ID))
	if err != nil {
		return storage.App{}, err
	}
	now := s.now().UTC()
	a := storage.App{
		ID: spec.ID, Name: spec.Name, SecretSealed: sealed, SecretVersion: 1,
		Quotas: spec.Quotas, Settings: spec.Settings, CreatedAt: now, UpdatedAt: now,
	}
	if err := s.store.CreateApp(ctx, a); err != nil {
		return storage.App{}, err
	}
	return a, s.cacheApp(a)
}

// GetApp returns an app, disabled or not.
func (s *Service) GetApp(ctx context.Context, id string) (storage.App, error) {
	if !protocol.ValidID(id) {
		return storage.App{}, ErrNotFound
	}
	return s.store.GetApp(ctx, id)
}

// ListApps returns every app.
func (s *Service) ListApps(ctx context.Context) ([]storage.App, error) {
	return s.store.ListApps(ctx)
}

// AppPatch lists the fields to change; nil fields are kept.
type AppPatch struct {
	Name     *string
	Disabled *bool
	Quotas   *storage.AppQuotas
	Settings *storage.AppSettings
}

// UpdateApp changes an app. Disabling it revokes every token of the app.
// New IoT rules apply to MQTT clients that connect afterwards.
func (s *Service) UpdateApp(ctx context.Context, id string, p AppPatch) (storage.App, error) {
	if p.Name != nil {
		if err := checkText("name", *p.Name, 128, false); err != nil {
			return storage.App{}, err
		}
	}
	if p.Quotas != nil {
		if err := checkQuotas(*p.Quotas); err != nil {
			return storage.App{}, err
		}
	}
	if p.Settings != nil {
		if err := checkSettings(id, *p.Settings); err != nil {
			return storage.App{}, err
		}
	}
	var disabledNow bool
	a, err := s.updateApp(ctx, id, func(a *storage.App) error {
		disabledNow = false
		if p.Name != nil {
			a.Name = *p.Name
		}
		if p.Disabled != nil {
			disabledNow = *p.Disabled && !a.Disabled
			a.Disabled = *p.Disabled
		}
		if p.Quotas != nil {
			a.Quotas = *p.Quotas
		}
		if p.Settings != nil {
			a.Settings = *p.Settings
		}
		return nil
	})
	if err == nil && disabledNow {
		s.fireRevoke(RevokeEvent{App: id, Reason: "app_disabled"})
	}
	return a, err
}

func (s *Service) updateApp(ctx context.Context, id string, fn func(*storage.App) error) (storage.App, error) {
	if !protocol.ValidID(id) {
		return storage.App{}, ErrNotFound
	}
	a, err := s.store.UpdateApp(ctx, id, func(a *storage.App) error {
		if err := fn(a); err != nil {
			return err
		}
		a.UpdatedAt = s.now().UTC()
		return nil
	})
	if err != nil {
		return storage.App{}, err
	}
	return a, s.cacheApp(a)
}

// DisableApp disables an app: its tokens, keys and logins stop working and
// OnRevoke is called for the whole app.
func (s *Service) DisableApp(ctx context.Context, id string) (storage.App, error) {
	t := true
	return s.UpdateApp(ctx, id, AppPatch{Disabled: &t})
}

// RotateSecret replaces an app's signing secret. Every token the server
// signed for the app, access and refresh alike, stops working, and OnRevoke
// is called for the whole app. Tokens minted by the app's backend with its
// own key are not affected.
func (s *Service) RotateSecret(ctx context.Context, id string) (storage.App, error) {
	secret := make([]byte, 32)
	_, _ = rand.Read(secret)
	sealed, err := seal(s.keys.appSecret, secret, []byte(id))
	if err != nil {
		return storage.App{}, err
	}
	a, err := s.updateApp(ctx, id, func(a *storage.App) error {
		a.SecretSealed = sealed
		a.SecretVersion++
		return nil
	})
	if err == nil {
		s.fireRevoke(RevokeEvent{App: id, Reason: "secret_rotated"})
	}
	return a, err
}

// SetPublicKey registers (or, with an empty pemText, removes) the public
// key with which the app's backend signs user access tokens. It accepts a
// PEM "PUBLIC KEY" (PKIX) holding an Ed25519 or RSA key, or a PEM "RSA
// PUBLIC KEY" (PKCS #1). RSA keys must have 2048 to 8192 bits. Tokens
// signed with the previous key stop verifying at once; sessions already
// connected are not disconnected.
func (s *Service) SetPublicKey(ctx context.Context, id, pemText string) (storage.App, error) {
	if pemText != "" {
		if _, err := parsePublicKey(pemText); err != nil {
			return storage.App{}, err
		}
	}
	return s.updateApp(ctx, id, func(a *storage.App) error {
		a.PublicKeyPEM = pemText
		return nil
	})
}

func parsePublicKey(text string) (crypto.PublicKey, error) {
	bad := func(r string) error { return invalid("public_key", "%s", r) }
	if len(text) > 16<<10 {
		return nil, bad("too long")
	}
	block, rest := pem.Decode([]byte(text))
	if block == nil || strings.TrimSpace(string(rest)) != "" {
		return nil, bad("must be exactly one PEM block")
	}
	var pub any
	var err error
	switch block.Type {
	case "PUBLIC KEY":
		pub, err = x509.ParsePKIXPublicKey(block.Bytes)
	case "RSA PUBLIC KEY":
		pub, err = x509.ParsePKCS1PublicKey(block.Bytes)
	default:
		return nil, bad(`PEM type must be "PUBLIC KEY" or "RSA PUBLIC KEY"`)
	}
	if err != nil {
		return nil, bad("cannot parse key")
	}
	switch k := pub.(type) {
	case ed25519.PublicKey:
		return k, nil
	case *rsa.PublicKey:
		if n := k.N.BitLen(); n < 2048 || n > 8192 {
			return nil, bad("RSA keys must have 2048 to 8192 bits")
		}
		return k, nil
	}
	return nil, bad("only Ed25519 and RSA keys are supported")
}

// UserActive reports, from memory, whether app is enabled and user has no
// revocation on record: not disabled, and no not-before time (set by a
// password change or a revocation of all sessions). It is deliberately
// conservative; the broker uses it to decide whether a session restored
// from storage may keep receiving before its owner reconnects.
func (s *Service) UserActive(app, user string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	e := s.apps[app]
	if e == nil || e.app.Disabled {
		return false
	}
	_, revoked := s.users[userKey{app, user}]
	return !revoked
}

// checkSettings validates an app's settings.
func checkSettings(app string, st storage.AppSettings) error {
	if _, err := CompileRules(app, st.IoTRules); err != nil {
		return err
	}
	if st.RetentionDays < 0 || st.RetentionDays > 100*365 {
		return invalid("retention_days", "must be between 0 (forever) and 36500")
	}
	if st.RetentionMessages < 0 {
		return invalid("retention_messages", "must be 0 (all) or positive")
	}
	if st.RecallSeconds < -1 || st.RecallSeconds > 366*24*3600 {
		return invalid("recall_seconds", "must be -1 (senders may not recall), 0 (the default, 120) or up to a year")
	}
	if st.MaxUploadBytes < 0 {
		return invalid("max_upload_bytes", "must be 0 (the server's default) or positive")
	}
	if st.EventRetentionDays < 0 || st.EventRetentionDays > 400 {
		return invalid("event_retention_days", "must be between 0 (the default, 90) and 400")
	}
	return nil
}

// AppMaxUpload returns an app's attachment size limit, 0 if it sets none
// (or is unknown).
func (s *Service) AppMaxUpload(ctx context.Context, app string) int64 {
	a, err := s.GetApp(ctx, app)
	if err != nil {
		return 0
	}
	return a.Settings.MaxUploadBytes
}

// AppRecallWindow returns how long a sender may recall a message in app:
// 0 for the default, negative if senders may not.
func (s *Service) AppRecallWindow(ctx context.Context, app string) time.Duration {
	a, err := s.GetApp(ctx, app)
	if err != nil {
		return 0
	}
	if a.Settings.RecallSeconds < 0 {
		return -1
	}
	return time.Duration(a.Settings.RecallSeconds) * time.Second
}

// AppRetention returns the chat retention settings of an app (zero values
// mean no limit); an unknown app keeps everything.
func (s *Service) AppRetention(ctx context.Context, app string) (days, messages int) {
	a, err := s.GetApp(ctx, app)
	if err != nil {
		return 0, 0
	}
	return a.Settings.RetentionDays, a.Settings.RetentionMessages
}
