package broker

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/warblerim/warbler/internal/mqtttest"
	"github.com/warblerim/warbler/protocol"
)

// connectApp connects a device of a user of app with a fresh token.
func connectApp(t *testing.T, s *Server, app, user, device string) *mqtttest.Client {
	t.Helper()
	tok, err := s.Identity().IssueToken(context.Background(), app, user, device, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return mqtttest.MustConnect(t, mqtttest.DialTCP(t, s.Addrs().MQTT), protocol.ClientID(app, user, device), app+":"+user, tok.Value)
}

// expectMsg waits for the next chat message on c and decodes it.
func expectMsg(t *testing.T, c *mqtttest.Client) protocol.Message {
	t.Helper()
	pk := c.Expect(t)
	var m protocol.Message
	if err := json.Unmarshal(pk.Payload, &m); err != nil || m.Kind != "msg" {
		t.Fatalf("not a message on %s: %s", pk.Topic, pk.Payload)
	}
	return m
}

// TestConversationsOverHTTPReachDevices manages a group and sends to it
// over HTTP and checks what a member's connected device receives: the
// system events in order and the service's message, exactly as stored.
func TestConversationsOverHTTPReachDevices(t *testing.T) {
	e := newAPIEnv(t)
	alice := connectApp(t, e.s, "acme", "alice", "phone")
	if r := alice.Subscribe(t, "w/acme/u/alice"); r[0] > 2 {
		t.Fatalf("subscribe: %d", r[0])
	}
	key := e.keys["acme:admin"]
	e.must(e.do("POST", "/v1/apps/acme/conversations", key, map[string]any{"id": "ops", "kind": "channel", "members": []string{"alice", "bob"}}), 201)
	if m := expectMsg(t, alice); m.Type != protocol.TypeSystem || m.Seq != 1 || !strings.Contains(string(m.Body), `"event":"created"`) || m.From.User != "_svc" {
		t.Fatalf("created event: %+v %s", m, m.Body)
	}
	r := e.must(e.do("POST", "/v1/apps/acme/conversations/ops/messages", key, map[string]any{"body": map[string]string{"text": "deploy at 5"}, "cmid": "dep-5"}), 201)
	if r.body["seq"] != float64(2) || r.body["conv"] != "ops" {
		t.Fatalf("ack: %s", r.raw)
	}
	m := expectMsg(t, alice)
	if m.Seq != 2 || m.From.User != "_svc" || m.From.Device != "" || string(m.Body) != `{"text":"deploy at 5"}` || m.Type != "text" {
		t.Fatalf("service message: %+v %s", m, m.Body)
	}
	// A retry with the same cmid is answered, not stored or sent again.
	r = e.must(e.do("POST", "/v1/apps/acme/conversations/ops/messages", key, map[string]any{"body": map[string]string{"text": "deploy at 5"}, "cmid": "dep-5"}), 200)
	if r.body["seq"] != float64(2) || r.body["duplicate"] != true {
		t.Fatalf("retry: %s", r.raw)
	}
	// A member may not write to a channel; the service may.
	if r := e.do("POST", "/v1/apps/acme/conversations/ops/messages", key, map[string]any{"from": "bob", "body": "x"}); r.status != 403 {
		t.Fatalf("member writes to channel: %d %s", r.status, r.raw)
	}
	e.must(e.do("PATCH", "/v1/apps/acme/conversations/ops", key, map[string]any{"name": "Operations"}), 200)
	if m := expectMsg(t, alice); m.Seq != 3 || !strings.Contains(string(m.Body), `"event":"renamed"`) {
		t.Fatalf("renamed event: %+v %s", m, m.Body)
	}
	e.must(e.do("DELETE", "/v1/apps/acme/conversations/ops/members/alice", key, nil), 204)
	if m := expectMsg(t, alice); m.Seq != 4 || !strings.Contains(string(m.Body), `"event":"removed"`) {
		t.Fatalf("removed event: %+v %s", m, m.Body)
	}
	if r := e.do("DELETE", "/v1/apps/acme/conversations/ops/members/alice", key, nil); r.status != 404 {
		t.Fatalf("remove a non-member: %d %s", r.status, r.raw)
	}
	// History over HTTP holds the same four entries.
	h := e.must(e.do("GET", "/v1/apps/acme/conversations/ops/messages", key, nil), 200)
	if ms, _ := h.body["messages"].([]any); len(ms) != 4 || h.body["next_after"] != float64(4) {
		t.Fatalf("history: %s", h.raw)
	}

	// Cross-app: the admin key asking rival for acme's conversation, and
	// rival's key asking for it by acme's path, both get 404.
	if r := e.do("GET", "/v1/apps/rival/conversations/ops", e.admin, nil); r.status != 404 {
		t.Fatalf("admin key, other app's conversation: %d %s", r.status, r.raw)
	}
	if r := e.do("GET", "/v1/apps/acme/conversations/ops", e.keys["rival:admin"], nil); r.status != 404 {
		t.Fatalf("other app's key: %d %s", r.status, r.raw)
	}
	// rival has a user alice too; acme's key cannot send as her, and a
	// direct message from acme's alice goes to acme's bob only.
	if r := e.do("POST", "/v1/apps/rival/users/alice/direct/bob/messages", key, map[string]any{"body": "x"}); r.status != 404 {
		t.Fatalf("send in another app: %d %s", r.status, r.raw)
	}
	if r := e.do("POST", "/v1/apps/acme/users/alice/direct/nobody/messages", key, map[string]any{"body": "x"}); r.status != 404 {
		t.Fatalf("direct to an unknown user: %d %s", r.status, r.raw)
	}
	if r := e.do("POST", "/v1/apps/acme/users/ghost/direct/bob/messages", key, map[string]any{"body": "x"}); r.status != 404 {
		t.Fatalf("direct from an unknown user: %d %s", r.status, r.raw)
	}
	e.must(e.do("POST", "/v1/apps/acme/users/alice/direct/bob/messages", key, map[string]any{"body": "psst", "type": "note"}), 201)
	if m := expectMsg(t, alice); m.From.User != "alice" || m.Conv != protocol.DirectConvID("alice", "bob") || m.Type != "note" {
		t.Fatalf("direct message to the author's devices: %+v", m)
	}
	convs := e.must(e.do("GET", "/v1/apps/acme/users/bob/conversations", key, nil), 200)
	if cs, _ := convs.body["conversations"].([]any); len(cs) != 2 {
		t.Fatalf("bob's conversations: %s", convs.raw)
	}
}
