package broker

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
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
// a campaign to every user with a tag (100 000 of them; 20 000 under the
// race detector, which slows the per-user lookups tenfold) is evaluated
// and queued in the background while a chat pair keeps exchanging
// messages, each of which must arrive within the usual deadline; connected
// users get the in-app message over MQTT, offline users with an iOS token
// get a notification at the local APNs server, users in do-not-disturb or
// with pushes off are skipped, and the statistics add up: targeted =
// delivered + pushed + skipped, and the provider's answers match.
func TestTargetedPushToTaggedUsers(t *testing.T) {
	n := 100_000
	if raceEnabled || testing.Short() {
		n = 20_000
	}
	apns := newCountingAPNs(t)
	s := startServer(t, func(c *Config) {
		c.Limits.HTTP.RatePerIP, c.Limits.HTTP.BurstPerIP = 1e6, 1e6 // the test polls the stats
		c.Limits.HTTP.RatePerKey, c.Limits.HTTP.BurstPerKey = 1e6, 1e6
		c.Chat.SendRate = -1
	})
	setAPNs(t, s, apns)

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
	// a token (one dead), one in do-not-disturb, one with pushes off.
	online := []string{"on1", "on2", "on3"}
	phones := []string{"ph1", "ph2", "ph3", "ph4"}
	var devs []*chatDevice
	for _, u := range online {
		devs = append(devs, chatConnect(t, s, mqtttest.DialTCP(t, s.Addrs().MQTT), u, "app"))
	}
	for i, u := range append(append([]string{}, phones...), "dnd", "off") {
		creds(t, s, u, "x")
		tok := fmt.Sprintf("%064x", i+1)
		if u == "ph4" {
			tok = "dead" + tok[4:]
		}
		mustCall(t, s, http.StatusOK, "PUT", "/v1/apps/demo/users/"+u+"/devices/phone", map[string]any{"platform": "ios", "push_token": tok})
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
	if st.Targeted != want || st.Delivered != 3 || st.Pushed != 4 || st.Notifications != 4 || st.Accepted != 3 || st.Failed != 1 {
		t.Errorf("stats %+v: want targeted %d, delivered 3, pushed 4 (3 accepted, 1 failed)", st, want)
	}
	if st.Targeted != st.Delivered+st.Pushed+st.Skipped {
		t.Errorf("targeted %d != delivered %d + pushed %d + skipped %d", st.Targeted, st.Delivered, st.Pushed, st.Skipped)
	}
	if st.SkippedBy["quiet_hours"] != 1 || st.SkippedBy["push_off"] != 1 || st.SkippedBy["unreachable"] != want-9 {
		t.Errorf("skipped by %v", st.SkippedBy)
	}
	if got := apns.seen(id); got != 4 {
		t.Errorf("the APNs server saw %d notifications of the campaign, want 4", got)
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
	if v := getCampaign(t, s, id); v.Stats.Opened != 1 {
		t.Fatalf("opened = %d", v.Stats.Opened)
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
