package hooks_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/warblerim/warbler/chat"
	"github.com/warblerim/warbler/protocol"
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

// An invite token is only as good as its maker's standing: once they are
// no longer an admin (demoted, removed or gone), their tokens stop working,
// so an admin who is removed cannot come back, or send others in, with a
// token they made.
func TestGroupInviteOfRemovedAdmin(t *testing.T) {
	b, _ := startAdminBroker(t, 0)
	ann := connect(t, "mqtt://"+b.tcp, "ann", "phone")
	ben := connect(t, "mqtt://"+b.tcp, "ben", "phone")
	cal := connect(t, "mqtt://"+b.tcp, "cal", "phone")
	dan := connect(t, "mqtt://"+b.tcp, "dan", "phone")
	result(t, ann.request(map[string]any{"op": "create", "kind": "group", "conv": "g", "members": []string{"ben", "cal"}}))
	result(t, ann.request(map[string]any{"op": "role", "conv": "g", "user": "ben", "role": "admin"}))
	result(t, ann.request(map[string]any{"op": "role", "conv": "g", "user": "cal", "role": "admin"}))
	bens := result(t, ben.request(map[string]any{"op": "invite", "conv": "g"}))["token"]
	cals := result(t, cal.request(map[string]any{"op": "invite", "conv": "g"}))["token"]
	anns := result(t, ann.request(map[string]any{"op": "invite", "conv": "g"}))["token"]

	result(t, ann.request(map[string]any{"op": "remove", "conv": "g", "members": []string{"ben"}}))
	if c := errCode(t, ben.request(map[string]any{"op": "join", "token": bens})); c != "not_found" {
		t.Fatalf("removed admin rejoins with their token: %s", c)
	}
	result(t, ann.request(map[string]any{"op": "role", "conv": "g", "user": "cal", "role": "member"}))
	if c := errCode(t, dan.request(map[string]any{"op": "join", "token": cals})); c != "not_found" {
		t.Fatalf("token of a demoted admin: %s", c)
	}
	list := result(t, ann.request(map[string]any{"op": "invites", "conv": "g"}))["invites"].([]any)
	if len(list) != 1 || list[0].(map[string]any)["token"] != anns {
		t.Fatalf("live invites: %v", list)
	}
	if j := result(t, dan.request(map[string]any{"op": "join", "token": anns})); j["state"] != "joined" {
		t.Fatalf("join with the owner's token: %v", j)
	}
}

// Anyone can compute the ID of the direct conversation of two users, so
// "join" must not tell whether it exists: who talks to whom is theirs to
// know. Joining one that exists answers exactly as joining one that does
// not.
func TestJoinDoesNotRevealDirectConversations(t *testing.T) {
	b, _ := startAdminBroker(t, 0)
	alice := connect(t, "mqtt://"+b.tcp, "alice", "phone")
	eve := connect(t, "mqtt://"+b.tcp, "eve", "phone")
	result(t, alice.request(send("", "bob", "m1", "hi bob")))
	answer := func(conv string) (string, string) {
		in := eve.request(map[string]any{"op": "join", "conv": conv})
		e, _ := in.data["error"].(map[string]any)
		msg, _ := e["message"].(string)
		return errCode(t, in), strings.ReplaceAll(msg, conv, "ID")
	}
	c1, m1 := answer(protocol.DirectConvID("alice", "bob"))   // exists
	c2, m2 := answer(protocol.DirectConvID("alice", "carol")) // does not
	if c1 != "not_member" || c1 != c2 || m1 != m2 {
		t.Fatalf("join of an existing direct conversation: %s %q; of a missing one: %s %q", c1, m1, c2, m2)
	}
}
