package hooks_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/warblerim/warbler/chat"
)

// A conversation holds at most chat.MaxInvites live invite tokens; expired
// and used-up ones do not count and make room again.
func TestGroupInviteLimit(t *testing.T) {
	b, clk := startAdminBroker(t, 0)
	ann := connect(t, "mqtt://"+b.tcp, "ann", "phone")
	result(t, ann.request(map[string]any{"op": "create", "kind": "group", "conv": "g"}))
	for i := range chat.MaxInvites {
		d := 3600
		if i%2 == 0 {
			d = 60 // half of them expire soon
		}
		result(t, ann.request(map[string]any{"op": "invite", "conv": "g", "duration": d}))
	}
	if c := errCode(t, ann.request(map[string]any{"op": "invite", "conv": "g"})); c != "full" {
		t.Fatalf("invite past the limit: %s", c)
	}
	clk.advance(61 * time.Second)
	for range chat.MaxInvites / 2 {
		result(t, ann.request(map[string]any{"op": "invite", "conv": "g"}))
	}
	if c := errCode(t, ann.request(map[string]any{"op": "invite", "conv": "g"})); c != "full" {
		t.Fatalf("invite past the limit after the expired ones went: %s", c)
	}
	if n := len(result(t, ann.request(map[string]any{"op": "invites", "conv": "g"}))["invites"].([]any)); n != chat.MaxInvites {
		t.Fatalf("live invites: %d", n)
	}
}

// Asking again to join while a request is pending notifies the admins
// only once.
func TestGroupJoinRequestNotifiedOnce(t *testing.T) {
	b, _ := startAdminBroker(t, 0)
	ann := connect(t, "mqtt://"+b.tcp, "ann", "phone")
	dan := connect(t, "mqtt://"+b.tcp, "dan", "phone")
	eve := connect(t, "mqtt://"+b.tcp, "eve", "phone")
	result(t, ann.request(map[string]any{"op": "create", "kind": "group", "conv": "g"}))
	result(t, ann.request(map[string]any{"op": "settings", "conv": "g", "settings": map[string]any{"join": "approval"}}))
	for i := range 5 {
		if j := result(t, dan.request(map[string]any{"op": "join", "conv": "g", "text": fmt.Sprint("please ", i)})); j["state"] != "pending" {
			t.Fatalf("join request %d: %v", i, j)
		}
	}
	result(t, eve.request(map[string]any{"op": "join", "conv": "g"}))
	if n := ann.expect(isKind("join_request")); n.data["user"] != "dan" {
		t.Fatalf("first notice %s", n.raw)
	}
	if n := ann.expect(isKind("join_request")); n.data["user"] != "eve" {
		t.Fatalf("the admins were told of dan's request again: %s", n.raw)
	}
	reqs := result(t, ann.request(map[string]any{"op": "requests", "conv": "g"}))["requests"].([]any)
	if len(reqs) != 2 {
		t.Fatalf("requests %v", reqs)
	}
}
