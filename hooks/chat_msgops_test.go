package hooks_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/warblerim/warbler/chat"
	"github.com/warblerim/warbler/protocol"
)

// try sends a request with MQTT 5 request/response and returns the PUBACK
// reason code and the answer (a reply or an error).
func (d *device) try(v map[string]any) (byte, inbound) {
	d.t.Helper()
	corr := fmt.Appendf(nil, "t-%d", time.Now().UnixNano())
	rc := d.publish(v, &paho.PublishProperties{ResponseTopic: protocol.DeviceTopic(app, d.user, d.device), CorrelationData: corr})
	return rc, d.expect(func(in inbound) bool { return string(in.corr) == string(corr) })
}

// refused sends a request that must fail with code and the MQTT 5 reason
// rc, and returns the error message.
func (d *device) refused(v map[string]any, code string, rc byte) string {
	d.t.Helper()
	got, in := d.try(v)
	e, _ := in.data["error"].(map[string]any)
	if in.kind() != "error" || e["code"] != code || got != rc {
		d.t.Fatalf("%v: want %s (reason %#x), got reason %#x and %s", v, code, rc, got, in.raw)
	}
	m, _ := e["message"].(string)
	return m
}

// msg decodes an inbound message.
func msgOf(t testing.TB, raw []byte) protocol.Message {
	t.Helper()
	var m protocol.Message
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("decode %s: %v", raw, err)
	}
	return m
}

// event matches the live delivery of an event of type typ.
func event(conv, typ string) func(inbound) bool {
	return func(in inbound) bool {
		return in.kind() == "msg" && in.data["conv"] == conv && in.data["type"] == typ
	}
}

// historyOf returns every message of conv by seq, as device d sees it.
func historyOf(t testing.TB, d *device, conv string) map[uint64]protocol.Message {
	t.Helper()
	r := result(t, d.request(map[string]any{"op": "history", "conv": conv, "limit": 500}))
	out := map[uint64]protocol.Message{}
	for _, raw := range r["messages"].([]any) {
		b, _ := json.Marshal(raw)
		m := msgOf(t, b)
		out[m.Seq] = m
	}
	return out
}

// syncAll pages through a device's sync and returns every message by conv
// and seq.
func syncAll(t testing.TB, d *device) map[string]map[uint64]protocol.Message {
	t.Helper()
	out := map[string]map[uint64]protocol.Message{}
	var cursors any
	for page := 0; ; page++ {
		req := map[string]any{"op": "sync", "limit": 2}
		if cursors != nil {
			req["cursors"] = cursors
		}
		r := result(t, d.request(req))
		for _, raw := range r["messages"].([]any) {
			b, _ := json.Marshal(raw)
			m := msgOf(t, b)
			if out[m.Conv] == nil {
				out[m.Conv] = map[uint64]protocol.Message{}
			}
			out[m.Conv][m.Seq] = m
		}
		cursors = r["cursors"]
		if r["more"] != true {
			return out
		}
		if page > 50 {
			t.Fatal("sync does not end")
		}
	}
}

// An edit and a recall reach the devices that are online as events, and a
// device that was offline at the time gets the final state by sync: the
// edited message with its new body, the recalled one without a body, and
// the events after them.
func TestMsgOpsEditRecallConverge(t *testing.T) {
	b := startBroker(t, nil)
	ann := connect(t, "mqtt://"+b.tcp, "ann", "phone")
	ben := connect(t, b.ws, "ben", "phone")
	benTablet := connect(t, "mqtt://"+b.tcp, "ben", "tablet")
	result(t, ann.request(map[string]any{"op": "create", "kind": "group", "conv": "team", "members": []string{"ben"}}))
	benTablet.expect(isMsg("team", 1))
	result(t, benTablet.request(map[string]any{"op": "delivered", "conv": "team", "seq": 1}))
	benTablet.close() // offline from here on

	m2 := result(t, ann.request(send("team", "", "c2", "helo")))
	m3 := result(t, ann.request(send("team", "", "c3", "oops, wrong chat")))
	ben.expect(isMsg("team", 3))

	ed := result(t, ann.request(map[string]any{"op": "edit", "conv": "team", "id": m2["id"], "seq": m2["seq"], "body": map[string]string{"text": "hello"}}))
	if ed["seq"] != 4.0 || ed["ref"].(map[string]any)["seq"] != 2.0 {
		t.Fatalf("edit result %v", ed)
	}
	live := msgOf(t, ben.expect(event("team", "edit")).raw)
	if live.Seq != 4 || live.Ref == nil || live.Ref.ID != m2["id"] || live.Ref.Seq != 2 || string(live.Body) != `{"text":"hello"}` || string(live.Prev) != `{"text":"helo"}` || live.From.User != "ann" {
		t.Fatalf("live edit event %+v", live)
	}
	// Edit, then recall: the recall takes the edit's versions with it.
	result(t, ann.request(map[string]any{"op": "edit", "conv": "team", "id": m3["id"], "seq": m3["seq"], "body": map[string]string{"text": "still wrong"}}))
	rc := result(t, ann.request(map[string]any{"op": "recall", "conv": "team", "id": m3["id"], "seq": m3["seq"]}))
	if rc["seq"] != 6.0 {
		t.Fatalf("recall result %v", rc)
	}
	liveRecall := msgOf(t, ben.expect(event("team", "recall")).raw)
	if liveRecall.Ref == nil || liveRecall.Ref.Seq != 3 || liveRecall.Body != nil {
		t.Fatalf("live recall event %+v", liveRecall)
	}
	// A second recall changes nothing and appends nothing.
	if again := result(t, ann.request(map[string]any{"op": "recall", "conv": "team", "id": m3["id"], "seq": m3["seq"]})); again["unchanged"] != true || again["seq"] != nil {
		t.Fatalf("repeated recall %v", again)
	}

	check := func(who string, got map[uint64]protocol.Message) {
		t.Helper()
		if len(got) != 6 {
			t.Fatalf("%s: want seqs 1-6, got %d messages", who, len(got))
		}
		if m := got[2]; string(m.Body) != `{"text":"hello"}` || !m.Edited || m.EditedTS == 0 || fmt.Sprint(m.Edits) != "[4]" || m.ID != m2["id"] {
			t.Fatalf("%s: edited message %+v", who, m)
		}
		if m := got[3]; !m.Recalled || m.Body != nil || m.RecalledBy != "ann" || m.ID != m3["id"] || m.Type != "text" {
			t.Fatalf("%s: recalled message %+v", who, m)
		}
		if m := got[4]; m.Type != "edit" || m.Ref.Seq != 2 || string(m.Body) != `{"text":"hello"}` {
			t.Fatalf("%s: edit event %+v", who, m)
		}
		if m := got[5]; m.Type != "edit" || m.Ref.Seq != 3 || m.Body != nil || m.Prev != nil || !m.Recalled {
			t.Fatalf("%s: the recalled message's edit event kept a version: %+v", who, m)
		}
		if m := got[6]; m.Type != "recall" || m.Ref.Seq != 3 || m.Ref.ID != m3["id"] {
			t.Fatalf("%s: recall event %+v", who, m)
		}
	}
	check("history", historyOf(t, ben, "team"))

	// The tablet comes back and syncs from its cursor (1).
	benTablet = connect(t, "mqtt://"+b.tcp, "ben", "tablet")
	got := syncAll(t, benTablet)["team"]
	if _, ok := got[1]; ok {
		t.Fatal("sync returned seq 1, before the tablet's cursor")
	}
	got[1] = protocol.Message{}
	check("sync", got)
}

// Permission failures get clear codes: recalling or editing someone
// else's message, recalling after the window, @all by a member, mentioning
// a non-member, reacting in a conversation one is not in; an admin may
// recall any message any time.
func TestMsgOpsPermissions(t *testing.T) {
	var offset atomic.Int64
	b := startBroker(t, func(_ *mqtt.Options, co *chat.Options) {
		co.Now = func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	})
	ann := connect(t, "mqtt://"+b.tcp, "ann", "phone") // owner
	ben := connect(t, "mqtt://"+b.tcp, "ben", "phone")
	eve := connect(t, "mqtt://"+b.tcp, "eve", "phone") // not a member
	result(t, ann.request(map[string]any{"op": "create", "kind": "group", "conv": "team", "members": []string{"ben", "cal"}}))
	a := result(t, ann.request(send("team", "", "a1", "ann's")))
	bm := result(t, ben.request(send("team", "", "b1", "ben's")))
	ref := func(op string, m map[string]any) map[string]any {
		return map[string]any{"op": op, "conv": "team", "id": m["id"], "seq": m["seq"]}
	}

	ben.refused(ref("recall", a), "forbidden", packets.ErrNotAuthorized.Code)
	e := ref("edit", a)
	e["body"] = "mine now"
	ben.refused(e, "forbidden", packets.ErrNotAuthorized.Code)
	eve.refused(ref("recall", a), "not_member", packets.ErrNotAuthorized.Code)
	r := ref("react", a)
	r["emoji"] = "👍"
	eve.refused(r, "not_member", packets.ErrNotAuthorized.Code)
	wrong := ref("recall", a)
	wrong["id"] = bm["id"]
	ann.refused(wrong, "not_found", packets.ErrImplementationSpecificError.Code)
	wrong = ref("recall", a)
	wrong["seq"] = 99
	ann.refused(wrong, "not_found", packets.ErrImplementationSpecificError.Code)
	ann.refused(map[string]any{"op": "recall", "conv": "team", "id": "x", "seq": 1}, "not_found", packets.ErrImplementationSpecificError.Code)
	ev := ref("recall", a)
	ev["seq"] = 1 // the "created" event
	ev["id"] = historyOf(t, ann, "team")[1].ID
	if msg := ann.refused(ev, "bad_request", packets.ErrPayloadFormatInvalid.Code); !strings.Contains(msg, "event") {
		t.Fatalf("recall of an event: %s", msg)
	}

	// Mentions.
	all := send("team", "", "all1", "everyone!")
	all["mention_all"] = true
	ben.refused(all, "forbidden", packets.ErrNotAuthorized.Code)
	who := send("team", "", "who", "hey eve")
	who["mentions"] = []string{"cal", "eve"}
	if msg := ben.refused(who, "not_found", packets.ErrImplementationSpecificError.Code); !strings.Contains(msg, "eve") {
		t.Fatalf("mention of a non-member: %s", msg)
	}
	all["cmid"] = "all2"
	allAck := result(t, ann.request(all))
	who["mentions"] = []string{"cal", "cal", "ann"}
	who["cmid"] = "who2"
	whoAck := result(t, ben.request(who))
	h := historyOf(t, ann, "team")
	if m := h[uint64(allAck["seq"].(float64))]; !m.MentionAll {
		t.Fatalf("@all message %+v", m)
	}
	if m := h[uint64(whoAck["seq"].(float64))]; fmt.Sprint(m.Mentions) != "[cal ann]" {
		t.Fatalf("mentions %+v", m)
	}
	// Event types are the server's.
	fake := send("team", "", "fake", "x")
	fake["type"] = "recall"
	ben.refused(fake, "bad_request", packets.ErrPayloadFormatInvalid.Code)

	// Past the window (2 min by default) the sender may not recall; an
	// owner still may.
	offset.Store(int64(3 * time.Minute))
	if msg := ben.refused(ref("recall", bm), "too_late", packets.ErrNotAuthorized.Code); !strings.Contains(msg, "2m0s") {
		t.Fatalf("too late: %s", msg)
	}
	result(t, ann.request(ref("recall", bm)))
	if m := historyOf(t, ben, "team")[uint64(bm["seq"].(float64))]; !m.Recalled || m.RecalledBy != "ann" {
		t.Fatalf("recalled by the owner: %+v", m)
	}
	// A recalled message cannot be edited or reacted to.
	e = ref("edit", bm)
	e["body"] = "back"
	ben.refused(e, "bad_state", packets.ErrImplementationSpecificError.Code)
}

// The recall window comes from chat.Options.RecallWindow: negative means
// senders may not recall at all; in a direct conversation nobody is admin.
func TestMsgOpsRecallWindowSetting(t *testing.T) {
	b := startBroker(t, func(_ *mqtt.Options, co *chat.Options) {
		co.RecallWindow = func(app string) time.Duration { return -1 }
	})
	amy := connect(t, "mqtt://"+b.tcp, "amy", "phone")
	connect(t, "mqtt://"+b.tcp, "bo", "phone")
	m := result(t, amy.request(send("", "bo", "x", "hi")))
	amy.refused(map[string]any{"op": "recall", "conv": m["conv"], "id": m["id"], "seq": m["seq"]}, "forbidden", packets.ErrNotAuthorized.Code)
}

// Replies reference a message of the same conversation (with its author);
// forwards copy a readable message with a "forwarded" marker; reactions
// aggregate per message, are pushed live as events and come back with
// history.
func TestMsgOpsReplyForwardReactions(t *testing.T) {
	b := startBroker(t, nil)
	ann := connect(t, "mqtt://"+b.tcp, "ann", "phone")
	ben := connect(t, b.ws, "ben", "phone")
	cal := connect(t, "mqtt://"+b.tcp, "cal", "phone")
	eve := connect(t, "mqtt://"+b.tcp, "eve", "phone")
	result(t, ann.request(map[string]any{"op": "create", "kind": "group", "conv": "team", "members": []string{"ben", "cal"}}))
	orig := result(t, ann.request(send("team", "", "o", "lunch?")))

	// Reply.
	rp := send("team", "", "r1", "yes")
	rp["reply_to"] = map[string]any{"id": orig["id"], "seq": orig["seq"]}
	rAck := result(t, ben.request(rp))
	live := msgOf(t, cal.expect(isMsg("team", rAck["seq"].(float64))).raw)
	if live.ReplyTo == nil || live.ReplyTo.ID != orig["id"] || live.ReplyTo.Seq != 2 || live.ReplyTo.From != "ann" {
		t.Fatalf("reply %+v", live.ReplyTo)
	}
	rp["cmid"], rp["reply_to"] = "r2", map[string]any{"id": orig["id"], "seq": 77}
	ben.refused(rp, "not_found", packets.ErrImplementationSpecificError.Code)
	rp["cmid"], rp["reply_to"] = "r3", map[string]any{"id": "01XXXXXXXXXXXXXXXXXXXXXXXX", "seq": 2}
	ben.refused(rp, "not_found", packets.ErrImplementationSpecificError.Code)
	// A reference into another conversation is refused by the parser.
	rp["cmid"], rp["reply_to"] = "r4", map[string]any{"conv": "other", "id": orig["id"], "seq": 2}
	ben.refused(rp, "bad_request", packets.ErrPayloadFormatInvalid.Code)

	// Forward into ben's direct conversation with eve.
	fw := map[string]any{"op": "forward", "to": "eve", "cmid": "f1", "src": map[string]any{"conv": "team", "id": orig["id"], "seq": orig["seq"]}}
	fAck := result(t, ben.request(fw))
	got := msgOf(t, eve.expect(isMsg(fAck["conv"].(string), fAck["seq"].(float64))).raw)
	if got.Forwarded == nil || got.Forwarded.From != "ann" || got.Forwarded.TS == 0 || string(got.Body) != `{"text":"lunch?"}` || got.From.User != "ben" || got.Type != "text" {
		t.Fatalf("forwarded %+v", got)
	}
	// eve cannot forward (or read) what is in team.
	fw["cmid"] = "f2"
	fw["to"] = "ben"
	eve.refused(fw, "not_member", packets.ErrNotAuthorized.Code)
	// A forward of the forward keeps the first author.
	fw2 := map[string]any{"op": "forward", "to": "ann", "cmid": "f3", "src": map[string]any{"conv": fAck["conv"], "id": fAck["id"], "seq": fAck["seq"]}}
	f2 := result(t, eve.request(fw2))
	if m := historyOf(t, eve, f2["conv"].(string))[1]; m.Forwarded == nil || m.Forwarded.From != "ann" || m.From.User != "eve" {
		t.Fatalf("forward of a forward %+v", m)
	}

	// Reactions.
	react := func(d *device, op, emoji string) map[string]any {
		return result(t, d.request(map[string]any{"op": op, "conv": "team", "id": orig["id"], "seq": orig["seq"], "emoji": emoji}))
	}
	react(ben, "react", "👍")
	rev := msgOf(t, ann.expect(event("team", "reaction")).raw)
	var body protocol.ReactionEvent
	_ = json.Unmarshal(rev.Body, &body)
	if rev.From.User != "ben" || rev.Ref.Seq != 2 || body != (protocol.ReactionEvent{Emoji: "👍", Action: "add", Count: 1}) {
		t.Fatalf("reaction event %+v %+v", rev, body)
	}
	react(cal, "react", "👍")
	last := react(ben, "react", "❤️")
	if fmt.Sprint(last["reactions"]) != "[map[count:2 emoji:👍 users:[ben cal]] map[count:1 emoji:❤️ users:[ben]]]" {
		t.Fatalf("reactions after three: %v", last["reactions"])
	}
	if again := react(ben, "react", "👍"); again["unchanged"] != true {
		t.Fatalf("repeated reaction %v", again)
	}
	react(ben, "unreact", "👍")
	rev = msgOf(t, ann.expect(func(in inbound) bool {
		return event("team", "reaction")(in) && strings.Contains(string(in.raw), `"remove"`)
	}).raw)
	_ = json.Unmarshal(rev.Body, &body)
	if body.Count != 1 {
		t.Fatalf("remove event %+v", body)
	}
	m := historyOf(t, cal, "team")[2]
	if len(m.Reactions) != 2 || m.Reactions[0].Emoji != "👍" || m.Reactions[0].Count != 1 || fmt.Sprint(m.Reactions[0].Users) != "[cal]" || m.Reactions[1].Count != 1 {
		t.Fatalf("history reactions %+v", m.Reactions)
	}
	// Bounds: a long or blank "emoji" is refused, and so is the 21st kind.
	bad := map[string]any{"op": "react", "conv": "team", "id": orig["id"], "seq": orig["seq"], "emoji": strings.Repeat("x", 65)}
	ben.refused(bad, "bad_request", packets.ErrPayloadFormatInvalid.Code)
	bad["emoji"] = "a b"
	ben.refused(bad, "bad_request", packets.ErrPayloadFormatInvalid.Code)
	for i := len(m.Reactions); i < chat.MaxReactionKinds; i++ {
		react(cal, "react", fmt.Sprintf("e%d", i))
	}
	bad["emoji"] = "one-too-many"
	ben.refused(bad, "full", packets.ErrImplementationSpecificError.Code)
}

// Blocks, mutes and history visibility apply to message operations: a
// blocked user can neither react nor ring in the blocker's direct
// conversation, a muted member cannot edit, and a member who joined a
// "history: join" group cannot reach earlier messages by reply, forward or
// reaction (not_found, as if they did not exist).
func TestMsgOpsBlocksMutesVisibility(t *testing.T) {
	b := startBroker(t, nil)
	ann := connect(t, "mqtt://"+b.tcp, "ann", "phone")
	mal := connect(t, "mqtt://"+b.tcp, "mal", "phone")
	neu := connect(t, "mqtt://"+b.tcp, "neu", "phone")
	m := result(t, ann.request(send("", "mal", "d1", "hi")))
	mine := result(t, mal.request(send("", "ann", "d2", "hello")))
	result(t, ann.request(map[string]any{"op": "block", "users": []string{"mal"}}))
	mal.refused(map[string]any{"op": "react", "conv": m["conv"], "id": m["id"], "seq": m["seq"], "emoji": "👎"}, "blocked", packets.ErrNotAuthorized.Code)
	mal.refused(map[string]any{"op": "edit", "conv": m["conv"], "id": mine["id"], "seq": mine["seq"], "body": "x"}, "blocked", packets.ErrNotAuthorized.Code)
	mal.refused(callReq("ann", "c1", "ring", nil), "blocked", packets.ErrNotAuthorized.Code)
	// Taking back what one sent stays possible.
	result(t, mal.request(map[string]any{"op": "recall", "conv": m["conv"], "id": mine["id"], "seq": mine["seq"]}))

	result(t, ann.request(map[string]any{"op": "create", "kind": "group", "conv": "g", "members": []string{"mal"}}))
	result(t, ann.request(map[string]any{"op": "settings", "conv": "g", "settings": map[string]any{"history": "join"}}))
	old := result(t, ann.request(send("g", "", "g1", "before neu")))
	gm := result(t, mal.request(send("g", "", "g2", "mal's")))
	result(t, ann.request(map[string]any{"op": "mute", "conv": "g", "users": []string{"mal"}}))
	mal.refused(map[string]any{"op": "edit", "conv": "g", "id": gm["id"], "seq": gm["seq"], "body": "x"}, "muted", packets.ErrNotAuthorized.Code)

	result(t, ann.request(map[string]any{"op": "add", "conv": "g", "members": []string{"neu"}}))
	ref := map[string]any{"id": old["id"], "seq": old["seq"]}
	rp := send("g", "", "n1", "what did I miss?")
	rp["reply_to"] = ref
	neu.refused(rp, "not_found", packets.ErrImplementationSpecificError.Code)
	neu.refused(map[string]any{"op": "react", "conv": "g", "id": old["id"], "seq": old["seq"], "emoji": "👀"}, "not_found", packets.ErrImplementationSpecificError.Code)
	neu.refused(map[string]any{"op": "forward", "to": "ann", "cmid": "f", "src": map[string]any{"conv": "g", "id": old["id"], "seq": old["seq"]}}, "not_found", packets.ErrImplementationSpecificError.Code)
	// What came after the join is theirs to use.
	after := result(t, ann.request(send("g", "", "g3", "welcome")))
	rp["cmid"], rp["reply_to"] = "n2", map[string]any{"id": after["id"], "seq": after["seq"]}
	result(t, neu.request(rp))
}

// Operations that append to the log count against the send quota.
func TestMsgOpsQuota(t *testing.T) {
	b := startBroker(t, func(_ *mqtt.Options, co *chat.Options) { co.SendRate, co.SendBurst = 0.001, 3 })
	amy := connect(t, "mqtt://"+b.tcp, "amy", "phone")
	m := result(t, amy.request(send("", "bo", "x", "hi")))
	react := func(e string) map[string]any {
		return map[string]any{"op": "react", "conv": m["conv"], "id": m["id"], "seq": m["seq"], "emoji": e}
	}
	result(t, amy.request(react("a")))
	result(t, amy.request(react("b")))
	amy.refused(react("c"), "quota_exceeded", packets.ErrQuotaExceeded.Code)
	amy.refused(callReq("bo", "c1", "ring", nil), "quota_exceeded", packets.ErrQuotaExceeded.Code)
}

// chat.Options.OnChanged sees the new state of an edited and of a recalled
// message (for derived data such as a search index), not reactions.
func TestMsgOpsOnChanged(t *testing.T) {
	changed := make(chan protocol.Message, 10)
	b := startBroker(t, func(_ *mqtt.Options, co *chat.Options) {
		co.OnChanged = func(app string, m protocol.Message) {
			if app == "acme" {
				changed <- m
			}
		}
	})
	amy := connect(t, "mqtt://"+b.tcp, "amy", "phone")
	m := result(t, amy.request(send("", "bo", "x", "hi")))
	ref := func(op string) map[string]any {
		return map[string]any{"op": op, "conv": m["conv"], "id": m["id"], "seq": m["seq"]}
	}
	r := ref("react")
	r["emoji"] = "👍"
	result(t, amy.request(r))
	e := ref("edit")
	e["body"] = map[string]string{"text": "hello"}
	result(t, amy.request(e))
	result(t, amy.request(ref("recall")))
	for i, want := range []string{`{"text":"hello"}`, ""} {
		select {
		case got := <-changed:
			if got.ID != m["id"] || string(got.Body) != want || got.Recalled != (i == 1) {
				t.Fatalf("change %d: %+v", i, got)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("change %d never reported", i)
		}
	}
	if len(changed) != 0 {
		t.Fatalf("%d more changes reported", len(changed))
	}
}
