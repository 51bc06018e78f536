package webhook

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/warblerim/warbler/storage"
	"github.com/warblerim/warbler/storage/badgerstore"
)

const waitFor = 20 * time.Second

func TestSignAndVerify(t *testing.T) {
	body := []byte(`{"id":"evt_1","type":"webhook.test"}`)
	now := time.Unix(1_700_000_000, 0)
	h := Sign(now, body, "whsec_new", "whsec_old")
	if !strings.HasPrefix(h, "t=1700000000,v1=") || strings.Count(h, "v1=") != 2 {
		t.Fatalf("header %q", h)
	}
	// The scheme, computed here from its description.
	m := hmac.New(sha256.New, []byte("whsec_new"))
	m.Write([]byte("1700000000." + string(body)))
	if want := "t=1700000000,v1=" + hex.EncodeToString(m.Sum(nil)); !strings.HasPrefix(h, want+",") {
		t.Fatalf("header %q, want prefix %q", h, want)
	}
	for _, sec := range []string{"whsec_new", "whsec_old"} {
		if err := Verify(h, body, sec, now.Add(time.Minute), 5*time.Minute); err != nil {
			t.Fatalf("verify with %s: %v", sec, err)
		}
	}
	cases := []struct {
		header, secret string
		body           []byte
		at             time.Time
		want           error
	}{
		{h, "whsec_other", body, now, ErrBadSignature},
		{h, "whsec_new", []byte(`{"id":"evt_2"}`), now, ErrBadSignature},
		{h, "whsec_new", body, now.Add(time.Hour), ErrStale},
		{"v1=00", "whsec_new", body, now, ErrBadSignatureHeader},
		{"t=1700000000", "whsec_new", body, now, ErrBadSignatureHeader},
		{"garbage", "whsec_new", body, now, ErrBadSignatureHeader},
		{strings.Replace(h, "t=1700000000", "t=1700000001", 1), "whsec_new", body, now, ErrBadSignature},
	}
	for i, c := range cases {
		if err := Verify(c.header, c.body, c.secret, c.at, 5*time.Minute); !errors.Is(err, c.want) {
			t.Errorf("case %d: %v, want %v", i, err, c.want)
		}
	}
}

func TestGuardRanges(t *testing.T) {
	var g Guard
	for _, s := range []string{
		"127.0.0.1", "127.9.9.9", "::1", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "fe80::1",
		"fc00::1", "fd12:3456::1", "224.0.0.1", "ff02::1", "0.0.0.0", "::", "100.64.0.1", "::ffff:127.0.0.1",
		"::ffff:10.0.0.1", "64:ff9b::a00:1", "2002:a00:1::1", "255.255.255.255", "198.18.0.1", "192.0.2.1",
	} {
		if err := g.Allowed(netip.MustParseAddr(s)); !errors.Is(err, ErrRefused) {
			t.Errorf("%s allowed, want refused", s)
		}
	}
	for _, s := range []string{"93.184.216.34", "8.8.8.8", "2606:4700::1111", "::ffff:1.1.1.1"} {
		if err := g.Allowed(netip.MustParseAddr(s)); err != nil {
			t.Errorf("%s refused: %v", s, err)
		}
	}
	g.Allow = []netip.Prefix{netip.MustParsePrefix("10.20.0.0/16")}
	if g.Allowed(netip.MustParseAddr("10.20.3.4")) != nil || g.Allowed(netip.MustParseAddr("10.21.0.1")) == nil {
		t.Error("allow list not applied exactly")
	}
	if (&Guard{AllowPrivate: true}).Allowed(netip.MustParseAddr("127.0.0.1")) != nil {
		t.Error("AllowPrivate refused loopback")
	}
	// The dial-time check on the socket's own address.
	if err := g.control("tcp4", "127.0.0.1:80", nil); !errors.Is(err, ErrRefused) {
		t.Errorf("control let loopback through: %v", err)
	}
}

func TestParseURLAndEvents(t *testing.T) {
	for _, bad := range []string{"", "ftp://example.com/", "example.com/hook", "http://", "http://user:pw@example.com/",
		"https://example.com/#frag", "https://example.com:0/", "https://example.com:99999/", "https://exa mple.com/",
		"https://example.com:/", "http://[fe80::1%25eth0]/", "mailto:x@example.com", strings.Repeat("a", 3000)} {
		if _, err := ParseURL(bad); err == nil {
			t.Errorf("ParseURL(%q) accepted", bad)
		}
	}
	for _, good := range []string{"https://example.com/hook", "http://example.com:8080/a?b=c", "https://[2606:4700::1111]/x"} {
		if _, err := ParseURL(good); err != nil {
			t.Errorf("ParseURL(%q): %v", good, err)
		}
	}
	evs, err := ParseEvents([]string{"user.*", "message.created", "user.*"})
	if err != nil || len(evs) != 2 || evs[0] != "message.created" {
		t.Fatalf("ParseEvents: %v %v", evs, err)
	}
	if !Matches(evs, "user.online") || !Matches(evs, "user.offline") || Matches(evs, "conversation.updated") || Matches(evs, "push.failed") {
		t.Fatal("Matches does not follow the filter")
	}
	for _, bad := range [][]string{nil, {}, {"nope"}, {"user"}, {"*.*"}, {"nope.*"}, {".*"}, {EventTest}, {"message.created.*"}} {
		if _, err := ParseEvents(bad); err == nil {
			t.Errorf("ParseEvents(%q) accepted", bad)
		}
	}
	if evs, _ := ParseEvents([]string{"*"}); !Matches(evs, EventPushFailed) {
		t.Fatal("* does not match every type")
	}
}

// env is a Service over a real Badger store, with a local receiver.
type env struct {
	t    *testing.T
	db   *badgerstore.DB
	dir  string
	svc  *Service
	recv *httptest.Server
	mu   sync.Mutex
	got  []*http.Request
	body [][]byte
	code atomic.Int64 // status the receiver answers
	hits chan struct{}
}

func newEnv(t *testing.T, o Options) *env {
	e := &env{t: t, dir: t.TempDir(), hits: make(chan struct{}, 100)}
	e.code.Store(200)
	e.recv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		e.mu.Lock()
		e.got, e.body = append(e.got, r), append(e.body, b)
		e.mu.Unlock()
		w.WriteHeader(int(e.code.Load()))
		e.hits <- struct{}{}
	}))
	t.Cleanup(e.recv.Close)
	e.open(o)
	return e
}

func (e *env) open(o Options) {
	db, err := badgerstore.Open(e.dir, badgerstore.Options{})
	if err != nil {
		e.t.Fatal(err)
	}
	e.db = db
	o.Store = badgerstore.NewWebhookStore(db, badgerstore.WebhookOptions{})
	o.MasterKey = []byte("0123456789abcdef0123456789abcdef")
	if o.Guard == nil {
		o.Guard = &Guard{AllowPrivate: true}
	}
	if o.RetryBase == 0 {
		o.RetryBase, o.RetryMax = 20*time.Millisecond, 100*time.Millisecond
	}
	e.svc, err = New(o)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := e.svc.Start(context.Background()); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(e.close)
}

func (e *env) close() {
	if e.svc != nil {
		_ = e.svc.Close(context.Background())
		_ = e.db.Close()
		e.svc = nil
	}
}

func (e *env) hit() {
	e.t.Helper()
	select {
	case <-e.hits:
	case <-time.After(waitFor):
		e.t.Fatal("the receiver got no request")
	}
}

// waitDelivery polls the log until fn accepts the delivery.
func (e *env) waitDelivery(app, ep, id string, fn func(storage.WebhookDelivery) bool) storage.WebhookDelivery {
	e.t.Helper()
	deadline := time.Now().Add(waitFor)
	for {
		d, err := e.svc.Delivery(context.Background(), app, ep, id)
		if err == nil && fn(d) {
			return d
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("delivery %s: %+v %v", id, d, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func ptr[T any](v T) *T { return &v }

func TestDeliveryRetriedUntilAccepted(t *testing.T) {
	e := newEnv(t, Options{})
	ctx := context.Background()
	ep, secret, err := e.svc.CreateEndpoint(ctx, "a1", EndpointSpec{URL: ptr(e.recv.URL + "/hook"), Events: ptr([]string{"*"})})
	if err != nil {
		t.Fatal(err)
	}
	e.code.Store(500)
	d, err := e.svc.Test(ctx, "a1", ep.ID)
	if err != nil {
		t.Fatal(err)
	}
	e.hit()
	e.hit()
	e.code.Store(200)
	e.hit()
	got := e.waitDelivery("a1", ep.ID, d.ID, func(d storage.WebhookDelivery) bool { return d.State == storage.WebhookSucceeded })
	if got.Tries != 3 || len(got.Attempts) != 3 || got.Attempts[0].Status != 500 || got.Attempts[2].Status != 200 || got.Attempts[0].Error == "" {
		t.Fatalf("log %+v", got)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for i, r := range e.got {
		if r.Header.Get(HeaderEventID) != d.EventID || r.Header.Get(HeaderDelivery) != d.ID || r.Header.Get(HeaderEventType) != EventTest {
			t.Fatalf("request %d headers %v", i, r.Header)
		}
		if err := Verify(r.Header.Get(HeaderSignature), e.body[i], secret, time.Now(), time.Minute); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		var ev Event
		if err := json.Unmarshal(e.body[i], &ev); err != nil || ev.ID != d.EventID || ev.App != "a1" {
			t.Fatalf("body %s", e.body[i])
		}
	}
}

func TestRotatedSecretSignsDuringGrace(t *testing.T) {
	e := newEnv(t, Options{})
	ctx := context.Background()
	ep, old, err := e.svc.CreateEndpoint(ctx, "a1", EndpointSpec{URL: ptr(e.recv.URL), Events: ptr([]string{"*"})})
	if err != nil {
		t.Fatal(err)
	}
	secret, err := e.svc.RotateSecret(ctx, "a1", ep.ID, time.Hour)
	if err != nil || secret == old {
		t.Fatal(err)
	}
	if _, err := e.svc.Test(ctx, "a1", ep.ID); err != nil {
		t.Fatal(err)
	}
	e.hit()
	e.mu.Lock()
	h, b := e.got[0].Header.Get(HeaderSignature), e.body[0]
	e.mu.Unlock()
	if Verify(h, b, secret, time.Now(), time.Minute) != nil || Verify(h, b, old, time.Now(), time.Minute) != nil {
		t.Fatalf("during the grace both secrets must verify: %s", h)
	}
	if _, err := e.svc.RotateSecret(ctx, "a1", ep.ID, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Test(ctx, "a1", ep.ID); err != nil {
		t.Fatal(err)
	}
	e.hit()
	e.mu.Lock()
	h = e.got[1].Header.Get(HeaderSignature)
	e.mu.Unlock()
	if strings.Count(h, "v1=") != 1 {
		t.Fatalf("without grace one signature: %s", h)
	}
}

// TestDNSRebindingRefusedAtDial: the name resolves to a public address
// when the endpoint is saved and to loopback when the delivery dials; the
// guard refuses the connection and the receiver is never called.
func TestDNSRebindingRefusedAtDial(t *testing.T) {
	var lookups atomic.Int64
	g := &Guard{Resolve: func(ctx context.Context, host string) ([]netip.Addr, error) {
		if host != "rebind.example" {
			return nil, errors.New("no such host")
		}
		if lookups.Add(1) == 1 {
			return []netip.Addr{netip.MustParseAddr("93.184.216.34")}, nil
		}
		return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
	}}
	e := newEnv(t, Options{Guard: g, MaxAttempts: 1})
	ctx := context.Background()
	port := e.recv.URL[strings.LastIndex(e.recv.URL, ":"):]
	ep, _, err := e.svc.CreateEndpoint(ctx, "a1", EndpointSpec{URL: ptr("http://rebind.example" + port + "/"), Events: ptr([]string{"*"})})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.svc.CreateEndpoint(ctx, "a1", EndpointSpec{URL: ptr(e.recv.URL), Events: ptr([]string{"*"})}); err == nil || !strings.Contains(err.Error(), "127.0.0.1") {
		t.Fatalf("loopback endpoint accepted at creation: %v", err)
	}
	d, err := e.svc.Test(ctx, "a1", ep.ID)
	if err != nil {
		t.Fatal(err)
	}
	got := e.waitDelivery("a1", ep.ID, d.ID, func(d storage.WebhookDelivery) bool { return d.State == storage.WebhookFailed })
	if len(got.Attempts) != 1 || !strings.Contains(got.Attempts[0].Error, "refused") {
		t.Fatalf("log %+v", got)
	}
	select {
	case <-e.hits:
		t.Fatal("the receiver was called through a rebound name")
	default:
	}
}

func TestRedirectNotFollowedAndBodyBounded(t *testing.T) {
	e := newEnv(t, Options{MaxAttempts: 1})
	ctx := context.Background()
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Error("redirect followed")
	}))
	defer target.Close()
	redirect := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, target.URL, http.StatusTemporaryRedirect)
	}))
	defer redirect.Close()
	huge := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(400)
		chunk := []byte(strings.Repeat("x", 1<<20))
		for range 64 { // 64 MiB unless the client hangs up
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}))
	defer huge.Close()
	for _, u := range []string{redirect.URL, huge.URL} {
		ep, _, err := e.svc.CreateEndpoint(ctx, "a1", EndpointSpec{URL: ptr(u), Events: ptr([]string{"*"})})
		if err != nil {
			t.Fatal(err)
		}
		d, err := e.svc.Test(ctx, "a1", ep.ID)
		if err != nil {
			t.Fatal(err)
		}
		got := e.waitDelivery("a1", ep.ID, d.ID, func(d storage.WebhookDelivery) bool { return d.State == storage.WebhookFailed })
		if a := got.Attempts[0]; (a.Status != 307 && a.Status != 400) || len(a.Error) > 300 {
			t.Fatalf("attempt %+v", a)
		}
	}
}

func TestQueueSurvivesRestartAndFiltersEvents(t *testing.T) {
	e := newEnv(t, Options{})
	ctx := context.Background()
	e.code.Store(503)
	all, _, err := e.svc.CreateEndpoint(ctx, "a1", EndpointSpec{URL: ptr(e.recv.URL + "/all"), Events: ptr([]string{"message.*"})})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.svc.CreateEndpoint(ctx, "a1", EndpointSpec{URL: ptr(e.recv.URL + "/users"), Events: ptr([]string{"user.offline"})}); err != nil {
		t.Fatal(err)
	}
	off, _, err := e.svc.CreateEndpoint(ctx, "a1", EndpointSpec{URL: ptr(e.recv.URL + "/off"), Events: ptr([]string{"*"}), Enabled: ptr(false)})
	if err != nil || off.Enabled {
		t.Fatal(err)
	}
	for i := range 5 {
		e.svc.Publish("a1", EventMessageCreated, map[string]int{"n": i})
	}
	e.svc.Publish("a2", EventMessageCreated, map[string]int{"n": 99}) // no endpoint
	e.hit()                                                           // the receiver is "down"
	e.close()

	e.mu.Lock()
	e.got, e.body = nil, nil
	e.mu.Unlock()
	e.code.Store(200)
	for len(e.hits) > 0 {
		<-e.hits
	}
	e.open(Options{})
	seen := map[int]bool{}
	for len(seen) < 5 {
		e.hit()
		e.mu.Lock()
		for i, r := range e.got {
			if r.URL.Path != "/all" {
				t.Fatalf("event went to %s", r.URL.Path)
			}
			var ev struct {
				Data struct{ N int }
			}
			_ = json.Unmarshal(e.body[i], &ev)
			seen[ev.Data.N] = true
		}
		e.mu.Unlock()
	}
	ds, err := e.svc.Deliveries(ctx, "a1", all.ID, "", 100)
	if err != nil || len(ds) != 5 {
		t.Fatalf("log: %d %v", len(ds), err)
	}
	for _, d := range ds {
		e.waitDelivery("a1", all.ID, d.ID, func(d storage.WebhookDelivery) bool { return d.State == storage.WebhookSucceeded })
	}
}

func TestEndpointDisabledAfterFailingTooLong(t *testing.T) {
	e := newEnv(t, Options{DisableAfter: time.Nanosecond, MaxAttempts: 100})
	ctx := context.Background()
	e.code.Store(500)
	ep, _, err := e.svc.CreateEndpoint(ctx, "a1", EndpointSpec{URL: ptr(e.recv.URL), Events: ptr([]string{"*"})})
	if err != nil {
		t.Fatal(err)
	}
	e.svc.Publish("a1", EventUserOnline, map[string]string{"user": "u"})
	deadline := time.Now().Add(waitFor)
	for {
		got, err := e.svc.GetEndpoint(ctx, "a1", ep.ID)
		if err == nil && !got.Enabled && strings.Contains(got.Disabled, "HTTP 500") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("endpoint %+v %v", got, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Re-enabling clears the record.
	got, err := e.svc.UpdateEndpoint(ctx, "a1", ep.ID, EndpointSpec{Enabled: ptr(true)})
	if err != nil || !got.Enabled || got.Disabled != "" || !got.FailingSince.IsZero() {
		t.Fatalf("%+v %v", got, err)
	}
}

// TestSlowEndpointDoesNotStarveOthers: with one request in flight per
// endpoint, a receiver that hangs holds one worker, and another endpoint's
// events still go out.
func TestSlowEndpointDoesNotStarveOthers(t *testing.T) {
	e := newEnv(t, Options{Workers: 4, PerEndpoint: 1})
	ctx := context.Background()
	release := make(chan struct{})
	var inFlight, most atomic.Int64
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := inFlight.Add(1)
		for {
			m := most.Load()
			if n <= m || most.CompareAndSwap(m, n) {
				break
			}
		}
		<-release
		inFlight.Add(-1)
	}))
	defer slow.Close()
	defer close(release)
	if _, _, err := e.svc.CreateEndpoint(ctx, "a1", EndpointSpec{URL: ptr(slow.URL), Events: ptr([]string{"user.*"})}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.svc.CreateEndpoint(ctx, "a1", EndpointSpec{URL: ptr(e.recv.URL), Events: ptr([]string{"message.*"})}); err != nil {
		t.Fatal(err)
	}
	for range 8 {
		e.svc.Publish("a1", EventUserOnline, map[string]string{"user": "u"})
	}
	deadline := time.Now().Add(waitFor)
	for inFlight.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the slow receiver got nothing")
		}
		time.Sleep(5 * time.Millisecond)
	}
	for i := range 5 {
		e.svc.Publish("a1", EventMessageCreated, map[string]int{"n": i})
		e.hit()
	}
	if m := most.Load(); m != 1 {
		t.Fatalf("%d requests at once to one endpoint, want at most 1", m)
	}
}
