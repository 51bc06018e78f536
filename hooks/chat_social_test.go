package hooks_test

// Typing, presence, contacts and blocks, over real MQTT clients against a
// real broker and store.

import (
	"bufio"
	"fmt"
	"net"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/warblerim/warbler/chat"
	"github.com/warblerim/warbler/internal/mqtttest"
	"github.com/warblerim/warbler/protocol"
)

// errCode returns the code of an error reply, failing on anything else.
func errCode(t testing.TB, in inbound) string {
	t.Helper()
	if in.kind() != "error" {
		t.Fatalf("want an error, got %s", in.raw)
	}
	e, _ := in.data["error"].(map[string]any)
	c, _ := e["code"].(string)
	return c
}

func isKind(kind string) func(inbound) bool {
	return func(in inbound) bool { return in.kind() == kind }
}

func isPresence(user, state string) func(inbound) bool {
	return func(in inbound) bool {
		return in.kind() == "presence" && in.data["user"] == user && in.data["state"] == state
	}
}

// nextOf returns the first publish that is a typing notice or a message
// of conv with seq: used to show that no typing notice came before the
// message (the device topic and downlink keep the order they were sent in).
func nextOf(d *device, conv string, seq float64) inbound {
	d.t.Helper()
	return d.expect(func(in inbound) bool { return in.kind() == "typing" || isMsg(conv, seq)(in) })
}

// Typing reaches every device of the other member, none of the sender's;
// a second notice within the interval is dropped (and says so when asked).
func TestTypingMultiDevice(t *testing.T) {
	b := startBroker(t, nil)
	alicePhone := connect(t, "mqtt://"+b.tcp, "alice", "phone")
	aliceWeb := connect(t, b.ws, "alice", "web")
	bobPhone := connect(t, "mqtt://"+b.tcp, "bob", "phone")
	bobLaptop := connect(t, b.ws, "bob", "laptop")
	conv := protocol.DirectConvID("alice", "bob")
	result(t, alicePhone.request(send("", "bob", "m1", "hi")))
	for _, d := range []*device{alicePhone, aliceWeb, bobPhone, bobLaptop} {
		d.expect(isMsg(conv, 1))
	}

	// A plain notice (no rid, no response topic) is forwarded and not
	// answered.
	if rc := alicePhone.publish(map[string]any{"op": "typing", "conv": conv}, nil); rc != 0 {
		t.Fatalf("typing: reason %#x", rc)
	}
	for _, d := range []*device{bobPhone, bobLaptop} {
		in := d.expect(isKind("typing"))
		if in.data["conv"] != conv || in.data["user"] != "alice" || in.data["device"] != "phone" {
			t.Fatalf("%s/%s typing: %s", d.user, d.device, in.raw)
		}
	}
	// Within the interval: dropped, and the answer says so.
	r := result(t, alicePhone.request(map[string]any{"op": "typing", "to": "bob", "rid": "t2"}))
	if r["forwarded"] != false || r["conv"] != conv {
		t.Fatalf("second typing: %v", r)
	}
	result(t, alicePhone.request(send(conv, "", "m2", "there")))
	for _, d := range []*device{bobPhone, bobLaptop} {
		if in := nextOf(d, conv, 2); in.kind() != "msg" {
			t.Fatalf("%s/%s got a second typing notice: %s", d.user, d.device, in.raw)
		}
	}
	// The sender's devices never got one.
	for _, d := range []*device{alicePhone, aliceWeb} {
		if in := nextOf(d, conv, 2); in.kind() != "msg" {
			t.Fatalf("%s/%s got its own typing notice: %s", d.user, d.device, in.raw)
		}
	}
	// Typing where one is not a member.
	if c := errCode(t, bobPhone.request(map[string]any{"op": "typing", "conv": "nosuch"})); c != "not_member" {
		t.Fatalf("typing in a stranger's conversation: %s", c)
	}
}

// Typing in a group goes to the other members; the interval is per
// conversation and user.
func TestTypingGroupInterval(t *testing.T) {
	b := startBroker(t, func(_ *mqtt.Options, co *chat.Options) { co.TypingInterval = 50 * time.Millisecond })
	ann := connect(t, "mqtt://"+b.tcp, "ann", "phone")
	ben := connect(t, "mqtt://"+b.tcp, "ben", "phone")
	result(t, ann.request(map[string]any{"op": "create", "kind": "group", "conv": "g", "members": []string{"ben"}}))
	ben.expect(isMsg("g", 1))
	result(t, ann.request(map[string]any{"op": "typing", "conv": "g", "rid": "a"}))
	ben.expect(isKind("typing"))
	// After the interval the next one is forwarded again.
	deadline := time.Now().Add(5 * time.Second)
	for i := 0; ; i++ {
		r := result(t, ann.request(map[string]any{"op": "typing", "conv": "g", "rid": fmt.Sprint("r", i)}))
		if r["forwarded"] == true {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("typing never forwarded again")
		}
		time.Sleep(20 * time.Millisecond)
	}
	ben.expect(isKind("typing"))
}

// Presence: the reply to a watch, live online and offline events (also
// from a dropped TCP connection and from a silent one that the keep-alive
// ends), multi-device, and "unknown" for users the caller may not see.
func TestPresenceWatch(t *testing.T) {
	b := startBroker(t, nil)
	bob := connect(t, "mqtt://"+b.tcp, "bob", "phone")
	alice := connect(t, "mqtt://"+b.tcp, "alice", "phone")
	carol := connect(t, "mqtt://"+b.tcp, "carol", "phone")
	result(t, alice.request(send("", "bob", "m1", "hi"))) // alice and bob share a conversation

	r := result(t, bob.request(map[string]any{"op": "presence", "users": []string{"alice", "carol", "nobody"}}))
	us := r["users"].([]any)
	a, c, n := us[0].(map[string]any), us[1].(map[string]any), us[2].(map[string]any)
	if a["user"] != "alice" || a["state"] != "online" {
		t.Fatalf("alice: %v", a)
	}
	if c["state"] != "unknown" || n["state"] != "unknown" {
		t.Fatalf("a stranger and a non-user must be unknown: %v %v", c, n)
	}
	alice.close()
	bob.expect(isPresence("alice", "offline"))
	r = result(t, bob.request(map[string]any{"op": "presence", "users": []string{"alice"}}))
	if a := r["users"].([]any)[0].(map[string]any); a["state"] != "offline" || a["last_seen"] == nil {
		t.Fatalf("alice offline: %v", a)
	}
	// carol (no shared conversation, not a contact) watches alice: unknown,
	// and no events follow.
	r = result(t, carol.request(map[string]any{"op": "presence", "users": []string{"alice"}}))
	if st := r["users"].([]any)[0].(map[string]any)["state"]; st != "unknown" {
		t.Fatalf("carol sees alice as %v", st)
	}

	// alice comes back on two devices: one online event.
	phone := connect(t, "mqtt://"+b.tcp, "alice", "phone")
	bob.expect(isPresence("alice", "online"))
	web := connect(t, b.ws, "alice", "web")
	// One device goes: still online (asked, since no event is due).
	phone.close()
	r = result(t, bob.request(map[string]any{"op": "presence", "users": []string{"alice"}}))
	if st := r["users"].([]any)[0].(map[string]any)["state"]; st != "online" {
		t.Fatalf("alice with one device left: %v", st)
	}
	web.close()
	off := bob.expect(isPresence("alice", "offline"))
	if ls, _ := off.data["last_seen"].(float64); ls <= 0 {
		t.Fatalf("offline event without last_seen: %s", off.raw)
	}

	// A dropped TCP connection (no DISCONNECT; a will is set).
	raw := rawConnect(t, b.tcp, "alice", "iot", 30, true)
	bob.expect(isPresence("alice", "online"))
	raw.Close()
	bob.expect(isPresence("alice", "offline"))

	// A connection that goes silent: the keep-alive (1 s, so 1.5 s) ends it.
	raw = rawConnect(t, b.tcp, "alice", "iot", 1, true)
	bob.expect(isPresence("alice", "online"))
	start := time.Now()
	bob.expect(isPresence("alice", "offline"))
	if d := time.Since(start); d > 4*time.Second {
		t.Fatalf("offline only after %v", d)
	}
	raw.Close()

	// carol never got an event about alice.
	result(t, carol.request(map[string]any{"op": "convs"}))
	for _, in := range carol.pending {
		if in.kind() == "presence" {
			t.Fatalf("carol got %s", in.raw)
		}
	}
	select {
	case in := <-carol.in:
		if in.kind() == "presence" {
			t.Fatalf("carol got %s", in.raw)
		}
	default:
	}

	// An empty list stops the events.
	result(t, bob.request(map[string]any{"op": "presence", "users": []string{}}))
	connect(t, "mqtt://"+b.tcp, "alice", "phone").close()
	result(t, bob.request(map[string]any{"op": "convs"})) // a marker on bob's device topic
	for _, in := range bob.pending {
		if in.kind() == "presence" {
			t.Fatalf("bob got an event after unwatching: %s", in.raw)
		}
	}
}

// rawConnect opens an MQTT 3.1.1 connection with the given keep-alive
// (and a will, if asked) and reads the CONNACK; it sends nothing after.
func rawConnect(t *testing.T, addr, user, dev string, keepalive uint16, will bool) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 4,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: keepalive, ClientIdentifier: protocol.ClientID(app, user, dev)}}
	if will {
		pk.Connect.WillFlag, pk.Connect.WillTopic, pk.Connect.WillPayload = true, "w/"+app+"/iot/"+user+"/status", []byte("gone")
	}
	buf, err := mqtttest.Encode(pk)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write(buf); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	ack, err := readPacket(bufio.NewReader(conn))
	if err != nil || ack.FixedHeader.Type != packets.Connack || ack.ReasonCode != 0 {
		t.Fatalf("connack %+v %v", ack, err)
	}
	_ = conn.SetReadDeadline(time.Time{})
	return conn
}

// Privacy: "nobody" shows watchers "hidden" at once; "contacts" shows only
// the users the owner added.
func TestPresencePrivacyAndContacts(t *testing.T) {
	b := startBroker(t, nil)
	alice := connect(t, "mqtt://"+b.tcp, "alice", "phone")
	bob := connect(t, "mqtt://"+b.tcp, "bob", "phone")
	carol := connect(t, "mqtt://"+b.tcp, "carol", "phone")
	result(t, alice.request(send("", "bob", "m1", "hi")))

	state := func(d *device, user string) string {
		t.Helper()
		r := result(t, d.request(map[string]any{"op": "presence", "users": []string{user}}))
		return r["users"].([]any)[0].(map[string]any)["state"].(string)
	}
	if s := state(bob, "alice"); s != "online" {
		t.Fatalf("bob sees alice %s", s)
	}
	if r := result(t, alice.request(map[string]any{"op": "privacy", "presence": "nobody"})); r["presence"] != "nobody" {
		t.Fatalf("privacy: %v", r)
	}
	bob.expect(isPresence("alice", "hidden"))
	if s := state(bob, "alice"); s != "hidden" {
		t.Fatalf("bob sees hidden alice as %s", s)
	}
	// Contacts only: carol (added) sees her, bob (sharing a conversation,
	// not added) does not.
	result(t, alice.request(map[string]any{"op": "privacy", "presence": "contacts"}))
	cr := result(t, alice.request(map[string]any{"op": "contact_add", "users": []string{"carol"}}))
	if fmt.Sprint(cr["contacts"]) != "[carol]" || cr["presence"] != "contacts" {
		t.Fatalf("contacts: %v", cr)
	}
	if s := state(carol, "alice"); s != "online" {
		t.Fatalf("carol (a contact) sees %s", s)
	}
	if s := state(bob, "alice"); s != "unknown" {
		t.Fatalf("bob (not a contact) sees %s", s)
	}
	result(t, alice.request(map[string]any{"op": "contact_remove", "users": []string{"carol"}}))
	if s := state(carol, "alice"); s != "unknown" {
		t.Fatalf("carol after removal sees %s", s)
	}
	if c := errCode(t, alice.request(map[string]any{"op": "privacy", "presence": "some"})); c != "bad_request" {
		t.Fatalf("bad privacy: %s", c)
	}
}

// A blocked user cannot send to the blocker directly (reason 0x87 and code
// "blocked"), nor start a conversation, nor type there, nor see presence;
// in a group their messages still go to everyone. Unblocking undoes it.
func TestBlockedUser(t *testing.T) {
	b := startBroker(t, nil)
	alice := connect(t, "mqtt://"+b.tcp, "alice", "phone")
	bob := connect(t, "mqtt://"+b.tcp, "bob", "phone")
	mal := connect(t, "mqtt://"+b.tcp, "mal", "phone")
	conv := protocol.DirectConvID("alice", "mal")
	result(t, mal.request(send("", "alice", "m1", "hi")))
	alice.expect(isMsg(conv, 1))
	result(t, alice.request(map[string]any{"op": "create", "kind": "group", "conv": "g", "members": []string{"bob", "mal"}}))

	r := result(t, alice.request(map[string]any{"op": "block", "users": []string{"mal"}}))
	if fmt.Sprint(r["blocked"]) != "[mal]" {
		t.Fatalf("block: %v", r)
	}
	if c := errCode(t, mal.request(send("", "alice", "m2", "again"))); c != "blocked" {
		t.Fatalf("blocked send: %s", c)
	}
	if c := errCode(t, mal.request(send(conv, "", "m3", "again"))); c != "blocked" {
		t.Fatalf("blocked send by conv: %s", c)
	}
	if rc := mal.publish(send(conv, "", "m4", "plain"), nil); rc != 0x87 {
		t.Fatalf("blocked send PUBACK %#x", rc)
	}
	if c := errCode(t, mal.request(map[string]any{"op": "typing", "conv": conv})); c != "blocked" {
		t.Fatalf("blocked typing: %s", c)
	}
	r = result(t, mal.request(map[string]any{"op": "presence", "users": []string{"alice"}}))
	if st := r["users"].([]any)[0].(map[string]any)["state"]; st != "unknown" {
		t.Fatalf("mal sees alice as %v", st)
	}
	// Nothing was stored: the conversation is still at seq 1.
	h := result(t, alice.request(map[string]any{"op": "history", "conv": conv}))
	if n := len(h["messages"].([]any)); n != 1 {
		t.Fatalf("history has %d messages", n)
	}
	// A block is one way: alice can still write to mal.
	result(t, alice.request(send(conv, "", "a1", "bye")))
	// In the group mal's messages still go to everyone.
	ack := result(t, mal.request(send("g", "", "g1", "in the group")))
	alice.expect(isMsg("g", ack["seq"].(float64)))
	bob.expect(isMsg("g", ack["seq"].(float64)))

	result(t, alice.request(map[string]any{"op": "unblock", "users": []string{"mal"}}))
	result(t, mal.request(send("", "alice", "m5", "sorry")))
	c := result(t, alice.request(map[string]any{"op": "contacts"}))
	if fmt.Sprint(c["blocked"]) != "[]" {
		t.Fatalf("contacts after unblock: %v", c)
	}
	if c := errCode(t, alice.request(map[string]any{"op": "block", "users": []string{"alice"}})); c != "bad_request" {
		t.Fatalf("self block: %s", c)
	}
}
