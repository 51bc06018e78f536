package broker

import (
	"context"
	"encoding/json"
	"net"
	"testing"

	"github.com/eclipse/paho.golang/paho"

	"github.com/warblerim/warbler/internal/mqtttest"
	"github.com/warblerim/warbler/protocol"
)

// expectKind waits for the next payload of kind on the device, skipping
// other traffic.
func (d *chatDevice) expectKind(t *testing.T, kind string, ok func(map[string]any) bool) map[string]any {
	t.Helper()
	for {
		var m map[string]any
		if json.Unmarshal(d.next(t).Payload, &m) == nil && m["kind"] == kind && (ok == nil || ok(m)) {
			return m
		}
	}
}

// errorOf publishes a request that must fail and returns its error code.
func (d *chatDevice) errorOf(t *testing.T, req map[string]any) string {
	t.Helper()
	req["rid"] = "err"
	b, _ := json.Marshal(req)
	ctx, cancel := context.WithTimeout(context.Background(), mqtttest.Timeout)
	defer cancel()
	// paho reports the failed PUBACK as an error; the envelope follows.
	_, _ = d.Client.Client.Publish(ctx, &paho.Publish{Topic: protocol.Uplink("demo", d.user, d.device), QoS: 1, Payload: b})
	m := d.expectKind(t, "error", func(m map[string]any) bool { return m["rid"] == "err" })
	e, _ := m["error"].(map[string]any)
	c, _ := e["code"].(string)
	return c
}

// Typing, presence, blocks and group limits through the whole server: the
// records live in the server's Badger store, the limit comes from the
// config, clients authenticate with tokens and the ACL applies.
func TestChatSocialThroughTheWholeServer(t *testing.T) {
	s := startServer(t, func(c *Config) { c.Chat.MaxGroupSize = 3 })
	tcp := func() net.Conn { return mqtttest.DialTCP(t, s.Addrs().MQTT) }
	alice := chatConnect(t, s, tcp(), "alice", "phone")
	aliceWeb := chatConnect(t, s, tcp(), "alice", "web")
	bob := chatConnect(t, s, tcp(), "bob", "laptop")
	conv := protocol.DirectConvID("alice", "bob")
	alice.request(t, map[string]any{"to": "bob", "cmid": "m1", "type": "text", "body": "hi"})
	bob.expectMsg(t, conv, 1)
	aliceWeb.expectMsg(t, conv, 1)

	// Typing reaches bob, not alice's other device (the next thing it
	// gets after the notice is bob's message).
	alice.request(t, map[string]any{"op": "typing", "conv": conv, "rid": "t"})
	if m := bob.expectKind(t, "typing", nil); m["user"] != "alice" {
		t.Fatalf("typing %v", m)
	}
	bob.request(t, map[string]any{"conv": conv, "cmid": "b1", "type": "text", "body": "yo"})
	for {
		var m map[string]any
		_ = json.Unmarshal(aliceWeb.next(t).Payload, &m)
		if m["kind"] == "typing" {
			t.Fatalf("the sender's own device got %v", m)
		}
		if m["kind"] == "msg" && m["seq"] == 2.0 {
			break
		}
	}

	// Presence: bob watches alice. Her phone and web leave with a
	// DISCONNECT, then her tablet's TCP connection is cut: offline.
	tabletConn := tcp()
	chatConnect(t, s, tabletConn, "alice", "tablet")
	r := bob.request(t, map[string]any{"op": "presence", "users": []string{"alice"}})
	if st := r["users"].([]any)[0].(map[string]any)["state"]; st != "online" {
		t.Fatalf("alice is %v", st)
	}
	_ = alice.Client.Client.Disconnect(&paho.Disconnect{})
	_ = aliceWeb.Client.Client.Disconnect(&paho.Disconnect{})
	_ = tabletConn.Close()
	m := bob.expectKind(t, "presence", func(m map[string]any) bool { return m["state"] == "offline" })
	if m["user"] != "alice" || m["last_seen"] == nil {
		t.Fatalf("presence %v", m)
	}

	// A block refuses bob's direct sends.
	alice = chatConnect(t, s, tcp(), "alice", "phone")
	alice.request(t, map[string]any{"op": "block", "users": []string{"bob"}})
	if c := bob.errorOf(t, map[string]any{"to": "alice", "cmid": "b2", "type": "text", "body": "?"}); c != "blocked" {
		t.Fatalf("blocked send: %s", c)
	}

	// The group limit is the config's.
	info := alice.request(t, map[string]any{"op": "create", "kind": "group", "conv": "g", "members": []string{"bob"}})
	if g, _ := info["group"].(map[string]any); g["max_members"] != 3.0 {
		t.Fatalf("group info %v", info)
	}
	if c := alice.errorOf(t, map[string]any{"op": "settings", "conv": "g", "settings": map[string]any{"max_members": 4}}); c != "bad_request" {
		t.Fatalf("max_members above the config: %s", c)
	}
}
