package storage

import (
	"context"
	"time"
)

// This file holds the identity records (apps, users, devices, credentials,
// API keys and revocations) and the interfaces that keep them. The records
// are plain data: validation, hashing and encryption are done by package
// identity before a record reaches a store, so a store never sees a
// plaintext secret.
//
// Updates take a function instead of a whole record. The store reads the
// current record, calls fn on a copy and writes the result in one atomic
// step; if another writer got there first the store may call fn again on the
// newer record, so fn must not have side effects. An error returned by fn
// aborts the update and is returned unchanged. This shape maps onto a local
// transaction as well as onto a compare-and-set loop in a replicated store.

// App is a tenant: every user, device, key and topic belongs to one app.
type App struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	// Disabled apps accept no logins, tokens, keys or connections.
	Disabled bool `json:"disabled,omitempty"`
	// SecretSealed is the app's HS256 token-signing secret, sealed with
	// AES-GCM under the server's master key (nonce followed by ciphertext).
	SecretSealed []byte `json:"secret_sealed"`
	// SecretVersion increases on every rotation; tokens signed with an
	// older version are refused.
	SecretVersion uint32 `json:"secret_version"`
	// PublicKeyPEM is the optional Ed25519 or RSA public key with which the
	// app's own backend signs user tokens.
	PublicKeyPEM string      `json:"public_key_pem,omitempty"`
	Quotas       AppQuotas   `json:"quotas"`
	Settings     AppSettings `json:"settings"`
	CreatedAt    time.Time   `json:"created_at"`
	UpdatedAt    time.Time   `json:"updated_at"`
}

// AppQuotas limits an app. Zero means unlimited.
type AppQuotas struct {
	MaxUsers       int     `json:"max_users,omitempty"`
	MaxConnections int     `json:"max_connections,omitempty"`
	MsgsPerSec     float64 `json:"msgs_per_sec,omitempty"`
}

// AppSettings holds an app's tunable behaviour.
type AppSettings struct {
	// IoTRules grant users access to the app's plain MQTT area
	// (w/{app}/iot/...). See identity.CompileRules for the syntax.
	IoTRules []TopicRule `json:"iot_rules,omitempty"`
	// RetentionDays drops chat messages older than this many days; 0
	// keeps them forever.
	RetentionDays int `json:"retention_days,omitempty"`
	// RetentionMessages keeps at most this many of the newest messages of
	// each conversation; 0 keeps all.
	RetentionMessages int `json:"retention_messages,omitempty"`
	// RecallSeconds is how long after sending a message its sender may
	// recall it: 0 means the default (120 s), -1 that senders may not
	// (group admins and owners still may).
	RecallSeconds int `json:"recall_seconds,omitempty"`
	// MaxUploadBytes is the largest attachment a user may upload; 0 uses
	// the server's media.max_upload.
	MaxUploadBytes int64 `json:"max_upload_bytes,omitempty"`
	// EventRetentionDays is how long behaviour events are kept for
	// segment rules; 0 means the default, 90 days.
	EventRetentionDays int `json:"event_retention_days,omitempty"`
}

// TopicRule is one pattern rule in the style of mosquitto's ACL patterns,
// for example {"pattern": "w/{app}/iot/%u/#", "access": "readwrite"}.
type TopicRule struct {
	Pattern string `json:"pattern"`
	Access  string `json:"access"` // "read", "write" or "readwrite"
}

// User is an account of an app. Its ID is unique within the app.
type User struct {
	App         string            `json:"app"`
	ID          string            `json:"id"`
	DisplayName string            `json:"display_name,omitempty"`
	Tags        []string          `json:"tags,omitempty"`
	Attrs       map[string]string `json:"attrs,omitempty"`
	Disabled    bool              `json:"disabled,omitempty"`
	CreatedAt   time.Time         `json:"created_at"`
	UpdatedAt   time.Time         `json:"updated_at"`
}

// Device is one installation of a client app, owned by one user.
type Device struct {
	App       string `json:"app"`
	User      string `json:"user"`
	ID        string `json:"id"`
	Platform  string `json:"platform,omitempty"`   // ios, android, web, desktop, iot
	PushToken string `json:"push_token,omitempty"` // APNs or FCM token; never listed
	// PushTokenAt is when PushToken was last set: APNs reports a token as
	// unregistered with a time, and only an older token may be dropped.
	PushTokenAt time.Time `json:"push_token_at,omitzero"`
	// PushTopic is the APNs topic (bundle ID) of the app on this device;
	// empty means the app's default.
	PushTopic string `json:"push_topic,omitempty"`
	// Locale is the device's language (BCP 47), for notification texts.
	Locale    string    `json:"locale,omitempty"`
	LastSeen  time.Time `json:"last_seen"`
	CreatedAt time.Time `json:"created_at"`
}

// Credential is the secret side of a user: password, second factor and
// lockout state. It is kept apart from User so that listing users never
// loads a hash.
type Credential struct {
	App  string `json:"app"`
	User string `json:"user"`
	// PasswordHash is an argon2id hash in PHC string form; empty when the
	// user has no password (token-only users).
	PasswordHash string `json:"password_hash,omitempty"`
	// TOTPSealed is the confirmed TOTP secret, sealed with AES-GCM; nil when
	// MFA is off. TOTPPendingSealed is a secret enrolled but not confirmed.
	TOTPSealed        []byte `json:"totp_sealed,omitempty"`
	TOTPPendingSealed []byte `json:"totp_pending_sealed,omitempty"`
	// TOTPLastStep is the last 30-second time step accepted; a code is
	// accepted only for a later step, so no code works twice.
	TOTPLastStep int64 `json:"totp_last_step,omitempty"`
	// RecoveryCodes are keyed digests of the unused recovery codes.
	RecoveryCodes [][]byte `json:"recovery_codes,omitempty"`
	// Failures counts consecutive failed sign-ins; LockedUntil is when the
	// account accepts the next attempt.
	Failures    int       `json:"failures,omitempty"`
	LockedUntil time.Time `json:"locked_until,omitzero"`
}

// APIKey is a service or admin key. Only a digest of its secret is kept.
type APIKey struct {
	ID        string    `json:"id"`
	App       string    `json:"app"` // "_admin" for the cross-app admin key
	Name      string    `json:"name"`
	Hash      []byte    `json:"hash"`
	Scopes    []string  `json:"scopes"`
	CreatedAt time.Time `json:"created_at"`
	RotatedAt time.Time `json:"rotated_at,omitzero"`
}

// TokenRevocation denies one token ID (jti) or one sign-in session ID (sid)
// of an app until Until, after which every token it names has expired.
type TokenRevocation struct {
	App   string    `json:"app"`
	ID    string    `json:"id"`
	Until time.Time `json:"until"`
}

// UserRevocation is the revocation state of one user: every token issued
// before NotBefore is refused, and a disabled user is refused outright.
type UserRevocation struct {
	App       string    `json:"app"`
	User      string    `json:"user"`
	Disabled  bool      `json:"disabled,omitempty"`
	NotBefore time.Time `json:"not_before,omitzero"`
}

// AppStore keeps apps.
type AppStore interface {
	// CreateApp stores a new app; ErrExists if the ID is taken.
	CreateApp(ctx context.Context, a App) error
	GetApp(ctx context.Context, id string) (App, error)
	ListApps(ctx context.Context) ([]App, error)
	// UpdateApp changes an app atomically; ErrNotFound if it does not exist.
	UpdateApp(ctx context.Context, id string, fn func(*App) error) (App, error)
}

// UserStore keeps users.
type UserStore interface {
	// CreateUser stores a new user, and its credential if c is not nil, in
	// one atomic write; ErrExists if the ID is taken.
	CreateUser(ctx context.Context, u User, c *Credential) error
	GetUser(ctx context.Context, app, id string) (User, error)
	// ListUsers returns up to limit users of app with IDs greater than
	// after, in ID order.
	ListUsers(ctx context.Context, app, after string, limit int) ([]User, error)
	CountUsers(ctx context.Context, app string) (int, error)
	UpdateUser(ctx context.Context, app, id string, fn func(*User) error) (User, error)
}

// DeviceStore keeps devices.
type DeviceStore interface {
	// PutDevice creates or replaces a device.
	PutDevice(ctx context.Context, d Device) error
	GetDevice(ctx context.Context, app, user, id string) (Device, error)
	ListDevices(ctx context.Context, app, user string) ([]Device, error)
	// DeleteDevice removes a device; ErrNotFound if there is none.
	DeleteDevice(ctx context.Context, app, user, id string) error
}

// CredentialStore keeps credentials.
type CredentialStore interface {
	GetCredential(ctx context.Context, app, user string) (Credential, error)
	// UpdateCredential changes a credential atomically. If none exists, fn
	// receives an empty one with App and User set, and it is created.
	UpdateCredential(ctx context.Context, app, user string, fn func(*Credential) error) (Credential, error)
}

// APIKeyStore keeps API keys. Key IDs are unique across apps.
type APIKeyStore interface {
	CreateAPIKey(ctx context.Context, k APIKey) error
	GetAPIKey(ctx context.Context, id string) (APIKey, error)
	ListAPIKeys(ctx context.Context, app string) ([]APIKey, error)
	UpdateAPIKey(ctx context.Context, id string, fn func(*APIKey) error) (APIKey, error)
	DeleteAPIKey(ctx context.Context, id string) error
}

// RevocationStore keeps revocations, which the identity service loads into
// memory at start so that checking a token needs no I/O.
type RevocationStore interface {
	// RevokeToken records a token or session revocation. The store may
	// forget it after r.Until.
	RevokeToken(ctx context.Context, r TokenRevocation) error
	PutUserRevocation(ctx context.Context, r UserRevocation) error
	DeleteUserRevocation(ctx context.Context, app, user string) error
	// LoadRevocations returns every revocation still in force at now.
	LoadRevocations(ctx context.Context, now time.Time) ([]TokenRevocation, []UserRevocation, error)
}

// IdentityStore is everything the identity service persists.
type IdentityStore interface {
	AppStore
	UserStore
	DeviceStore
	CredentialStore
	APIKeyStore
	RevocationStore
}
