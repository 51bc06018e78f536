package bridge

import (
	"context"
	"crypto/hkdf"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/warblerim/warbler/storage"
)

// Device is one push-capable installation of a recipient, as the caller's
// device registry knows it.
type Device struct {
	ID       string
	Platform string // ios, android, web, desktop, iot
	// Provider is "apns" or "fcm"; if empty it follows from Platform (ios:
	// apns; android and web: fcm; others: none).
	Provider string
	Token    string
	// TokenAt is when Token was registered. An APNs 410 answer prunes the
	// token only if it is older than Apple's timestamp; the zero time
	// counts as old.
	TokenAt time.Time
	// Topic is the APNs topic (bundle ID); the app's default if empty.
	Topic    string
	Locale   string
	Settings DeviceSettings
}

// DeviceSettings are a device's own push settings.
type DeviceSettings struct {
	// Disabled turns pushes to this device off.
	Disabled bool
	// Preview can make the app's preview mode more private for this
	// device ("sender" or "hidden"), never less.
	Preview string
	// Sound overrides the app's sound ("none" for silence).
	Sound string
}

// ProviderOf returns the provider that serves d, or "" if none does.
func (d Device) ProviderOf() string {
	if d.Provider != "" {
		return d.Provider
	}
	switch d.Platform {
	case "ios":
		return storage.ProviderAPNs
	case "android", "web":
		return storage.ProviderFCM
	}
	return ""
}

// Directory is the caller's device registry.
type Directory interface {
	// Devices returns the devices of a user; ones without a token are
	// skipped.
	Devices(ctx context.Context, app, user string) ([]Device, error)
	// PruneToken removes token from the device, if the device still has
	// that token (a device that re-registered meanwhile keeps its new one).
	PruneToken(ctx context.Context, app, user, device, token string) error
}

// Presence tells whether a device has a live connection.
type Presence interface {
	Online(app, user, device string) bool
}

// Positions reads the chat state that reconciles a notification right
// before it is sent.
type Positions interface {
	// ReadSeq is how far user has read conv, on any device.
	ReadSeq(ctx context.Context, app, user, conv string) (uint64, error)
	// DeliveredSeq is how far device has acknowledged conv.
	DeliveredSeq(ctx context.Context, app, user, device, conv string) (uint64, error)
	// Unread is the user's unread count, used as the badge.
	Unread(ctx context.Context, app, user string) (int, error)
}

// Recalls is an optional interface of Positions: a notification whose
// message was recalled after it was queued (while it waited out the
// coalescing or grace window) is dropped, so that the recalled text never
// reaches a lock screen.
type Recalls interface {
	Recalled(ctx context.Context, app, conv string, seq uint64) (bool, error)
}

// Retry is the retry policy of retryable errors.
type Retry struct {
	// Base is the first backoff (default 1 s); it doubles per attempt.
	Base time.Duration
	// Max caps one backoff (default 5 min).
	Max time.Duration
	// Attempts is the most requests made for one notification (default 8).
	Attempts int
}

// Options configure a Bridge.
type Options struct {
	// Store keeps credentials, settings, preferences and the queue.
	// Required.
	Store storage.PushStore
	// MasterKey is the server's 32-byte master key; credentials are sealed
	// under a key derived from it. Required.
	MasterKey []byte
	// Directory lists and prunes device tokens. Required.
	Directory Directory
	// Presence, if set, keeps pushes from online devices.
	Presence Presence
	// Positions, if set, reconciles with read and delivered positions and
	// provides the badge.
	Positions Positions
	// Text returns the generic, localized body of a notification that
	// stands for count messages ("New message", "3 new messages"). The
	// default is English.
	Text func(locale string, count int) string
	// Retry is the retry policy.
	Retry Retry
	// SendTimeout bounds one request to a provider (default 30 s).
	SendTimeout time.Duration
	// Defaults are the settings of apps that have none of their own.
	Defaults storage.PushSettings
	// OnFinish, if set, is called after a record reached a new state after
	// a send attempt or a reconciliation (terminal, or queued again). It
	// must not block.
	OnFinish func(storage.PushRecord)
	Logger   *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Default settings.
const (
	DefaultConcurrency = 32
	DefaultTTL         = 7 * 24 * time.Hour
	DefaultCoalesce    = 500 * time.Millisecond
	DefaultPreview     = PreviewFull
	maxClaim           = 256
)

// Preview modes.
const (
	PreviewFull   = "full"
	PreviewSender = "sender"
	PreviewHidden = "hidden"
)

// Record kinds.
const (
	KindAlert   = "alert"
	KindSilent  = "silent"
	KindPrivate = "private"
)

// Errors.
var (
	ErrNoCredentials = errors.New("bridge: the app has no credentials for this provider")
	ErrInvalid       = errors.New("bridge: invalid")
	ErrClosed        = errors.New("bridge: closed")
)

// Bridge is the push bridge. Create it with New, then Start it.
type Bridge struct {
	o       Options
	store   storage.PushStore
	sealKey []byte
	log     *slog.Logger
	m       *metrics

	mu       sync.Mutex
	queues   map[storage.PushQueueID]*queue
	clients  map[storage.PushQueueID]sender
	creds    map[storage.PushQueueID]bool // which queues have credentials; missing: ask the store
	settings map[string]storage.PushSettings
	pruned   map[string]time.Time // provider "/" token -> when this process pruned it
	started  bool
	closed   bool

	ctx    context.Context // ends at Close: dispatchers stop
	cancel context.CancelFunc
	wg     sync.WaitGroup // dispatchers and deliveries
}

// New returns a bridge; call Start to recover the queue and begin sending.
func New(o Options) (*Bridge, error) {
	if o.Store == nil || o.Directory == nil {
		return nil, errors.New("bridge: Store and Directory are required")
	}
	if len(o.MasterKey) < 32 {
		return nil, errors.New("bridge: MasterKey must have 32 bytes")
	}
	if o.Text == nil {
		o.Text = englishText
	}
	if o.Retry.Base <= 0 {
		o.Retry.Base = time.Second
	}
	if o.Retry.Max <= 0 {
		o.Retry.Max = 5 * time.Minute
	}
	if o.Retry.Attempts <= 0 {
		o.Retry.Attempts = 8
	}
	if o.SendTimeout <= 0 {
		o.SendTimeout = 30 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	key, err := hkdf.Key(sha256.New, o.MasterKey, nil, "warbler push credentials v1", 32)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Bridge{
		o: o, store: o.Store, sealKey: key, log: o.Logger, m: newMetrics(),
		queues: map[storage.PushQueueID]*queue{}, clients: map[storage.PushQueueID]sender{},
		creds: map[storage.PushQueueID]bool{}, settings: map[string]storage.PushSettings{},
		pruned: map[string]time.Time{}, ctx: ctx, cancel: cancel,
	}, nil
}

func englishText(_ string, n int) string {
	if n > 1 {
		return fmt.Sprintf("%d new messages", n)
	}
	return "New message"
}

// Start recovers records that a crash left in state "sent", loads which
// apps have credentials (and which are paused), and starts a dispatcher for
// every queue that holds notifications.
func (b *Bridge) Start(ctx context.Context) error {
	n, err := b.store.RecoverPush(ctx, b.o.Now())
	if err != nil {
		return fmt.Errorf("bridge: recover queue: %w", err)
	}
	if n > 0 {
		b.log.Warn("push: resending notifications whose outcome a crash left unknown", "count", n)
	}
	creds, err := b.store.ListPushCredentials(ctx)
	if err != nil {
		return fmt.Errorf("bridge: load credentials: %w", err)
	}
	queues, err := b.store.PushQueues(ctx)
	if err != nil {
		return fmt.Errorf("bridge: load queues: %w", err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return ErrClosed
	}
	b.started = true
	for _, c := range creds {
		id := storage.PushQueueID{App: c.App, Provider: c.Provider}
		b.creds[id] = true
		q := b.queueLocked(id)
		if c.Paused != "" {
			q.setPaused(c.Paused)
		}
	}
	for id := range queues {
		b.queueLocked(id).poke()
	}
	return nil
}

// Close stops the dispatchers, waits for the requests in flight to be
// answered (at most SendTimeout) and their outcomes recorded, and closes
// the provider clients. Records still queued stay queued for the next
// Start. It does not close the store.
func (b *Bridge) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	b.cancel()
	b.mu.Unlock()
	b.wg.Wait()
	b.mu.Lock()
	defer b.mu.Unlock()
	for id, c := range b.clients {
		c.close()
		delete(b.clients, id)
	}
	return nil
}

// queueLocked returns the queue id, creating and starting it. b.mu held.
func (b *Bridge) queueLocked(id storage.PushQueueID) *queue {
	q := b.queues[id]
	if q == nil {
		q = newQueue(b, id)
		b.queues[id] = q
		if b.started && !b.closed {
			b.wg.Add(1)
			go q.run()
		}
	}
	return q
}

// queue returns the queue id if the bridge runs, else nil.
func (b *Bridge) queue(id storage.PushQueueID) *queue {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	return b.queueLocked(id)
}

// hasCreds reports whether the app has credentials for the provider,
// asking the store the first time.
func (b *Bridge) hasCreds(ctx context.Context, id storage.PushQueueID) bool {
	b.mu.Lock()
	has, known := b.creds[id]
	b.mu.Unlock()
	if known {
		return has
	}
	_, err := b.store.GetPushCredential(ctx, id.App, id.Provider)
	if err != nil && !errors.Is(err, storage.ErrNotFound) {
		return true // unsure: enqueue; the queue pauses if there are none
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, known := b.creds[id]; !known {
		b.creds[id] = err == nil
	}
	return b.creds[id]
}

// Settings returns the app's push settings with defaults filled in.
func (b *Bridge) Settings(ctx context.Context, app string) (storage.PushSettings, error) {
	b.mu.Lock()
	s, ok := b.settings[app]
	b.mu.Unlock()
	if ok {
		return s, nil
	}
	s, err := b.store.GetPushSettings(ctx, app)
	if errors.Is(err, storage.ErrNotFound) {
		s = storage.PushSettings{App: app}
	} else if err != nil {
		return s, err
	}
	s = b.withDefaults(s)
	b.mu.Lock()
	b.settings[app] = s
	b.mu.Unlock()
	return s, nil
}

func (b *Bridge) withDefaults(s storage.PushSettings) storage.PushSettings {
	d := b.o.Defaults
	if s.Preview == "" {
		s.Preview = d.Preview
	}
	if s.Preview == "" {
		s.Preview = DefaultPreview
	}
	if s.Concurrency <= 0 {
		s.Concurrency = d.Concurrency
	}
	if s.Concurrency <= 0 {
		s.Concurrency = DefaultConcurrency
	}
	if s.RatePerSec <= 0 {
		s.RatePerSec = d.RatePerSec
	}
	if s.TTLSeconds <= 0 {
		s.TTLSeconds = d.TTLSeconds
	}
	if s.TTLSeconds <= 0 {
		s.TTLSeconds = int(DefaultTTL / time.Second)
	}
	if s.GraceMillis <= 0 {
		s.GraceMillis = d.GraceMillis
	}
	if s.CoalesceMillis == 0 {
		s.CoalesceMillis = d.CoalesceMillis
	}
	if s.CoalesceMillis == 0 {
		s.CoalesceMillis = int(DefaultCoalesce / time.Millisecond)
	}
	if s.CoalesceMillis < 0 { // explicitly none
		s.CoalesceMillis = 0
	}
	if s.Sound == "" {
		s.Sound = d.Sound
	}
	if s.Sound == "" {
		s.Sound = "default"
	}
	return s
}

// PutSettings replaces the app's push settings. Zero fields mean "the
// default"; CoalesceMillis -1 means no coalescing window. The new
// concurrency and rate apply to the app's queues at once.
func (b *Bridge) PutSettings(ctx context.Context, s storage.PushSettings) (storage.PushSettings, error) {
	switch s.Preview {
	case "", PreviewFull, PreviewSender, PreviewHidden:
	default:
		return s, fmt.Errorf("%w: preview must be full, sender or hidden", ErrInvalid)
	}
	if s.Concurrency < 0 || s.Concurrency > 1000 || s.RatePerSec < 0 || s.TTLSeconds < 0 || s.GraceMillis < 0 || s.CoalesceMillis < -1 {
		return s, fmt.Errorf("%w: concurrency must be 0..1000 and the other numbers not negative", ErrInvalid)
	}
	s.UpdatedAt = b.o.Now().UTC()
	if err := b.store.PutPushSettings(ctx, s); err != nil {
		return s, err
	}
	full := b.withDefaults(s)
	b.mu.Lock()
	b.settings[s.App] = full
	var qs []*queue
	for id, q := range b.queues {
		if id.App == s.App {
			qs = append(qs, q)
		}
	}
	b.mu.Unlock()
	for _, q := range qs {
		q.configure(full)
	}
	return full, nil
}

// Prefs returns a user's notification preferences (empty if none).
func (b *Bridge) Prefs(ctx context.Context, app, user string) (storage.PushPrefs, error) {
	p, err := b.store.GetPushPrefs(ctx, app, user)
	if errors.Is(err, storage.ErrNotFound) {
		return storage.PushPrefs{App: app, User: user}, nil
	}
	return p, err
}

// PutPrefs replaces a user's preferences (mutes, do-not-disturb, quiet
// hours, disabled). The quiet hours' time zone must be a known IANA name.
func (b *Bridge) PutPrefs(ctx context.Context, p storage.PushPrefs) (storage.PushPrefs, error) {
	if p.Quiet != nil {
		if _, _, _, err := parseQuiet(*p.Quiet); err != nil {
			return p, err
		}
	}
	return b.store.UpdatePushPrefs(ctx, p.App, p.User, func(cur *storage.PushPrefs) error {
		*cur = p
		cur.UpdatedAt = b.o.Now().UTC()
		return nil
	})
}

// Mute mutes conv for user until the given time (the zero time: until
// Unmute).
func (b *Bridge) Mute(ctx context.Context, app, user, conv string, until time.Time) error {
	_, err := b.store.UpdatePushPrefs(ctx, app, user, func(p *storage.PushPrefs) error {
		if p.Muted == nil {
			p.Muted = map[string]time.Time{}
		}
		p.Muted[conv] = until.UTC()
		p.UpdatedAt = b.o.Now().UTC()
		return nil
	})
	return err
}

// Unmute ends a mute.
func (b *Bridge) Unmute(ctx context.Context, app, user, conv string) error {
	_, err := b.store.UpdatePushPrefs(ctx, app, user, func(p *storage.PushPrefs) error {
		delete(p.Muted, conv)
		p.UpdatedAt = b.o.Now().UTC()
		return nil
	})
	return err
}

// Ledger lists an app's notifications, newest first, optionally of one
// user or one device of a user.
func (b *Bridge) Ledger(ctx context.Context, app, user, device string, limit int) ([]storage.PushRecord, error) {
	if device != "" && user == "" {
		return nil, fmt.Errorf("%w: device needs user", ErrInvalid)
	}
	return b.store.ListPush(ctx, app, user, device, limit)
}

// LedgerEntry returns one notification of an app; storage.ErrNotFound if
// there is none (or it has aged out of the ledger).
func (b *Bridge) LedgerEntry(ctx context.Context, app, id string) (storage.PushRecord, error) {
	return b.store.GetPush(ctx, app, id)
}

// QueueStatus is the state of one queue.
type QueueStatus struct {
	App, Provider string
	Paused        string
	InFlight      int
}

// Queues reports the queues of an app.
func (b *Bridge) Queues(app string) []QueueStatus {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []QueueStatus
	for id, q := range b.queues {
		if id.App == app {
			p, n := q.status()
			out = append(out, QueueStatus{App: id.App, Provider: id.Provider, Paused: p, InFlight: n})
		}
	}
	return out
}
