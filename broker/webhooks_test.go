package broker

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/warblerim/warbler/identity"
	"github.com/warblerim/warbler/internal/mqtttest"
	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage"
	"github.com/warblerim/warbler/storage/badgerstore"
	"github.com/warblerim/warbler/webhook"
)

// The webhook tests run the whole server on loopback with real receivers
// (httptest servers); loopback receivers need webhooks.allow_private,
// except in the test of the SSRF guard, which runs with the default.

// hookEvent is a request a receiver got, with the event it carried.
type hookEvent struct {
	path   string
	header http.Header
	body   []byte
	ID     string          `json:"id"`
	Type   string          `json:"type"`
	App    string          `json:"app"`
	Data   json.RawMessage `json:"data"`
	status int             // what the receiver answered
}

// hookReceiver is a local webhook receiver. status decides the answer to
// the n-th request (from 1); nil answers 200.
type hookReceiver struct {
	*httptest.Server
	status func(n int) int
	n      atomic.Int64
	mu     sync.Mutex
	got    []hookEvent
	ch     chan hookEvent
}

func newHookReceiver(t *testing.T, status func(n int) int) *hookReceiver {
	r := &hookReceiver{status: status, ch: make(chan hookEvent, 1000)}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		b, _ := io.ReadAll(req.Body)
		ev := hookEvent{path: req.URL.Path, header: req.Header.Clone(), body: b, status: 200}
		_ = json.Unmarshal(b, &ev)
		if r.status != nil {
			ev.status = r.status(int(r.n.Add(1)))
		}
		r.mu.Lock()
		r.got = append(r.got, ev)
		r.mu.Unlock()
		w.WriteHeader(ev.status)
		r.ch <- ev
	}))
	t.Cleanup(r.Close)
	return r
}

// wait returns the next request for which ok is true, skipping others.
func (r *hookReceiver) wait(t *testing.T, what string, ok func(hookEvent) bool) hookEvent {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case ev := <-r.ch:
			if ok(ev) {
				return ev
			}
		case <-deadline:
			t.Fatalf("the receiver got no %s", what)
		}
	}
}

// verifySignature checks the Warbler-Signature header the way a receiver
// in any language would, from the documented scheme alone.
func verifySignature(t *testing.T, ev hookEvent, secret string) {
	t.Helper()
	var ts string
	var sigs []string
	for _, p := range strings.Split(ev.header.Get("Warbler-Signature"), ",") {
		k, v, _ := strings.Cut(p, "=")
		switch k {
		case "t":
			ts = v
		case "v1":
			sigs = append(sigs, v)
		}
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || time.Since(time.Unix(sec, 0)).Abs() > 5*time.Minute {
		t.Fatalf("signature timestamp %q", ts)
	}
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(ts + "." + string(ev.body)))
	want := hex.EncodeToString(m.Sum(nil))
	for _, s := range sigs {
		if hmac.Equal([]byte(s), []byte(want)) {
			return
		}
	}
	t.Fatalf("no signature in %q matches the body under the secret", ev.header.Get("Warbler-Signature"))
}

// keyCall makes an API request with key and decodes a JSON answer.
func keyCall(t *testing.T, s *Server, key, method, path string, body any) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, _ := json.Marshal(body)
		rd = bytes.NewReader(j)
	}
	req, _ := http.NewRequest(method, "http://"+s.Addrs().HTTP+path, rd)
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	raw, _ := io.ReadAll(resp.Body)
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &out); err != nil {
			t.Fatalf("%s %s: %d, not JSON: %s", method, path, resp.StatusCode, raw)
		}
	}
	return resp.StatusCode, out
}

// createHook creates an endpoint of the demo app and returns its ID and
// secret.
func createHook(t *testing.T, s *Server, key, url string, events ...string) (string, string) {
	t.Helper()
	code, out := keyCall(t, s, key, "POST", "/v1/apps/demo/webhooks", map[string]any{"url": url, "events": events})
	if code != http.StatusCreated {
		t.Fatalf("create webhook: %d %v", code, out)
	}
	secret, _ := out["secret"].(string)
	if !strings.HasPrefix(secret, "whsec_") || out["id"] == "" || out["enabled"] != true {
		t.Fatalf("create webhook: %v", out)
	}
	return out["id"].(string), secret
}

func fastHooks(c *Config) {
	c.Webhooks.AllowPrivate = true
	c.Webhooks.RetryBase = Duration(20 * time.Millisecond)
	c.Webhooks.RetryMax = Duration(200 * time.Millisecond)
}

// TestWebhookEvents: message.created with the stored envelope, user
// online/offline and conversation.updated reach a subscribed endpoint,
// signed; an endpoint subscribed to other types gets none of them.
func TestWebhookEvents(t *testing.T) {
	s := startServer(t, fastHooks)
	admin := adminKey(t, s)
	all := newHookReceiver(t, nil)
	allID, secret := createHook(t, s, admin, all.URL+"/all", "message.*", "conversation.updated", "user.*")
	offline := newHookReceiver(t, nil)
	createHook(t, s, admin, offline.URL+"/offline", "user.offline")

	alice := chatConnect(t, s, mqtttest.DialTCP(t, s.Addrs().MQTT), "alice", "phone")
	on := all.wait(t, "user.online", func(ev hookEvent) bool { return ev.Type == "user.online" })
	verifySignature(t, on, secret)
	if string(on.Data) != `{"device":"phone","user":"alice"}` || on.App != "demo" {
		t.Fatalf("user.online data %s app %s", on.Data, on.App)
	}
	bob := chatConnect(t, s, mqtttest.DialTCP(t, s.Addrs().MQTT), "bob", "laptop")

	body := map[string]any{"text": "hello", "nested": map[string]any{"n": 1.5, "list": []any{"a", nil, true}}}
	ack := alice.request(t, map[string]any{"to": "bob", "cmid": "c1", "type": "text", "body": body})
	stored := bob.expectMsg(t, ack["conv"].(string), 1)
	ev := all.wait(t, "message.created", func(ev hookEvent) bool { return ev.Type == "message.created" })
	verifySignature(t, ev, secret)
	if ev.header.Get("Warbler-Event-Id") != ev.ID || ev.header.Get("Warbler-Event-Type") != "message.created" || !strings.HasPrefix(ev.ID, "evt_") {
		t.Fatalf("headers %v, event %s", ev.header, ev.ID)
	}
	var data struct{ Message protocol.Message }
	if err := json.Unmarshal(ev.Data, &data); err != nil {
		t.Fatal(err)
	}
	// The envelope is the one devices got, body untouched.
	want, _ := json.Marshal(stored)
	got, _ := json.Marshal(data.Message)
	if !bytes.Equal(want, got) {
		t.Fatalf("webhook envelope %s\nstored %s", got, want)
	}

	// An edit and a reaction are message.updated, with a ref to the
	// original.
	conv := ack["conv"].(string)
	alice.request(t, map[string]any{"op": "edit", "conv": conv, "id": stored.ID, "seq": stored.Seq, "body": map[string]string{"text": "hello!"}})
	bob.request(t, map[string]any{"op": "react", "conv": conv, "id": stored.ID, "seq": stored.Seq, "emoji": "👍"})
	updates := map[string]bool{} // deliveries are not ordered
	for range 2 {
		ev := all.wait(t, "message.updated", func(ev hookEvent) bool { return ev.Type == "message.updated" })
		var d struct{ Message protocol.Message }
		if err := json.Unmarshal(ev.Data, &d); err != nil || d.Message.Ref == nil || d.Message.Ref.ID != stored.ID {
			t.Fatalf("message.updated: %s", ev.Data)
		}
		updates[d.Message.Type] = true
	}
	if !updates[protocol.TypeEdit] || !updates[protocol.TypeReaction] {
		t.Fatalf("message.updated types %v, want an edit and a reaction", updates)
	}

	// A group: created, then a member added.
	creds(t, s, "carol", "phone")
	info := alice.request(t, map[string]any{"op": "create", "kind": "group", "conv": "g1", "name": "G", "members": []string{"bob"}})
	if info["conv"] == nil {
		t.Fatalf("create: %v", info)
	}
	alice.request(t, map[string]any{"op": "add", "conv": "g1", "members": []string{"carol"}})
	changes := map[string]bool{}
	for range 2 {
		ev := all.wait(t, "conversation.updated", func(ev hookEvent) bool { return ev.Type == "conversation.updated" })
		var d struct {
			Conv, Change string
			Message      protocol.Message
		}
		if err := json.Unmarshal(ev.Data, &d); err != nil || d.Conv != "g1" || d.Message.Type != protocol.TypeSystem {
			t.Fatalf("conversation.updated: %s", ev.Data)
		}
		changes[d.Change] = true
	}
	if !changes["created"] || !changes["added"] {
		t.Fatalf("conversation.updated changes %v, want created and added", changes)
	}

	// Offline goes to both; the second endpoint got nothing else.
	if err := bob.Client.Disconnect(&paho.Disconnect{}); err != nil {
		t.Fatal(err)
	}
	for _, r := range []*hookReceiver{all, offline} {
		ev := r.wait(t, "user.offline", func(ev hookEvent) bool { return ev.Type == "user.offline" })
		var d struct {
			User, Device string
			LastSeen     int64 `json:"last_seen"`
		}
		if err := json.Unmarshal(ev.Data, &d); err != nil || d.User != "bob" || d.Device != "laptop" || time.Since(time.UnixMilli(d.LastSeen)).Abs() > time.Minute {
			t.Fatalf("user.offline %s", ev.Data)
		}
	}
	offline.mu.Lock()
	n := len(offline.got)
	offline.mu.Unlock()
	if n != 1 {
		t.Fatalf("the user.offline endpoint got %d requests, want only the one event", n)
	}

	// The log lists what was delivered.
	code, out := keyCall(t, s, admin, "GET", "/v1/apps/demo/webhooks/"+allID+"/deliveries?limit=100", nil)
	if code != 200 {
		t.Fatalf("deliveries: %d %v", code, out)
	}
	ds := out["deliveries"].([]any)
	if len(ds) < 6 {
		t.Fatalf("deliveries %v", ds)
	}
}

// TestWebhookRetriedThroughFailingReceiver: a receiver that answers 500
// twice gets the same event, signed each time, until it answers 200; the
// log shows the three attempts.
func TestWebhookRetriedThroughFailingReceiver(t *testing.T) {
	s := startServer(t, fastHooks)
	admin := adminKey(t, s)
	recv := newHookReceiver(t, func(n int) int {
		if n <= 2 {
			return 500
		}
		return 200
	})
	id, secret := createHook(t, s, admin, recv.URL, "*")
	code, out := keyCall(t, s, admin, "POST", "/v1/apps/demo/webhooks/"+id+"/test", nil)
	if code != http.StatusAccepted || out["event_type"] != "webhook.test" {
		t.Fatalf("test: %d %v", code, out)
	}
	delivery := out["id"].(string)
	var ids []string
	for range 3 {
		ev := recv.wait(t, "an attempt", func(hookEvent) bool { return true })
		verifySignature(t, ev, secret)
		ids = append(ids, ev.ID)
	}
	if ids[0] != ids[1] || ids[1] != ids[2] || ids[0] != out["event_id"] {
		t.Fatalf("event IDs across retries %v, want one", ids)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		code, d := keyCall(t, s, admin, "GET", "/v1/apps/demo/webhooks/"+id+"/deliveries/"+delivery, nil)
		if code == 200 && d["state"] == "succeeded" {
			att := d["attempts"].([]any)
			if d["tries"] != 3.0 || len(att) != 3 || att[0].(map[string]any)["status"] != 500.0 || att[2].(map[string]any)["status"] != 200.0 {
				t.Fatalf("delivery log %v", d)
			}
			if d["payload"].(map[string]any)["id"] != ids[0] {
				t.Fatalf("payload %v", d["payload"])
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("delivery: %d %v", code, d)
		}
	}
	// Sent again on request: a new delivery of the same event.
	code, out = keyCall(t, s, admin, "POST", "/v1/apps/demo/webhooks/"+id+"/deliveries/"+delivery+"/redeliver", nil)
	if code != http.StatusAccepted || out["event_id"] != ids[0] || out["id"] == delivery {
		t.Fatalf("redeliver: %d %v", code, out)
	}
	again := recv.wait(t, "the redelivery", func(hookEvent) bool { return true })
	verifySignature(t, again, secret)
	if again.ID != ids[0] || again.header.Get("Warbler-Delivery-Id") != out["id"] {
		t.Fatalf("redelivery event %s delivery %s", again.ID, again.header.Get("Warbler-Delivery-Id"))
	}
	if code, _ := keyCall(t, s, admin, "POST", "/v1/apps/demo/webhooks/"+id+"/deliveries/wd_none/redeliver", nil); code != http.StatusNotFound {
		t.Fatalf("redeliver of an unknown delivery: %d", code)
	}

	// The metrics count the attempts by result, and the queue empties.
	wants := []string{`warbler_webhook_attempts_total{result="retry"} 2`, `warbler_webhook_attempts_total{result="success"} 2`,
		"warbler_webhook_queue_depth 0", `warbler_webhook_events_total{type="webhook.test"} 1`, "warbler_webhook_inflight "}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		resp, err := http.Get("http://" + s.Addrs().HTTP + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		missing := ""
		for _, want := range wants {
			if !strings.Contains(string(body), want) {
				missing = want
			}
		}
		if missing == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics lack %q", missing)
		}
	}
}

// TestWebhooksSurviveRestart: events queued while the receiver is down,
// and still queued when the server stops, are all delivered by the next
// server on the same data directory.
func TestWebhooksSurviveRestart(t *testing.T) {
	var up atomic.Bool
	recv := newHookReceiver(t, func(int) int {
		if up.Load() {
			return 200
		}
		return 503
	})
	cfg := loopbackConfig(t)
	fastHooks(&cfg)
	cfg.Webhooks.MaxAttempts = 1000
	start := func() *Server {
		s, err := New(cfg, Options{Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Shutdown(context.Background()) })
		return s
	}
	s := start()
	admin := adminKey(t, s)
	id, secret := createHook(t, s, admin, recv.URL, "message.created")

	const n = 20
	alice := chatConnect(t, s, mqtttest.DialTCP(t, s.Addrs().MQTT), "alice", "phone")
	creds(t, s, "bob", "phone")
	for i := range n {
		alice.request(t, map[string]any{"to": "bob", "cmid": fmt.Sprint("m", i), "type": "text", "body": map[string]int{"i": i}})
	}
	// Every event has been tried (and refused) at least once.
	tried := map[string]bool{}
	for len(tried) < n {
		ev := recv.wait(t, "a refused attempt", func(ev hookEvent) bool { return ev.Type == "message.created" })
		tried[ev.ID] = true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	for len(recv.ch) > 0 {
		<-recv.ch
	}

	up.Store(true)
	s = start()
	delivered := map[string]bool{}
	for len(delivered) < n {
		ev := recv.wait(t, "a delivery after the restart", func(ev hookEvent) bool { return ev.status == 200 })
		verifySignature(t, ev, secret)
		if !tried[ev.ID] {
			t.Fatalf("unknown event %s after the restart", ev.ID)
		}
		delivered[ev.ID] = true
	}
	code, out := keyCall(t, s, admin, "GET", "/v1/apps/demo/webhooks/"+id+"/deliveries?limit=100", nil)
	if code != 200 || len(out["deliveries"].([]any)) != n {
		t.Fatalf("log: %d %v", code, out)
	}
}

// TestWebhookSSRFGuard: with the default configuration, endpoints on
// loopback, private, link-local and unique-local addresses are refused;
// allow_cidrs opens one range.
func TestWebhookSSRFGuard(t *testing.T) {
	s := startServer(t, nil)
	admin := adminKey(t, s)
	recv := newHookReceiver(t, nil)
	for _, u := range []string{
		recv.URL, "http://localhost:8080/", "http://169.254.169.254/latest/meta-data", "http://10.0.0.1/",
		"http://192.168.1.10:8443/", "http://[::1]/", "http://[fd00::1]/", "http://[::ffff:127.0.0.1]/", "http://0.0.0.0/",
	} {
		code, out := keyCall(t, s, admin, "POST", "/v1/apps/demo/webhooks", map[string]any{"url": u, "events": []string{"*"}})
		msg := fmt.Sprint(out["error"])
		if code != http.StatusBadRequest || !strings.Contains(msg, "allow_private") {
			t.Errorf("%s: %d %v, want 400 refused", u, code, out)
		}
	}
	for _, u := range []string{"ftp://example.com/", "http://user:pw@example.com/", "not a url"} {
		if code, out := keyCall(t, s, admin, "POST", "/v1/apps/demo/webhooks", map[string]any{"url": u, "events": []string{"*"}}); code != http.StatusBadRequest {
			t.Errorf("%s: %d %v", u, code, out)
		}
	}

	s2 := startServer(t, func(c *Config) { c.Webhooks.AllowCIDRs = []string{"127.0.0.0/8"} })
	id, _ := createHook(t, s2, adminKey(t, s2), recv.URL, "*")
	if code, out := keyCall(t, s2, adminKey(t, s2), "POST", "/v1/apps/demo/webhooks/"+id+"/test", nil); code != http.StatusAccepted {
		t.Fatalf("test: %d %v", code, out)
	}
	recv.wait(t, "the test event through the allowed range", func(ev hookEvent) bool { return ev.Type == "webhook.test" })
}

// TestWebhookRoutesAuth: keys, scopes, cross-app 404s and bad bodies.
func TestWebhookRoutesAuth(t *testing.T) {
	s := startServer(t, fastHooks)
	admin := adminKey(t, s)
	ctx := context.Background()
	if _, err := s.Identity().CreateApp(ctx, identity.AppSpec{ID: "other", Name: "other"}); err != nil {
		t.Fatal(err)
	}
	mk := func(app string, scopes ...string) string {
		k, _, err := s.Identity().CreateKey(ctx, app, "k", scopes)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	demoAdmin, demoPush, otherAdmin := mk("demo", identity.ScopeAdmin), mk("demo", identity.ScopePush), mk("other", identity.ScopeAdmin)
	recv := newHookReceiver(t, nil)
	id, _ := createHook(t, s, demoAdmin, recv.URL, "user.online")
	otherID, _ := func() (string, string) {
		code, out := keyCall(t, s, otherAdmin, "POST", "/v1/apps/other/webhooks", map[string]any{"url": recv.URL, "events": []string{"*"}})
		if code != 201 {
			t.Fatalf("%d %v", code, out)
		}
		return out["id"].(string), ""
	}()

	base := "/v1/apps/demo/webhooks/" + id
	routes := [][2]string{{"GET", "/v1/apps/demo/webhooks"}, {"POST", "/v1/apps/demo/webhooks"}, {"GET", base}, {"PATCH", base},
		{"DELETE", base}, {"POST", base + "/rotate-secret"}, {"POST", base + "/test"}, {"GET", base + "/deliveries"}, {"GET", base + "/deliveries/wd_x"}}
	for _, r := range routes {
		if code, _ := keyCall(t, s, "", r[0], r[1], nil); code != http.StatusUnauthorized {
			t.Errorf("%s %s without a key: %d", r[0], r[1], code)
		}
		if code, _ := keyCall(t, s, "wk_bogus_key", r[0], r[1], nil); code != http.StatusUnauthorized {
			t.Errorf("%s %s with a bad key: %d", r[0], r[1], code)
		}
		if code, _ := keyCall(t, s, otherAdmin, r[0], r[1], nil); code != http.StatusNotFound {
			t.Errorf("%s %s with another app's key: %d, want 404", r[0], r[1], code)
		}
		if code, _ := keyCall(t, s, demoPush, r[0], r[1], nil); code != http.StatusForbidden {
			t.Errorf("%s %s with a push-only key: %d, want 403", r[0], r[1], code)
		}
	}
	// Another app's endpoint under this app's path, with this app's key or
	// the admin key: 404.
	for _, k := range []string{demoAdmin, admin} {
		if code, _ := keyCall(t, s, k, "GET", "/v1/apps/demo/webhooks/"+otherID, nil); code != http.StatusNotFound {
			t.Errorf("another app's endpoint: %d", code)
		}
		if code, _ := keyCall(t, s, k, "POST", "/v1/apps/demo/webhooks/"+otherID+"/test", nil); code != http.StatusNotFound {
			t.Errorf("another app's endpoint test: %d", code)
		}
	}
	// Bad bodies.
	for _, c := range []struct {
		body []byte
		code int
	}{
		{[]byte(`{"url":`), 400}, {[]byte(`{"url":"http://127.0.0.1/","events":["nope"]}`), 400},
		{[]byte(`{"url":"http://127.0.0.1/"}`), 400}, {[]byte(`{"url":"http://127.0.0.1/","events":["*"],"extra":1}`), 400},
		{[]byte(`{"url":"http://127.0.0.1/","events":["*"],"description":"` + strings.Repeat("x", 20<<10) + `"}`), 413},
	} {
		code, out := keyCall(t, s, demoAdmin, "POST", "/v1/apps/demo/webhooks", c.body)
		if code != c.code || out["error"] == nil {
			t.Errorf("body %.60s: %d %v, want %d", c.body, code, out, c.code)
		}
	}
	// CRUD with the app's admin-scoped key.
	code, out := keyCall(t, s, demoAdmin, "PATCH", base, map[string]any{"events": []string{"message.created"}, "enabled": false, "description": "crm"})
	if code != 200 || out["enabled"] != false || out["description"] != "crm" || fmt.Sprint(out["events"]) != "[message.created]" {
		t.Fatalf("patch: %d %v", code, out)
	}
	code, out = keyCall(t, s, demoAdmin, "POST", base+"/rotate-secret", map[string]any{"grace_seconds": 0})
	if code != 200 || !strings.HasPrefix(fmt.Sprint(out["secret"]), "whsec_") {
		t.Fatalf("rotate: %d %v", code, out)
	}
	code, out = keyCall(t, s, demoAdmin, "GET", "/v1/apps/demo/webhooks", nil)
	if code != 200 || len(out["webhooks"].([]any)) != 1 {
		t.Fatalf("list: %d %v", code, out)
	}
	if strings.Contains(fmt.Sprint(out), "whsec_") {
		t.Fatalf("the list shows a secret: %v", out)
	}
	if code, _ := keyCall(t, s, demoAdmin, "DELETE", base, nil); code != http.StatusNoContent {
		t.Fatalf("delete: %d", code)
	}
	if code, _ := keyCall(t, s, demoAdmin, "GET", base, nil); code != http.StatusNotFound {
		t.Fatalf("get after delete: %d", code)
	}
}

// TestWebhookPushFailed: a notification the (local) APNs server rejects
// for good becomes a signed push.failed event, without the device token.
func TestWebhookPushFailed(t *testing.T) {
	apns := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("apns-id", r.Header.Get("apns-id"))
		w.WriteHeader(http.StatusBadRequest)
		_, _ = io.WriteString(w, `{"reason":"BadDeviceToken"}`)
	}))
	apns.EnableHTTP2 = true
	apns.StartTLS()
	t.Cleanup(apns.Close)
	s := startServer(t, fastHooks)
	admin := adminKey(t, s)
	recv := newHookReceiver(t, nil)
	_, secret := createHook(t, s, admin, recv.URL, "push.failed")

	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	if code, out := keyCall(t, s, admin, "PUT", "/v1/apps/demo/push/credentials/apns", map[string]any{
		"auth_key": string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
		"key_id":   "KEY0000001", "team_id": "TEAM000001", "topic": "com.example.chat", "endpoint": apns.URL,
		"root_cas": string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: apns.Certificate().Raw})),
	}); code != http.StatusOK {
		t.Fatalf("credentials: %d %v", code, out)
	}
	const token = "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9"
	creds(t, s, "bob", "phone")
	if code, out := keyCall(t, s, admin, "PUT", "/v1/apps/demo/users/bob/devices/phone", map[string]any{"platform": "ios", "push_token": token}); code != http.StatusOK {
		t.Fatalf("device: %d %v", code, out)
	}
	if code, out := keyCall(t, s, admin, "POST", "/v1/apps/demo/push/test", map[string]any{"user": "bob", "title": "t", "body": "b"}); code != http.StatusAccepted {
		t.Fatalf("test push: %d %v", code, out)
	}
	ev := recv.wait(t, "push.failed", func(ev hookEvent) bool { return ev.Type == "push.failed" })
	verifySignature(t, ev, secret)
	var d struct {
		User, Device, Provider, Reason string
		Status                         int
	}
	if err := json.Unmarshal(ev.Data, &d); err != nil || d.User != "bob" || d.Device != "phone" || d.Provider != "apns" || d.Status != 400 || !strings.Contains(d.Reason, "BadDeviceToken") {
		t.Fatalf("push.failed %s", ev.Data)
	}
	if strings.Contains(string(ev.body), token) {
		t.Fatalf("push.failed carries the device token: %s", ev.body)
	}
}

func TestWebhooksConfigValidation(t *testing.T) {
	for _, mod := range []func(*WebhooksConfig){
		func(c *WebhooksConfig) { c.AllowCIDRs = []string{"10.0.0.0"} },
		func(c *WebhooksConfig) { c.Workers = 0 },
		func(c *WebhooksConfig) { c.PerEndpoint = -1 },
		func(c *WebhooksConfig) { c.RetryMax = c.RetryBase / 2 },
		func(c *WebhooksConfig) { c.DisableAfter = -1 },
	} {
		cfg := Default()
		mod(&cfg.Webhooks)
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "webhooks") {
			t.Errorf("%+v: %v, want a webhooks error", cfg.Webhooks, err)
		}
	}
	cfg := Default()
	if err := cfg.LoadBytes([]byte("webhooks:\n  allow_cidrs: [\"10.20.0.0/16\"]\n  retry_base: 1s\n  disable_after: 0s\n")); err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil || cfg.Webhooks.RetryBase.D() != time.Second || cfg.Webhooks.Workers != 16 {
		t.Fatalf("%+v %v", cfg.Webhooks, err)
	}
}

// TestWebhookCatchUpAfterLostHandoff: messages that reached the log but
// whose events never reached the queue (the in-memory hand-off lost in a
// crash, simulated by appending to the log of a stopped server) are
// queued at the next start, with the IDs the live path gives them; those
// already queued are not queued again.
func TestWebhookCatchUpAfterLostHandoff(t *testing.T) {
	recv := newHookReceiver(t, nil)
	cfg := loopbackConfig(t)
	fastHooks(&cfg)
	start := func() *Server {
		s, err := New(cfg, Options{Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Shutdown(context.Background()) })
		return s
	}
	s := start()
	createHook(t, s, adminKey(t, s), recv.URL, "message.created")
	alice := chatConnect(t, s, mqtttest.DialTCP(t, s.Addrs().MQTT), "alice", "phone")
	creds(t, s, "bob", "phone")
	ack := alice.request(t, map[string]any{"to": "bob", "cmid": "live", "type": "text", "body": map[string]string{"text": "live"}})
	conv := ack["conv"].(string)
	live := recv.wait(t, "the live event", func(ev hookEvent) bool { return ev.Type == "message.created" })
	var liveData struct{ Message protocol.Message }
	_ = json.Unmarshal(live.Data, &liveData)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}

	// Two messages reach the log while the server is down.
	db, err := badgerstore.Open(cfg.Data, badgerstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	store := badgerstore.NewChat(db, badgerstore.ChatOptions{})
	now := time.Now().UnixMilli()
	var b storage.AppendBatch
	for i, id := range []string{"lost-1", "lost-2"} {
		m := protocol.Message{Kind: protocol.KindMsg, ID: id, Conv: conv, Seq: uint64(2 + i), TS: now, From: protocol.Sender{User: "alice", Device: "phone"},
			Type: "text", Body: json.RawMessage(`{"text":"` + id + `"}`)}
		data, _ := json.Marshal(m)
		b.Entries = append(b.Entries, storage.LogEntry{Conv: conv, Seq: m.Seq, TS: now, Sender: "alice", Data: data})
	}
	if err := store.Append(ctx, "demo", b); err != nil {
		t.Fatal(err)
	}
	_ = store.Close()
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	s = start()
	got := map[string]string{}
	for len(got) < 2 {
		ev := recv.wait(t, "the caught-up events", func(ev hookEvent) bool { return ev.Type == "message.created" })
		var d struct{ Message protocol.Message }
		_ = json.Unmarshal(ev.Data, &d)
		if d.Message.ID == liveData.Message.ID || ev.ID == live.ID {
			t.Fatalf("the event queued before the stop was queued again: %s", ev.body)
		}
		got[d.Message.ID] = ev.ID
	}
	for _, id := range []string{"lost-1", "lost-2"} {
		if got[id] != webhook.LogEventID("demo", id, webhook.EventMessageCreated) {
			t.Fatalf("event of %s: %q, want its log event ID", id, got[id])
		}
	}
	// The catch-up ran before the server started: the log holds the live
	// delivery and the two caught up, no more.
	code, out := keyCall(t, s, adminKey(t, s), "GET", "/v1/apps/demo/webhooks", nil)
	if code != 200 {
		t.Fatal(code)
	}
	id := out["webhooks"].([]any)[0].(map[string]any)["id"].(string)
	if code, out := keyCall(t, s, adminKey(t, s), "GET", "/v1/apps/demo/webhooks/"+id+"/deliveries", nil); code != 200 || len(out["deliveries"].([]any)) != 3 {
		t.Fatalf("deliveries: %d %v", code, out)
	}
}

// waitDelivered waits until a delivery of acme's endpoint is finished.
func waitDelivered(t *testing.T, e *apiEnv, endpoint, delivery string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		r := e.do("GET", "/v1/apps/acme/webhooks/"+endpoint+"/deliveries/"+delivery, e.admin, nil)
		if st, _ := r.body["state"].(string); st == "succeeded" || st == "failed" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("delivery %s not finished: %s", delivery, r.raw)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
