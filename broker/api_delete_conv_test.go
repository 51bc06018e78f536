package broker

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/warblerim/warbler/internal/mqtttest"

	"github.com/warblerim/warbler/protocol"
)

// TestDeleteConversationOverHTTP deletes a channel through the HTTP API:
// a connected member gets the "deleted" system event, then the
// conversation, its members and its log are gone (404, not in the member's
// list), the ID can be used again from seq 1, and the route answers 403
// without the admin scope or for a direct conversation and 404 for
// another app's key or a conversation that does not exist.
func TestDeleteConversationOverHTTP(t *testing.T) {
	e := newAPIEnv(t)
	e.must(e.do("POST", "/v1/apps/acme/conversations", e.admin, map[string]any{"id": "news", "kind": "channel", "members": []string{"alice", "bob"}}), 201)
	for i := range 3 {
		e.must(e.do("POST", "/v1/apps/acme/conversations/news/messages", e.keys["acme:publish"], map[string]any{"body": map[string]any{"text": fmt.Sprintf("swordfish %d", i)}}), 201)
	}
	if got := searchHits(t, e, "swordfish", "news/4 news/3 news/2 "); got != "news/4 news/3 news/2 " {
		t.Fatalf("search before the delete: %q", got)
	}
	alice := connectApp(t, e.s, "acme", "alice", "phone")
	alice.Subscribe(t, "w/acme/u/alice")

	e.must(e.do("DELETE", "/v1/apps/acme/conversations/news", e.keys["acme:users"], nil), 403)
	e.must(e.do("DELETE", "/v1/apps/acme/conversations/news", e.keys["rival:admin"], nil), 404)
	e.must(e.do("DELETE", "/v1/apps/acme/conversations/news", e.keys["acme:admin"], nil), 204)

	m := expectMsg(t, alice)
	var ev struct{ Event, By string }
	if err := json.Unmarshal(m.Body, &ev); err != nil || m.Conv != "news" || m.Type != protocol.TypeSystem || m.Seq != 5 || ev.Event != "deleted" || ev.By != "_svc" {
		t.Fatalf("member got %+v %s", m, m.Body)
	}
	e.must(e.do("GET", "/v1/apps/acme/conversations/news", e.admin, nil), 404)
	e.must(e.do("GET", "/v1/apps/acme/conversations/news/messages", e.admin, nil), 404)
	e.must(e.do("DELETE", "/v1/apps/acme/conversations/news", e.admin, nil), 404)
	for _, u := range []string{"alice", "bob"} {
		if l := e.must(e.do("GET", "/v1/apps/acme/users/"+u+"/conversations", e.admin, nil), 200); strings.Contains(string(l.raw), `"news"`) {
			t.Fatalf("%s still lists it: %s", u, l.raw)
		}
	}
	// The ID starts afresh: only the new conversation's "created" event.
	e.must(e.do("POST", "/v1/apps/acme/conversations", e.admin, map[string]any{"id": "news", "kind": "group", "members": []string{"alice"}}), 201)
	h := e.must(e.do("GET", "/v1/apps/acme/conversations/news/messages", e.admin, nil), 200)
	var page struct{ Messages []protocol.Message }
	if err := json.Unmarshal(h.raw, &page); err != nil || len(page.Messages) != 1 || page.Messages[0].Seq != 1 {
		t.Fatalf("history of the new conversation: %s", h.raw)
	}
	// Search knows only the new conversation's message (the old postings
	// went with the old one, and the index starts again from seq 1).
	e.must(e.do("POST", "/v1/apps/acme/conversations/news/messages", e.keys["acme:publish"], map[string]any{"body": map[string]any{"text": "marlin"}}), 201)
	if got := searchHits(t, e, "marlin", "news/2 "); got != "news/2 " {
		t.Fatalf("search for the new message: %q", got)
	}
	if got := searchHits(t, e, "swordfish", ""); got != "" {
		t.Fatalf("search for the deleted messages: %q", got)
	}
	// A direct conversation is not deleted.
	e.must(e.do("POST", "/v1/apps/acme/users/alice/direct/bob/messages", e.keys["acme:users"], map[string]any{"body": map[string]any{"text": "hi"}}), 201)
	e.must(e.do("DELETE", "/v1/apps/acme/conversations/"+protocol.DirectConvID("alice", "bob"), e.admin, nil), 403)
}

// searchHits searches alice's conversations over HTTP until the hits
// (conv/seq, best first) are want or the deadline passes, and returns the
// last answer: the indexer works just behind the sends.
func searchHits(t *testing.T, e *apiEnv, q, want string) string {
	t.Helper()
	deadline := time.Now().Add(mqtttest.Timeout)
	for {
		r := e.must(e.do("GET", "/v1/me/search?q="+url.QueryEscape(q), e.vars["alice_token"], nil), 200)
		got := ""
		hits, _ := r.body["hits"].([]any)
		for _, h := range hits {
			hm, _ := h.(map[string]any)
			got += fmt.Sprintf("%s/%v ", hm["conv"], hm["seq"])
		}
		if got == want || time.Now().After(deadline) {
			return got
		}
		time.Sleep(20 * time.Millisecond)
	}
}
