package hooks_test

import (
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
)

// A forwarded copy speaks for its original author ("forwarded" names
// them), so the forwarder may not give it a new body; and an admin of a
// channel who is demoted to member no longer writes there, edits included.
func TestMsgOpsEditRights(t *testing.T) {
	b := startBroker(t, nil)
	ann := connect(t, "mqtt://"+b.tcp, "ann", "phone")
	ben := connect(t, "mqtt://"+b.tcp, "ben", "phone")
	cal := connect(t, "mqtt://"+b.tcp, "cal", "phone")
	result(t, ann.request(map[string]any{"op": "create", "kind": "group", "conv": "team", "members": []string{"ben"}}))
	orig := result(t, ann.request(send("team", "", "o", "the plan is A")))

	fwd := result(t, ben.request(map[string]any{"op": "forward", "to": "cal", "cmid": "f1",
		"src": map[string]any{"conv": "team", "id": orig["id"], "seq": orig["seq"]}}))
	cal.expect(isMsg(fwd["conv"].(string), fwd["seq"].(float64)))
	edit := map[string]any{"op": "edit", "conv": fwd["conv"], "id": fwd["id"], "seq": fwd["seq"], "body": map[string]string{"text": "the plan is B"}}
	ben.refused(edit, "bad_state", packets.ErrImplementationSpecificError.Code)
	if m := historyOf(t, cal, fwd["conv"].(string))[uint64(fwd["seq"].(float64))]; m.Edited || string(m.Body) != `{"text":"the plan is A"}` || m.Forwarded == nil || m.Forwarded.From != "ann" {
		t.Fatalf("forwarded copy after the refused edit: %+v", m)
	}
	// The forwarder may still take the copy back.
	result(t, ben.request(map[string]any{"op": "recall", "conv": fwd["conv"], "id": fwd["id"], "seq": fwd["seq"]}))

	// A channel admin writes, is demoted, and may no longer edit.
	result(t, ann.request(map[string]any{"op": "create", "kind": "channel", "conv": "news", "members": []string{"ben"}}))
	result(t, ann.request(map[string]any{"op": "role", "conv": "news", "user": "ben", "role": "admin"}))
	post := result(t, ben.request(send("news", "", "p1", "issue 1")))
	result(t, ben.request(map[string]any{"op": "edit", "conv": "news", "id": post["id"], "seq": post["seq"], "body": map[string]string{"text": "issue 1 (fixed)"}}))
	result(t, ann.request(map[string]any{"op": "role", "conv": "news", "user": "ben", "role": "member"}))
	ben.refused(map[string]any{"op": "edit", "conv": "news", "id": post["id"], "seq": post["seq"], "body": map[string]string{"text": "vandalised"}},
		"forbidden", packets.ErrNotAuthorized.Code)
	if m := historyOf(t, ann, "news")[uint64(post["seq"].(float64))]; string(m.Body) != `{"text":"issue 1 (fixed)"}` {
		t.Fatalf("channel post after the refused edit: %+v", m)
	}
}
