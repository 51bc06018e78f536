package storage

// Campaign persistence: targeted pushes ("campaigns") with their durable
// progress, per-user outcomes, frequency-cap counters and open receipts.
// See package campaign for the behaviour.

import (
	"context"
	"encoding/json"
	"time"
)

// Campaign states.
const (
	CampaignScheduled = "scheduled" // accepted, waiting for its time
	CampaignRunning   = "running"   // the audience is being evaluated and queued
	CampaignDone      = "done"      // every targeted user has an outcome
	CampaignCanceled  = "canceled"
	CampaignFailed    = "failed" // the audience could not be evaluated (Error says why)
)

// CampaignStats counts what happened to a campaign. Targeted users split
// exactly into Delivered + Pushed + Skipped: each targeted user gets one
// outcome. Notifications, Accepted, Failed and Dropped count push
// notifications (one per device) as the providers answer.
type CampaignStats struct {
	Targeted  int64            `json:"targeted"`
	Delivered int64            `json:"delivered"` // users reached in-app over MQTT
	Pushed    int64            `json:"pushed"`    // users sent to APNs/FCM
	Skipped   int64            `json:"skipped"`   // users skipped by a rule, see SkippedBy
	SkippedBy map[string]int64 `json:"skipped_by,omitempty"`

	Notifications int64 `json:"notifications"` // push notifications queued for APNs/FCM
	Accepted      int64 `json:"accepted"`
	Failed        int64 `json:"failed"`
	Dropped       int64 `json:"dropped"` // expired or replaced before sending
	Opened        int64 `json:"opened"`  // users who reported opening it
}

// Add adds d to s.
func (s *CampaignStats) Add(d CampaignStats) {
	s.Targeted += d.Targeted
	s.Delivered += d.Delivered
	s.Pushed += d.Pushed
	s.Skipped += d.Skipped
	for k, v := range d.SkippedBy {
		if s.SkippedBy == nil {
			s.SkippedBy = map[string]int64{}
		}
		s.SkippedBy[k] += v
	}
	s.Notifications += d.Notifications
	s.Accepted += d.Accepted
	s.Failed += d.Failed
	s.Dropped += d.Dropped
	s.Opened += d.Opened
}

// Campaign is one targeted push of an app. Spec is the request as the
// campaign package validated it, opaque to the store.
type Campaign struct {
	App        string          `json:"app"`
	ID         string          `json:"id"`
	Spec       json.RawMessage `json:"spec"`
	DedupeKey  string          `json:"dedupe_key,omitempty"`
	State      string          `json:"state"`
	Error      string          `json:"error,omitempty"`
	ScheduleAt time.Time       `json:"schedule_at"`
	// Audience is how many users the audience held when last evaluated.
	Audience   int           `json:"audience"`
	Stats      CampaignStats `json:"stats"`
	CreatedAt  time.Time     `json:"created_at"`
	StartedAt  time.Time     `json:"started_at,omitzero"`
	FinishedAt time.Time     `json:"finished_at,omitzero"`
}

// CampaignChunk is the durable outcome of a slice of a campaign's users.
type CampaignChunk struct {
	// Outcomes maps each user handled to "delivered", "pushed" or
	// "skipped:<reason>".
	Outcomes map[string]string
	// Capped are the users whose frequency-cap counter of Day grows by one.
	Capped []string
	Day    string
	Delta  CampaignStats
}

// CampaignStore keeps campaigns.
type CampaignStore interface {
	// CreateCampaign stores a new campaign. If c.DedupeKey is set and a
	// campaign of the app with that key was created within dedupeTTL, it
	// stores nothing and returns that campaign with created false.
	CreateCampaign(ctx context.Context, c Campaign, dedupeTTL time.Duration) (out Campaign, created bool, err error)
	// GetCampaign returns ErrNotFound if there is none.
	GetCampaign(ctx context.Context, app, id string) (Campaign, error)
	// ListCampaigns returns up to limit campaigns of app, newest first,
	// with IDs before before (if not empty).
	ListCampaigns(ctx context.Context, app, before string, limit int) ([]Campaign, error)
	// UpdateCampaign changes a campaign atomically; ErrNotFound if none.
	UpdateCampaign(ctx context.Context, app, id string, fn func(*Campaign) error) (Campaign, error)
	// PendingCampaigns returns every campaign scheduled or running.
	PendingCampaigns(ctx context.Context) ([]Campaign, error)
	// CommitCampaignChunk records a chunk's outcomes, adds its stats and
	// counts the capped users in one atomic, synced write.
	CommitCampaignChunk(ctx context.Context, app, id string, ch CampaignChunk) error
	// CampaignDone returns which of users already have an outcome.
	CampaignDone(ctx context.Context, app, id string, users []string) (map[string]bool, error)
	// CapCounts returns the frequency-cap counters of users on day.
	CapCounts(ctx context.Context, app, day string, users []string) (map[string]int, error)
	// MarkOpened records that user opened the campaign; it reports false
	// if that was already recorded (and counts nothing then).
	MarkOpened(ctx context.Context, app, id, user string) (bool, error)
}
