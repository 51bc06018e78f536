package hooks_test

import (
	"testing"
)

// convsUnread returns the "unread" and "unread_more" of every conversation
// in d's "convs" answer.
func convsUnread(t testing.TB, d *device) map[string][2]any {
	t.Helper()
	res := result(t, d.request(map[string]any{"op": "convs"}))
	out := map[string][2]any{}
	list, _ := res["convs"].([]any)
	for _, c := range list {
		m := c.(map[string]any)
		out[m["conv"].(string)] = [2]any{m["unread"], m["unread_more"]}
	}
	return out
}

// The unread count counts what a person counts as new: another member's
// messages, an announcement and a missed call. Reactions, edits, recalls,
// call signalling and membership events move last_seq but not the badge.
func TestUnreadCountsMessagesNotEvents(t *testing.T) {
	b := startBroker(t, nil)
	ann := connect(t, "mqtt://"+b.tcp, "ann", "phone")
	ben := connect(t, "mqtt://"+b.tcp, "ben", "phone")
	result(t, ann.request(map[string]any{"op": "create", "kind": "group", "conv": "team", "members": []string{"ben"}})) // seq 1: created
	mine := result(t, ben.request(send("team", "", "b1", "hi all")))                                                    // seq 2: ben's own, read
	hers := result(t, ann.request(send("team", "", "a1", "hello ben")))                                                 // seq 3: counts
	result(t, ann.request(map[string]any{"op": "react", "conv": "team", "id": mine["id"], "seq": mine["seq"], "emoji": "👍"}))
	result(t, ann.request(map[string]any{"op": "edit", "conv": "team", "id": hers["id"], "seq": hers["seq"], "body": map[string]string{"text": "hello, ben"}}))
	result(t, ann.request(map[string]any{"op": "add", "conv": "team", "members": []string{"cal"}}))
	gone := result(t, ann.request(send("team", "", "a2", "wrong chat")))
	result(t, ann.request(map[string]any{"op": "recall", "conv": "team", "id": gone["id"], "seq": gone["seq"]}))
	ben.expect(event("team", "recall"))
	if got := convsUnread(t, ben)["team"]; got != [2]any{1.0, nil} {
		t.Fatalf("team after a message, a reaction, an edit, a member added and a recalled message: unread %v, want 1", got)
	}
	// An announcement counts.
	result(t, ann.request(map[string]any{"op": "announce", "conv": "team", "text": "standup at 10"}))
	if got := convsUnread(t, ben)["team"]; got != [2]any{2.0, nil} {
		t.Fatalf("team after an announcement: unread %v, want 2", got)
	}
	// ann's own view: ben's message and nothing of hers.
	if got := convsUnread(t, ann)["team"]; got != [2]any{0.0, nil} {
		t.Fatalf("ann's team: unread %v, want 0 (she read up to her last event)", got)
	}
	// Reading to the head clears it; a reaction afterwards does not bring it back.
	last := result(t, ben.request(map[string]any{"op": "info", "conv": "team"}))["conv"].(map[string]any)["last_seq"]
	result(t, ben.request(map[string]any{"op": "read", "conv": "team", "seq": last}))
	result(t, ann.request(map[string]any{"op": "react", "conv": "team", "id": mine["id"], "seq": mine["seq"], "emoji": "🎉"}))
	if got := convsUnread(t, ben)["team"]; got != [2]any{0.0, nil} {
		t.Fatalf("team after reading and another reaction: unread %v, want 0", got)
	}

	// Calls: a ring that ann cancels is one missed call; the ring itself
	// is not a message.
	ack := result(t, ann.request(callReq("ben", "c1", "ring", nil)))
	direct := ""
	if c, ok := ack["conv"].(string); ok {
		direct = c
	}
	ben.expect(callEvent("c1", "ring"))
	if direct == "" {
		for id := range convsUnread(t, ben) {
			if id != "team" {
				direct = id
			}
		}
	}
	if got := convsUnread(t, ben)[direct]; got != [2]any{0.0, nil} {
		t.Fatalf("ringing call: unread %v, want 0", got)
	}
	result(t, ann.request(callReq("ben", "c1", "hangup", nil)))
	ben.expect(callEvent("c1", "hangup"))
	if got := convsUnread(t, ben)[direct]; got != [2]any{1.0, nil} {
		t.Fatalf("missed call: unread %v, want 1", got)
	}
}
