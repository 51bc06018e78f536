package broker

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/warblerim/warbler/api"
	"github.com/warblerim/warbler/audience"
	"github.com/warblerim/warbler/bridge"
	"github.com/warblerim/warbler/campaign"
	"github.com/warblerim/warbler/identity"
	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage"
	"github.com/warblerim/warbler/storage/badgerstore"
)

// campaignState is the Server's share of the audience and campaign
// wiring.
type campaignState struct {
	audience  *audience.Service
	campaigns *campaign.Service
	chatStore storage.ChatStore
	idStore   *badgerstore.IdentityStore

	pushObsMu sync.RWMutex
	pushObs   []func(storage.PushRecord)
}

// OnPushFinished registers fn to be called after every push notification
// (chat or campaign) reached a new state after a send attempt: accepted,
// failed (rejected for good; the webhook "push.failed"), dropped, or
// queued again for a retry. fn runs on the sender's goroutine and must not
// block. The record carries the campaign ID as Data["campaign"] when it
// belongs to one.
func (s *Server) OnPushFinished(fn func(storage.PushRecord)) {
	s.pushObsMu.Lock()
	s.pushObs = append(s.pushObs, fn)
	s.pushObsMu.Unlock()
}

// pushFinished is the push bridge's OnFinish.
func (s *Server) pushFinished(r storage.PushRecord) {
	if id := r.Data["campaign"]; id != "" && s.campaigns != nil {
		s.campaigns.Outcome(r.App, id, r.State)
	}
	s.pushObsMu.RLock()
	obs := s.pushObs
	s.pushObsMu.RUnlock()
	for _, fn := range obs {
		fn(r)
	}
}

// wireCampaigns installs the audience service (tag index, behaviour
// events, segments) and targeted push, with their HTTP routes. It needs
// the identity service, the chat store and the push bridge.
func (s *Server) wireCampaigns() error {
	// The identity service's own store: its writes invalidate the tag
	// cache that audience evaluation reads.
	ids := s.idStore
	aud := badgerstore.NewAudienceStore(s.db)
	as, err := audience.New(audience.Options{
		Index: ids, Users: ids, Events: aud, Segments: aud,
		Retention: func(app string) time.Duration {
			a, err := s.identity.GetApp(context.Background(), app)
			if err != nil {
				return 0
			}
			return time.Duration(a.Settings.EventRetentionDays) * 24 * time.Hour
		},
	})
	if err != nil {
		return err
	}
	cs, err := campaign.New(campaign.Options{
		Store:     badgerstore.NewCampaignStore(s.db),
		Audience:  as,
		Directory: campaignDirectory{s},
		Transport: campaignTransport{s},
		Logger:    s.log.With("component", "campaign"),
	})
	if err != nil {
		return err
	}
	s.audience, s.campaigns = as, cs
	cs.Start()
	s.closers = append(s.closers, cs.Close)
	api.NewAudienceAPI(api.AudienceOptions{Identity: s.identity, Audience: as}).Register(s.mux)
	api.NewCampaignAPI(api.CampaignOptions{Identity: s.identity, Campaign: cs}).Register(s.mux)
	s.metrics.Registry.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "warbler_campaign_users_handled_total", Help: "Users of targeted pushes given an outcome (delivered, pushed or skipped) by this process."},
		func() float64 { return float64(cs.Handled()) }))
	return nil
}

// campaignDirectory answers the campaign runner's questions about users
// from identity, push preferences and live connections.
type campaignDirectory struct{ s *Server }

func (d campaignDirectory) Reach(ctx context.Context, app, user string) (campaign.Reach, error) {
	u, err := d.s.identity.GetUser(ctx, app, user)
	if errors.Is(err, identity.ErrNotFound) {
		return campaign.Reach{}, nil
	}
	if err != nil {
		return campaign.Reach{}, err
	}
	r := campaign.Reach{Exists: true, Disabled: u.Disabled, TimeZone: u.Attrs["timezone"]}
	if d.s.bridge != nil {
		p, err := d.s.bridge.Prefs(ctx, app, user)
		if err != nil && !errors.Is(err, storage.ErrNotFound) {
			return campaign.Reach{}, err
		}
		r.PushOff, r.Quiet = p.Disabled, bridge.Quiet(p, time.Now())
		if r.TimeZone == "" && p.Quiet != nil {
			r.TimeZone = p.Quiet.TimeZone
		}
	}
	devs, err := d.s.identity.ListDevices(ctx, app, user)
	if err != nil {
		return campaign.Reach{}, err
	}
	for _, dev := range devs {
		if (presence{d.s}).Online(app, user, dev.ID) {
			r.Online = true
			break
		}
	}
	return r, nil
}

func (d campaignDirectory) ChannelMembers(ctx context.Context, app, conv string) ([]string, error) {
	if d.s.chatStore == nil {
		return nil, storage.ErrNotFound
	}
	if _, err := d.s.chatStore.GetConversation(ctx, app, conv); err != nil {
		return nil, err
	}
	ms, err := d.s.chatStore.ListMembers(ctx, app, conv, "", 0)
	if err != nil {
		return nil, err
	}
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.User
	}
	return out, nil
}

// campaignTransport delivers in-app over the broker and pushes through
// the bridge.
type campaignTransport struct{ s *Server }

func (t campaignTransport) InApp(app, user string, payload []byte) {
	if err := t.s.mqtt.Publish(protocol.Downlink(app, user), payload, false, 1); err != nil {
		t.s.log.Error("campaign: in-app publish failed", "app", app, "user", user, "err", err)
	}
}

func (t campaignTransport) Push(ctx context.Context, app string, users []string, n campaign.PushNote) (map[string]int, error) {
	if t.s.bridge == nil {
		return map[string]int{}, nil
	}
	return t.s.bridge.SendCampaign(ctx, app, users, bridge.Campaign{ID: n.Campaign, Title: n.Title, Body: n.Body,
		Data: n.Data, Sound: n.Sound, Expires: n.Expires})
}
