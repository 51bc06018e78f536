package webhook

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/warblerim/warbler/storage"
)

// Errors.
var (
	// ErrNotFound: no such endpoint or delivery in the app.
	ErrNotFound = errors.New("webhook: not found")
	// ErrLimit: the app has as many endpoints as it may.
	ErrLimit = errors.New("webhook: too many endpoints")
	// ErrClosed: the service is stopping.
	ErrClosed = errors.New("webhook: closed")
	// ErrPending: the delivery is still queued or being sent.
	ErrPending = errors.New("webhook: delivery not finished")
)

// InvalidError reports a bad endpoint field; its text is safe to show.
type InvalidError struct{ Msg string }

func (e *InvalidError) Error() string { return e.Msg }

// Options configure a Service. Store and MasterKey are required.
type Options struct {
	Store storage.WebhookStore
	// MasterKey is the server's master key; signing secrets are sealed
	// (AES-256-GCM) under a key derived from it.
	MasterKey []byte
	// Guard decides which addresses endpoints may reach; nil is the zero
	// Guard, which refuses private and loopback ranges.
	Guard *Guard
	// Workers bounds the requests in flight over all endpoints (16).
	Workers int
	// PerEndpoint bounds the requests in flight to one endpoint (0: up to
	// Workers, no bound of its own), so that one slow receiver cannot take
	// every worker from the others. The queue is one, in due order: a due
	// delivery whose endpoint is at the bound goes back to the queue for
	// 200 ms (or Poll if shorter), which costs a busy endpoint throughput;
	// set it where many apps share a server and fairness matters more.
	PerEndpoint int
	// Timeout bounds one request, from dialing to the end of the response
	// headers (10 s).
	Timeout time.Duration
	// MaxAttempts is how often a delivery is tried before it fails for good
	// (15, which with the default backoff spans 4 to 5½ hours).
	MaxAttempts int
	// RetryBase and RetryMax shape the backoff: the n-th retry waits
	// RetryBase*2^(n-1), at most RetryMax, jittered between half and all
	// of it (5 s, 1 h). A Retry-After header can only lengthen the wait.
	RetryBase, RetryMax time.Duration
	// DisableAfter turns off an endpoint that has failed every attempt for
	// this long (72 h); negative never does.
	DisableAfter time.Duration
	// MaxEndpoints bounds the endpoints of one app (16).
	MaxEndpoints int
	// Poll is how often the queue is checked for deliveries that became
	// due (1 s, or RetryBase if shorter); new events wake it at once.
	Poll time.Duration
	// CacheTTL is how long the endpoints of an app are cached for
	// matching events (5 s). Writes through this Service drop the cache at
	// once; the TTL bounds how long another process's writes go unseen.
	CacheTTL time.Duration
	// Buffer is how many events may wait for the enqueue goroutine (4096);
	// Publish blocks beyond it.
	Buffer int
	Logger *slog.Logger
	// Now is the clock (time.Now).
	Now func() time.Time
}

// Endpoint is an endpoint as shown to its app: everything but the secret.
type Endpoint struct {
	ID           string    `json:"id"`
	App          string    `json:"app"`
	URL          string    `json:"url"`
	Events       []string  `json:"events"`
	Description  string    `json:"description,omitempty"`
	Enabled      bool      `json:"enabled"`
	Disabled     string    `json:"disabled_reason,omitempty"`
	FailingSince time.Time `json:"failing_since,omitzero"`
	CreatedAt    time.Time `json:"created_at"`
	UpdatedAt    time.Time `json:"updated_at"`
}

func view(e storage.WebhookEndpoint) Endpoint {
	return Endpoint{ID: e.ID, App: e.App, URL: e.URL, Events: e.Events, Description: e.Description, Enabled: e.Enabled,
		Disabled: e.Disabled, FailingSince: e.FailingSince, CreatedAt: e.CreatedAt, UpdatedAt: e.UpdatedAt}
}

// EndpointSpec creates or changes an endpoint; nil fields are left alone
// (URL and Events are required on create; Enabled defaults to true).
type EndpointSpec struct {
	URL         *string   `json:"url,omitempty"`
	Events      *[]string `json:"events,omitempty"`
	Description *string   `json:"description,omitempty"`
	Enabled     *bool     `json:"enabled,omitempty"`
}

// Service is the webhook domain: endpoints, event matching, the durable
// delivery queue and its workers. It is safe for concurrent use.
type Service struct {
	o       Options
	store   storage.WebhookStore
	guard   *Guard
	sealKey []byte
	client  *http.Client
	log     *slog.Logger
	now     func() time.Time
	m       *metrics

	cacheMu sync.RWMutex
	cache   map[string]*appCache

	in      chan pending
	inMu    sync.RWMutex // held for reading by Publish while it sends on in
	closed  bool
	wake    chan struct{}
	ctx     context.Context
	cancel  context.CancelFunc
	batchWG sync.WaitGroup
	loopWG  sync.WaitGroup
	workWG  sync.WaitGroup
	sem     chan struct{}
	busyMu  sync.Mutex
	busy    map[string]int // app/endpoint -> requests in flight
	started atomic.Bool
}

type appCache struct {
	at  time.Time
	eps []storage.WebhookEndpoint
}

// pending is an event on its way to the queue, with the endpoints it goes
// to.
type pending struct {
	ev   Event
	eps  []string
	mark *storage.WebhookMark
}

// New returns a Service; Start starts its workers.
func New(o Options) (*Service, error) {
	if o.Store == nil || len(o.MasterKey) == 0 {
		return nil, errors.New("webhook: Options.Store and Options.MasterKey are required")
	}
	if o.Guard == nil {
		o.Guard = &Guard{}
	}
	if o.Workers <= 0 {
		o.Workers = 16
	}
	if o.PerEndpoint <= 0 || o.PerEndpoint > o.Workers {
		o.PerEndpoint = o.Workers
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = 15
	}
	if o.RetryBase <= 0 {
		o.RetryBase = 5 * time.Second
	}
	if o.RetryMax <= 0 {
		o.RetryMax = time.Hour
	}
	if o.RetryMax < o.RetryBase {
		o.RetryMax = o.RetryBase
	}
	if o.DisableAfter == 0 {
		o.DisableAfter = 72 * time.Hour
	}
	if o.MaxEndpoints <= 0 {
		o.MaxEndpoints = 16
	}
	if o.Poll <= 0 {
		o.Poll = min(time.Second, o.RetryBase)
	}
	if o.CacheTTL <= 0 {
		o.CacheTTL = 5 * time.Second
	}
	if o.Buffer <= 0 {
		o.Buffer = 4096
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	key, err := hkdf.Key(sha256.New, o.MasterKey, nil, "warbler webhook secrets v1", 32)
	if err != nil {
		return nil, err
	}
	if o.Guard.DialTimeout <= 0 {
		g := *o.Guard
		g.DialTimeout = o.Timeout
		o.Guard = &g
	}
	tr := &http.Transport{
		Proxy:                  nil, // a proxy would dial for us, past the guard
		DialContext:            o.Guard.DialContext,
		ForceAttemptHTTP2:      true,
		TLSHandshakeTimeout:    o.Timeout,
		ResponseHeaderTimeout:  o.Timeout,
		MaxIdleConns:           64,
		MaxIdleConnsPerHost:    4,
		IdleConnTimeout:        90 * time.Second,
		MaxResponseHeaderBytes: 16 << 10,
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Service{
		o: o, store: o.Store, guard: o.Guard, sealKey: key, log: o.Logger, now: o.Now, m: newMetrics(),
		client: &http.Client{
			Transport: tr,
			// Redirects are not followed: the target was not checked when
			// the endpoint was saved, and a receiver has no reason to move.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		cache: map[string]*appCache{},
		in:    make(chan pending, o.Buffer),
		wake:  make(chan struct{}, 1),
		ctx:   ctx, cancel: cancel,
		sem:  make(chan struct{}, o.Workers),
		busy: map[string]int{},
	}
	return s, nil
}

// Start recovers deliveries a crash left in flight and starts the enqueue
// goroutine and the delivery workers.
func (s *Service) Start(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("webhook: already started")
	}
	n, err := s.store.RecoverWebhooks(ctx, s.now())
	if err != nil {
		return fmt.Errorf("webhook: recover: %w", err)
	}
	if n > 0 {
		s.log.Info("webhook deliveries interrupted by a stop are queued again", "count", n)
	}
	s.batchWG.Add(1)
	go s.enqueueLoop()
	s.loopWG.Add(1)
	go s.dispatch()
	return nil
}

// Close stops accepting events, writes those already accepted to the
// queue and stops claiming deliveries. Requests in flight finish; at ctx's
// end they are cancelled and their deliveries put back in the queue
// untried. Queued deliveries stay queued for the next Start.
func (s *Service) Close(ctx context.Context) error {
	s.inMu.Lock()
	if s.closed {
		s.inMu.Unlock()
		return nil
	}
	s.closed = true
	close(s.in)
	s.inMu.Unlock()
	defer s.cancel()
	if !s.started.Load() {
		return nil
	}
	s.batchWG.Wait()
	s.kick()
	s.loopWG.Wait()
	done := make(chan struct{})
	go func() { s.workWG.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		s.cancel()
		<-done
	}
	return nil
}

// Sealing of secrets.

func (s *Service) gcm() cipher.AEAD {
	b, err := aes.NewCipher(s.sealKey)
	if err != nil {
		panic(err) // the key is always 32 bytes
	}
	g, err := cipher.NewGCM(b)
	if err != nil {
		panic(err)
	}
	return g
}

func (s *Service) seal(app, id, secret string) []byte {
	g := s.gcm()
	nonce := make([]byte, g.NonceSize(), g.NonceSize()+len(secret)+g.Overhead())
	_, _ = rand.Read(nonce)
	return g.Seal(nonce, nonce, []byte(secret), []byte(app+"/"+id))
}

func (s *Service) open(app, id string, sealed []byte) (string, error) {
	g := s.gcm()
	if len(sealed) < g.NonceSize()+g.Overhead() {
		return "", errors.New("webhook: sealed secret is damaged")
	}
	pt, err := g.Open(nil, sealed[:g.NonceSize()], sealed[g.NonceSize():], []byte(app+"/"+id))
	if err != nil {
		return "", errors.New("webhook: sealed secret does not open (wrong master key or tampered record)")
	}
	return string(pt), nil
}

// Endpoints.

// sealedSecrets is what Secret holds once opened: the current secret and,
// for a while after a rotation, the previous one.
type sealedSecrets struct {
	Current  string    `json:"current"`
	Previous string    `json:"previous,omitempty"`
	Until    time.Time `json:"until,omitzero"` // end of the previous secret
}

func (s *Service) sealSecrets(app, id string, v sealedSecrets) []byte {
	b, _ := json.Marshal(v)
	return s.seal(app, id, string(b))
}

func (s *Service) openSecrets(e storage.WebhookEndpoint) (sealedSecrets, error) {
	pt, err := s.open(e.App, e.ID, e.Secret)
	if err != nil {
		return sealedSecrets{}, err
	}
	var v sealedSecrets
	if err := json.Unmarshal([]byte(pt), &v); err != nil {
		return sealedSecrets{}, errors.New("webhook: sealed secret is damaged")
	}
	return v, nil
}

func (s *Service) checkSpec(ctx context.Context, spec EndpointSpec, e *storage.WebhookEndpoint) error {
	if spec.URL != nil {
		u, err := s.guard.CheckURL(ctx, *spec.URL)
		if err != nil {
			return &InvalidError{Msg: err.Error()}
		}
		e.URL = u.String()
	}
	if spec.Events != nil {
		evs, err := ParseEvents(*spec.Events)
		if err != nil {
			return &InvalidError{Msg: err.Error()}
		}
		e.Events = evs
	}
	if spec.Description != nil {
		if len(*spec.Description) > 256 {
			return &InvalidError{Msg: "description: at most 256 bytes"}
		}
		e.Description = *spec.Description
	}
	if spec.Enabled != nil {
		e.Enabled = *spec.Enabled
		if e.Enabled {
			e.Disabled, e.FailingSince = "", time.Time{}
		}
	}
	return nil
}

// CreateEndpoint adds an endpoint to app and returns it with its signing
// secret, which is shown only here and by RotateSecret.
func (s *Service) CreateEndpoint(ctx context.Context, app string, spec EndpointSpec) (Endpoint, string, error) {
	if spec.URL == nil || spec.Events == nil {
		return Endpoint{}, "", &InvalidError{Msg: "url and events are required"}
	}
	now := s.now().UTC()
	e := storage.WebhookEndpoint{ID: newID("we_", now), App: app, Enabled: true, CreatedAt: now, UpdatedAt: now}
	if err := s.checkSpec(ctx, spec, &e); err != nil {
		return Endpoint{}, "", err
	}
	have, err := s.store.ListWebhookEndpoints(ctx, app)
	if err != nil {
		return Endpoint{}, "", err
	}
	if len(have) >= s.o.MaxEndpoints {
		return Endpoint{}, "", ErrLimit
	}
	secret := NewSecret()
	e.Secret = s.sealSecrets(app, e.ID, sealedSecrets{Current: secret})
	if err := s.store.PutWebhookEndpoint(ctx, e); err != nil {
		return Endpoint{}, "", err
	}
	s.invalidate(app)
	return view(e), secret, nil
}

// GetEndpoint returns one endpoint of app.
func (s *Service) GetEndpoint(ctx context.Context, app, id string) (Endpoint, error) {
	e, err := s.store.GetWebhookEndpoint(ctx, app, id)
	if err != nil {
		return Endpoint{}, notFound(err)
	}
	return view(e), nil
}

// ListEndpoints returns app's endpoints.
func (s *Service) ListEndpoints(ctx context.Context, app string) ([]Endpoint, error) {
	es, err := s.store.ListWebhookEndpoints(ctx, app)
	if err != nil {
		return nil, err
	}
	out := make([]Endpoint, len(es))
	for i, e := range es {
		out[i] = view(e)
	}
	return out, nil
}

// UpdateEndpoint changes the fields of spec that are set. Enabling an
// endpoint clears its failure record.
func (s *Service) UpdateEndpoint(ctx context.Context, app, id string, spec EndpointSpec) (Endpoint, error) {
	// Check the URL outside the transaction: it resolves a name.
	var probe storage.WebhookEndpoint
	if err := s.checkSpec(ctx, spec, &probe); err != nil {
		return Endpoint{}, err
	}
	e, err := s.store.UpdateWebhookEndpoint(ctx, app, id, func(e *storage.WebhookEndpoint) error {
		if spec.URL != nil {
			e.URL = probe.URL
		}
		if spec.Events != nil {
			e.Events = probe.Events
		}
		if spec.Description != nil {
			e.Description = probe.Description
		}
		if spec.Enabled != nil {
			e.Enabled = *spec.Enabled
			if e.Enabled {
				e.Disabled, e.FailingSince = "", time.Time{}
			}
		}
		e.UpdatedAt = s.now().UTC()
		return nil
	})
	s.invalidate(app)
	if err != nil {
		return Endpoint{}, notFound(err)
	}
	return view(e), nil
}

// RotateSecret gives the endpoint a new signing secret and returns it.
// For grace after the rotation, deliveries are signed with both the new
// and the old secret (two v1 signatures), so that receivers can switch
// over without losing events; a grace of 0 drops the old secret at once.
func (s *Service) RotateSecret(ctx context.Context, app, id string, grace time.Duration) (string, error) {
	secret := NewSecret()
	now := s.now().UTC()
	_, err := s.store.UpdateWebhookEndpoint(ctx, app, id, func(e *storage.WebhookEndpoint) error {
		old, err := s.openSecrets(*e)
		if err != nil {
			return err
		}
		v := sealedSecrets{Current: secret}
		if grace > 0 {
			v.Previous, v.Until = old.Current, now.Add(grace)
		}
		e.Secret = s.sealSecrets(app, id, v)
		e.UpdatedAt = now
		return nil
	})
	s.invalidate(app)
	if err != nil {
		return "", notFound(err)
	}
	return secret, nil
}

// DeleteEndpoint removes an endpoint, its queued deliveries and its log.
func (s *Service) DeleteEndpoint(ctx context.Context, app, id string) error {
	err := s.store.DeleteWebhookEndpoint(ctx, app, id)
	s.invalidate(app)
	return notFound(err)
}

// Deliveries lists an endpoint's deliveries, newest first: those with IDs
// before before ("" for the newest), at most limit (default 20, at most 1000).
func (s *Service) Deliveries(ctx context.Context, app, id, before string, limit int) ([]storage.WebhookDelivery, error) {
	if _, err := s.store.GetWebhookEndpoint(ctx, app, id); err != nil {
		return nil, notFound(err)
	}
	if limit <= 0 {
		limit = 20
	}
	return s.store.ListWebhookDeliveries(ctx, app, id, before, min(limit, 1000))
}

// Delivery returns one delivery of an endpoint.
func (s *Service) Delivery(ctx context.Context, app, id, delivery string) (storage.WebhookDelivery, error) {
	d, err := s.store.GetWebhookDelivery(ctx, app, id, delivery)
	return d, notFound(err)
}

// Redeliver queues a finished delivery's event again for its endpoint
// (after an outage, or once a disabled endpoint is enabled again): a new
// delivery with the same event ID and payload. A delivery still queued or
// being sent is ErrPending.
func (s *Service) Redeliver(ctx context.Context, app, id, delivery string) (storage.WebhookDelivery, error) {
	d, err := s.store.GetWebhookDelivery(ctx, app, id, delivery)
	if err != nil {
		return storage.WebhookDelivery{}, notFound(err)
	}
	if d.State != storage.WebhookSucceeded && d.State != storage.WebhookFailed {
		return storage.WebhookDelivery{}, ErrPending
	}
	now := s.now()
	nd := storage.WebhookDelivery{ID: newID("wd_", now), App: app, Endpoint: id, EventID: d.EventID, EventType: d.EventType,
		Payload: d.Payload, State: storage.WebhookQueued, Due: now, CreatedAt: now.UTC(), UpdatedAt: now.UTC()}
	if err := s.store.EnqueueWebhooks(ctx, []storage.WebhookDelivery{nd}, nil); err != nil {
		return storage.WebhookDelivery{}, err
	}
	s.kick()
	return nd, nil
}

// Test queues a webhook.test event for one endpoint (enabled or not) and
// returns its delivery.
func (s *Service) Test(ctx context.Context, app, id string) (storage.WebhookDelivery, error) {
	if _, err := s.store.GetWebhookEndpoint(ctx, app, id); err != nil {
		return storage.WebhookDelivery{}, notFound(err)
	}
	now := s.now()
	ev := Event{ID: newID("evt_", now), Type: EventTest, App: app, Created: now.UnixMilli(), Data: json.RawMessage(`{"test":true}`)}
	ds, err := s.deliveries([]pending{{ev: ev, eps: []string{id}}}, now)
	if err != nil {
		return storage.WebhookDelivery{}, err
	}
	if err := s.store.EnqueueWebhooks(ctx, ds, nil); err != nil {
		return storage.WebhookDelivery{}, err
	}
	s.m.events.WithLabelValues(EventTest).Inc()
	s.kick()
	return ds[0], nil
}

func notFound(err error) error {
	if errors.Is(err, storage.ErrNotFound) {
		return ErrNotFound
	}
	return err
}

// The endpoint cache.

func (s *Service) invalidate(app string) {
	s.cacheMu.Lock()
	delete(s.cache, app)
	s.cacheMu.Unlock()
}

// endpoints returns app's endpoints, from the cache while it is fresh.
func (s *Service) endpoints(app string) ([]storage.WebhookEndpoint, error) {
	now := s.now()
	s.cacheMu.RLock()
	c := s.cache[app]
	s.cacheMu.RUnlock()
	if c != nil && now.Sub(c.at) < s.o.CacheTTL {
		return c.eps, nil
	}
	eps, err := s.store.ListWebhookEndpoints(context.Background(), app)
	if err != nil {
		return nil, err
	}
	s.cacheMu.Lock()
	s.cache[app] = &appCache{at: now, eps: eps}
	s.cacheMu.Unlock()
	return eps, nil
}

// endpoint returns one endpoint, from the cache while it is fresh.
func (s *Service) endpoint(app, id string) (storage.WebhookEndpoint, error) {
	eps, err := s.endpoints(app)
	if err != nil {
		return storage.WebhookEndpoint{}, err
	}
	for _, e := range eps {
		if e.ID == id {
			return e, nil
		}
	}
	return storage.WebhookEndpoint{}, ErrNotFound
}

// Publishing.

// Publish sends an event of typ with data (marshalled to JSON) to every
// enabled endpoint of app subscribed to typ. It returns once the event is
// handed to the enqueue goroutine, which writes it to the durable queue in
// batches; it blocks while that goroutine is Buffer events behind, and
// drops the event once Close has begun. An app with no matching endpoint
// costs one cache lookup.
func (s *Service) Publish(app, typ string, data any) {
	s.publish(app, typ, data, "", time.Time{}, nil)
}

// PublishLogged publishes the event of a conversation's log entry: its ID
// is derived from the entry (LogEventID), so that an event published
// again by CatchUp after a crash carries the same ID, and the queue
// records that the conversation's events are queued up to mark.Seq.
func (s *Service) PublishLogged(app, typ string, data any, id string, at time.Time, mark storage.WebhookMark) {
	s.publish(app, typ, data, id, at, &mark)
}

// LogEventID is the event ID of a log entry's event: the same for the
// same app, message ID and type, on every process and every start.
func LogEventID(app, msgID, typ string) string {
	h := sha256.Sum256([]byte(app + "\x00" + msgID + "\x00" + typ))
	return "evt_" + hex.EncodeToString(h[:16])
}

func (s *Service) publish(app, typ string, data any, id string, at time.Time, mark *storage.WebhookMark) {
	eps, err := s.endpoints(app)
	if err != nil {
		s.m.enqueueErr.Inc()
		s.log.Error("webhook: cannot read endpoints; event lost", "app", app, "type", typ, "error", err)
		return
	}
	var to []string
	for _, e := range eps {
		if e.Enabled && Matches(e.Events, typ) {
			to = append(to, e.ID)
		}
	}
	if len(to) == 0 {
		return
	}
	raw, err := json.Marshal(data)
	if err != nil {
		s.m.enqueueErr.Inc()
		s.log.Error("webhook: cannot encode event; event lost", "app", app, "type", typ, "error", err)
		return
	}
	now := s.now()
	if id == "" {
		id = newID("evt_", now)
	}
	if at.IsZero() {
		at = now
	}
	p := pending{ev: Event{ID: id, Type: typ, App: app, Created: at.UnixMilli(), Data: raw}, eps: to, mark: mark}
	s.inMu.RLock()
	defer s.inMu.RUnlock()
	if s.closed {
		s.m.enqueueErr.Inc()
		s.log.Warn("webhook: event after close; event lost", "app", app, "type", typ)
		return
	}
	s.in <- p
}

// Logged is one log entry's event for CatchUp.
type Logged struct {
	Type, ID string
	At       time.Time
	Data     any
}

// CatchUp queues, at once and durably, the events of log entries of one
// conversation that were stored but never queued (a crash between the
// two), for the endpoints subscribed now that existed when the entry was
// stored, and records mark. Events carry their LogEventID, so an event
// that did reach the queue before the crash is delivered again with the
// same ID (receivers dedupe).
func (s *Service) CatchUp(ctx context.Context, app string, evs []Logged, mark storage.WebhookMark) (int, error) {
	eps, err := s.endpoints(app)
	if err != nil {
		return 0, err
	}
	var batch []pending
	for _, ev := range evs {
		var to []string
		for _, e := range eps {
			if e.Enabled && Matches(e.Events, ev.Type) && !ev.At.Before(e.CreatedAt) {
				to = append(to, e.ID)
			}
		}
		if len(to) == 0 {
			continue
		}
		raw, err := json.Marshal(ev.Data)
		if err != nil {
			return 0, err
		}
		batch = append(batch, pending{ev: Event{ID: ev.ID, Type: ev.Type, App: app, Created: ev.At.UnixMilli(), Data: raw}, eps: to})
	}
	ds, err := s.deliveries(batch, s.now())
	if err != nil {
		return 0, err
	}
	if err := s.store.EnqueueWebhooks(ctx, ds, []storage.WebhookMark{mark}); err != nil {
		return 0, err
	}
	for _, p := range batch {
		s.m.events.WithLabelValues(p.ev.Type).Inc()
	}
	if len(ds) > 0 {
		s.kick()
	}
	return len(batch), nil
}

// Subscribed reports whether app has an enabled endpoint subscribed to
// one of types, and since when the earliest of them exists.
func (s *Service) Subscribed(app string, types ...string) (time.Time, bool) {
	eps, err := s.endpoints(app)
	if err != nil {
		return time.Time{}, false
	}
	var since time.Time
	ok := false
	for _, e := range eps {
		for _, t := range types {
			if e.Enabled && Matches(e.Events, t) {
				if !ok || e.CreatedAt.Before(since) {
					since = e.CreatedAt
				}
				ok = true
			}
		}
	}
	return since, ok
}

// Marks returns the recorded marks of app's conversations.
func (s *Service) Marks(ctx context.Context, app string) (map[string]uint64, error) {
	return s.store.WebhookMarks(ctx, app)
}

// enqueueLoop writes published events to the queue, as many as are
// waiting in one synced write.
func (s *Service) enqueueLoop() {
	defer s.batchWG.Done()
	var batch []pending
	for p := range s.in {
		batch = append(batch[:0], p)
	more:
		for len(batch) < 256 {
			select {
			case q, ok := <-s.in:
				if !ok {
					break more
				}
				batch = append(batch, q)
			default:
				break more
			}
		}
		s.write(batch)
	}
}

func (s *Service) write(batch []pending) {
	now := s.now()
	ds, err := s.deliveries(batch, now)
	var marks []storage.WebhookMark
	for _, p := range batch {
		if p.mark != nil {
			marks = append(marks, *p.mark) // the store keeps the highest
		}
	}
	if err == nil {
		for attempt := 0; ; attempt++ {
			err = s.store.EnqueueWebhooks(context.Background(), ds, marks)
			if err == nil || attempt == 2 {
				break
			}
			time.Sleep(time.Duration(attempt+1) * 100 * time.Millisecond)
		}
	}
	if err != nil {
		s.m.enqueueErr.Add(float64(len(batch)))
		s.log.Error("webhook: cannot queue events; events lost", "events", len(batch), "error", err)
		return
	}
	for _, p := range batch {
		s.m.events.WithLabelValues(p.ev.Type).Inc()
	}
	s.kick()
}

func (s *Service) deliveries(batch []pending, now time.Time) ([]storage.WebhookDelivery, error) {
	var ds []storage.WebhookDelivery
	for _, p := range batch {
		body, err := json.Marshal(p.ev)
		if err != nil {
			return nil, err
		}
		for _, ep := range p.eps {
			ds = append(ds, storage.WebhookDelivery{
				ID: newID("wd_", now), App: p.ev.App, Endpoint: ep, EventID: p.ev.ID, EventType: p.ev.Type,
				Payload: body, State: storage.WebhookQueued, Due: now, CreatedAt: now.UTC(), UpdatedAt: now.UTC(),
			})
		}
	}
	return ds, nil
}

// kick wakes the dispatcher.
func (s *Service) kick() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Delivering.

// dispatch claims due deliveries whenever a worker is free, until Close.
func (s *Service) dispatch() {
	defer s.loopWG.Done()
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		s.inMu.RLock()
		closed := s.closed
		s.inMu.RUnlock()
		if closed {
			return
		}
		free := s.o.Workers - len(s.sem)
		full := false
		if free > 0 {
			ds, err := s.store.ClaimWebhooks(s.ctx, s.now(), free)
			if err != nil && s.ctx.Err() == nil {
				s.log.Error("webhook: cannot claim deliveries", "error", err)
			}
			for _, d := range ds {
				k := d.App + "/" + d.Endpoint
				s.busyMu.Lock()
				ok := s.busy[k] < s.o.PerEndpoint
				if ok {
					s.busy[k]++
				}
				s.busyMu.Unlock()
				if !ok {
					// Back in the queue untried, behind what is due now.
					s.requeue(d, s.now().Add(min(s.o.Poll, 200*time.Millisecond)), "")
					continue
				}
				s.sem <- struct{}{}
				s.workWG.Add(1)
				go func() {
					defer func() {
						s.busyMu.Lock()
						if s.busy[k]--; s.busy[k] == 0 {
							delete(s.busy, k)
						}
						s.busyMu.Unlock()
						<-s.sem
						s.workWG.Done()
						s.kick()
					}()
					s.attempt(d)
				}()
			}
			full = len(ds) == free
		}
		if full {
			continue // there may be more due at once
		}
		if !t.Stop() {
			select {
			case <-t.C:
			default:
			}
		}
		t.Reset(s.o.Poll)
		select {
		case <-s.wake:
		case <-t.C:
		case <-s.ctx.Done():
			return
		}
	}
}

// maxResponse bounds what is read of a receiver's answer; the log keeps
// the first errExcerpt bytes of a failure's body.
const (
	maxResponse = 64 << 10
	errExcerpt  = 200
)

// attempt makes one request for d and records the outcome.
func (s *Service) attempt(d storage.WebhookDelivery) {
	start := s.now()
	ep, err := s.endpoint(d.App, d.Endpoint)
	if errors.Is(err, ErrNotFound) {
		// Refresh once: the cache may predate the endpoint.
		s.invalidate(d.App)
		ep, err = s.endpoint(d.App, d.Endpoint)
	}
	var giveUp string
	switch {
	case errors.Is(err, ErrNotFound):
		giveUp = "endpoint deleted"
	case err != nil:
		s.requeue(d, start, "cannot read the endpoint: "+err.Error())
		return
	case !ep.Enabled && d.EventType != EventTest:
		giveUp = "endpoint disabled"
	}
	if giveUp != "" {
		d.State, d.UpdatedAt = storage.WebhookFailed, start.UTC()
		d.Attempts = append(d.Attempts, storage.WebhookAttempt{At: start.UTC(), Error: giveUp})
		s.finish(d)
		s.m.attempts.WithLabelValues("dropped").Inc()
		return
	}
	secrets, err := s.openSecrets(ep)
	if err != nil {
		s.log.Error("webhook: endpoint secret", "app", d.App, "endpoint", d.Endpoint, "error", err)
		s.fail(d, ep, start, 0, "cannot open the endpoint's signing secret", 0)
		return
	}
	keys := []string{secrets.Current}
	if secrets.Previous != "" && start.Before(secrets.Until) {
		keys = append(keys, secrets.Previous)
	}

	ctx, cancel := context.WithTimeout(s.ctx, s.o.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, ep.URL, bytes.NewReader(d.Payload))
	if err != nil {
		s.fail(d, ep, start, 0, "bad request: "+err.Error(), 0)
		return
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "Warbler-Webhooks/1")
	req.Header.Set(HeaderEventID, d.EventID)
	req.Header.Set(HeaderEventType, d.EventType)
	req.Header.Set(HeaderDelivery, d.ID)
	req.Header.Set(HeaderSignature, Sign(start, d.Payload, keys...))
	resp, err := s.client.Do(req)
	latency := s.now().Sub(start)
	s.m.latency.Observe(latency.Seconds())
	if err != nil {
		if s.ctx.Err() != nil {
			// Stopping: this attempt does not count.
			s.requeue(d, start, "")
			return
		}
		s.fail(d, ep, start, 0, requestError(err), latency)
		return
	}
	excerpt, _ := io.ReadAll(io.LimitReader(resp.Body, errExcerpt))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxResponse))
	_ = resp.Body.Close()
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		d.Tries++
		d.Attempts = append(d.Attempts, storage.WebhookAttempt{At: start.UTC(), Status: resp.StatusCode, LatencyMS: latency.Milliseconds()})
		d.State, d.UpdatedAt = storage.WebhookSucceeded, s.now().UTC()
		s.finish(d)
		s.m.attempts.WithLabelValues("success").Inc()
		if !ep.FailingSince.IsZero() {
			s.markEndpoint(ep.App, ep.ID, func(e *storage.WebhookEndpoint) bool {
				if e.FailingSince.IsZero() {
					return false
				}
				e.FailingSince = time.Time{}
				return true
			})
		}
		return
	}
	msg := "HTTP " + strconv.Itoa(resp.StatusCode)
	if resp.StatusCode >= 300 && resp.StatusCode < 400 {
		msg += " (redirects are not followed)"
	} else if len(excerpt) > 0 {
		msg += ": " + sanitize(excerpt)
	}
	s.fail(d, ep, start, resp.StatusCode, msg, latency, retryAfter(resp)...)
}

// fail records a failed attempt and queues the delivery again, or fails
// it for good once its attempts are used up.
func (s *Service) fail(d storage.WebhookDelivery, ep storage.WebhookEndpoint, start time.Time, status int, msg string, latency time.Duration, after ...time.Duration) {
	d.Tries++
	d.Attempts = append(d.Attempts, storage.WebhookAttempt{At: start.UTC(), Status: status, LatencyMS: latency.Milliseconds(), Error: msg})
	now := s.now()
	d.UpdatedAt = now.UTC()
	if d.Tries >= s.o.MaxAttempts {
		d.State = storage.WebhookFailed
		s.m.attempts.WithLabelValues("failed").Inc()
	} else {
		wait := s.backoff(d.Tries)
		if len(after) > 0 && after[0] > wait {
			wait = min(after[0], s.o.RetryMax)
		}
		d.State, d.Due = storage.WebhookQueued, now.Add(wait)
		s.m.attempts.WithLabelValues("retry").Inc()
	}
	s.finish(d)
	if d.EventType == EventTest {
		return // a test says nothing about the endpoint's health
	}
	s.markEndpoint(ep.App, ep.ID, func(e *storage.WebhookEndpoint) bool {
		if e.FailingSince.IsZero() {
			e.FailingSince = start.UTC()
			return true
		}
		if s.o.DisableAfter > 0 && e.Enabled && now.Sub(e.FailingSince) >= s.o.DisableAfter {
			e.Enabled = false
			e.Disabled = fmt.Sprintf("every delivery failed since %s (last: %s)", e.FailingSince.Format(time.RFC3339), msg)
			s.m.disabled.Inc()
			s.log.Warn("webhook endpoint disabled after failing too long", "app", e.App, "endpoint", e.ID, "since", e.FailingSince)
			return true
		}
		return false
	})
}

// markEndpoint updates the endpoint's health if the cached view says it
// changes (fn reports whether it changed anything), so that a steady state
// costs no write.
func (s *Service) markEndpoint(app, id string, fn func(*storage.WebhookEndpoint) bool) {
	cached, err := s.endpoint(app, id)
	if err != nil || !fn(&cached) {
		return
	}
	_, err = s.store.UpdateWebhookEndpoint(context.Background(), app, id, func(e *storage.WebhookEndpoint) error {
		if !fn(e) {
			return errUnchanged
		}
		e.UpdatedAt = s.now().UTC()
		return nil
	})
	if err != nil && !errors.Is(err, errUnchanged) && !errors.Is(err, storage.ErrNotFound) {
		s.log.Error("webhook: cannot record endpoint health", "app", app, "endpoint", id, "error", err)
	}
	s.invalidate(app)
}

var errUnchanged = errors.New("unchanged")

// requeue puts d back, due at due, without counting an attempt (the
// service is stopping, the endpoint is at its bound, or the endpoint could
// not be read: then with a warning, and RetryBase later).
func (s *Service) requeue(d storage.WebhookDelivery, due time.Time, why string) {
	d.State, d.UpdatedAt, d.Due = storage.WebhookQueued, s.now().UTC(), due
	if why != "" {
		d.Due = due.Add(s.o.RetryBase)
		s.log.Warn("webhook: delivery postponed", "app", d.App, "endpoint", d.Endpoint, "delivery", d.ID, "reason", why)
	}
	s.finish(d)
}

func (s *Service) finish(d storage.WebhookDelivery) {
	if err := s.store.FinishWebhook(context.Background(), d); err != nil {
		// The record stays "sending" and is queued again at the next start.
		s.log.Error("webhook: cannot record delivery outcome", "app", d.App, "delivery", d.ID, "error", err)
	}
}

// backoff is the wait before retry n (1-based): RetryBase*2^(n-1), at
// most RetryMax, jittered to between half and all of it.
func (s *Service) backoff(n int) time.Duration {
	d := s.o.RetryMax
	if n-1 < 40 {
		if e := s.o.RetryBase << (n - 1); e > 0 && e < d {
			d = e
		}
	}
	return d/2 + mrand.N(d/2+1)
}

// retryAfter reads a Retry-After header in seconds.
func retryAfter(resp *http.Response) []time.Duration {
	if resp.StatusCode != http.StatusTooManyRequests && resp.StatusCode != http.StatusServiceUnavailable {
		return nil
	}
	n, err := strconv.Atoi(resp.Header.Get("Retry-After"))
	if err != nil || n <= 0 {
		return nil
	}
	return []time.Duration{time.Duration(min(n, 86400)) * time.Second}
}

func requestError(err error) string {
	if errors.Is(err, context.DeadlineExceeded) {
		return "timeout"
	}
	s := err.Error()
	if errors.Is(err, ErrRefused) {
		s = "refused by the SSRF guard: " + s
	}
	if len(s) > 300 {
		s = s[:300]
	}
	return s
}

// sanitize keeps printable ASCII of a response excerpt.
func sanitize(b []byte) string {
	out := make([]byte, 0, len(b))
	for _, c := range b {
		if c >= ' ' && c < 0x7f {
			out = append(out, c)
		} else {
			out = append(out, ' ')
		}
	}
	return string(out)
}
