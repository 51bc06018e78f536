package hooks_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/warblerim/warbler/chat"
	"github.com/warblerim/warbler/protocol"
)

func callReq(to, id, action string, extra map[string]any) map[string]any {
	c := map[string]any{"id": id, "action": action}
	for k, v := range extra {
		c[k] = v
	}
	return map[string]any{"op": "call", "to": to, "call": c}
}

// callEvent matches a stored call event with the given action.
func callEvent(id, action string) func(inbound) bool {
	return func(in inbound) bool {
		if in.kind() != "msg" || in.data["type"] != "call" {
			return false
		}
		b, _ := in.data["body"].(map[string]any)
		return b["call"] == id && b["action"] == action
	}
}

// signal matches an ephemeral call signal.
func signal(id, action string) func(inbound) bool {
	return func(in inbound) bool {
		return in.kind() == "call" && in.data["call"] == id && in.data["action"] == action
	}
}

// A call rings every device of the callee; one accepts, the others learn it
// from the stored event; offer, answer and ICE candidates go between the
// two devices in the call only, on their device topics, and are not
// stored; hangup ends it with its duration. Wrong transitions get clear
// codes.
func TestCallSignalling(t *testing.T) {
	b := startBroker(t, nil)
	alice := connect(t, "mqtt://"+b.tcp, "alice", "phone")
	bobPhone := connect(t, "mqtt://"+b.tcp, "bob", "phone")
	bobLaptop := connect(t, b.ws, "bob", "laptop")
	conv := protocol.DirectConvID("alice", "bob")

	r := result(t, alice.request(callReq("bob", "c1", "ring", map[string]any{"media": "video"})))
	if r["state"] != "ringing" || r["conv"] != conv || r["seq"] != 1.0 {
		t.Fatalf("ring: %v", r)
	}
	for _, d := range []*device{bobPhone, bobLaptop} {
		in := d.expect(callEvent("c1", "ring"))
		if in.topic != protocol.Downlink(app, "bob") || in.data["body"].(map[string]any)["media"] != "video" || in.data["body"].(map[string]any)["state"] != "ringing" {
			t.Fatalf("ring on %s: %s", d.device, in.raw)
		}
	}
	// Before anyone accepts there is nothing to negotiate.
	alice.refused(callReq("bob", "c1", "offer", map[string]any{"sdp": "v=0"}), "bad_state", packets.ErrImplementationSpecificError.Code)
	// Only the callee accepts; the same ID cannot ring twice.
	alice.refused(callReq("bob", "c1", "accept", nil), "forbidden", packets.ErrNotAuthorized.Code)
	alice.refused(callReq("bob", "c1", "ring", nil), "exists", packets.ErrImplementationSpecificError.Code)

	r = result(t, bobLaptop.request(callReq("alice", "c1", "accept", nil)))
	if r["state"] != "active" {
		t.Fatalf("accept: %v", r)
	}
	// The phone stops ringing: it sees which device accepted.
	acc := bobPhone.expect(callEvent("c1", "accept"))
	if acc.data["from"].(map[string]any)["device"] != "laptop" {
		t.Fatalf("accept event %s", acc.raw)
	}
	alice.expect(callEvent("c1", "accept"))
	bobPhone.refused(callReq("alice", "c1", "accept", nil), "bad_state", packets.ErrImplementationSpecificError.Code)

	// Negotiation, device to device.
	result(t, alice.request(callReq("bob", "c1", "offer", map[string]any{"sdp": "v=0 offer"})))
	in := bobLaptop.expect(signal("c1", "offer"))
	if in.topic != protocol.DeviceTopic(app, "bob", "laptop") || in.data["sdp"] != "v=0 offer" || in.data["from"].(map[string]any)["device"] != "phone" {
		t.Fatalf("offer delivered as %s on %s", in.raw, in.topic)
	}
	result(t, bobLaptop.request(callReq("alice", "c1", "answer", map[string]any{"sdp": "v=0 answer"})))
	if in := alice.expect(signal("c1", "answer")); in.topic != protocol.DeviceTopic(app, "alice", "phone") || in.data["sdp"] != "v=0 answer" {
		t.Fatalf("answer %s on %s", in.raw, in.topic)
	}
	cand := map[string]any{"candidate": "candidate:1 1 udp 2122260223 192.0.2.1 54400 typ host", "sdpMid": "0", "sdpMLineIndex": 0}
	result(t, bobLaptop.request(callReq("alice", "c1", "ice", map[string]any{"candidate": cand})))
	if in := alice.expect(signal("c1", "ice")); in.data["candidate"].(map[string]any)["sdpMid"] != "0" {
		t.Fatalf("ice %s", in.raw)
	}
	result(t, alice.request(callReq("bob", "c1", "ice", map[string]any{"candidate": cand})))
	bobLaptop.expect(signal("c1", "ice"))
	// The phone that did not accept may not signal.
	bobPhone.refused(callReq("alice", "c1", "ice", map[string]any{"candidate": cand}), "forbidden", packets.ErrNotAuthorized.Code)

	time.Sleep(5 * time.Millisecond) // a measurable duration
	r = result(t, bobPhone.request(callReq("alice", "c1", "hangup", nil)))
	if r["state"] != "ended" {
		t.Fatalf("hangup: %v", r)
	}
	end := alice.expect(callEvent("c1", "hangup"))
	if body := end.data["body"].(map[string]any); body["reason"] != "hangup" || body["duration_ms"].(float64) < 5 {
		t.Fatalf("hangup event %s", end.raw)
	}
	alice.refused(callReq("bob", "c1", "ice", map[string]any{"candidate": cand}), "not_found", packets.ErrImplementationSpecificError.Code)

	// The log holds the state changes and nothing of the negotiation; the
	// phone never got a signal meant for the laptop.
	h := historyOf(t, bobPhone, conv)
	if len(h) != 3 || !strings.Contains(string(h[1].Body), `"ring"`) || !strings.Contains(string(h[2].Body), `"accept"`) || !strings.Contains(string(h[3].Body), `"hangup"`) {
		t.Fatalf("history %+v", h)
	}
	for _, m := range h {
		if strings.Contains(string(m.Body), "v=0") || strings.Contains(string(m.Body), "candidate") {
			t.Fatalf("negotiation stored: %s", m.Body)
		}
	}
	for _, p := range bobPhone.pending {
		if p.kind() == "call" {
			t.Fatalf("the phone got a signal: %s", p.raw)
		}
	}
	for {
		select {
		case p := <-bobPhone.in:
			if p.kind() == "call" {
				t.Fatalf("the phone got a signal: %s", p.raw)
			}
			continue
		default:
		}
		break
	}

	// Declined and canceled calls.
	result(t, alice.request(callReq("bob", "c2", "ring", nil)))
	r = result(t, bobPhone.request(callReq("alice", "c2", "decline", nil)))
	if r["state"] != "ended" {
		t.Fatalf("decline %v", r)
	}
	if b := alice.expect(callEvent("c2", "decline")).data["body"].(map[string]any); b["reason"] != "declined" {
		t.Fatalf("decline event %v", b)
	}
	result(t, alice.request(callReq("bob", "c3", "ring", nil)))
	result(t, alice.request(callReq("bob", "c3", "hangup", nil)))
	if b := bobLaptop.expect(callEvent("c3", "hangup")).data["body"].(map[string]any); b["reason"] != "canceled" {
		t.Fatalf("cancel event %v", b)
	}
	// One user is in at most chat.MaxCallsPerUser calls at once.
	for i := 0; i < chat.MaxCallsPerUser; i++ {
		result(t, alice.request(callReq("bob", fmt.Sprint("p", i), "ring", nil)))
	}
	alice.refused(callReq("bob", "p-extra", "ring", nil), "full", packets.ErrImplementationSpecificError.Code)
	for i := 0; i < chat.MaxCallsPerUser; i++ {
		result(t, alice.request(callReq("bob", fmt.Sprint("p", i), "hangup", nil)))
	}
	// Calls are for direct conversations, between devices.
	result(t, alice.request(map[string]any{"op": "create", "kind": "group", "conv": "g", "members": []string{"bob"}}))
	alice.refused(map[string]any{"op": "call", "conv": "g", "call": map[string]any{"id": "c4", "action": "ring"}}, "bad_request", packets.ErrPayloadFormatInvalid.Code)
	if b.svc.Calls() != 0 {
		t.Fatalf("%d calls still in progress", b.svc.Calls())
	}
}

// A call nobody accepts ends by itself as a timeout, recorded in the log
// for both users; a device offline at the time sees it by sync.
func TestCallRingTimeout(t *testing.T) {
	b := startBroker(t, func(_ *mqtt.Options, co *chat.Options) { co.CallRingTimeout = 300 * time.Millisecond })
	alice := connect(t, "mqtt://"+b.tcp, "alice", "phone")
	r := result(t, alice.request(callReq("bob", "c1", "ring", nil)))
	ended := alice.expect(callEvent("c1", "timeout"))
	if body := ended.data["body"].(map[string]any); body["state"] != "ended" || body["reason"] != "timeout" || ended.data["seq"] != 2.0 {
		t.Fatalf("timeout event %s", ended.raw)
	}
	bob := connect(t, "mqtt://"+b.tcp, "bob", "phone")
	got := syncAll(t, bob)[r["conv"].(string)]
	if len(got) != 2 || !strings.Contains(string(got[2].Body), `"timeout"`) {
		t.Fatalf("bob's sync %+v", got)
	}
	bob.refused(callReq("alice", "c1", "accept", nil), "not_found", packets.ErrImplementationSpecificError.Code)
}

// A device in an active call that stays disconnected ends the call as
// "dropped" (after chat.Options.CallDropGrace), so a crashed device does
// not hold the call, and its users' call slots, forever.
func TestCallDroppedDevice(t *testing.T) {
	b := startBroker(t, func(_ *mqtt.Options, co *chat.Options) { co.CallDropGrace = 200 * time.Millisecond })
	alice := connect(t, "mqtt://"+b.tcp, "alice", "phone")
	bob := connect(t, "mqtt://"+b.tcp, "bob", "laptop")
	result(t, alice.request(callReq("bob", "c1", "ring", nil)))
	result(t, bob.request(callReq("alice", "c1", "accept", nil)))
	alice.expect(callEvent("c1", "accept"))
	bob.close()
	end := alice.expect(callEvent("c1", "hangup"))
	body := end.data["body"].(map[string]any)
	if body["reason"] != "dropped" || body["state"] != "ended" || end.data["from"].(map[string]any)["user"] != "bob" {
		t.Fatalf("drop event %s", end.raw)
	}
	if _, ok := body["duration_ms"]; !ok {
		t.Fatalf("an active call that drops has a duration: %s", end.raw)
	}
	// The event is delivered once durable; the call leaves the table just
	// after, so wait for it rather than read the count at once.
	waitFor(t, "the dropped call to leave the call table", func() bool { return b.svc.Calls() == 0 },
		func() string { return fmt.Sprintf("%d calls in progress", b.svc.Calls()) })
}
