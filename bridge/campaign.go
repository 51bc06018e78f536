package bridge

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/warblerim/warbler/storage"
)

// Campaign is a notification a service composed for many users (a
// targeted push), as opposed to one that follows a chat message.
type Campaign struct {
	// ID names the campaign; records carry it as data "campaign", so that
	// OnFinish can attribute outcomes.
	ID    string
	Title string
	Body  string
	Data  map[string]string
	Sound string
	// Expires, if set, drops notifications still queued then.
	Expires time.Time
}

// SendCampaign durably queues c to every device of each user that has a
// push token, is not connected (per Presence), is not disabled, and whose
// provider the app has credentials for. It returns how many notifications
// it queued per user. Users' mutes and quiet hours are the caller's to
// check (see Quiet). A campaign notification to a device replaces one of
// the same campaign still queued for it, so a repeated call does not
// notify twice.
func (b *Bridge) SendCampaign(ctx context.Context, app string, users []string, c Campaign) (map[string]int, error) {
	out := make(map[string]int, len(users))
	if !b.hasCreds(ctx, storage.PushQueueID{App: app, Provider: storage.ProviderAPNs}) &&
		!b.hasCreds(ctx, storage.PushQueueID{App: app, Provider: storage.ProviderFCM}) {
		return out, nil
	}
	s, err := b.Settings(ctx, app)
	if err != nil {
		return nil, err
	}
	now := b.o.Now()
	var recs []storage.PushRecord
	var errs []error
	for _, user := range users {
		devs, err := b.o.Directory.Devices(ctx, app, user)
		if err != nil {
			errs = append(errs, fmt.Errorf("devices of %s: %w", user, err))
			continue
		}
		for _, d := range devs {
			provider := d.ProviderOf()
			if d.Token == "" || provider == "" || d.Settings.Disabled {
				continue
			}
			if !b.hasCreds(ctx, storage.PushQueueID{App: app, Provider: provider}) {
				continue
			}
			if b.o.Presence != nil && b.o.Presence.Online(app, user, d.ID) {
				continue
			}
			r := b.newRecord(app, user, d, provider, trigger{kind: KindAlert, data: c.Data}, s, now)
			r.Title, r.Body = c.Title, c.Body
			if c.Sound != "" {
				r.Sound = c.Sound
			}
			if !c.Expires.IsZero() && c.Expires.Before(r.Expires) {
				r.Expires = c.Expires
			}
			r.Data["campaign"] = c.ID
			r.Coalesce = "campaign/" + c.ID + "/" + user + "/" + d.ID
			recs = append(recs, r)
			out[user]++
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if err := b.enqueue(ctx, recs); err != nil {
		return nil, err
	}
	return out, nil
}

// Quiet reports whether a user's preferences silence notifications at now
// (do-not-disturb or quiet hours in the user's time zone).
func Quiet(p storage.PushPrefs, now time.Time) bool { return quiet(p, now) }
