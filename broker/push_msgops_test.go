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
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/warblerim/warbler/internal/mqtttest"
	"github.com/warblerim/warbler/protocol"
)

// nextPush waits for the next notification at the local APNs server.
func nextPush(t *testing.T, got chan apnsRequest) apnsRequest {
	t.Helper()
	select {
	case r := <-got:
		return r
	case <-time.After(20 * time.Second):
		t.Fatal("no notification reached the local APNs server")
		return apnsRequest{}
	}
}

// pushSetup gives the demo app APNs credentials pointing at a local APNs
// server and registers bob's phone for push; bob has muted mutedConv (if
// set) and the phone is offline when it returns.
func pushSetup(t *testing.T, s *Server, mutedConv string) chan apnsRequest {
	t.Helper()
	apns, got := localAPNs(t)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: apns.Certificate().Raw})
	if code, body := adminCall(t, s, "PUT", "/v1/apps/demo/push/credentials/apns", map[string]any{
		"auth_key": string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
		"key_id":   "KEY0000001", "team_id": "TEAM000001", "topic": "com.example.chat",
		"endpoint": apns.URL, "root_cas": string(caPEM),
	}); code != http.StatusOK {
		t.Fatalf("set credentials: %d %s", code, body)
	}
	const token = "1a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9"
	phone := chatConnect(t, s, mqtttest.DialTCP(t, s.Addrs().MQTT), "bob", "phone")
	if r := phone.request(t, map[string]any{"op": "push", "platform": "ios", "token": token}); r["push"] != true {
		t.Fatalf("push registration: %v", r)
	}
	if mutedConv != "" {
		if code, body := adminCall(t, s, "PUT", "/v1/apps/demo/push/users/bob/prefs", map[string]any{
			"muted": map[string]any{mutedConv: time.Time{}}}); code != http.StatusOK {
			t.Fatalf("mute: %d %s", code, body)
		}
	}
	if err := phone.Client.Disconnect(&paho.Disconnect{}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(mqtttest.Timeout); (presence{s}).Online("demo", "bob", "phone"); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("bob's phone still online")
		}
	}
	return got
}

// Mentions override a mute: bob muted the group, so a plain message is
// not pushed to his offline phone, but one that mentions him is, and so
// is an @all; a ringing call is pushed with its call ID. Through the whole
// server, with a local APNs endpoint.
func TestPushMentionsAndCalls(t *testing.T) {
	s := startServer(t, nil)
	got := pushSetup(t, s, "team")
	alice := chatConnect(t, s, mqtttest.DialTCP(t, s.Addrs().MQTT), "alice", "laptop")
	alice.request(t, map[string]any{"op": "create", "kind": "group", "conv": "team", "members": []string{"bob"}})

	alice.request(t, map[string]any{"conv": "team", "cmid": "plain", "type": "text", "body": map[string]string{"text": "muted"}})
	m := alice.request(t, map[string]any{"conv": "team", "cmid": "at", "type": "text", "body": map[string]string{"text": "@bob look"}, "mentions": []string{"bob"}})
	r := nextPush(t, got)
	if r.body["conv"] != "team" || fmt.Sprint(r.body["seq"]) != fmt.Sprint(m["seq"]) {
		t.Fatalf("first push %v: want the mention (seq %v), the plain message is muted", r.body, m["seq"])
	}
	all := alice.request(t, map[string]any{"conv": "team", "cmid": "all", "type": "text", "body": map[string]string{"text": "everyone"}, "mention_all": true})
	if r := nextPush(t, got); fmt.Sprint(r.body["seq"]) != fmt.Sprint(all["seq"]) {
		t.Fatalf("@all push %v", r.body)
	}

	// A ring reaches the offline callee at once, with the call's ID, even
	// with a long coalescing window and a text sent right after it (which
	// would otherwise replace it).
	if code, body := adminCall(t, s, "PUT", "/v1/apps/demo/push/settings", map[string]any{"coalesce_ms": 3000}); code != http.StatusOK {
		t.Fatalf("push settings: %d %s", code, body)
	}
	ring := alice.request(t, map[string]any{"op": "call", "to": "bob", "call": map[string]any{"id": "c1", "action": "ring", "media": "video"}})
	text := alice.request(t, map[string]any{"to": "bob", "cmid": "pickup", "type": "text", "body": map[string]string{"text": "pick up!"}})
	r = nextPush(t, got)
	if r.body["call"] != "c1" || r.body["action"] != "ring" || r.body["media"] != "video" || r.body["conv"] != protocol.DirectConvID("alice", "bob") || fmt.Sprint(r.body["seq"]) != fmt.Sprint(ring["seq"]) {
		t.Fatalf("ring push %v", r.body)
	}
	if r := nextPush(t, got); fmt.Sprint(r.body["seq"]) != fmt.Sprint(text["seq"]) || r.body["call"] != nil {
		t.Fatalf("text push %v", r.body)
	}
}

// The app setting recall_seconds is validated and drives the recall
// window: -1 means senders may not recall, so the PUBACK says 0x87.
func TestRecallSecondsSetting(t *testing.T) {
	s := startServer(t, nil)
	if code, body := adminCall(t, s, "PATCH", "/v1/apps/demo", map[string]any{"settings": map[string]any{"recall_seconds": -5}}); code != http.StatusBadRequest {
		t.Fatalf("recall_seconds -5: %d %s", code, body)
	}
	alice := chatConnect(t, s, mqtttest.DialTCP(t, s.Addrs().MQTT), "alice", "laptop")
	chatConnect(t, s, mqtttest.DialTCP(t, s.Addrs().MQTT), "bob", "phone")
	m := alice.request(t, map[string]any{"to": "bob", "cmid": "m1", "type": "text", "body": "hi"})
	recall := func() byte {
		b, _ := json.Marshal(map[string]any{"op": "recall", "conv": m["conv"], "id": m["id"], "seq": m["seq"], "rid": "r"})
		ctx, cancel := context.WithTimeout(context.Background(), mqtttest.Timeout)
		defer cancel()
		resp, err := alice.Client.Client.Publish(ctx, &paho.Publish{Topic: protocol.Uplink("demo", "alice", "laptop"), QoS: 1, Payload: b})
		if err != nil && resp == nil {
			t.Fatal(err)
		}
		return resp.ReasonCode
	}
	if code, body := adminCall(t, s, "PATCH", "/v1/apps/demo", map[string]any{"settings": map[string]any{"recall_seconds": -1}}); code != http.StatusOK {
		t.Fatalf("recall_seconds -1: %d %s", code, body)
	}
	if rc := recall(); rc != 0x87 {
		t.Fatalf("recall with recall_seconds -1: reason %#x", rc)
	}
	if code, body := adminCall(t, s, "PATCH", "/v1/apps/demo", map[string]any{"settings": map[string]any{"recall_seconds": 60}}); code != http.StatusOK {
		t.Fatalf("recall_seconds 60: %d %s", code, body)
	}
	if rc := recall(); rc != 0 {
		t.Fatalf("recall within 60 s: reason %#x", rc)
	}
}

// A message recalled while its notification waits out the coalescing
// window is not pushed: the notification is dropped with reason
// "recalled", and the next message is the first to reach APNs.
func TestPushDroppedForRecall(t *testing.T) {
	s := startServer(t, nil)
	got := pushSetup(t, s, "")
	if code, body := adminCall(t, s, "PUT", "/v1/apps/demo/push/settings", map[string]any{"coalesce_ms": 3000}); code != http.StatusOK {
		t.Fatalf("push settings: %d %s", code, body)
	}
	alice := chatConnect(t, s, mqtttest.DialTCP(t, s.Addrs().MQTT), "alice", "laptop")
	m := alice.request(t, map[string]any{"to": "bob", "cmid": "oops", "type": "text", "body": map[string]string{"text": "the secret"}})
	alice.request(t, map[string]any{"op": "recall", "conv": m["conv"], "id": m["id"], "seq": m["seq"]})
	alice.request(t, map[string]any{"op": "create", "kind": "group", "conv": "other", "members": []string{"bob"}})
	next := alice.request(t, map[string]any{"conv": "other", "cmid": "next", "type": "text", "body": map[string]string{"text": "fine"}})
	r := nextPush(t, got)
	if r.body["conv"] != "other" || fmt.Sprint(r.body["seq"]) != fmt.Sprint(next["seq"]) {
		t.Fatalf("first push %v: the recalled message was pushed", r.body)
	}
	for deadline := time.Now().Add(mqtttest.Timeout); ; time.Sleep(10 * time.Millisecond) {
		code, body := adminCall(t, s, "GET", "/v1/apps/demo/push/ledger?user=bob", nil)
		if code == 200 && strings.Contains(string(body), `"reason":"recalled"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ledger: %d %s", code, body)
		}
	}
}
