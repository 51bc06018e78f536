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
	"net"
	"os/exec"
	"testing"
	"time"

	"github.com/warblerim/warbler/internal/mqtttest"
	"github.com/warblerim/warbler/protocol"
)

// TestChannelBroadcastMode runs the server with chat.channel_broadcast on:
// a channel's messages go out once on w/acme/b/{conv}, which members (a
// paho MQTT 5 client and mosquitto_sub) may subscribe to and non-members
// may not (SUBACK 0x87); an offline member still gets the push through a
// local APNs server; a member removed from the channel gets no further
// deliveries on the subscription they kept; plain broadcast topics stay
// open to every user of the app.
func TestChannelBroadcastMode(t *testing.T) {
	sub := mqtttest.RequireTool(t, "mosquitto_sub")
	e := newAPIEnvWith(t, func(c *Config) { c.Chat.ChannelBroadcast = true })
	apnsURL, apnsCA, pushed := recordingAPNs(t)
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(k)
	e.must(e.do("PUT", "/v1/apps/acme/push/credentials/apns", e.admin, map[string]any{
		"auth_key": string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})), "key_id": "K1", "team_id": "T1",
		"topic": "com.acme.chat", "endpoint": apnsURL, "root_cas": apnsCA}), 200)
	e.must(e.do("POST", "/v1/apps/acme/conversations", e.admin, map[string]any{"id": "news", "kind": "channel", "members": []string{"alice", "bob", "cal"}}), 201)

	alice := connectApp(t, e.s, "acme", "alice", "phone")
	if rc := alice.Subscribe(t, "w/acme/u/alice", "w/acme/b/news", "w/acme/b/flash"); string(rc) != "\x01\x01\x01" {
		t.Fatalf("member's SUBACK %x, want 010101", rc)
	}
	dan := connectApp(t, e.s, "acme", "dan", "phone")
	if rc := dan.Subscribe(t, "w/acme/b/news"); string(rc) != "\x87" {
		t.Fatalf("non-member's SUBACK %x, want 87", rc)
	}
	if rc := dan.Subscribe(t, "w/acme/b/flash"); string(rc) != "\x01" {
		t.Fatalf("plain broadcast SUBACK %x, want 01", rc)
	}
	rivalAlice := connectApp(t, e.s, "rival", "alice", "phone")
	if rc := rivalAlice.Subscribe(t, "w/acme/b/news"); string(rc) != "\x87" {
		t.Fatalf("other app's user SUBACK %x, want 87", rc)
	}

	// cal listens with mosquitto_sub for one message.
	host, port, _ := net.SplitHostPort(e.s.Addrs().MQTT)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	tok, err := e.s.Identity().IssueToken(ctx, "acme", "cal", "laptop", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, sub, "-h", host, "-p", port, "-V", "mqttv5", "-i", protocol.ClientID("acme", "cal", "laptop"),
		"-u", "acme:cal", "-P", tok.Value, "-t", "w/acme/b/news", "-q", "1", "-C", "1", "-v")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(out)
	waitSubscribers(t, e.s, "w/acme/b/news", 2)

	svc := connectService(t, e, "newsroom", e.keys["acme:publish"])
	if rc := publishProps(t, svc, "w/acme/b/news", 1, false, `{"text":"morning edition"}`); rc != 0 {
		t.Fatalf("PUBACK %#x", rc)
	}
	pk := alice.Expect(t)
	var m protocol.Message
	if err := json.Unmarshal(pk.Payload, &m); err != nil || pk.Topic != "w/acme/b/news" || m.Kind != "msg" || m.Conv != "news" || m.Seq != 2 ||
		m.From.User != "_svc" || string(m.Body) != `{"text":"morning edition"}` {
		t.Fatalf("member got %s: %s", pk.Topic, pk.Payload)
	}
	waitLine(t, lines, `w/acme/b/news {`)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("mosquitto_sub: %v", err)
	}
	select {
	case tok := <-pushed:
		if tok != "0a1b2c3d4e5f60718293" {
			t.Fatalf("pushed to %q, want bob's phone", tok)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no push to the offline member within 20s")
	}
	// Sync and history are unchanged.
	h := e.must(e.do("GET", "/v1/apps/acme/conversations/news/messages?after=1", e.admin, nil), 200)
	if ms, _ := h.body["messages"].([]any); len(ms) != 1 {
		t.Fatalf("history: %s", h.raw)
	}

	// alice is removed: she keeps her subscription, but the next channel
	// message is refused to her at delivery (the ACL counts it), and what
	// she gets next is a plain broadcast sent after it.
	e.must(e.do("DELETE", "/v1/apps/acme/conversations/news/members/alice", e.admin, nil), 204)
	before := e.s.acl.Denials()["not_permitted"]
	if rc := publishProps(t, svc, "w/acme/b/news", 1, false, `{"text":"evening edition"}`); rc != 0 {
		t.Fatalf("PUBACK %#x", rc)
	}
	deadline := time.Now().Add(mqtttest.Timeout)
	for e.s.acl.Denials()["not_permitted"] == before {
		if time.Now().After(deadline) {
			t.Fatal("the removed member's delivery was not refused")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if rc := publishProps(t, svc, "w/acme/b/flash", 1, false, `{"text":"flash"}`); rc != 0 {
		t.Fatalf("plain PUBACK %#x", rc)
	}
	for {
		pk := alice.Expect(t)
		if pk.Topic == "w/acme/b/flash" {
			break
		}
		if pk.Topic == "w/acme/b/news" {
			t.Fatalf("removed member still receives the channel: %s", pk.Payload)
		}
	}
	if pk := dan.Expect(t); pk.Topic != "w/acme/b/flash" {
		t.Fatalf("non-member got %s: %s", pk.Topic, pk.Payload)
	}
	// A new subscription is refused to her now.
	if rc := alice.Subscribe(t, "w/acme/b/news"); string(rc) != "\x87" {
		t.Fatalf("removed member's SUBACK %x, want 87", rc)
	}
}

// waitSubscribers waits until filter has at least n subscribers.
func waitSubscribers(t *testing.T, s *Server, filter string, n int) {
	t.Helper()
	deadline := time.Now().Add(mqtttest.Timeout)
	for len(s.MQTT().Topics.Subscribers(filter).Subscriptions) < n {
		if time.Now().After(deadline) {
			t.Fatalf("fewer than %d subscriptions to %s within %v", n, filter, mqtttest.Timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestChannelBroadcastModeOff checks that without chat.channel_broadcast
// nothing changes: any user of the app may subscribe to a channel's topic,
// but the channel's messages come as copies on the members' downlinks and
// nothing is published on the topic.
func TestChannelBroadcastModeOff(t *testing.T) {
	e := newAPIEnv(t)
	e.must(e.do("POST", "/v1/apps/acme/conversations", e.admin, map[string]any{"id": "news", "kind": "channel", "members": []string{"alice"}}), 201)
	alice := connectApp(t, e.s, "acme", "alice", "phone")
	if rc := alice.Subscribe(t, "w/acme/u/alice", "w/acme/b/news", "w/acme/b/flash"); string(rc) != "\x01\x01\x01" {
		t.Fatalf("SUBACK %x", rc)
	}
	dan := connectApp(t, e.s, "acme", "dan", "phone")
	if rc := dan.Subscribe(t, "w/acme/b/news"); string(rc) != "\x01" {
		t.Fatalf("non-member's SUBACK %x, want 01 as before", rc)
	}
	svc := connectService(t, e, "newsroom", e.keys["acme:publish"])
	if rc := publishProps(t, svc, "w/acme/b/news", 1, false, `{"text":"morning edition"}`); rc != 0 {
		t.Fatalf("PUBACK %#x", rc)
	}
	if pk := alice.Expect(t); pk.Topic != "w/acme/u/alice" {
		t.Fatalf("member got the message on %s", pk.Topic)
	}
	if rc := publishProps(t, svc, "w/acme/b/flash", 1, false, `{"text":"flash"}`); rc != 0 {
		t.Fatalf("plain PUBACK %#x", rc)
	}
	if pk := alice.Expect(t); pk.Topic != "w/acme/b/flash" {
		t.Fatalf("after the downlink copy the member got %s: %s", pk.Topic, pk.Payload)
	}
}
