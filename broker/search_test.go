package broker

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/warblerim/warbler/internal/mqtttest"
	"github.com/warblerim/warbler/protocol"
)

// hitSeqs runs a search over MQTT and returns the (conv, seq) of its hits,
// waiting (within a deadline) until want is met: the indexer works just
// behind the sends.
func searchUntil(t *testing.T, d *chatDevice, req map[string]any, want string) string {
	t.Helper()
	deadline := time.Now().Add(mqtttest.Timeout)
	for {
		req["op"] = "search"
		r := d.request(t, req)
		got := ""
		for _, h := range r["hits"].([]any) {
			hm := h.(map[string]any)
			got += fmt.Sprintf("%s/%v ", hm["conv"], hm["seq"])
		}
		if got == want || time.Now().After(deadline) {
			return got
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestSearchOverMQTTAndHTTP(t *testing.T) {
	s := startServer(t, nil)
	tcp := func() net.Conn { return mqtttest.DialTCP(t, s.Addrs().MQTT) }
	alice := chatConnect(t, s, tcp(), "alice", "phone")
	bob := chatConnect(t, s, tcp(), "bob", "phone")
	carol := chatConnect(t, s, tcp(), "carol", "phone")
	dave := chatConnect(t, s, tcp(), "dave", "phone")

	alice.request(t, map[string]any{"op": "create", "kind": "group", "conv": "trip", "members": []string{"bob", "carol"}}) // seq 1: created
	ids := map[uint64]string{}
	send := func(d *chatDevice, conv, cmid, text string) uint64 {
		ack := d.request(t, map[string]any{"conv": conv, "cmid": cmid, "type": "text", "body": map[string]string{"text": text}})
		seq := uint64(ack["seq"].(float64))
		ids[seq] = ack["id"].(string)
		return seq
	}
	s1 := send(alice, "trip", "a1", "我们下周去北京开会")
	s2 := send(bob, "trip", "b1", "Beijing in March: bring the passports")
	s3 := send(alice, "trip", "a2", "北京的天气怎么样？ Weather in Beijing")
	dm := bob.request(t, map[string]any{"to": "dave", "cmid": "d1", "type": "text", "body": map[string]string{"text": "secret Beijing plans"}})

	// Chinese: the bigram 北京 matches both Chinese messages (the shorter
	// one ranks first: as relevant, and as new); the longer phrase only
	// the first.
	if got, want := searchUntil(t, bob, map[string]any{"q": "北京"}, fmt.Sprintf("trip/%d trip/%d ", s1, s3)), fmt.Sprintf("trip/%d trip/%d ", s1, s3); got != want {
		t.Fatalf("北京: %q, want %q", got, want)
	}
	if got := searchUntil(t, bob, map[string]any{"q": "去北京"}, fmt.Sprintf("trip/%d ", s1)); got != fmt.Sprintf("trip/%d ", s1) {
		t.Fatalf("去北京: %q", got)
	}
	// English, case-insensitive, every term must match; bob also finds his
	// direct message.
	want := fmt.Sprintf("%s/%v trip/%d trip/%d ", dm["conv"], dm["seq"], s2, s3)
	if got := searchUntil(t, bob, map[string]any{"q": "BEIJING"}, want); got != want {
		t.Fatalf("BEIJING for bob: %q, want %q", got, want)
	}
	if got := searchUntil(t, bob, map[string]any{"q": "beijing passports"}, fmt.Sprintf("trip/%d ", s2)); got != fmt.Sprintf("trip/%d ", s2) {
		t.Fatalf("beijing passports: %q", got)
	}
	// carol is in the group but not in bob and dave's conversation.
	if got := searchUntil(t, carol, map[string]any{"q": "beijing"}, fmt.Sprintf("trip/%d trip/%d ", s2, s3)); got != fmt.Sprintf("trip/%d trip/%d ", s2, s3) {
		t.Fatalf("carol: %q", got)
	}
	// dave is in no group: only his direct conversation, and in:trip is
	// refused.
	if got := searchUntil(t, dave, map[string]any{"q": "beijing"}, fmt.Sprintf("%s/%v ", dm["conv"], dm["seq"])); got != fmt.Sprintf("%s/%v ", dm["conv"], dm["seq"]) {
		t.Fatalf("dave: %q", got)
	}
	if c := dave.requestErr(t, map[string]any{"op": "search", "q": "beijing in:trip"}); c != protocol.CodeNotMember {
		t.Fatalf("dave in:trip: %s", c)
	}
	if c := dave.requestErr(t, map[string]any{"op": "search", "q": "in:trip"}); c != protocol.CodeBadRequest {
		t.Fatalf("a query of no words: %s", c)
	}

	// The hit carries the message as history returns it.
	r := bob.request(t, map[string]any{"op": "search", "q": "passports", "limit": 1})
	hit := r["hits"].([]any)[0].(map[string]any)
	if m := hit["message"].(map[string]any); m["cmid"] != "b1" || m["body"].(map[string]any)["text"] == nil {
		t.Fatalf("hit %v", hit)
	}

	// carol leaves: the group's messages are no longer hers to find.
	carol.request(t, map[string]any{"op": "leave", "conv": "trip"})
	if got := searchUntil(t, carol, map[string]any{"q": "beijing"}, ""); got != "" {
		t.Fatalf("carol after leaving: %q", got)
	}

	// A group whose history is visible from the join: dave, added later,
	// finds only what came after.
	alice.request(t, map[string]any{"op": "create", "kind": "group", "conv": "club", "members": []string{"bob"}})
	alice.request(t, map[string]any{"op": "settings", "conv": "club", "settings": map[string]any{"history": "join"}})
	before := send(alice, "club", "c1", "the password is swordfish")
	alice.request(t, map[string]any{"op": "add", "conv": "club", "members": []string{"dave"}})
	after := send(alice, "club", "c2", "new swordfish rules")
	if got := searchUntil(t, bob, map[string]any{"q": "swordfish"}, fmt.Sprintf("club/%d club/%d ", after, before)); got != fmt.Sprintf("club/%d club/%d ", after, before) {
		t.Fatalf("bob in club: %q", got)
	}
	if got := searchUntil(t, dave, map[string]any{"q": "swordfish"}, fmt.Sprintf("club/%d ", after)); got != fmt.Sprintf("club/%d ", after) {
		t.Fatalf("dave, joined later: %q", got)
	}

	// Edit and recall update the index.
	alice.request(t, map[string]any{"op": "edit", "conv": "club", "id": ids[after], "seq": after, "body": map[string]string{"text": "new marlin rules"}})
	if got := searchUntil(t, bob, map[string]any{"q": "swordfish"}, fmt.Sprintf("club/%d ", before)); got != fmt.Sprintf("club/%d ", before) {
		t.Fatalf("swordfish after the edit: %q", got)
	}
	if got := searchUntil(t, bob, map[string]any{"q": "marlin"}, fmt.Sprintf("club/%d ", after)); got != fmt.Sprintf("club/%d ", after) {
		t.Fatalf("marlin after the edit: %q", got)
	}
	alice.request(t, map[string]any{"op": "recall", "conv": "club", "id": ids[before], "seq": before})
	if got := searchUntil(t, bob, map[string]any{"q": "swordfish"}, ""); got != "" {
		t.Fatalf("swordfish after the recall: %q", got)
	}

	// The same search over HTTP with the user's token.
	q := url.Values{"q": {"北京"}, "conv": {"trip"}}
	h := doHTTP(t, s, "GET", "/v1/me/search?"+q.Encode(), userToken(t, s, "bob"), nil, nil)
	if h.status != http.StatusOK || len(h.json(t)["hits"].([]any)) != 2 {
		t.Fatalf("HTTP search: %d %s", h.status, h.body)
	}
	if h := doHTTP(t, s, "GET", "/v1/me/search?q=beijing&conv=trip", userToken(t, s, "carol"), nil, nil); h.status != http.StatusNotFound {
		t.Fatalf("HTTP search by a former member: %d %s", h.status, h.body)
	}
	if h := doHTTP(t, s, "GET", "/v1/me/search?q=", userToken(t, s, "bob"), nil, nil); h.status != http.StatusBadRequest {
		t.Fatalf("HTTP empty query: %d", h.status)
	}
}

// TestMediaAndSearchSurviveRestart: files, their records and the search
// index are in the data dir; after a restart the same file downloads, the
// same search finds the message, and the indexer carries on.
func TestMediaAndSearchSurviveRestart(t *testing.T) {
	cfg := loopbackConfig(t)
	start := func() *Server {
		s, err := New(cfg, Options{Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Shutdown(context.Background()) })
		return s
	}
	s := start()
	alice := chatConnect(t, s, mqtttest.DialTCP(t, s.Addrs().MQTT), "alice", "phone")
	bob := chatConnect(t, s, mqtttest.DialTCP(t, s.Addrs().MQTT), "bob", "phone")
	img := testPNG(t, 500, 100)
	up := doHTTP(t, s, "POST", "/v1/files?name=sunset.png", userToken(t, s, "alice"), nil, bytes.NewReader(img))
	id := up.json(t)["id"].(string)
	alice.request(t, map[string]any{"to": "bob", "cmid": "s1", "type": "image", "attachment": id, "body": map[string]string{"text": "sunset 夕阳"}})
	if got := searchUntil(t, bob, map[string]any{"q": "夕阳"}, protocol.DirectConvID("alice", "bob")+"/1 "); got == "" {
		t.Fatal("not found before the restart")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}

	s = start()
	bobTok := userToken(t, s, "bob")
	if r := doHTTP(t, s, "GET", "/v1/files/"+id, bobTok, nil, nil); r.status != 200 || !bytes.Equal(r.body, img) {
		t.Fatalf("download after the restart: %d", r.status)
	}
	if r := doHTTP(t, s, "GET", "/v1/files/"+id+"/thumb", bobTok, nil, nil); r.status != 200 {
		t.Fatalf("thumbnail after the restart: %d", r.status)
	}
	alice = chatConnect(t, s, mqtttest.DialTCP(t, s.Addrs().MQTT), "alice", "phone")
	alice.request(t, map[string]any{"to": "bob", "cmid": "s2", "type": "text", "body": map[string]string{"text": "another sunset"}})
	bob = chatConnect(t, s, mqtttest.DialTCP(t, s.Addrs().MQTT), "bob", "phone")
	conv := protocol.DirectConvID("alice", "bob")
	// The first ranks higher: "sunset" twice (its caption and its file
	// name, sunset.png).
	if got := searchUntil(t, bob, map[string]any{"q": "sunset"}, conv+"/1 "+conv+"/2 "); got != conv+"/1 "+conv+"/2 " {
		t.Fatalf("sunset after the restart: %q", got)
	}
}
