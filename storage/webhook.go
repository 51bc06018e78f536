package storage

// Webhook persistence contracts: per-app webhook endpoints, and the
// durable delivery queue whose records double as each endpoint's delivery
// log.
//
// One WebhookDelivery is one event for one endpoint. It is created queued,
// and its State moves only along
//
//	queued -> sending -> succeeded
//	                  -> failed     (attempts used up, or the endpoint went away)
//	                  -> queued     (retryable: back in the queue with a later Due)
//
// "sending" is written when a worker claims the record, before the request
// leaves; a crash can leave a record there, and a store's RecoverWebhooks
// moves such records back to queued at start. Deliveries are therefore
// at least once: a receiver dedupes on the event ID.

import (
	"context"
	"encoding/json"
	"time"
)

// Webhook delivery states.
const (
	WebhookQueued    = "queued"
	WebhookSending   = "sending"
	WebhookSucceeded = "succeeded"
	WebhookFailed    = "failed"
)

// WebhookEndpoint is one app's subscription of a URL to event types.
type WebhookEndpoint struct {
	ID  string `json:"id"`
	App string `json:"app"`
	URL string `json:"url"`
	// Secret is the signing secret, sealed by the webhook service under the
	// server's master key.
	Secret []byte `json:"secret"`
	// Events are the subscribed event types ("*" for all).
	Events      []string `json:"events"`
	Description string   `json:"description,omitempty"`
	Enabled     bool     `json:"enabled"`
	// Disabled explains why the server turned the endpoint off (after
	// failing for too long); "" when an operator did, or when enabled.
	Disabled string `json:"disabled,omitempty"`
	// FailingSince is the first failed attempt since the last success; zero
	// while the endpoint succeeds.
	FailingSince time.Time `json:"failing_since,omitzero"`
	CreatedAt    time.Time `json:"created_at"`
	UpdatedAt    time.Time `json:"updated_at"`
}

// WebhookAttempt is one HTTP attempt of a delivery.
type WebhookAttempt struct {
	At time.Time `json:"at"`
	// Status is the receiver's HTTP status; 0 when no answer came.
	Status    int    `json:"status,omitempty"`
	LatencyMS int64  `json:"latency_ms"`
	Error     string `json:"error,omitempty"`
}

// WebhookDelivery is one event for one endpoint: a queue entry and, once
// finished, a delivery log entry.
type WebhookDelivery struct {
	// ID is time-ordered, so the log lists newest first by walking back.
	ID        string `json:"id"`
	App       string `json:"app"`
	Endpoint  string `json:"endpoint"`
	EventID   string `json:"event_id"`
	EventType string `json:"event_type"`
	// Payload is the exact request body (the event as JSON).
	Payload  json.RawMessage  `json:"payload"`
	State    string           `json:"state"`
	Due      time.Time        `json:"due"`
	Attempts []WebhookAttempt `json:"attempts,omitempty"`
	// Tries counts every attempt, also those no longer in Attempts.
	Tries     int       `json:"tries"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// WebhookMark records that the events of a conversation's log up to Seq
// are queued, so that a start after a crash can queue those of later
// entries that were stored but never reached the queue.
type WebhookMark struct {
	App, Conv string
	Seq       uint64
}

// WebhookStore keeps webhook endpoints and the delivery queue. Writes that
// queue deliveries are durable when they return.
type WebhookStore interface {
	// PutWebhookEndpoint creates or replaces an endpoint.
	PutWebhookEndpoint(ctx context.Context, e WebhookEndpoint) error
	// GetWebhookEndpoint returns ErrNotFound for an unknown endpoint.
	GetWebhookEndpoint(ctx context.Context, app, id string) (WebhookEndpoint, error)
	// UpdateWebhookEndpoint applies fn to the stored endpoint atomically.
	UpdateWebhookEndpoint(ctx context.Context, app, id string, fn func(*WebhookEndpoint) error) (WebhookEndpoint, error)
	// ListWebhookEndpoints lists an app's endpoints in ID order.
	ListWebhookEndpoints(ctx context.Context, app string) ([]WebhookEndpoint, error)
	// DeleteWebhookEndpoint removes an endpoint, its queued deliveries and
	// its log.
	DeleteWebhookEndpoint(ctx context.Context, app, id string) error

	// EnqueueWebhooks durably queues deliveries (State queued, by Due)
	// and, with the last of them, moves the marks forward (never back).
	EnqueueWebhooks(ctx context.Context, ds []WebhookDelivery, marks []WebhookMark) error
	// WebhookMarks returns the marks of an app's conversations.
	WebhookMarks(ctx context.Context, app string) (map[string]uint64, error)
	// ClaimWebhooks moves up to limit deliveries due at now to "sending"
	// and returns them, earliest Due first.
	ClaimWebhooks(ctx context.Context, now time.Time, limit int) ([]WebhookDelivery, error)
	// FinishWebhook stores the outcome of a claimed delivery: queued again
	// (with its new Due) or terminal, which starts its log retention.
	FinishWebhook(ctx context.Context, d WebhookDelivery) error
	// RecoverWebhooks queues again every delivery left "sending" by a
	// crash and returns how many there were.
	RecoverWebhooks(ctx context.Context, now time.Time) (int, error)
	// ListWebhookDeliveries lists an endpoint's deliveries, newest first,
	// with IDs before before ("" for the newest), at most limit.
	ListWebhookDeliveries(ctx context.Context, app, endpoint, before string, limit int) ([]WebhookDelivery, error)
	// GetWebhookDelivery returns one delivery of an endpoint.
	GetWebhookDelivery(ctx context.Context, app, endpoint, id string) (WebhookDelivery, error)
	// WebhookQueueDepth counts queued deliveries (all apps).
	WebhookQueueDepth(ctx context.Context) (int, error)
}
