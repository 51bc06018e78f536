package broker

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
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

	logins *loginRecorder

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
	s.startLoginRecorder()
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
	devs, err := d.s.idStore.ListDevices(ctx, app, user) // the user exists: skip the service's check
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

// Logins as behaviour events: when a user's first connection to this
// process opens, the server records the event "login" for the user (at
// most once per loginEvery), so that segment rules such as
// NOT event(login, 30d) work without the app's backend reporting logins.
// The events are written in batches by one goroutine; if the store falls
// behind, events beyond the buffer are dropped and counted, never waited
// for on the connection path.
const (
	loginEvery  = time.Hour
	loginBuffer = 10000
)

type loginRecorder struct {
	s       *Server
	ch      chan loginEvent
	done    chan struct{}
	mu      sync.Mutex
	last    map[string]time.Time // app "/" user -> last login recorded
	closed  bool
	dropped atomic.Uint64
}

type loginEvent struct {
	app  string
	user string
	at   time.Time
}

func (s *Server) startLoginRecorder() {
	r := &loginRecorder{s: s, ch: make(chan loginEvent, loginBuffer), done: make(chan struct{}), last: map[string]time.Time{}}
	s.logins = r
	go r.run()
	s.closers = append(s.closers, func() error {
		r.mu.Lock()
		r.closed = true
		close(r.ch)
		r.mu.Unlock()
		<-r.done
		return nil
	})
	s.metrics.Registry.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "warbler_login_events_dropped_total", Help: "Login behaviour events dropped because the writer fell behind."},
		func() float64 { return float64(r.dropped.Load()) }))
}

// recordLogin is called with every presence change of a user.
func (s *Server) recordLogin(app, user string, online bool) {
	r := s.logins
	if r == nil || !online {
		return
	}
	now := time.Now()
	k := app + "/" + user
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed || now.Sub(r.last[k]) < loginEvery {
		return
	}
	if len(r.last) >= 200_000 { // forget, rather than grow without bound
		r.last = map[string]time.Time{}
	}
	r.last[k] = now
	select {
	case r.ch <- loginEvent{app: app, user: user, at: now}:
	default:
		r.dropped.Add(1)
	}
}

func (r *loginRecorder) run() {
	defer close(r.done)
	batch := map[string][]storage.Event{}
	n := 0
	flush := func() {
		for app, evs := range batch {
			if _, err := r.s.audience.RecordEvents(context.Background(), app, evs); err != nil {
				r.s.log.Error("recording login events failed", "app", app, "events", len(evs), "err", err)
			}
		}
		clear(batch)
		n = 0
	}
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case e, ok := <-r.ch:
			if !ok {
				flush()
				return
			}
			batch[e.app] = append(batch[e.app], storage.Event{User: e.user, Name: "login", Time: e.at})
			if n++; n >= audience.MaxEventBatch {
				flush()
			}
		case <-t.C:
			flush()
		}
	}
}

// campaignOpens answers the MQTT "opened" request through the campaign
// service (wired after the chat service, hence the lookup at call time).
type campaignOpens struct{ s *Server }

func (o campaignOpens) Opened(ctx context.Context, app, user, id string) (bool, error) {
	if o.s.campaigns == nil {
		return false, protocol.Errorf(protocol.CodeUnavailable, "open reports are not available yet")
	}
	first, err := o.s.campaigns.Opened(ctx, app, id, user)
	if errors.Is(err, storage.ErrNotFound) {
		return false, protocol.Errorf(protocol.CodeNotFound, "no campaign %s", id)
	}
	if err != nil {
		return false, protocol.Errorf(protocol.CodeInternal, "could not record the open report")
	}
	return first, nil
}
