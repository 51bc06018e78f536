package campaign

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/warblerim/warbler/audience"
	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage"
)

// Limits of a Spec.
const (
	MaxUsers       = 10000 // users listed in an audience
	MaxTitle       = 256
	MaxBody        = 2048
	MaxData        = 16
	MaxMessage     = 16 << 10 // the in-app message, JSON
	MaxSchedule    = 30 * 24 * time.Hour
	DedupeWindow   = 24 * time.Hour
	DefaultChunk   = 500
	DefaultFlush   = 250 * time.Millisecond
	MaxDedupeKey   = 128
	MaxFrequencyCp = 100
)

// Audience says who a campaign is for. Exactly one field is set.
type Audience struct {
	All     bool     `json:"all,omitempty"`
	Users   []string `json:"users,omitempty"`
	Tags    string   `json:"tags,omitempty"`    // a tag expression
	Segment string   `json:"segment,omitempty"` // a saved segment's ID
	Channel string   `json:"channel,omitempty"` // the members of a group or channel conversation
}

// Notification is what a push notification shows.
type Notification struct {
	Title string            `json:"title,omitempty"`
	Body  string            `json:"body"`
	Data  map[string]string `json:"data,omitempty"`
	Sound string            `json:"sound,omitempty"`
}

// QuietHours is a daily window, in each user's own time zone, in which the
// campaign skips the user.
type QuietHours struct {
	Start string `json:"start"` // "HH:MM"
	End   string `json:"end"`
}

// Spec is a targeted push request.
type Spec struct {
	Audience     Audience     `json:"audience"`
	Notification Notification `json:"notification"`
	// Message, if set, is the in-app message delivered over MQTT to
	// connected devices instead of the notification (any JSON value).
	Message json.RawMessage `json:"message,omitempty"`
	// ScheduleAt delays the campaign (at most 30 days ahead).
	ScheduleAt time.Time `json:"schedule_at,omitzero"`
	// ExpiresAt is the end of the time window: users not reached by then
	// are skipped, and notifications still queued are dropped.
	ExpiresAt  time.Time   `json:"expires_at,omitzero"`
	QuietHours *QuietHours `json:"quiet_hours,omitempty"`
	// FrequencyCap skips users who already got this many campaigns today
	// (UTC); 0 means no cap.
	FrequencyCap int `json:"frequency_cap,omitempty"`
	// DedupeKey makes the request idempotent: within 24 hours, a request
	// with the same key returns the first campaign instead of a new one.
	DedupeKey string `json:"dedupe_key,omitempty"`
}

// Reach is what the runner needs to know about one user.
type Reach struct {
	Exists   bool
	Disabled bool
	// TimeZone is the user's IANA time zone ("" for UTC).
	TimeZone string
	// PushOff is set when the user turned notifications off.
	PushOff bool
	// Quiet is set while the user's own do-not-disturb or quiet hours hold.
	Quiet bool
	// Online is set when a device of the user is connected now.
	Online bool
}

// Directory looks users up for the runner.
type Directory interface {
	Reach(ctx context.Context, app, user string) (Reach, error)
	// ChannelMembers lists the members of a conversation; storage.ErrNotFound
	// if there is no such conversation.
	ChannelMembers(ctx context.Context, app, conv string) ([]string, error)
}

// PushNote is one campaign's notification as the push transport gets it.
type PushNote struct {
	Campaign string
	Title    string
	Body     string
	Data     map[string]string
	Sound    string
	Expires  time.Time
}

// Transport delivers.
type Transport interface {
	// InApp publishes payload to the user's downlink topic (live only).
	InApp(app, user string, payload []byte)
	// Push durably queues a notification to every device of each user that
	// is not connected and that a provider can reach, and returns how many
	// it queued per user.
	Push(ctx context.Context, app string, users []string, n PushNote) (map[string]int, error)
}

// Options configure a Service.
type Options struct {
	Store     storage.CampaignStore // required
	Audience  *audience.Service     // required
	Directory Directory             // required
	Transport Transport             // required
	// ChunkSize is how many users are handled per durable step.
	ChunkSize int
	// FlushEvery is how often provider outcomes are written.
	FlushEvery time.Duration
	Logger     *slog.Logger
	Now        func() time.Time
}

// Errors.
var (
	ErrInvalid  = errors.New("invalid")
	ErrNotFound = storage.ErrNotFound
	ErrClosed   = errors.New("campaign: closed")
)

// InvalidError names the field at fault.
type InvalidError struct {
	Field string
	Msg   string
}

func (e *InvalidError) Error() string { return e.Field + ": " + e.Msg }
func (e *InvalidError) Unwrap() error { return ErrInvalid }

func invalid(field, format string, a ...any) error {
	return &InvalidError{Field: field, Msg: fmt.Sprintf(format, a...)}
}

// Service runs campaigns. Create it with New, then Start it.
type Service struct {
	o    Options
	log  *slog.Logger
	wake chan struct{}
	stop chan struct{}
	done sync.WaitGroup

	mu      sync.Mutex
	pending map[string]CampaignStatsDelta // app "/" id -> outcome counts not yet written
	closed  bool
	running string // app "/" id of the campaign being run
	cancel  map[string]bool
	handled atomic.Uint64
}

// CampaignStatsDelta is an alias kept short for the outcome batches.
type CampaignStatsDelta = storage.CampaignStats

// New returns a Service.
func New(o Options) (*Service, error) {
	if o.Store == nil || o.Audience == nil || o.Directory == nil || o.Transport == nil {
		return nil, errors.New("campaign: Store, Audience, Directory and Transport are required")
	}
	if o.ChunkSize <= 0 {
		o.ChunkSize = DefaultChunk
	}
	if o.FlushEvery <= 0 {
		o.FlushEvery = DefaultFlush
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Service{o: o, log: o.Logger, wake: make(chan struct{}, 1), stop: make(chan struct{}),
		pending: map[string]CampaignStatsDelta{}, cancel: map[string]bool{}}, nil
}

// Start starts the runner, which resumes the campaigns a stop or crash
// left scheduled or running.
func (s *Service) Start() {
	s.done.Add(2)
	go s.runLoop()
	go s.flushLoop()
	s.poke()
}

// Close stops the runner after the chunk in progress and writes the
// pending outcome counts. A campaign left running resumes at the next
// Start.
func (s *Service) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	close(s.stop)
	s.done.Wait()
	s.flush()
	return nil
}

func (s *Service) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func newID(now time.Time) string {
	var r [4]byte
	_, _ = rand.Read(r[:])
	return fmt.Sprintf("c%012x%s", now.UnixMilli(), hex.EncodeToString(r[:]))
}

func hm(s string) (int, bool) {
	h, m, ok := strings.Cut(s, ":")
	hh, err1 := strconv.Atoi(h)
	mm, err2 := strconv.Atoi(m)
	if !ok || err1 != nil || err2 != nil || hh < 0 || hh > 23 || mm < 0 || mm > 59 || len(h) > 2 || len(m) != 2 {
		return 0, false
	}
	return hh*60 + mm, true
}

// Validate checks a Spec and returns its parsed audience expression (nil
// unless the audience is a tag expression).
func Validate(sp *Spec, now time.Time) (*audience.Node, error) {
	a := sp.Audience
	n := 0
	for _, set := range []bool{a.All, len(a.Users) > 0, a.Tags != "", a.Segment != "", a.Channel != ""} {
		if set {
			n++
		}
	}
	if n != 1 {
		return nil, invalid("audience", "set exactly one of all, users, tags, segment, channel")
	}
	var expr *audience.Node
	switch {
	case len(a.Users) > 0:
		if len(a.Users) > MaxUsers {
			return nil, invalid("audience.users", "at most %d users; use a tag or a segment for more", MaxUsers)
		}
		for _, u := range a.Users {
			if !protocol.ValidID(u) {
				return nil, invalid("audience.users", "%q: %v", u, protocol.ErrBadID)
			}
		}
	case a.Tags != "":
		var err error
		if expr, err = audience.ParseTags(a.Tags); err != nil {
			return nil, invalid("audience.tags", "%v", err)
		}
	case a.Segment != "":
		if !protocol.ValidID(a.Segment) {
			return nil, invalid("audience.segment", "%v", protocol.ErrBadID)
		}
	case a.Channel != "":
		if !protocol.ValidID(a.Channel) {
			return nil, invalid("audience.channel", "%v", protocol.ErrBadID)
		}
	}
	nt := sp.Notification
	if nt.Body == "" || len(nt.Body) > MaxBody || len(nt.Title) > MaxTitle || len(nt.Sound) > 64 {
		return nil, invalid("notification", "body 1-%d bytes, title at most %d, sound at most 64", MaxBody, MaxTitle)
	}
	if len(nt.Data) > MaxData {
		return nil, invalid("notification.data", "at most %d entries", MaxData)
	}
	for k, v := range nt.Data {
		if k == "" || len(k) > 64 || len(v) > 1024 || k == "campaign" || k == "nid" {
			return nil, invalid("notification.data", "keys 1-64 bytes (not campaign or nid), values at most 1024")
		}
	}
	if len(sp.Message) > MaxMessage {
		return nil, invalid("message", "at most %d bytes", MaxMessage)
	}
	if len(sp.Message) > 0 && !json.Valid(sp.Message) {
		return nil, invalid("message", "not valid JSON")
	}
	if !sp.ScheduleAt.IsZero() && sp.ScheduleAt.After(now.Add(MaxSchedule)) {
		return nil, invalid("schedule_at", "at most 30 days ahead")
	}
	if !sp.ExpiresAt.IsZero() && (!sp.ExpiresAt.After(now) || (!sp.ScheduleAt.IsZero() && !sp.ExpiresAt.After(sp.ScheduleAt))) {
		return nil, invalid("expires_at", "must be in the future and after schedule_at")
	}
	if q := sp.QuietHours; q != nil {
		_, ok1 := hm(q.Start)
		_, ok2 := hm(q.End)
		if !ok1 || !ok2 {
			return nil, invalid("quiet_hours", "start and end are HH:MM")
		}
	}
	if sp.FrequencyCap < 0 || sp.FrequencyCap > MaxFrequencyCp {
		return nil, invalid("frequency_cap", "0 to %d", MaxFrequencyCp)
	}
	if len(sp.DedupeKey) > MaxDedupeKey || strings.ContainsAny(sp.DedupeKey, "\x00/") {
		return nil, invalid("dedupe_key", "at most %d bytes, without '/'", MaxDedupeKey)
	}
	return expr, nil
}

// Submit validates and stores a campaign and wakes the runner. created is
// false when the dedupe key named an earlier campaign, which is returned.
func (s *Service) Submit(ctx context.Context, app string, sp Spec) (c storage.Campaign, created bool, err error) {
	now := s.o.Now().UTC()
	if _, err := Validate(&sp, now); err != nil {
		return storage.Campaign{}, false, err
	}
	if sp.Audience.Segment != "" {
		if _, err := s.o.Audience.Segment(ctx, app, sp.Audience.Segment); err != nil {
			if errors.Is(err, storage.ErrNotFound) {
				return storage.Campaign{}, false, invalid("audience.segment", "no segment %q", sp.Audience.Segment)
			}
			return storage.Campaign{}, false, err
		}
	}
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return storage.Campaign{}, false, ErrClosed
	}
	spec, err := json.Marshal(sp)
	if err != nil {
		return storage.Campaign{}, false, err
	}
	at := sp.ScheduleAt.UTC()
	if at.Before(now) {
		at = now
	}
	c = storage.Campaign{App: app, ID: newID(now), Spec: spec, DedupeKey: sp.DedupeKey, State: storage.CampaignScheduled,
		ScheduleAt: at, CreatedAt: now}
	c, created, err = s.o.Store.CreateCampaign(ctx, c, DedupeWindow)
	if err != nil {
		return storage.Campaign{}, false, err
	}
	if created {
		s.poke()
	}
	return c, created, nil
}

// Get returns a campaign with the outcome counts not yet written added.
func (s *Service) Get(ctx context.Context, app, id string) (storage.Campaign, error) {
	if !protocol.ValidID(id) {
		return storage.Campaign{}, ErrNotFound
	}
	c, err := s.o.Store.GetCampaign(ctx, app, id)
	if err != nil {
		return storage.Campaign{}, err
	}
	s.mu.Lock()
	if d, ok := s.pending[app+"/"+id]; ok {
		c.Stats.Add(d)
	}
	s.mu.Unlock()
	return c, nil
}

// List returns campaigns of app, newest first.
func (s *Service) List(ctx context.Context, app, before string, limit int) ([]storage.Campaign, error) {
	return s.o.Store.ListCampaigns(ctx, app, before, limit)
}

// Cancel stops a campaign that has not finished. Users already handled
// keep their outcome; notifications already queued are still sent.
func (s *Service) Cancel(ctx context.Context, app, id string) (storage.Campaign, error) {
	if !protocol.ValidID(id) {
		return storage.Campaign{}, ErrNotFound
	}
	c, err := s.o.Store.UpdateCampaign(ctx, app, id, func(c *storage.Campaign) error {
		if c.State != storage.CampaignScheduled && c.State != storage.CampaignRunning {
			return invalid("state", "the campaign is %s", c.State)
		}
		c.State, c.FinishedAt = storage.CampaignCanceled, s.o.Now().UTC()
		return nil
	})
	if err == nil {
		s.mu.Lock()
		s.cancel[app+"/"+id] = true
		s.mu.Unlock()
	}
	return c, err
}

// Opened records that user opened the campaign's notification or message.
// It reports whether this was the user's first report.
func (s *Service) Opened(ctx context.Context, app, id, user string) (bool, error) {
	if !protocol.ValidID(id) || !protocol.ValidID(user) {
		return false, ErrNotFound
	}
	return s.o.Store.MarkOpened(ctx, app, id, user)
}

// Outcome adds a provider's answer for a notification of campaign id
// ("accepted", "failed" or "dropped"; other states are ignored). It does
// not block; the counts are written every FlushEvery (after Close, at
// once, for the answers that arrive while the push bridge shuts down).
func (s *Service) Outcome(app, id, state string) {
	var d storage.CampaignStats
	switch state {
	case storage.PushAccepted:
		d.Accepted = 1
	case storage.PushFailed:
		d.Failed = 1
	case storage.PushDropped:
		d.Dropped = 1
	default:
		return
	}
	s.mu.Lock()
	cur := s.pending[app+"/"+id]
	cur.Add(d)
	s.pending[app+"/"+id] = cur
	closed := s.closed
	s.mu.Unlock()
	if closed { // the push bridge stops after this service: write at once
		s.flush()
	}
}

func (s *Service) flushLoop() {
	defer s.done.Done()
	t := time.NewTicker(s.o.FlushEvery)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.flush()
		}
	}
}

// flush writes the outcome counts gathered since the last flush.
func (s *Service) flush() {
	s.mu.Lock()
	batch := s.pending
	s.pending = map[string]CampaignStatsDelta{}
	s.mu.Unlock()
	for k, d := range batch {
		app, id, _ := strings.Cut(k, "/")
		_, err := s.o.Store.UpdateCampaign(context.Background(), app, id, func(c *storage.Campaign) error {
			c.Stats.Add(d)
			return nil
		})
		if err != nil && !errors.Is(err, storage.ErrNotFound) {
			s.log.Error("campaign: writing outcome counts failed; retrying", "app", app, "id", id, "err", err)
			s.mu.Lock()
			cur := s.pending[k]
			cur.Add(d)
			s.pending[k] = cur
			s.mu.Unlock()
		}
	}
}

// runLoop runs due campaigns one at a time and sleeps until the next one.
func (s *Service) runLoop() {
	defer s.done.Done()
	for {
		next, err := s.runDue()
		if err != nil {
			s.log.Error("campaign: listing pending campaigns failed", "err", err)
			next = s.o.Now().Add(5 * time.Second)
		}
		var timer <-chan time.Time
		var t *time.Timer
		if !next.IsZero() {
			t = time.NewTimer(max(next.Sub(s.o.Now()), time.Millisecond))
			timer = t.C
		}
		select {
		case <-s.stop:
			return
		case <-s.wake:
		case <-timer:
		}
		if t != nil {
			t.Stop()
		}
	}
}

// runDue runs every due campaign and returns when the next is due.
func (s *Service) runDue() (time.Time, error) {
	for {
		cs, err := s.o.Store.PendingCampaigns(context.Background())
		if err != nil {
			return time.Time{}, err
		}
		now := s.o.Now()
		var due *storage.Campaign
		var next time.Time
		for i := range cs {
			c := &cs[i]
			if !c.ScheduleAt.After(now) {
				if due == nil || c.ScheduleAt.Before(due.ScheduleAt) || c.State == storage.CampaignRunning {
					due = c
				}
			} else if next.IsZero() || c.ScheduleAt.Before(next) {
				next = c.ScheduleAt
			}
		}
		if due == nil {
			return next, nil
		}
		if stopped := s.run(*due); stopped {
			return time.Time{}, nil
		}
	}
}

func (s *Service) stopped() bool {
	select {
	case <-s.stop:
		return true
	default:
		return false
	}
}

// run executes one campaign to the end (or until Close). It reports
// whether the service is stopping.
func (s *Service) run(c storage.Campaign) bool {
	ctx := context.Background()
	key := c.App + "/" + c.ID
	log := s.log.With("app", c.App, "campaign", c.ID)
	fail := func(msg string) bool {
		_, err := s.o.Store.UpdateCampaign(ctx, c.App, c.ID, func(x *storage.Campaign) error {
			x.State, x.Error, x.FinishedAt = storage.CampaignFailed, msg, s.o.Now().UTC()
			return nil
		})
		if err != nil {
			log.Error("campaign: recording a failure failed", "err", err)
			return true
		}
		return false
	}
	var sp Spec
	if err := json.Unmarshal(c.Spec, &sp); err != nil {
		return fail("unreadable spec: " + err.Error())
	}
	users, err := s.resolve(ctx, c.App, sp)
	if err != nil {
		if errors.Is(err, ErrInvalid) || errors.Is(err, storage.ErrNotFound) {
			return fail(err.Error())
		}
		log.Error("campaign: evaluating the audience failed; retrying", "err", err)
		return s.pause(5 * time.Second)
	}
	c, err = s.o.Store.UpdateCampaign(ctx, c.App, c.ID, func(x *storage.Campaign) error {
		if x.State != storage.CampaignScheduled && x.State != storage.CampaignRunning {
			return errSkip
		}
		if x.StartedAt.IsZero() {
			x.StartedAt = s.o.Now().UTC()
		}
		x.State, x.Audience = storage.CampaignRunning, len(users)
		return nil
	})
	if errors.Is(err, errSkip) {
		return false
	}
	if err != nil {
		log.Error("campaign: starting failed; retrying", "err", err)
		return s.pause(5 * time.Second)
	}
	s.mu.Lock()
	s.running = key
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.running = ""
		delete(s.cancel, key)
		s.mu.Unlock()
	}()
	log.Info("campaign: running", "audience", len(users))
	for i := 0; i < len(users); i += s.o.ChunkSize {
		if s.stopped() {
			return true
		}
		s.mu.Lock()
		canceled := s.cancel[key]
		s.mu.Unlock()
		if canceled {
			return false
		}
		chunk := users[i:min(i+s.o.ChunkSize, len(users))]
		if err := s.chunk(ctx, c.App, c.ID, sp, chunk); err != nil {
			log.Error("campaign: a chunk failed; retrying", "err", err)
			return s.pause(5 * time.Second)
		}
		runtime.Gosched() // chat traffic first
	}
	_, err = s.o.Store.UpdateCampaign(ctx, c.App, c.ID, func(x *storage.Campaign) error {
		if x.State == storage.CampaignRunning {
			x.State, x.FinishedAt = storage.CampaignDone, s.o.Now().UTC()
		}
		return nil
	})
	if err != nil {
		log.Error("campaign: finishing failed; retrying", "err", err)
		return s.pause(5 * time.Second)
	}
	log.Info("campaign: done")
	return false
}

var errSkip = errors.New("skip")

// pause waits d or until Close; it reports whether the service is
// stopping.
func (s *Service) pause(d time.Duration) bool {
	select {
	case <-s.stop:
		return true
	case <-time.After(d):
		return false
	}
}

// resolve returns the sorted, distinct users of the audience.
func (s *Service) resolve(ctx context.Context, app string, sp Spec) ([]string, error) {
	a := sp.Audience
	switch {
	case a.All:
		n, _ := audience.ParseRule("all")
		return s.o.Audience.Evaluate(ctx, app, n)
	case len(a.Users) > 0:
		u := append([]string(nil), a.Users...)
		sortDedupe(&u)
		return u, nil
	case a.Tags != "":
		n, err := audience.ParseTags(a.Tags)
		if err != nil {
			return nil, invalid("audience.tags", "%v", err)
		}
		return s.o.Audience.Evaluate(ctx, app, n)
	case a.Segment != "":
		us, err := s.o.Audience.SegmentUsers(ctx, app, a.Segment)
		if errors.Is(err, storage.ErrNotFound) {
			return nil, invalid("audience.segment", "the segment %q was deleted", a.Segment)
		}
		return us, err
	case a.Channel != "":
		us, err := s.o.Directory.ChannelMembers(ctx, app, a.Channel)
		if errors.Is(err, storage.ErrNotFound) {
			return nil, invalid("audience.channel", "no conversation %q", a.Channel)
		}
		if err != nil {
			return nil, err
		}
		us = append([]string(nil), us...)
		sortDedupe(&us)
		return us, nil
	}
	return nil, invalid("audience", "empty")
}

func sortDedupe(u *[]string) {
	s := *u
	sortStrings(s)
	out := s[:0]
	for i, x := range s {
		if i == 0 || x != s[i-1] {
			out = append(out, x)
		}
	}
	*u = out
}

// inQuiet reports whether now falls in q in the time zone tz.
func inQuiet(q *QuietHours, tz string, now time.Time) bool {
	if q == nil {
		return false
	}
	start, _ := hm(q.Start)
	end, _ := hm(q.End)
	if start == end {
		return false
	}
	loc := time.UTC
	if tz != "" {
		if l, err := time.LoadLocation(tz); err == nil {
			loc = l
		}
	}
	t := now.In(loc)
	m := t.Hour()*60 + t.Minute()
	if start < end {
		return m >= start && m < end
	}
	return m >= start || m < end
}

// InAppPayload is the JSON published to a user's downlink topic for a
// campaign: kind "push".
type InAppPayload struct {
	Kind     string            `json:"kind"` // "push"
	Campaign string            `json:"campaign"`
	Title    string            `json:"title,omitempty"`
	Body     string            `json:"body"`
	Data     map[string]string `json:"data,omitempty"`
	Message  json.RawMessage   `json:"message,omitempty"`
	Expires  int64             `json:"expires,omitempty"` // Unix milliseconds
}

// chunk handles one slice of the audience and commits its outcomes.
func (s *Service) chunk(ctx context.Context, app, id string, sp Spec, users []string) error {
	now := s.o.Now().UTC()
	day := now.Format("20060102")
	done, err := s.o.Store.CampaignDone(ctx, app, id, users)
	if err != nil {
		return err
	}
	caps := map[string]int{}
	if sp.FrequencyCap > 0 {
		if caps, err = s.o.Store.CapCounts(ctx, app, day, users); err != nil {
			return err
		}
	}
	ch := storage.CampaignChunk{Outcomes: map[string]string{}, Day: day}
	skip := func(u, reason string) {
		ch.Outcomes[u] = "skipped:" + reason
		ch.Delta.Skipped++
		if ch.Delta.SkippedBy == nil {
			ch.Delta.SkippedBy = map[string]int64{}
		}
		ch.Delta.SkippedBy[reason]++
	}
	var inapp, push []string
	expired := !sp.ExpiresAt.IsZero() && !now.Before(sp.ExpiresAt)
	for _, u := range users {
		if done[u] {
			continue
		}
		ch.Delta.Targeted++
		if expired {
			skip(u, "expired")
			continue
		}
		r, err := s.o.Directory.Reach(ctx, app, u)
		if err != nil {
			return err
		}
		switch {
		case !r.Exists:
			skip(u, "no_user")
		case r.Disabled:
			skip(u, "disabled")
		case r.PushOff:
			skip(u, "push_off")
		case r.Quiet || inQuiet(sp.QuietHours, r.TimeZone, now):
			skip(u, "quiet_hours")
		case sp.FrequencyCap > 0 && caps[u] >= sp.FrequencyCap:
			skip(u, "frequency_cap")
		case r.Online:
			inapp = append(inapp, u)
		default:
			push = append(push, u)
		}
	}
	if len(inapp) > 0 {
		p := InAppPayload{Kind: protocol.KindPush, Campaign: id, Title: sp.Notification.Title, Body: sp.Notification.Body,
			Data: sp.Notification.Data, Message: sp.Message}
		if !sp.ExpiresAt.IsZero() {
			p.Expires = sp.ExpiresAt.UnixMilli()
		}
		b, err := json.Marshal(p)
		if err != nil {
			return err
		}
		for _, u := range inapp {
			s.o.Transport.InApp(app, u, b)
			ch.Outcomes[u] = "delivered"
			ch.Delta.Delivered++
			ch.Capped = append(ch.Capped, u)
		}
	}
	if len(push) > 0 {
		n := sp.Notification
		counts, err := s.o.Transport.Push(ctx, app, push, PushNote{Campaign: id, Title: n.Title, Body: n.Body, Data: n.Data,
			Sound: n.Sound, Expires: sp.ExpiresAt})
		if err != nil {
			return err
		}
		for _, u := range push {
			if k := counts[u]; k > 0 {
				ch.Outcomes[u] = "pushed"
				ch.Delta.Pushed++
				ch.Delta.Notifications += int64(k)
				ch.Capped = append(ch.Capped, u)
			} else {
				skip(u, "unreachable")
			}
		}
	}
	if len(ch.Outcomes) == 0 {
		return nil
	}
	// Every user reached counts towards the daily cap, whether or not this
	// campaign has one: a later campaign may.
	if err := s.o.Store.CommitCampaignChunk(ctx, app, id, ch); err != nil {
		return err
	}
	s.handled.Add(uint64(len(ch.Outcomes)))
	return nil
}

// Handled is how many users this Service gave an outcome since it started.
func (s *Service) Handled() uint64 { return s.handled.Load() }
