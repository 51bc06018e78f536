package identity

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage"
)

// API keys authenticate services (an app's backend) and the operator. A key
// reads
//
//	wk_<id>_<secret>
//
// where id (13 characters) names the stored record and secret (52
// characters, 256 bits) is the part that is checked. Both use the
// alphabet a-z2-7, so a key is safe in headers, URLs and MQTT passwords.
// Only the SHA-256 digest of the whole key is stored; a key of that
// entropy needs no slow hash. Digests are compared in constant time.
//
// A key belongs to one app and holds scopes:
//
//	publish  connect to MQTT as the app's service and publish (see PROTOCOL.md)
//	users    manage users and devices, issue user tokens
//	push     send push notifications
//	admin    everything above, plus the app's keys, secret and public key
//
// The admin key belongs to the reserved app "_admin", holds the "admin"
// scope and is valid for every app.
const (
	KeyPrefix = "wk_"

	ScopePublish = "publish"
	ScopeUsers   = "users"
	ScopePush    = "push"
	ScopeAdmin   = "admin"
)

// Scopes lists the valid scopes.
var Scopes = []string{ScopePublish, ScopeUsers, ScopePush, ScopeAdmin}

// KeyInfo is an API key without its secret.
type KeyInfo struct {
	ID        string
	App       string
	Name      string
	Scopes    []string
	CreatedAt time.Time
	RotatedAt time.Time
}

// IsAdmin reports whether this is the cross-app admin key.
func (k *KeyInfo) IsAdmin() bool { return k.App == AdminApp }

// Can reports whether the key may act with scope on app: the admin key on
// every app, an app key on its own app if it holds scope or "admin".
func (k *KeyInfo) Can(app, scope string) bool {
	if k.IsAdmin() {
		return true
	}
	return k.App == app && (slices.Contains(k.Scopes, scope) || slices.Contains(k.Scopes, ScopeAdmin))
}

func keyInfo(k storage.APIKey) KeyInfo {
	return KeyInfo{ID: k.ID, App: k.App, Name: k.Name, Scopes: k.Scopes, CreatedAt: k.CreatedAt, RotatedAt: k.RotatedAt}
}

func newKeySecret(id string) (plain string, digest []byte) {
	plain = KeyPrefix + id + "_" + randomString(32)
	return plain, newDigest(plain)
}

// splitKey returns the ID of a well-formed key.
func splitKey(key string) (id string, ok bool) {
	rest, ok := strings.CutPrefix(key, KeyPrefix)
	if !ok || len(key) > 128 {
		return "", false
	}
	id, secret, ok := strings.Cut(rest, "_")
	if !ok || len(id) != 13 || len(secret) != 52 {
		return "", false
	}
	for _, c := range []byte(id + secret) {
		if !(c >= 'a' && c <= 'z' || c >= '2' && c <= '7') {
			return "", false
		}
	}
	return id, true
}

func checkScopes(scopes []string) error {
	if len(scopes) == 0 {
		return invalid("scopes", "at least one of %v", Scopes)
	}
	for _, s := range scopes {
		if !slices.Contains(Scopes, s) {
			return invalid("scopes", "%q is not one of %v", s, Scopes)
		}
	}
	return nil
}

// CreateKey creates an API key for app and returns its plaintext, which is
// not kept and cannot be shown again.
func (s *Service) CreateKey(ctx context.Context, app, name string, scopes []string) (string, KeyInfo, error) {
	if app != AdminApp {
		if _, err := s.activeApp(app); err != nil {
			return "", KeyInfo{}, err
		}
	}
	if err := checkText("name", name, 64, false); err != nil {
		return "", KeyInfo{}, err
	}
	if err := checkScopes(scopes); err != nil {
		return "", KeyInfo{}, err
	}
	id := randomString(8)
	plain, digest := newKeySecret(id)
	k := storage.APIKey{ID: id, App: app, Name: name, Hash: digest, Scopes: slices.Clone(scopes), CreatedAt: s.now().UTC()}
	if err := s.store.CreateAPIKey(ctx, k); err != nil {
		return "", KeyInfo{}, err
	}
	return plain, keyInfo(k), nil
}

// ListKeys returns the keys of app, without secrets.
func (s *Service) ListKeys(ctx context.Context, app string) ([]KeyInfo, error) {
	ks, err := s.store.ListAPIKeys(ctx, app)
	if err != nil {
		return nil, err
	}
	out := make([]KeyInfo, len(ks))
	for i, k := range ks {
		out[i] = keyInfo(k)
	}
	return out, nil
}

// RotateKey gives key id of app a new secret and returns its plaintext;
// the old secret stops working at once and OnRevoke is called for the key.
// A key of another app is not found.
func (s *Service) RotateKey(ctx context.Context, app, id string) (string, KeyInfo, error) {
	plain, digest := newKeySecret(id)
	k, err := s.store.UpdateAPIKey(ctx, id, func(k *storage.APIKey) error {
		if k.App != app {
			return ErrNotFound
		}
		k.Hash = digest
		k.RotatedAt = s.now().UTC()
		return nil
	})
	if err != nil {
		return "", KeyInfo{}, err
	}
	s.fireRevoke(RevokeEvent{App: app, KeyID: id, Reason: "key_rotated"})
	return plain, keyInfo(k), nil
}

// DeleteKey revokes key id of app and calls OnRevoke for it. A key of
// another app is not found.
func (s *Service) DeleteKey(ctx context.Context, app, id string) error {
	if !protocol.ValidID(id) {
		return ErrNotFound
	}
	k, err := s.store.GetAPIKey(ctx, id)
	if err != nil {
		return err
	}
	if k.App != app {
		return ErrNotFound
	}
	if err := s.store.DeleteAPIKey(ctx, id); err != nil {
		return err
	}
	s.fireRevoke(RevokeEvent{App: app, KeyID: id, Reason: "key_deleted"})
	return nil
}

// VerifyKey checks an API key and returns its record. Keys of disabled apps
// are refused with ErrAppDisabled; malformed, unknown and wrong keys with
// ErrInvalidKey.
func (s *Service) VerifyKey(ctx context.Context, key string) (*KeyInfo, error) {
	id, ok := splitKey(key)
	if !ok {
		return nil, ErrInvalidKey
	}
	k, err := s.store.GetAPIKey(ctx, id)
	d := newDigest(key)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return nil, ErrInvalidKey
		}
		return nil, err
	}
	if subtle.ConstantTimeCompare(d, k.Hash) != 1 {
		return nil, ErrInvalidKey
	}
	if k.App != AdminApp && !s.AppActive(k.App) {
		return nil, ErrAppDisabled
	}
	ki := keyInfo(k)
	return &ki, nil
}

func newDigest(plain string) []byte {
	d := sha256.Sum256([]byte(plain))
	return d[:]
}
