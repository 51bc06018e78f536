package hooks

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/warblerim/warbler/identity"
	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage"
)

func TestAuthUserReadsOwnDownlink(t *testing.T) {
	e := azStart(t, nil)
	alice := e.user("a1", "alice", "d1")
	if code := alice.sub(protocol.Downlink("a1", "alice")); code != 1 {
		t.Fatalf("SUBACK 0x%02x", code)
	}
	if code := alice.sub(protocol.DeviceTopic("a1", "alice", "d1")); code != 1 {
		t.Fatalf("SUBACK 0x%02x", code)
	}
	e.inject(protocol.Downlink("a1", "alice"), "hello alice")
	if m := alice.next(); string(m.Payload) != "hello alice" {
		t.Fatalf("got %q", m.Payload)
	}
	e.inject(protocol.DeviceTopic("a1", "alice", "d1"), "reply")
	if m := alice.next(); string(m.Payload) != "reply" {
		t.Fatalf("got %q", m.Payload)
	}
	if code := alice.pub(protocol.Uplink("a1", "alice", "d1"), "send"); code != 0 {
		t.Fatalf("uplink PUBACK 0x%02x", code)
	}
	p, ok := e.reg.Lookup("a1:alice:d1")
	if !ok || p.Kind != KindUser || p.App != "a1" || p.User != "alice" || p.Device != "d1" || p.Session == "" {
		t.Fatalf("principal %+v", p)
	}
	// The username may be given, if it is the right one.
	e.mustDial(azConn{clientID: "a1:alice:d2", username: "a1:alice", password: e.token("a1", "alice", "d2")})
}

// TestAuthConnectRefusals runs each refused CONNECT over MQTT 5 (paho,
// expecting CONNACK 0x87) and over MQTT 3.1.1 (raw wire, expecting 0x05),
// and checks that the server then closes the connection without sending
// anything else.
func TestAuthConnectRefusals(t *testing.T) {
	e := azStart(t, nil)
	ctx := context.Background()
	// Expired: issued, then the clock moves past its expiry. Every other
	// token is issued after the move.
	expired := e.token("a1", "alice", "d1")
	e.clock.Advance(identity.DefaultAccessTTL + time.Second)
	alice := e.token("a1", "alice", "d1")
	bob := e.token("a1", "bob", "d1")
	a2alice := e.token("a2", "alice", "d1")

	revoked := e.token("a1", "alice", "d1")
	if _, err := e.svc.Logout(ctx, revoked); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.CreateUser(ctx, "a1", identity.UserSpec{ID: "mallory"}); err != nil {
		t.Fatal(err)
	}
	disabled := e.token("a1", "mallory", "d1")
	if _, err := e.svc.DisableUser(ctx, "a1", "mallory"); err != nil {
		t.Fatal(err)
	}
	// Forged: alice's claims re-signed by someone without the secret.
	parts := strings.Split(alice, ".")
	forged := parts[0] + "." + parts[1] + "." + strings.Repeat("A", len(parts[2]))

	type row struct {
		name                 string
		clientID, user, pass string
		will                 string
		reason               string
	}
	rows := []row{
		{name: "no password", clientID: "a1:alice:d1", reason: "no_credentials"},
		{name: "forged token", clientID: "a1:alice:d1", pass: forged, reason: "bad_token"},
		{name: "garbage token", clientID: "a1:alice:d1", pass: "hunter2", reason: "bad_token"},
		{name: "expired token", clientID: "a1:alice:d1", pass: expired, reason: "token_expired"},
		{name: "logged-out token", clientID: "a1:alice:d1", pass: revoked, reason: "token_revoked"},
		{name: "disabled user", clientID: "a1:mallory:d1", pass: disabled, reason: "token_revoked"},
		{name: "takeover: bob as alice", clientID: "a1:alice:d1", pass: bob, reason: "client_id_mismatch"},
		{name: "alice on another device", clientID: "a1:alice:d2", pass: alice, reason: "client_id_mismatch"},
		{name: "a2 alice into a1 alice", clientID: "a1:alice:d1", pass: a2alice, reason: "client_id_mismatch"},
		{name: "a1 alice into a2 alice", clientID: "a2:alice:d1", pass: alice, reason: "client_id_mismatch"},
		{name: "user token as service", clientID: "a1:_svc:x", user: "a1:_svc", pass: alice, reason: "client_id_mismatch"},
		{name: "plain client id", clientID: "alice", pass: alice, reason: "bad_client_id"},
		{name: "client id with slash", clientID: "a1:alice:d1/#", pass: alice, reason: "bad_client_id"},
		{name: "wrong username", clientID: "a1:alice:d1", user: "a1:bob", pass: alice, reason: "username_mismatch"},
		{name: "other app's key", clientID: "a1:_svc:x", user: "a1:_svc", pass: e.keys["a2"], reason: "wrong_app"},
		{name: "key without publish scope", clientID: "a1:_svc:x", user: "a1:_svc", pass: e.keys["a1-users"], reason: "missing_scope"},
		{name: "service key as a user", clientID: "a1:alice:d1", pass: e.keys["a1"], reason: "client_id_mismatch"},
		{name: "service without username", clientID: "a1:_svc:x", pass: e.keys["a1"], reason: "username_mismatch"},
		{name: "app key as admin", clientID: "_admin:_svc:x", user: "_admin:_svc", pass: e.keys["a1"], reason: "wrong_app"},
		{name: "forged key", clientID: "a1:_svc:x", user: "a1:_svc", pass: e.keys["a1"][:20] + strings.Repeat("a", len(e.keys["a1"])-20), reason: "bad_key"},
		{name: "will on bob's downlink", clientID: "a1:alice:d1", pass: alice, will: "w/a1/u/bob", reason: "will_denied"},
		{name: "will on another app", clientID: "a1:alice:d1", pass: alice, will: "w/a2/iot/alice/x", reason: "will_denied"},
		{name: "will on $SYS", clientID: "a1:alice:d1", pass: alice, will: "$SYS/broker/x", reason: "will_denied"},
		{name: "service will on a downlink", clientID: "a1:_svc:x", user: "a1:_svc", pass: e.keys["a1"], will: "w/a1/u/alice", reason: "will_denied"},
	}
	for _, r := range rows {
		t.Run(r.name, func(t *testing.T) {
			before := e.auth.Refusals()[r.reason]
			o := azConn{clientID: r.clientID, username: r.user, password: r.pass}
			if r.will != "" {
				o.will = &paho.WillMessage{Topic: r.will, Payload: []byte("gone"), QoS: 0}
			}
			if c, code := e.dial(e.addr, o); c != nil || code != 0x87 {
				t.Fatalf("MQTT 5: CONNACK 0x%02x, want 0x87", code)
			}
			for _, v := range []byte{4, 5} {
				c, ack := e.rawDial(e.addr, rawConn{version: v, clientID: r.clientID, username: r.user, password: r.pass, willTopic: r.will})
				want := byte(0x87)
				if v == 4 {
					want = 0x05
				}
				if ack.FixedHeader.Type != packets.Connack || ack.ReasonCode != want {
					t.Fatalf("v%d: %v 0x%02x, want CONNACK 0x%02x", v, ack.FixedHeader.Type, ack.ReasonCode, want)
				}
				c.expectClosed()
			}
			if got := e.auth.Refusals()[r.reason] - before; got != 3 {
				t.Fatalf("refusal counter %q rose by %d, want 3", r.reason, got)
			}
			if _, ok := e.reg.Lookup(r.clientID); ok {
				t.Fatal("a refused client left a principal behind")
			}
		})
	}
}

// TestAuthTakeoverCannotCrossUsers: alice leaves a persistent session with a
// subscription and a queued message; bob presenting alice's client ID is
// refused and gets nothing, and alice, reconnecting, gets her session and
// the message.
func TestAuthTakeoverCannotCrossUsers(t *testing.T) {
	e := azStart(t, nil)
	down := protocol.Downlink("a1", "alice")
	o := azConn{clientID: "a1:alice:d1", password: e.token("a1", "alice", "d1"), keepSession: true}
	alice := e.mustDial(o)
	if code := alice.sub(down); code != 1 {
		t.Fatalf("SUBACK 0x%02x", code)
	}
	if err := alice.c.Disconnect(&paho.Disconnect{}); err != nil {
		t.Fatal(err)
	}
	// Wait until the broker has seen the disconnect: the session is then
	// offline but kept.
	deadline := time.Now().Add(5 * time.Second)
	for {
		cl, ok := e.server.Clients.Get("a1:alice:d1")
		if ok && cl.Closed() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("broker did not register the disconnect")
		}
		time.Sleep(5 * time.Millisecond) // polling a condition, with a deadline
	}
	e.inject(down, "queued for alice")

	// bob, v5 and v3, with alice's client ID.
	if c, code := e.dial(e.addr, azConn{clientID: "a1:alice:d1", password: e.token("a1", "bob", "d1"), keepSession: true}); c != nil || code != 0x87 {
		t.Fatalf("bob took over alice's session: CONNACK 0x%02x", code)
	}
	raw, ack := e.rawDial(e.addr, rawConn{version: 4, clientID: "a1:alice:d1", password: e.token("a1", "bob", "d1")})
	if ack.ReasonCode != 0x05 {
		t.Fatalf("v3 bob: CONNACK 0x%02x", ack.ReasonCode)
	}
	raw.expectClosed()
	// Another app's alice neither.
	if c, code := e.dial(e.addr, azConn{clientID: "a1:alice:d1", password: e.token("a2", "alice", "d1"), keepSession: true}); c != nil || code != 0x87 {
		t.Fatalf("a2 alice took over: CONNACK 0x%02x", code)
	}

	// alice resumes and gets what was queued.
	o.password = e.token("a1", "alice", "d1")
	conn := e.mustDial(o)
	if m := conn.next(); string(m.Payload) != "queued for alice" {
		t.Fatalf("got %q", m.Payload)
	}
	e.barrier(conn, down)
}

func TestAuthRevocationDisconnects(t *testing.T) {
	ctx := context.Background()
	e := azStart(t, nil)
	tok := e.token("a1", "alice", "d1")
	alice := e.mustDial(azConn{clientID: "a1:alice:d1", password: tok})
	bob := e.user("a1", "bob", "d1")
	if _, err := e.svc.Logout(ctx, tok); err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-alice.down:
		if d.ReasonCode != 0x87 {
			t.Fatalf("DISCONNECT 0x%02x", d.ReasonCode)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("alice was not disconnected after logout")
	}
	if c, code := e.dial(e.addr, azConn{clientID: "a1:alice:d1", password: tok}); c != nil || code != 0x87 {
		t.Fatalf("reconnect with the revoked token: 0x%02x", code)
	}
	// bob is untouched.
	if code := bob.sub(protocol.Downlink("a1", "bob")); code != 1 {
		t.Fatalf("bob SUBACK 0x%02x", code)
	}
	e.barrier(bob, protocol.Downlink("a1", "bob"))

	// Deleting a service's key disconnects it.
	svc := e.mustDial(azConn{clientID: "a1:_svc:worker", username: "a1:_svc", password: e.keys["a1"]})
	keys, _ := e.svc.ListKeys(ctx, "a1")
	for _, k := range keys {
		if k.Name == "a1" {
			if err := e.svc.DeleteKey(ctx, "a1", k.ID); err != nil {
				t.Fatal(err)
			}
		}
	}
	select {
	case <-svc.down:
	case <-time.After(5 * time.Second):
		t.Fatal("service not disconnected after its key was deleted")
	}
	// Disabling the app disconnects everyone in it.
	if _, err := e.svc.DisableApp(ctx, "a1"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-bob.down:
	case <-time.After(5 * time.Second):
		t.Fatal("bob not disconnected after the app was disabled")
	}
}

func TestAuthServiceAndAdmin(t *testing.T) {
	e := azStart(t, nil)
	alice := e.user("a1", "alice", "d1")
	alice.sub(protocol.Broadcast("a1", "news"))
	alice.sub(protocol.Downlink("a1", "alice"))
	svc := e.mustDial(azConn{clientID: "a1:_svc:backend", username: "a1:_svc", password: e.keys["a1"]})
	if code := svc.pub(protocol.Broadcast("a1", "news"), "headline"); code != 0 {
		t.Fatalf("service broadcast PUBACK 0x%02x", code)
	}
	if m := alice.next(); string(m.Payload) != "headline" {
		t.Fatalf("got %q", m.Payload)
	}
	if code := svc.sub("w/a1/iot/#"); code != 1 {
		t.Fatalf("service iot SUBACK 0x%02x", code)
	}
	// The admin key may act as any app's service, and as the admin.
	as := e.mustDial(azConn{clientID: "a2:_svc:ops", username: "a2:_svc", password: e.keys["admin"]})
	if code := as.pub(protocol.Broadcast("a2", "x"), "y"); code != 0 {
		t.Fatalf("admin as a2 service: 0x%02x", code)
	}
	admin := e.mustDial(azConn{clientID: "_admin:_svc:ops", username: "_admin:_svc", password: e.keys["admin"]})
	if code := admin.sub("$SYS/#"); code != 1 {
		t.Fatalf("admin $SYS SUBACK 0x%02x", code)
	}
	if code := admin.sub("w/a1/b/#"); code != 0x87 {
		t.Fatalf("admin app topics SUBACK 0x%02x", code)
	}
	if code := svc.sub("$SYS/#"); code != 0x87 {
		t.Fatalf("service $SYS SUBACK 0x%02x", code)
	}
	e.barrier(alice, protocol.Downlink("a1", "alice"))
}

func TestAuthAnonymousListener(t *testing.T) {
	e := azStart(t, &AnonymousOptions{Listeners: []string{"anon"}, App: "sandbox", Rules: []storage.TopicRule{
		{Pattern: "w/{app}/iot/public/#", Access: "read"},
		{Pattern: "w/{app}/iot/%c/#", Access: "readwrite"},
	}})
	c, code := e.dial(e.anonAddr, azConn{clientID: "guest1"})
	if c == nil {
		t.Fatalf("anonymous CONNACK 0x%02x", code)
	}
	p, _ := e.reg.Lookup("guest1")
	if p.Kind != KindAnonymous || p.App != "sandbox" {
		t.Fatalf("principal %+v", p)
	}
	for filter, want := range map[string]byte{
		"w/sandbox/iot/public/#":    1,
		"w/sandbox/iot/guest1/x":    1,
		"w/sandbox/iot/guest2/x":    0x87,
		"w/sandbox/iot/#":           0x87,
		"w/a1/u/alice":              0x87,
		"w/sandbox/u/guest1":        0x87,
		"#":                         0x87,
		"$share/g/w/sandbox/iot/#":  0x87,
		"$share/g/w/a1/iot/alice/#": 0x87,
	} {
		if got := c.sub(filter); got != want {
			t.Errorf("anonymous SUBSCRIBE %q: 0x%02x, want 0x%02x", filter, got, want)
		}
	}
	if code := c.pub("w/sandbox/iot/guest1/t", "x"); code != 0 {
		t.Fatalf("own area PUBACK 0x%02x", code)
	}
	if code := c.pub("w/sandbox/iot/public/t", "x"); code != 0x87 {
		t.Fatalf("read-only area PUBACK 0x%02x", code)
	}
	// Credentials are ignored and a user's client ID is refused, so an
	// anonymous client can never take over a user's session.
	if c, code := e.dial(e.anonAddr, azConn{clientID: "a1:alice:d1", password: e.token("a1", "alice", "d1")}); c != nil || code != 0x87 {
		t.Fatalf("user client ID on the anonymous listener: 0x%02x", code)
	}
	// The authenticated listener still wants credentials.
	if c, code := e.dial(e.addr, azConn{clientID: "guest2"}); c != nil || code != 0x87 {
		t.Fatalf("anonymous on the authenticated listener: 0x%02x", code)
	}
}

func TestAuthV3User(t *testing.T) {
	e := azStart(t, nil)
	c, ack := e.rawDial(e.addr, rawConn{version: 4, clientID: "a1:alice:d1", password: e.token("a1", "alice", "d1")})
	if ack.ReasonCode != 0 {
		t.Fatalf("v3 CONNACK 0x%02x", ack.ReasonCode)
	}
	if sa := c.subscribe(1, protocol.Downlink("a1", "alice")); sa.ReasonCodes[0] != 1 {
		t.Fatalf("own downlink SUBACK %v", sa.ReasonCodes)
	}
	// MQTT 3.1.1 has no 0x87 in SUBACK: mochi sends 0x80 (failure).
	for i, f := range []string{"w/a1/u/bob", "w/a1/u/+", "#", "$SYS/#", "w/a2/u/alice", "$share/g/w/a1/u/bob"} {
		if sa := c.subscribe(uint16(i+2), f); sa.ReasonCodes[0] != 0x80 {
			t.Errorf("v3 SUBSCRIBE %q: 0x%02x, want 0x80", f, sa.ReasonCodes[0])
		}
	}
	e.inject("w/a1/u/bob", "for bob")
	e.inject(protocol.Downlink("a1", "alice"), "for alice")
	pk := c.read()
	if pk.FixedHeader.Type != packets.Publish || string(pk.Payload) != "for alice" {
		t.Fatalf("v3 got %v %q", pk.FixedHeader.Type, pk.Payload)
	}
	c.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID})
	// A refused QoS 1 publish on MQTT 3.1.1 has no reason code to carry:
	// mochi disconnects the client (and, although 3.1.1 has no server
	// DISCONNECT, writes one first). No PUBACK, no delivery.
	c.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 9,
		TopicName: "w/a1/up/bob/d1", Payload: []byte("x")})
	if pk := c.read(); pk.FixedHeader.Type != packets.Disconnect {
		t.Fatalf("after a refused v3 publish: %v", pk.FixedHeader.Type)
	}
	c.expectClosed()
}
