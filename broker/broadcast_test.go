package broker

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/warblerim/warbler/internal/mqtttest"
	"github.com/warblerim/warbler/protocol"
)

// recordingAPNs is a local HTTP/2 TLS server that accepts every
// notification and reports the device token of each.
func recordingAPNs(t *testing.T) (url, caPEM string, tokens <-chan string) {
	ch := make(chan string, 16)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("apns-id", "00000000-0000-0000-0000-000000000002")
		w.WriteHeader(http.StatusOK)
		select {
		case ch <- strings.TrimPrefix(r.URL.Path, "/3/device/"):
		default:
		}
	}))
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv.URL, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})), ch
}

// connectService connects acme's backend as a service with an API key.
func connectService(t *testing.T, e *apiEnv, name, key string) *mqtttest.Client {
	t.Helper()
	return mqtttest.MustConnect(t, mqtttest.DialTCP(t, e.s.Addrs().MQTT), "acme:_svc:"+name, "acme:_svc", key)
}

func publishProps(t *testing.T, c *mqtttest.Client, topic string, qos byte, retain bool, payload string, props ...string) byte {
	t.Helper()
	p := &paho.Publish{Topic: topic, QoS: qos, Retain: retain, Payload: []byte(payload), Properties: &paho.PublishProperties{}}
	for i := 0; i+1 < len(props); i += 2 {
		p.Properties.User = append(p.Properties.User, paho.UserProperty{Key: props[i], Value: props[i+1]})
	}
	ctx, cancel := context.WithTimeout(context.Background(), mqtttest.Timeout)
	defer cancel()
	resp, err := c.Client.Publish(ctx, p)
	if resp == nil {
		t.Fatalf("publish %s: %v", topic, err)
	}
	return resp.ReasonCode
}

// TestServiceBroadcastToChannel has a service publish over MQTT on a chat
// channel's broadcast topic: the message is stored (PUBACK after the
// disk), delivered to a connected member, and pushed to an offline
// member's phone through a local APNs server; a resend with the same cmid
// is stored once; bad payloads and retained publishes are refused.
func TestServiceBroadcastToChannel(t *testing.T) {
	e := newAPIEnv(t)
	apnsURL, apnsCA, pushed := recordingAPNs(t)
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(k)
	e.must(e.do("PUT", "/v1/apps/acme/push/credentials/apns", e.admin, map[string]any{
		"auth_key": string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})), "key_id": "K1", "team_id": "T1",
		"topic": "com.acme.chat", "endpoint": apnsURL, "root_cas": apnsCA}), 200)
	e.must(e.do("POST", "/v1/apps/acme/conversations", e.admin, map[string]any{"id": "news", "kind": "channel", "members": []string{"alice", "bob"}}), 201)

	alice := connectApp(t, e.s, "acme", "alice", "phone")
	alice.Subscribe(t, "w/acme/u/alice")
	svc := connectService(t, e, "marketing", e.keys["acme:publish"])

	if rc := publishProps(t, svc, "w/acme/b/news", 1, false, `{"text":"50% off today"}`, "cmid", "sale-1", "type", "promo"); rc != 0 {
		t.Fatalf("PUBACK reason %#x", rc)
	}
	// PUBACK came after the append: history has it already.
	h := e.must(e.do("GET", "/v1/apps/acme/conversations/news/messages?after=1", e.admin, nil), 200)
	if ms, _ := h.body["messages"].([]any); len(ms) != 1 {
		t.Fatalf("history after PUBACK: %s", h.raw)
	}
	m := expectMsg(t, alice)
	if m.Conv != "news" || m.Seq != 2 || m.From.User != "_svc" || m.Type != "promo" || string(m.Body) != `{"text":"50% off today"}` {
		t.Fatalf("member got %+v %s", m, m.Body)
	}
	select {
	case tok := <-pushed:
		if tok != "0a1b2c3d4e5f60718293" {
			t.Fatalf("pushed to %q, want bob's phone", tok)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no push to the offline member within 20s")
	}
	// The resend of the same cmid is stored once and delivered once.
	if rc := publishProps(t, svc, "w/acme/b/news", 1, false, `{"text":"50% off today"}`, "cmid", "sale-1", "type", "promo"); rc != 0 {
		t.Fatalf("resend PUBACK %#x", rc)
	}
	if rc := publishProps(t, svc, "w/acme/b/news", 1, false, `not json`); rc != 0x99 {
		t.Fatalf("non-JSON payload: PUBACK %#x, want 0x99", rc)
	}
	if rc := publishProps(t, svc, "w/acme/b/news", 1, true, `{"text":"sticky"}`); rc != 0x9A {
		t.Fatalf("retained: PUBACK %#x, want 0x9A", rc)
	}
	if rc := publishProps(t, svc, "w/acme/b/news", 1, false, `{"text":"second"}`); rc != 0 {
		t.Fatalf("second: PUBACK %#x", rc)
	}
	if m := expectMsg(t, alice); m.Seq != 3 || string(m.Body) != `{"text":"second"}` {
		t.Fatalf("after the resend and refusals the member got %+v %s (want seq 3)", m, m.Body)
	}
	h = e.must(e.do("GET", "/v1/apps/acme/conversations/news/messages", e.admin, nil), 200)
	if ms, _ := h.body["messages"].([]any); len(ms) != 3 {
		t.Fatalf("history: %s", h.raw)
	}
	resp, err := http.Get(e.base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`warbler_broadcasts_total{result="channel"} 3`, `warbler_broadcasts_total{result="refused"} 2`} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("metrics lack %s", want)
		}
	}

	// A user may subscribe to a broadcast topic but never publish there.
	if rc, _ := alice.Publish(t, "w/acme/b/news", 1, []byte(`{"text":"me too"}`)); rc != 0x87 {
		t.Fatalf("user publishes on a broadcast topic: %#x", rc)
	}
	// Another app's service key cannot connect as acme's service.
	if _, ack, err := mqtttest.Connect(t, mqtttest.DialTCP(t, e.s.Addrs().MQTT), &paho.Connect{ClientID: "acme:_svc:x", CleanStart: true,
		Username: "acme:_svc", UsernameFlag: true, Password: []byte(e.keys["rival:admin"]), PasswordFlag: true}); err == nil || ack == nil || ack.ReasonCode != 0x87 {
		t.Fatalf("rival key as acme's service: %v", err)
	}
}

// TestPlainBroadcastWithMosquitto uses mosquitto_sub (a user) and
// mosquitto_pub (a service, MQTT 3.1.1 and 5) on broadcast topics: a
// topic that is no conversation is a plain broadcast, passed on live and
// not stored; a channel's topic stores the message.
func TestPlainBroadcastWithMosquitto(t *testing.T) {
	sub, pub := mqtttest.RequireTool(t, "mosquitto_sub"), mqtttest.RequireTool(t, "mosquitto_pub")
	e := newAPIEnv(t)
	e.must(e.do("POST", "/v1/apps/acme/conversations", e.admin, map[string]any{"id": "alerts", "kind": "channel", "members": []string{"bob"}}), 201)
	host, port, _ := net.SplitHostPort(e.s.Addrs().MQTT)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tok, err := e.s.Identity().IssueToken(ctx, "acme", "bob", "laptop", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, sub, "-h", host, "-p", port, "-V", "mqttv5", "-i", protocol.ClientID("acme", "bob", "laptop"),
		"-u", "acme:bob", "-P", tok.Value, "-t", "w/acme/b/flash", "-q", "1", "-C", "2", "-v")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(out)
	waitSubscribed(t, e.s, "w/acme/b/flash")
	for _, v := range []string{"mqttv311", "mqttv5"} {
		for _, topic := range []string{"w/acme/b/flash", "w/acme/b/alerts"} {
			if b, err := exec.CommandContext(ctx, pub, "-h", host, "-p", port, "-V", v, "-i", "acme:_svc:ops-"+v, "-u", "acme:_svc",
				"-P", e.keys["acme:publish"], "-t", topic, "-q", "1", "-m", `{"text":"`+v+`"}`).CombinedOutput(); err != nil {
				t.Fatalf("mosquitto_pub %s %s: %v: %s", v, topic, err, b)
			}
		}
	}
	// A resend with the same cmid (an MQTT 5 user property) is stored once.
	for range 2 {
		if b, err := exec.CommandContext(ctx, pub, "-h", host, "-p", port, "-V", "mqttv5", "-i", "acme:_svc:ops-cmid", "-u", "acme:_svc",
			"-P", e.keys["acme:publish"], "-t", "w/acme/b/alerts", "-q", "1", "-m", `{"text":"once"}`,
			"-D", "publish", "user-property", "cmid", "alert-1").CombinedOutput(); err != nil {
			t.Fatalf("mosquitto_pub with cmid: %v: %s", err, b)
		}
	}
	waitLine(t, lines, `w/acme/b/flash {"text":"mqttv311"}`)
	waitLine(t, lines, `w/acme/b/flash {"text":"mqttv5"}`)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("mosquitto_sub: %v", err)
	}
	// The plain broadcast left nothing behind; the channel stored three.
	if r := e.do("GET", "/v1/apps/acme/conversations/flash", e.admin, nil); r.status != 404 {
		t.Fatalf("plain broadcast created a conversation: %d", r.status)
	}
	h := e.must(e.do("GET", "/v1/apps/acme/conversations/alerts/messages?after=1", e.admin, nil), 200)
	var page struct{ Messages []protocol.Message }
	if err := json.Unmarshal(h.raw, &page); err != nil || len(page.Messages) != 3 || page.Messages[0].From.User != "_svc" || string(page.Messages[2].Body) != `{"text":"once"}` {
		t.Fatalf("channel history: %s", h.raw)
	}
}
