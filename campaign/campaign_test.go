package campaign_test

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/warblerim/warbler/audience"
	"github.com/warblerim/warbler/campaign"
	"github.com/warblerim/warbler/storage"
	"github.com/warblerim/warbler/storage/badgerstore"
)

// These tests run the runner over a real store; the directory and the
// transport are stand-ins recording what the runner decided (the whole
// path, with MQTT and APNs, is tested in package broker).

type world struct {
	mu     sync.Mutex
	reach  map[string]campaign.Reach
	inapp  []string
	pushed []string
}

func (w *world) Reach(_ context.Context, app, user string) (campaign.Reach, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.reach[user], nil
}

func (w *world) ChannelMembers(context.Context, string, string) ([]string, error) {
	return nil, storage.ErrNotFound
}

func (w *world) InApp(app, user string, payload []byte) {
	var p campaign.InAppPayload
	if json.Unmarshal(payload, &p) != nil || p.Kind != "push" {
		panic("bad payload")
	}
	w.mu.Lock()
	w.inapp = append(w.inapp, user)
	w.mu.Unlock()
}

func (w *world) Push(_ context.Context, app string, users []string, n campaign.PushNote) (map[string]int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := map[string]int{}
	for _, u := range users {
		w.pushed = append(w.pushed, u)
		out[u] = 1
	}
	return out, nil
}

type env struct {
	t     *testing.T
	db    *badgerstore.DB
	store *badgerstore.CampaignStore
	w     *world
	now   time.Time
	mu    sync.Mutex
}

func newEnv(t *testing.T) *env {
	db, err := badgerstore.Open(t.TempDir(), badgerstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	e := &env{t: t, db: db, store: badgerstore.NewCampaignStore(db), w: &world{reach: map[string]campaign.Reach{}},
		now: time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)}
	ids := badgerstore.NewIdentityStore(db)
	var users []storage.User
	for _, u := range []string{"a", "b", "c", "d"} {
		users = append(users, storage.User{App: "app", ID: u, Tags: []string{"t"}})
	}
	if err := ids.CreateUsers(context.Background(), users); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *env) clock() time.Time { e.mu.Lock(); defer e.mu.Unlock(); return e.now }

func (e *env) service() *campaign.Service {
	ids := badgerstore.NewIdentityStore(e.db)
	aud := badgerstore.NewAudienceStore(e.db)
	as, err := audience.New(audience.Options{Index: ids, Users: ids, Events: aud, Segments: aud, Now: e.clock})
	if err != nil {
		e.t.Fatal(err)
	}
	s, err := campaign.New(campaign.Options{Store: e.store, Audience: as, Directory: e.w, Transport: e.w, ChunkSize: 2,
		FlushEvery: 10 * time.Millisecond, Now: e.clock})
	if err != nil {
		e.t.Fatal(err)
	}
	return s
}

// wait waits until the campaign is no longer scheduled or running.
func wait(t *testing.T, s *campaign.Service, id string) storage.Campaign {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		c, err := s.Get(context.Background(), "app", id)
		if err != nil {
			t.Fatal(err)
		}
		if c.State != storage.CampaignScheduled && c.State != storage.CampaignRunning {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("campaign still %s", c.State)
		}
	}
}

func balanced(t *testing.T, st storage.CampaignStats) {
	t.Helper()
	var sum int64
	for _, n := range st.SkippedBy {
		sum += n
	}
	if st.Targeted != st.Delivered+st.Pushed+st.Skipped || sum != st.Skipped {
		t.Fatalf("stats do not add up: %+v", st)
	}
}

func TestRules(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.w.reach = map[string]campaign.Reach{
		"a": {Exists: true, Online: true},
		"b": {Exists: true, TimeZone: "Asia/Tokyo"}, // 21:00 there: in the campaign's quiet hours
		"c": {Exists: true, TimeZone: "UTC"},
		"d": {Exists: true, Quiet: true}, // the user's own do-not-disturb
	}
	s := e.service()
	s.Start()
	defer s.Close()
	c, created, err := s.Submit(ctx, "app", campaign.Spec{Audience: campaign.Audience{Tags: "t"},
		Notification: campaign.Notification{Body: "hi"}, QuietHours: &campaign.QuietHours{Start: "20:00", End: "23:00"}, FrequencyCap: 1})
	if err != nil || !created {
		t.Fatal(err)
	}
	st := wait(t, s, c.ID).Stats
	balanced(t, st)
	if st.Targeted != 4 || st.Delivered != 1 || st.Pushed != 1 || st.SkippedBy["quiet_hours"] != 2 {
		t.Fatalf("first campaign: %+v", st)
	}
	// a and c reached their cap of one campaign today; b and d did not.
	c2, _, err := s.Submit(ctx, "app", campaign.Spec{Audience: campaign.Audience{Users: []string{"a", "c", "c", "x"}},
		Notification: campaign.Notification{Body: "again"}, FrequencyCap: 1})
	if err != nil {
		t.Fatal(err)
	}
	st = wait(t, s, c2.ID).Stats
	balanced(t, st)
	if st.Targeted != 3 || st.SkippedBy["frequency_cap"] != 2 || st.SkippedBy["no_user"] != 1 {
		t.Fatalf("capped campaign: %+v", st)
	}
	// Past the window: everyone is skipped as expired.
	c3, _, err := s.Submit(ctx, "app", campaign.Spec{Audience: campaign.Audience{All: true}, Notification: campaign.Notification{Body: "x"},
		ScheduleAt: e.clock().Add(time.Minute), ExpiresAt: e.clock().Add(2 * time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	e.mu.Lock()
	e.now = e.now.Add(3 * time.Minute)
	e.mu.Unlock()
	s.Outcome("app", c.ID, storage.PushAccepted) // any write wakes nothing; poke with a new submit
	c4, _, _ := s.Submit(ctx, "app", campaign.Spec{Audience: campaign.Audience{Users: []string{"zz"}}, Notification: campaign.Notification{Body: "x"}})
	wait(t, s, c4.ID)
	st = wait(t, s, c3.ID).Stats
	if st.Targeted != 4 || st.SkippedBy["expired"] != 4 {
		t.Fatalf("expired campaign: %+v", st)
	}
	if got := wait(t, s, c.ID).Stats.Accepted; got != 1 {
		t.Fatalf("accepted = %d", got)
	}
	e.w.mu.Lock()
	defer e.w.mu.Unlock()
	if !slices.Equal(e.w.inapp, []string{"a"}) || !slices.Equal(e.w.pushed, []string{"c"}) {
		t.Fatalf("in-app %v, pushed %v", e.w.inapp, e.w.pushed)
	}
}

// TestResumeSkipsUsersWithAnOutcome stores a running campaign whose first
// users already have outcomes (as a crash would leave it) and checks that
// a new Service finishes it without reaching them again.
func TestResumeSkipsUsersWithAnOutcome(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	for _, u := range []string{"a", "b", "c", "d"} {
		e.w.reach[u] = campaign.Reach{Exists: true}
	}
	spec, _ := json.Marshal(campaign.Spec{Audience: campaign.Audience{Tags: "t"}, Notification: campaign.Notification{Body: "hi"}})
	c := storage.Campaign{App: "app", ID: "c1", Spec: spec, State: storage.CampaignRunning, ScheduleAt: e.now, CreatedAt: e.now}
	if _, _, err := e.store.CreateCampaign(ctx, c, time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := e.store.CommitCampaignChunk(ctx, "app", "c1", storage.CampaignChunk{Outcomes: map[string]string{"a": "pushed", "b": "pushed"},
		Delta: storage.CampaignStats{Targeted: 2, Pushed: 2, Notifications: 2}}); err != nil {
		t.Fatal(err)
	}
	s := e.service()
	s.Start()
	defer s.Close()
	st := wait(t, s, "c1").Stats
	balanced(t, st)
	if st.Targeted != 4 || st.Pushed != 4 {
		t.Fatalf("stats %+v", st)
	}
	e.w.mu.Lock()
	defer e.w.mu.Unlock()
	if !slices.Equal(e.w.pushed, []string{"c", "d"}) {
		t.Fatalf("pushed %v, want only c and d", e.w.pushed)
	}
}

func TestCancelAndDedupe(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	s := e.service()
	s.Start()
	defer s.Close()
	sp := campaign.Spec{Audience: campaign.Audience{All: true}, Notification: campaign.Notification{Body: "x"},
		ScheduleAt: e.now.Add(time.Hour), DedupeKey: "k"}
	c, created, err := s.Submit(ctx, "app", sp)
	if err != nil || !created {
		t.Fatal(err)
	}
	again, created, err := s.Submit(ctx, "app", sp)
	if err != nil || created || again.ID != c.ID {
		t.Fatalf("dedupe: %v %v %v", again.ID, created, err)
	}
	if c, err = s.Cancel(ctx, "app", c.ID); err != nil || c.State != storage.CampaignCanceled {
		t.Fatalf("cancel: %+v %v", c, err)
	}
	if _, err := s.Cancel(ctx, "app", c.ID); !errors.Is(err, campaign.ErrInvalid) {
		t.Fatalf("second cancel: %v", err)
	}
	if _, err := s.Get(ctx, "other", c.ID); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("another app's campaign: %v", err)
	}
}

func TestValidate(t *testing.T) {
	now := time.Now()
	n := campaign.Notification{Body: "x"}
	for name, sp := range map[string]campaign.Spec{
		"no audience":      {Notification: n},
		"two audiences":    {Audience: campaign.Audience{All: true, Tags: "a"}, Notification: n},
		"bad expression":   {Audience: campaign.Audience{Tags: "a AND"}, Notification: n},
		"bad user":         {Audience: campaign.Audience{Users: []string{"a/b"}}, Notification: n},
		"no body":          {Audience: campaign.Audience{All: true}},
		"bad message":      {Audience: campaign.Audience{All: true}, Notification: n, Message: json.RawMessage(`{`)},
		"too far":          {Audience: campaign.Audience{All: true}, Notification: n, ScheduleAt: now.Add(40 * 24 * time.Hour)},
		"expired":          {Audience: campaign.Audience{All: true}, Notification: n, ExpiresAt: now.Add(-time.Minute)},
		"bad quiet hours":  {Audience: campaign.Audience{All: true}, Notification: n, QuietHours: &campaign.QuietHours{Start: "25:00", End: "07:00"}},
		"negative cap":     {Audience: campaign.Audience{All: true}, Notification: n, FrequencyCap: -1},
		"reserved data":    {Audience: campaign.Audience{All: true}, Notification: campaign.Notification{Body: "x", Data: map[string]string{"campaign": "x"}}},
		"slash dedupe key": {Audience: campaign.Audience{All: true}, Notification: n, DedupeKey: "a/b"},
	} {
		if _, err := campaign.Validate(&sp, now); !errors.Is(err, campaign.ErrInvalid) {
			t.Errorf("%s: %v, want invalid", name, err)
		}
	}
}
