package storage

// Audience persistence contracts: the index that answers "which users of
// an app carry tag X", the store of behaviour events that segment rules
// query, and saved segments. Campaign (targeted push) state is in
// campaign.go.

import (
	"context"
	"time"
)

// UserIndex answers audience questions from the user records without
// loading them. A store that keeps users keeps the index in the same
// atomic write as the user, so it never disagrees with the records.
type UserIndex interface {
	// UsersWithTag returns the IDs of app's users that carry tag, in ID
	// order.
	UsersWithTag(ctx context.Context, app, tag string) ([]string, error)
	// UserIDs returns the IDs of every user of app, in ID order.
	UserIDs(ctx context.Context, app string) ([]string, error)
	// CreateUsers stores many new users (without credentials) in as few
	// synced writes as the store can. It fails with ErrExists, writing
	// none of them, if any ID is taken or repeated.
	CreateUsers(ctx context.Context, users []User) error
}

// Event is one behaviour event: something a user did, reported by the
// app's backend ("viewed_product" with {"product": "X"}).
type Event struct {
	User       string            `json:"user"`
	Name       string            `json:"name"`
	Properties map[string]string `json:"properties,omitempty"`
	Time       time.Time         `json:"time"`
}

// EventQuery selects users by the events they caused.
type EventQuery struct {
	Name string
	// Since and Until bound the event time (Until exclusive; zero means
	// open).
	Since, Until time.Time
	// Props must all match the event's properties exactly.
	Props map[string]string
	// MinCount is how many matching events a user needs (at least 1).
	MinCount int
}

// EventStore keeps behaviour events compactly, each for a retention
// period after which the store drops it by itself.
type EventStore interface {
	// AppendEvents stores events of app durably; each is kept until its
	// Time plus retention.
	AppendEvents(ctx context.Context, app string, evs []Event, retention time.Duration) error
	// EventUsers returns the users with at least q.MinCount matching
	// events, in ID order.
	EventUsers(ctx context.Context, app string, q EventQuery) ([]string, error)
	// ListEvents returns up to limit events of app named name (every name
	// if empty) of user (every user if empty), newest first.
	ListEvents(ctx context.Context, app, user, name string, limit int) ([]Event, error)
}

// Segment is a saved audience rule of an app (see package audience for
// the rule language).
type Segment struct {
	App       string    `json:"app"`
	ID        string    `json:"id"`
	Name      string    `json:"name,omitempty"`
	Rule      string    `json:"rule"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// SegmentStore keeps segments.
type SegmentStore interface {
	// PutSegment creates or replaces a segment.
	PutSegment(ctx context.Context, s Segment) error
	// GetSegment returns ErrNotFound if there is none.
	GetSegment(ctx context.Context, app, id string) (Segment, error)
	ListSegments(ctx context.Context, app string) ([]Segment, error)
	// DeleteSegment returns ErrNotFound if there is none.
	DeleteSegment(ctx context.Context, app, id string) error
}
