package broker

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"

	"github.com/warblerim/warbler/internal/mqtttest"
	"github.com/warblerim/warbler/protocol"
)

// Over HTTP a backend moderates and annotates: the service recalls a
// member's message (any time), sends a reply with mentions, and edits as a
// member only what that member sent. Members' devices see it live.
func TestAPIMessageOps(t *testing.T) {
	s := startServer(t, nil)
	alice := chatConnect(t, s, mqtttest.DialTCP(t, s.Addrs().MQTT), "alice", "laptop")
	bob := chatConnect(t, s, mqtttest.DialTCP(t, s.Addrs().MQTT), "bob", "phone")
	alice.request(t, map[string]any{"op": "create", "kind": "group", "conv": "team", "members": []string{"bob"}})
	spam := bob.request(t, map[string]any{"conv": "team", "cmid": "s", "type": "text", "body": map[string]string{"text": "buy now"}})
	fine := bob.request(t, map[string]any{"conv": "team", "cmid": "f", "type": "text", "body": map[string]string{"text": "helo"}})
	call := func(method, path string, body any, want int) map[string]any {
		t.Helper()
		code, raw := adminCall(t, s, method, "/v1/apps/demo/conversations/team/messages"+path, body)
		var out map[string]any
		_ = json.Unmarshal(raw, &out)
		if code != want {
			t.Fatalf("%s %s: %d %s, want %d", method, path, code, raw, want)
		}
		return out
	}

	r := call("POST", fmt.Sprintf("/%v/recall", spam["seq"]), map[string]any{"id": spam["id"]}, http.StatusOK)
	ev := alice.expectMsg(t, "team", uint64(r["seq"].(float64)))
	if ev.Type != protocol.TypeRecall || ev.Ref == nil || fmt.Sprint(ev.Ref.Seq) != fmt.Sprint(spam["seq"]) || ev.From.User != "_svc" {
		t.Fatalf("recall event %+v", ev)
	}
	// A wrong id is refused, a repeat changes nothing.
	if e := call("POST", fmt.Sprintf("/%v/recall", fine["seq"]), map[string]any{"id": spam["id"]}, http.StatusNotFound); e["error"].(map[string]any)["code"] != "not_found" {
		t.Fatalf("wrong id: %v", e)
	}
	if again := call("POST", fmt.Sprintf("/%v/recall", spam["seq"]), nil, http.StatusOK); again["unchanged"] != true {
		t.Fatalf("repeat: %v", again)
	}

	// The service replies to bob and mentions him.
	ack := call("POST", "", map[string]any{"body": map[string]string{"text": "@bob typo"}, "cmid": "svc-r",
		"reply_to": map[string]any{"id": fine["id"], "seq": fine["seq"]}, "mentions": []string{"bob"}}, http.StatusCreated)
	m := bob.expectMsg(t, "team", uint64(ack["seq"].(float64)))
	if m.ReplyTo == nil || m.ReplyTo.From != "bob" || fmt.Sprint(m.Mentions) != "[bob]" {
		t.Fatalf("reply with mention %+v", m)
	}
	call("POST", "", map[string]any{"body": "x", "mentions": []string{"eve"}}, http.StatusNotFound)

	// As a member, the member's rules: alice cannot edit bob's message,
	// bob can.
	if e := call("PATCH", fmt.Sprintf("/%v", fine["seq"]), map[string]any{"from": "alice", "body": map[string]string{"text": "hello"}}, http.StatusForbidden); e["error"].(map[string]any)["code"] != "forbidden" {
		t.Fatalf("edit by another member: %v", e)
	}
	r = call("PATCH", fmt.Sprintf("/%v", fine["seq"]), map[string]any{"from": "bob", "body": map[string]string{"text": "hello"}}, http.StatusOK)
	if ev := alice.expectMsg(t, "team", uint64(r["seq"].(float64))); ev.Type != protocol.TypeEdit || string(ev.Body) != `{"text":"hello"}` || ev.From.User != "bob" {
		t.Fatalf("edit event %+v", ev)
	}
	call("PATCH", fmt.Sprintf("/%v", fine["seq"]), map[string]any{"from": "bob"}, http.StatusBadRequest)
	call("PATCH", "/0", map[string]any{"body": 1}, http.StatusBadRequest)
	// An edit of a recalled message conflicts with its state.
	if e := call("PATCH", fmt.Sprintf("/%v", spam["seq"]), map[string]any{"from": "bob", "body": 1}, http.StatusConflict); e["error"].(map[string]any)["code"] != "bad_state" {
		t.Fatalf("edit of a recalled message: %v", e)
	}
}
