package broker

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/warblerim/warbler/internal/mqtttest"
	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage"
)

// countingAPNs is a local HTTP/2 TLS server speaking the APNs protocol
// that accepts every token except those starting with "dead", which it
// refuses as BadDeviceToken, and counts the campaign notifications.
type countingAPNs struct {
	*httptest.Server
	mu        sync.Mutex
	campaigns map[string]int // campaign ID -> notifications seen
}

func newCountingAPNs(t *testing.T) *countingAPNs {
	a := &countingAPNs{campaigns: map[string]int{}}
	a.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body map[string]any
		_ = json.NewDecoder(r.Body).Decode(&body)
		a.mu.Lock()
		if c, ok := body["campaign"].(string); ok {
			a.campaigns[c]++
		}
		a.mu.Unlock()
		w.Header().Set("apns-id", r.Header.Get("apns-id"))
		if strings.HasPrefix(strings.TrimPrefix(r.URL.Path, "/3/device/"), "dead") {
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(`{"reason":"BadDeviceToken"}`))
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	a.EnableHTTP2 = true
	a.StartTLS()
	t.Cleanup(a.Close)
	return a
}

func (a *countingAPNs) seen(id string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.campaigns[id]
}

// localFCM is a local HTTP/2 TLS server speaking the FCM v1 protocol: the
// OAuth 2.0 JWT-bearer token exchange (checking the assertion's RS256
// signature against the service account's key) and messages:send with
// the access tokens it issued. Registration tokens starting with "dead"
// are answered 404 UNREGISTERED. It counts campaign notifications.
type localFCM struct {
	*httptest.Server
	key       *rsa.PrivateKey
	mu        sync.Mutex
	issued    map[string]bool
	campaigns map[string]int
}

func newLocalFCM(t *testing.T) *localFCM {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	f := &localFCM{key: key, issued: map[string]bool{}, campaigns: map[string]int{}}
	f.Server = httptest.NewUnstartedServer(http.HandlerFunc(f.handle))
	f.EnableHTTP2 = true
	f.StartTLS()
	t.Cleanup(f.Close)
	return f
}

func (f *localFCM) handle(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	if r.URL.Path == "/token" {
		_ = r.ParseForm()
		parts := strings.Split(r.PostForm.Get("assertion"), ".")
		ok := len(parts) == 3 && r.PostForm.Get("grant_type") == "urn:ietf:params:oauth:grant-type:jwt-bearer"
		if ok {
			sig, err := base64.RawURLEncoding.DecodeString(parts[2])
			sum := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
			ok = err == nil && rsa.VerifyPKCS1v15(&f.key.PublicKey, crypto.SHA256, sum[:], sig) == nil
		}
		if !ok {
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(`{"error":"invalid_grant"}`))
			return
		}
		f.mu.Lock()
		at := fmt.Sprintf("at-%d", len(f.issued)+1)
		f.issued[at] = true
		f.mu.Unlock()
		fmt.Fprintf(w, `{"access_token":%q,"token_type":"Bearer","expires_in":3600}`, at)
		return
	}
	bearer, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	var body struct {
		Message struct {
			Token string            `json:"token"`
			Data  map[string]string `json:"data"`
		} `json:"message"`
	}
	f.mu.Lock()
	authorized := f.issued[bearer]
	f.mu.Unlock()
	if !authorized || r.URL.Path != "/v1/projects/warbler-test/messages:send" || json.NewDecoder(r.Body).Decode(&body) != nil {
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte(`{"error":{"code":401,"status":"UNAUTHENTICATED","message":"bad request"}}`))
		return
	}
	f.mu.Lock()
	if c := body.Message.Data["campaign"]; c != "" {
		f.campaigns[c]++
	}
	f.mu.Unlock()
	if strings.HasPrefix(body.Message.Token, "dead") {
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"error":{"code":404,"status":"NOT_FOUND","message":"gone","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNREGISTERED"}]}}`))
		return
	}
	fmt.Fprintf(w, `{"name":"projects/warbler-test/messages/%s"}`, body.Message.Data["nid"])
}

func (f *localFCM) seen(id string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.campaigns[id]
}

func setFCM(t *testing.T, s *Server, f *localFCM) {
	t.Helper()
	der, _ := x509.MarshalPKCS8PrivateKey(f.key)
	sa, _ := json.Marshal(map[string]string{
		"type": "service_account", "project_id": "warbler-test", "private_key_id": "k1",
		"private_key":  string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
		"client_email": "push@warbler-test.iam.gserviceaccount.com", "client_id": "1", "token_uri": f.URL + "/token",
	})
	if code, body := adminCall(t, s, "PUT", "/v1/apps/demo/push/credentials/fcm", map[string]any{
		"service_account": json.RawMessage(sa), "endpoint": f.URL + "/v1",
		"root_cas": string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.Certificate().Raw})),
	}); code != http.StatusOK {
		t.Fatalf("set FCM credentials: %d %s", code, body)
	}
}

func setAPNs(t *testing.T, s *Server, a *countingAPNs) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	if code, body := adminCall(t, s, "PUT", "/v1/apps/demo/push/credentials/apns", map[string]any{
		"auth_key": string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
		"key_id":   "KEY0000001", "team_id": "TEAM000001", "topic": "com.example.chat",
		"endpoint": a.URL, "root_cas": string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: a.Certificate().Raw})),
	}); code != http.StatusOK {
		t.Fatalf("set credentials: %d %s", code, body)
	}
}

func mustCall(t *testing.T, s *Server, want int, method, path string, body any) map[string]any {
	t.Helper()
	code, b := adminCall(t, s, method, path, body)
	if code != want {
		t.Fatalf("%s %s: %d %s, want %d", method, path, code, b, want)
	}
	var out map[string]any
	_ = json.Unmarshal(b, &out)
	return out
}

type campaignView struct {
	ID    string                `json:"id"`
	State string                `json:"state"`
	Stats storage.CampaignStats `json:"stats"`
}

func getCampaign(t *testing.T, s *Server, id string) campaignView {
	t.Helper()
	code, b := adminCall(t, s, "GET", "/v1/apps/demo/campaigns/"+id, nil)
	var v campaignView
	if code != http.StatusOK || json.Unmarshal(b, &v) != nil {
		t.Fatalf("get campaign: %d %s", code, b)
	}
	return v
}

// expectPush waits for the in-app payload of campaign id on a device.
func (d *chatDevice) expectPush(t *testing.T, id string) map[string]any {
	t.Helper()
	for {
		p := d.next(t)
		var m map[string]any
		if json.Unmarshal(p.Payload, &m) == nil && m["kind"] == "push" && m["campaign"] == id {
			return m
		}
	}
}

// TestTargetedPushToTaggedUsers is the acceptance test of targeted push:
// a campaign to every user with a tag expression (100 000 of them; 20 000 under the
// race detector, which slows the per-user lookups tenfold) is evaluated
// and queued in the background while a chat pair keeps exchanging
// messages, each of which must arrive within the usual deadline; connected
// users get the in-app message over MQTT, offline users with an iOS token
// get a notification at the local APNs or FCM server, users in do-not-disturb or
// with pushes off are skipped, and the statistics add up: targeted =
// delivered + pushed + skipped, and the provider's answers match.
func TestTargetedPushToTaggedUsers(t *testing.T) {
	n := 100_000
	if raceEnabled || testing.Short() {
		n = 20_000
	}
	apns, fcm := newCountingAPNs(t), newLocalFCM(t)
	s := startServer(t, func(c *Config) {
		c.Limits.HTTP.RatePerIP, c.Limits.HTTP.BurstPerIP = 1e6, 1e6 // the test polls the stats
		c.Limits.HTTP.RatePerKey, c.Limits.HTTP.BurstPerKey = 1e6, 1e6
		c.Chat.SendRate = -1
	})
	setAPNs(t, s, apns)
	setFCM(t, s, fcm)

	start := time.Now()
	for i := 0; i < n; i += 1000 {
		users := make([]map[string]any, 0, 1000)
		for j := i; j < min(i+1000, n); j++ {
			tags := []string{"promo"}
			if j%10 == 0 {
				tags = append(tags, "churned")
			}
			users = append(users, map[string]any{"id": fmt.Sprintf("u%06d", j), "tags": tags})
		}
		mustCall(t, s, http.StatusCreated, "POST", "/v1/apps/demo/users/bulk", map[string]any{"users": users})
	}
	t.Logf("created %d users in %v", n, time.Since(start))

	// Special users, all tagged promo: three connected, four offline with
	// an iOS token (one dead), two with an Android token (one dead), one in
	// do-not-disturb, one with pushes off.
	online := []string{"on1", "on2", "on3"}
	phones := []string{"ph1", "ph2", "ph3", "ph4", "an1", "an2"}
	var devs []*chatDevice
	for _, u := range online {
		devs = append(devs, chatConnect(t, s, mqtttest.DialTCP(t, s.Addrs().MQTT), u, "app"))
	}
	for i, u := range append(append([]string{}, phones...), "dnd", "off") {
		creds(t, s, u, "x")
		tok, platform := fmt.Sprintf("%064x", i+1), "ios"
		if strings.HasPrefix(u, "an") {
			platform = "android"
		}
		if u == "ph4" || u == "an2" {
			tok = "dead" + tok[4:]
		}
		mustCall(t, s, http.StatusOK, "PUT", "/v1/apps/demo/users/"+u+"/devices/phone", map[string]any{"platform": platform, "push_token": tok})
	}
	for _, u := range append(append(append([]string{}, online...), phones...), "dnd", "off") {
		mustCall(t, s, http.StatusOK, "PATCH", "/v1/apps/demo/users/"+u+"/tags", map[string]any{"add": []string{"promo"}})
	}
	mustCall(t, s, http.StatusOK, "PUT", "/v1/apps/demo/push/users/dnd/prefs", map[string]any{"dnd_until": time.Now().Add(time.Hour)})
	mustCall(t, s, http.StatusOK, "PUT", "/v1/apps/demo/push/users/off/prefs", map[string]any{"disabled": true})
	specials := len(online) + len(phones) + 2

	// The chat pair is not in the audience.
	alice := chatConnect(t, s, mqtttest.DialTCP(t, s.Addrs().MQTT), "alice", "laptop")
	bob := chatConnect(t, s, mqtttest.DialTCP(t, s.Addrs().MQTT), "bob", "phone")

	spec := map[string]any{
		"audience":     map[string]any{"tags": "promo AND NOT churned"},
		"notification": map[string]any{"title": "Sale", "body": "20% off today", "data": map[string]string{"url": "/sale"}},
		"message":      map[string]any{"banner": "sale"},
		"dedupe_key":   "sale-1",
	}
	posted := time.Now()
	c := mustCall(t, s, http.StatusAccepted, "POST", "/v1/apps/demo/campaigns", spec)
	id := c["id"].(string)
	// The same dedupe key answers with the same campaign.
	if again := mustCall(t, s, http.StatusOK, "POST", "/v1/apps/demo/campaigns", spec); again["id"] != id {
		t.Fatalf("dedupe: got campaign %v, want %s", again["id"], id)
	}

	// Chat keeps flowing while the campaign runs: every message must
	// arrive (chatDevice waits at most mqtttest.Timeout for each).
	conv := protocol.DirectConvID("alice", "bob")
	sent, duringRun := 0, 0
	for {
		before := getCampaign(t, s, id).State
		sent++
		alice.request(t, map[string]any{"to": "bob", "cmid": fmt.Sprint("m", sent), "type": "text", "body": map[string]string{"text": "hi"}})
		bob.expectMsg(t, conv, uint64(sent))
		after := getCampaign(t, s, id)
		if before == storage.CampaignRunning && after.State == storage.CampaignRunning {
			duringRun++
		}
		if after.State == storage.CampaignDone {
			break
		}
		if after.State != storage.CampaignRunning && after.State != storage.CampaignScheduled {
			t.Fatalf("campaign state %s", after.State)
		}
		if time.Since(start) > 5*time.Minute {
			t.Fatalf("campaign not done: %+v", after)
		}
	}
	t.Logf("campaign over %d tagged users done %v after the request; %d chat messages exchanged, %d of them wholly while it ran",
		n+specials, time.Since(posted), sent, duringRun)
	if duringRun == 0 {
		t.Errorf("no chat message was exchanged while the campaign ran")
	}

	// The connected users got the in-app message.
	for _, d := range devs {
		m := d.expectPush(t, id)
		if m["title"] != "Sale" || m["body"] != "20% off today" || fmt.Sprint(m["message"]) != "map[banner:sale]" {
			t.Fatalf("in-app payload %v", m)
		}
	}
	// Wait for the providers' answers to be counted.
	var v campaignView
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		v = getCampaign(t, s, id)
		if v.Stats.Accepted+v.Stats.Failed+v.Stats.Dropped >= v.Stats.Notifications {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("provider outcomes not counted: %+v", v.Stats)
		}
	}
	st := v.Stats
	want := int64(n - n/10 + specials)
	if st.Targeted != want || st.Delivered != 3 || st.Pushed != 6 || st.Notifications != 6 || st.Accepted != 4 || st.Failed != 2 {
		t.Errorf("stats %+v: want targeted %d, delivered 3, pushed 6 (4 accepted, 2 failed)", st, want)
	}
	if st.Targeted != st.Delivered+st.Pushed+st.Skipped {
		t.Errorf("targeted %d != delivered %d + pushed %d + skipped %d", st.Targeted, st.Delivered, st.Pushed, st.Skipped)
	}
	if st.SkippedBy["quiet_hours"] != 1 || st.SkippedBy["push_off"] != 1 || st.SkippedBy["unreachable"] != want-int64(specials) {
		t.Errorf("skipped by %v", st.SkippedBy)
	}
	if a, f := apns.seen(id), fcm.seen(id); a != 4 || f != 2 {
		t.Errorf("the APNs server saw %d notifications of the campaign, the FCM server %d; want 4 and 2", a, f)
	}

	// Opens: the user reports with their own token, once.
	_, _, tok := creds(t, s, "on1", "app")
	for i, wantFirst := range []bool{true, false} {
		req, _ := http.NewRequest("POST", "http://"+s.Addrs().HTTP+"/v1/apps/demo/campaigns/"+id+"/opened", strings.NewReader("{}"))
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var out map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&out)
		resp.Body.Close()
		if resp.StatusCode != 200 || out["first"] != wantFirst {
			t.Fatalf("open report %d: %d %v", i, resp.StatusCode, out)
		}
	}
	// ... or over MQTT.
	if r := devs[1].request(t, map[string]any{"op": "opened", "id": id}); r["first"] != true {
		t.Fatalf("MQTT open report: %v", r)
	}
	if v := getCampaign(t, s, id); v.Stats.Opened != 2 {
		t.Fatalf("opened = %d, want 2", v.Stats.Opened)
	}
	list := mustCall(t, s, http.StatusOK, "GET", "/v1/apps/demo/campaigns?limit=5", nil)
	if cs := list["campaigns"].([]any); len(cs) != 1 || cs[0].(map[string]any)["id"] != id {
		t.Fatalf("list: %v", list)
	}
}

// TestCampaignSurvivesRestart accepts a scheduled campaign, stops the
// server before it is due, and checks that the restarted server runs it.
func TestCampaignSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	cfg := func(c *Config) { c.Data = dir }
	s := startServer(t, cfg)
	creds(t, s, "carol", "app")
	c := mustCall(t, s, http.StatusAccepted, "POST", "/v1/apps/demo/campaigns", map[string]any{
		"audience":     map[string]any{"users": []string{"carol", "nobody"}},
		"notification": map[string]any{"body": "later"},
		"schedule_at":  time.Now().Add(3 * time.Second),
	})
	id := c["id"].(string)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	s2 := startServer(t, cfg)
	if v := getCampaign(t, s2, id); v.State != storage.CampaignScheduled {
		t.Fatalf("after restart: %+v", v)
	}
	carol := chatConnect(t, s2, mqtttest.DialTCP(t, s2.Addrs().MQTT), "carol", "app")
	if m := carol.expectPush(t, id); m["body"] != "later" {
		t.Fatalf("payload %v", m)
	}
	for deadline := time.Now().Add(mqtttest.Timeout); ; time.Sleep(20 * time.Millisecond) {
		v := getCampaign(t, s2, id)
		if v.State == storage.CampaignDone {
			if v.Stats.Targeted != 2 || v.Stats.Delivered != 1 || v.Stats.SkippedBy["no_user"] != 1 {
				t.Fatalf("stats %+v", v.Stats)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("campaign not done: %+v", v)
		}
	}
}

// TestLoginsBecomeEvents connects a user over MQTT and checks that the
// server recorded a login event, which a segment rule then sees.
func TestLoginsBecomeEvents(t *testing.T) {
	s := startServer(t, nil)
	creds(t, s, "idle", "x")
	chatConnect(t, s, mqtttest.DialTCP(t, s.Addrs().MQTT), "dora", "app")
	for deadline := time.Now().Add(mqtttest.Timeout); ; time.Sleep(20 * time.Millisecond) {
		r := mustCall(t, s, http.StatusOK, "GET", "/v1/apps/demo/events?name=login", nil)
		if evs, _ := r["events"].([]any); len(evs) == 1 && evs[0].(map[string]any)["user"] == "dora" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no login event: %v", r)
		}
	}
	r := mustCall(t, s, http.StatusOK, "POST", "/v1/apps/demo/audience", map[string]any{"rule": "NOT event(login, 30d)"})
	users := fmt.Sprint(r["users"])
	if !strings.Contains(users, "idle") || strings.Contains(users, "dora") {
		t.Fatalf("users without a login: %s", users)
	}
}
