package storage

// Push persistence contracts: the push bridge's per-app provider
// credentials and settings, per-user notification preferences, and the
// durable push queue whose records double as the delivery ledger.
//
// One PushRecord is one notification to one device. It is created queued,
// and its State moves only along
//
//	queued -> sent -> accepted
//	                -> failed    (rejected for good, with a reason)
//	                -> queued    (retryable error: back in the queue with a later Due)
//	queued -> dropped            (no longer worth sending: read, coalesced, expired)
//
// "sent" is written before the request goes to the provider and is the
// only state in which a crash can leave a record whose fate is unknown; a
// store's RecoverPush moves such records back to queued at start.

import (
	"context"
	"time"
)

// Push providers.
const (
	ProviderAPNs = "apns"
	ProviderFCM  = "fcm"
)

// Push record states.
const (
	PushQueued   = "queued"
	PushSent     = "sent"
	PushAccepted = "accepted"
	PushFailed   = "failed"
	PushDropped  = "dropped"
)

// PushCredential is one app's credentials for one provider. The secret
// part is sealed by the bridge (AES-GCM under the server's master key)
// before it reaches the store.
type PushCredential struct {
	App      string `json:"app"`
	Provider string `json:"provider"`
	// Sealed is the nonce followed by the ciphertext of the credentials.
	Sealed []byte `json:"sealed"`
	// Info is a non-secret summary shown to operators (key ID, team ID,
	// project ID, endpoint, environment, certificate expiry).
	Info map[string]string `json:"info,omitempty"`
	// Paused is why sending with these credentials stopped (the provider
	// refused them); "" while sending. Replacing the credentials clears it.
	Paused    string    `json:"paused,omitempty"`
	PausedAt  time.Time `json:"paused_at,omitzero"`
	UpdatedAt time.Time `json:"updated_at"`
}

// PushSettings is an app's push behaviour. Zero fields take the bridge's
// defaults.
type PushSettings struct {
	App string `json:"app"`
	// Preview is what an alert shows of a message: "full" (sender and
	// text), "sender" (sender only) or "hidden" (a generic text).
	Preview string `json:"preview,omitempty"`
	// Concurrency is the most requests in flight per provider.
	Concurrency int `json:"concurrency,omitempty"`
	// RatePerSec limits requests per second per provider (0: unlimited).
	RatePerSec float64 `json:"rate_per_sec,omitempty"`
	// TTLSeconds is how long a notification may wait, in the queue and at
	// the provider, before it is pointless.
	TTLSeconds int `json:"ttl_seconds,omitempty"`
	// GraceMillis, when positive, also notifies devices that are online
	// but have not acknowledged the message within this many milliseconds.
	GraceMillis int `json:"grace_ms,omitempty"`
	// CoalesceMillis delays a notification so that a burst of messages to
	// one device in one conversation becomes a single notification.
	CoalesceMillis int `json:"coalesce_ms,omitempty"`
	// Sound is the alert sound name ("default" if empty, "none" for none).
	Sound     string    `json:"sound,omitempty"`
	UpdatedAt time.Time `json:"updated_at"`
}

// QuietHours is a daily do-not-disturb window in a time zone, for example
// 22:00 to 07:00 in Europe/Berlin. Start after End spans midnight.
type QuietHours struct {
	Start    string `json:"start"`    // "HH:MM"
	End      string `json:"end"`      // "HH:MM"
	TimeZone string `json:"timezone"` // IANA name; UTC if empty
}

// PushPrefs is one user's notification preferences.
type PushPrefs struct {
	App  string `json:"app"`
	User string `json:"user"`
	// Muted maps a conversation ID to the end of its mute; the zero time
	// mutes it until it is unmuted.
	Muted map[string]time.Time `json:"muted,omitempty"`
	// DNDUntil silences every notification until then.
	DNDUntil time.Time   `json:"dnd_until,omitzero"`
	Quiet    *QuietHours `json:"quiet_hours,omitempty"`
	// Disabled turns pushes off for the user altogether.
	Disabled  bool      `json:"disabled,omitempty"`
	UpdatedAt time.Time `json:"updated_at"`
}

// PushEvent is one step of a record's history.
type PushEvent struct {
	At      time.Time `json:"at"`
	State   string    `json:"state"`
	Attempt int       `json:"attempt,omitempty"`
	Status  int       `json:"status,omitempty"` // the provider's HTTP status
	Reason  string    `json:"reason,omitempty"`
}

// PushRecord is one notification to one device and its delivery ledger.
type PushRecord struct {
	// ID is a time-ordered UUID; it is also the apns-id of the request.
	ID       string `json:"id"`
	App      string `json:"app"`
	User     string `json:"user"`
	Device   string `json:"device"`
	Provider string `json:"provider"`
	Token    string `json:"token"`
	// TokenAt is when the device registered Token; APNs 410 answers prune
	// the token only if it is older than Apple's timestamp.
	TokenAt time.Time `json:"token_at,omitzero"`
	Topic   string    `json:"topic,omitempty"`
	Locale  string    `json:"locale,omitempty"`

	Conv  string `json:"conv,omitempty"`
	Seq   uint64 `json:"seq,omitempty"`
	MsgID string `json:"msg_id,omitempty"`
	// Count is how many messages this notification stands for (more than 1
	// after coalescing).
	Count int `json:"count,omitempty"`
	// Kind is "alert", "silent" (background sync) or "private" (content-
	// free, for end-to-end encrypted conversations).
	Kind     string            `json:"kind"`
	Title    string            `json:"title,omitempty"`
	Body     string            `json:"body,omitempty"`
	Sender   string            `json:"sender,omitempty"`
	Sound    string            `json:"sound,omitempty"`
	Quiet    bool              `json:"quiet,omitempty"` // deliver without sound or banner
	Priority int               `json:"priority,omitempty"`
	Expires  time.Time         `json:"expires,omitzero"`
	Data     map[string]string `json:"data,omitempty"`
	// CheckDelivered marks a notification for a device that was online:
	// it is dropped if the device acknowledged the message meanwhile.
	CheckDelivered bool `json:"check_delivered,omitempty"`
	// Coalesce is the key under which a later notification replaces this
	// one while it is still queued ("" for none).
	Coalesce string `json:"coalesce,omitempty"`

	State    string    `json:"state"`
	Due      time.Time `json:"due"`
	Attempts int       `json:"attempts"`
	// Reason explains a failed or dropped record, or the last retry.
	Reason string `json:"reason,omitempty"`
	// Status is the provider's last HTTP status.
	Status int `json:"status,omitempty"`
	// ProviderID is what the provider called the accepted notification:
	// the apns-id, or the FCM message name.
	ProviderID string      `json:"provider_id,omitempty"`
	CreatedAt  time.Time   `json:"created_at"`
	UpdatedAt  time.Time   `json:"updated_at"`
	Events     []PushEvent `json:"events,omitempty"`
}

// Terminal reports whether the record will not change again.
func (r *PushRecord) Terminal() bool {
	return r.State == PushAccepted || r.State == PushFailed || r.State == PushDropped
}

// PushQueueID names one queue: an app's notifications for one provider.
type PushQueueID struct {
	App      string
	Provider string
}

// PushMerge is called when a new record replaces a queued one with the same
// Coalesce key. It may change nu (fold old's count in, keep old's Due).
type PushMerge func(old PushRecord, nu *PushRecord)

// PushStore keeps the push bridge's state.
type PushStore interface {
	PutPushCredential(ctx context.Context, c PushCredential) error
	// GetPushCredential returns ErrNotFound if the app has none for provider.
	GetPushCredential(ctx context.Context, app, provider string) (PushCredential, error)
	// UpdatePushCredential changes a credential atomically; ErrNotFound if
	// there is none.
	UpdatePushCredential(ctx context.Context, app, provider string, fn func(*PushCredential) error) (PushCredential, error)
	DeletePushCredential(ctx context.Context, app, provider string) error
	ListPushCredentials(ctx context.Context) ([]PushCredential, error)

	// GetPushSettings returns ErrNotFound if the app has none.
	GetPushSettings(ctx context.Context, app string) (PushSettings, error)
	PutPushSettings(ctx context.Context, s PushSettings) error
	// GetPushPrefs returns ErrNotFound if the user has none.
	GetPushPrefs(ctx context.Context, app, user string) (PushPrefs, error)
	// UpdatePushPrefs changes prefs atomically; fn gets an empty record
	// (App and User set) if there is none.
	UpdatePushPrefs(ctx context.Context, app, user string, fn func(*PushPrefs) error) (PushPrefs, error)

	// EnqueuePush stores new queued records durably. Each record is
	// written atomically with its indexes; a large batch may be split into
	// several transactions, synced once at the end.
	// A record whose Coalesce key names a record that is still queued
	// replaces it: merge (if not nil) is called, and the old record is
	// dropped with reason "coalesced".
	EnqueuePush(ctx context.Context, recs []PushRecord, merge PushMerge) error
	// ClaimPush moves up to limit queued records of one queue whose Due is
	// not after now to state "sent", counting an attempt, and returns
	// them in Due order.
	ClaimPush(ctx context.Context, q PushQueueID, now time.Time, limit int) ([]PushRecord, error)
	// FinishPush writes a claimed record in its new state: queued again
	// (with a new Due), or terminal. A terminal record is kept as ledger
	// for the store's retention period.
	FinishPush(ctx context.Context, r PushRecord) error
	// RecoverPush moves every record left in state "sent" (by a crash)
	// back to queued, due now, and returns how many it moved.
	RecoverPush(ctx context.Context, now time.Time) (int, error)
	// PushQueues lists the queues that hold queued records, with the
	// earliest Due of each.
	PushQueues(ctx context.Context) (map[PushQueueID]time.Time, error)
	// NextPushDue returns the earliest Due of a queue; ok is false if the
	// queue is empty.
	NextPushDue(ctx context.Context, q PushQueueID) (due time.Time, ok bool, err error)
	// GetPush returns ErrNotFound if app has no record id (or it expired).
	GetPush(ctx context.Context, app, id string) (PushRecord, error)
	// ListPush returns up to limit records of app, newest first, filtered
	// by user and device when they are not empty (device needs user).
	ListPush(ctx context.Context, app, user, device string, limit int) ([]PushRecord, error)
}
