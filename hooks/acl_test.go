package hooks

import (
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/warblerim/warbler/identity"
	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage"
)

// TestACLCheckTable exercises the policy function directly.
func TestACLCheckTable(t *testing.T) {
	rules, err := identity.CompileRules("a1", []storage.TopicRule{{Pattern: "w/{app}/iot/%u/#", Access: "readwrite"}})
	if err != nil {
		t.Fatal(err)
	}
	cl := &mqtt.Client{ID: "a1:alice:d1"}
	alice := newPrincipal(KindUser, cl, "a1", "alice", "d1")
	alice.rules = rules
	svc := newPrincipal(KindService, &mqtt.Client{ID: "a1:_svc:b"}, "a1", "_svc", "b")
	admin := newPrincipal(KindAdmin, &mqtt.Client{ID: "_admin:_svc:o"}, "_admin", "_svc", "o")
	sandbox, _ := identity.CompileRules("sb", []storage.TopicRule{{Pattern: "w/{app}/iot/%c/#", Access: "readwrite"}})
	anon := newPrincipal(KindAnonymous, &mqtt.Client{ID: "g1"}, "sb", "", "")
	anon.rules = sandbox

	const R, W = false, true
	cases := []struct {
		p     *Principal
		topic string
		write bool
		want  denyReason
	}{
		{alice, "w/a1/u/alice", R, allowOK},
		{alice, "w/a1/d/alice/d1", R, allowOK},
		{alice, "w/a1/up/alice/d1", W, allowOK},
		{alice, "w/a1/b/news", R, allowOK},
		{alice, "w/a1/iot/alice/t", W, allowOK},
		{alice, "w/a1/iot/alice/#", R, allowOK},
		{alice, "$share/g/w/a1/u/alice", R, allowOK},
		{alice, "$SHARE/g/w/a1/u/alice", R, allowOK},
		{alice, "w/a1/u/alice", W, denyNotPermitted},
		{alice, "w/a1/d/alice/d1", W, denyNotPermitted},
		{alice, "w/a1/up/alice/d1", R, denyNotPermitted},
		{alice, "w/a1/up/alice/d2", W, denyNotPermitted},
		{alice, "w/a1/u/bob", R, denyNotPermitted},
		{alice, "w/a1/d/bob/d1", R, denyNotPermitted},
		{alice, "w/a1/d/alice/d2", R, denyNotPermitted},
		{alice, "w/a1/d/alice/+", R, denyNotPermitted},
		{alice, "w/a1/up/bob/d1", W, denyNotPermitted},
		{alice, "w/a1/u/+", R, denyNotPermitted},
		{alice, "w/a1/u/#", R, denyNotPermitted},
		{alice, "w/a1/u/alice/#", R, denyNotPermitted},
		{alice, "w/a1/#", R, denyNotPermitted},
		{alice, "w/a1/+/alice", R, denyNotPermitted},
		{alice, "w/a1/b/+", R, denyNotPermitted},
		{alice, "w/a1/b/#", R, denyNotPermitted},
		{alice, "w/a1/b/news", W, denyNotPermitted},
		{alice, "w/a1/iot/bob/t", R, denyNotPermitted},
		{alice, "w/a1/iot/+/t", R, denyNotPermitted},
		{alice, "w/a1/iot/#", R, denyNotPermitted},
		{alice, "w/a1", R, denyOtherApp},
		{alice, "w/a2/u/alice", R, denyOtherApp},
		{alice, "w/a1x/u/alice", R, denyOtherApp},
		{alice, "w/+/u/alice", R, denyOtherApp},
		{alice, "w/#", R, denyOtherApp},
		{alice, "#", R, denyRootWildcard},
		{alice, "+/a1/u/alice", R, denyRootWildcard},
		{alice, "$SYS/#", R, denySys},
		{alice, "$SYS/broker/clients", R, denySys},
		{alice, "$share/g/#", R, denyRootWildcard},
		{alice, "$share/g/w/a1/u/bob", R, denyNotPermitted},
		{alice, "$share/g/$SYS/#", R, denySys},
		{alice, "$share/g", R, denyBadShared},
		{alice, "$share//w/a1/u/alice", R, denyBadShared},
		{alice, "$share/g+/w/a1/u/alice", R, denyBadShared},
		{alice, "$share/g/w/a1/u/alice", W, denySys},
		{alice, "", R, denyNotPermitted},

		{svc, "w/a1/b/news", W, allowOK},
		{svc, "w/a1/b/#", R, allowOK},
		{svc, "w/a1/iot/#", R, allowOK},
		{svc, "w/a1/iot/x/y", W, allowOK},
		{svc, "$share/workers/w/a1/iot/#", R, allowOK},
		{svc, "w/a1/u/alice", R, denyNotPermitted},
		{svc, "w/a1/u/alice", W, denyNotPermitted},
		{svc, "w/a1/d/alice/d1", R, denyNotPermitted},
		{svc, "w/a1/up/alice/d1", R, denyNotPermitted},
		{svc, "w/a1/up/+/+", R, denyNotPermitted},
		{svc, "w/a1/+/#", R, denyNotPermitted},
		{svc, "w/a1/b/", W, denyNotPermitted},
		{svc, "w/a2/b/news", W, denyOtherApp},
		{svc, "$SYS/#", R, denySys},

		{admin, "$SYS/#", R, allowOK},
		{admin, "$SYS", R, allowOK},
		{admin, "$SYS/x", W, denySys},
		{admin, "w/a1/b/news", R, denyOtherApp},
		{admin, "#", R, denyRootWildcard},

		{anon, "w/sb/iot/g1/x", W, allowOK},
		{anon, "w/sb/iot/g2/x", R, denyNotPermitted},
		{anon, "w/sb/u/g1", R, denyNotPermitted},
		{anon, "w/a1/iot/g1/x", R, denyOtherApp},
	}
	for _, c := range cases {
		if got := check(c.p, c.topic, c.write, nil); got != c.want {
			t.Errorf("%s %q write=%v: %s, want %s", c.p.Kind, c.topic, c.write, denyNames[got], denyNames[c.want])
		}
	}

	// The channel extension point narrows broadcast reads.
	only := func(p *Principal, ch string) bool { return ch == "lobby" }
	if check(alice, "w/a1/b/lobby", R, only) != allowOK || check(alice, "w/a1/b/secret", R, only) != denyNotPermitted {
		t.Error("ChannelFunc not applied")
	}
	// A revoked principal gets nothing.
	alice.revoked.Store(true)
	if got := check(alice, "w/a1/u/alice", R, nil); got != denyRevoked {
		t.Errorf("revoked: %s", denyNames[got])
	}
}

// TestACLLiveRefusals runs the cross-user and cross-app cases against a
// running broker with real clients: each refused SUBSCRIBE gets SUBACK
// 0x87 (0x8F where mochi rejects a malformed filter first), each refused
// publish PUBACK 0x87, and a barrier proves that no message got through.
func TestACLLiveRefusals(t *testing.T) {
	e := azStart(t, nil)
	alice := e.user("a1", "alice", "d1")
	bob := e.user("a1", "bob", "d1")
	carol := e.user("a2", "carol", "d1")
	a2alice := e.user("a2", "alice", "d1")
	svc := e.mustDial(azConn{clientID: "a1:_svc:backend", username: "a1:_svc", password: e.keys["a1"]})
	for _, c := range []struct {
		c    *azClient
		down string
	}{{alice, "w/a1/u/alice"}, {bob, "w/a1/u/bob"}, {carol, "w/a2/u/carol"}, {a2alice, "w/a2/u/alice"}} {
		if code := c.c.sub(c.down); code != 1 {
			t.Fatalf("own downlink %s: 0x%02x", c.down, code)
		}
	}

	// Topics that carry messages during the test; after the refused
	// subscriptions each gets a message, and alice must see none.
	traffic := []string{
		"w/a1/u/bob", "w/a1/d/bob/d1", "w/a1/up/bob/d1", "w/a1/up/alice/d1", "w/a1/d/alice/d2",
		"w/a2/u/alice", "w/a2/u/carol", "w/a2/b/news", "w/a1/iot/bob/t", "w/a2/iot/alice/t",
	}
	subs := map[string]byte{
		"#":                    0x87,
		"+/a1/u/bob":           0x87,
		"$SYS/#":               0x87,
		"w/a1/u/bob":           0x87,
		"w/a1/d/bob/d1":        0x87,
		"w/a1/up/bob/d1":       0x87,
		"w/a1/up/alice/d1":     0x87,
		"w/a1/d/alice/+":       0x87,
		"w/a1/u/+":             0x87,
		"w/a1/#":               0x87,
		"w/a1/+/bob":           0x87,
		"w/a2/u/alice":         0x87,
		"w/a2/#":               0x87,
		"w/+/u/alice":          0x87,
		"w/a2/b/news":          0x87,
		"w/a1/iot/bob/#":       0x87,
		"w/a1/iot/+/t":         0x87,
		"w/a1/b/+":             0x87,
		"$share/g/w/a1/u/bob":  0x87,
		"$share/g/#":           0x87,
		"$share/g/w/a2/u/+":    0x87,
		"$share/g/$SYS/#":      0x87,
		"$share/g":             0x8F, // mochi: malformed filter
		"$share/g+/w/a1/u/bob": 0x8F, // mochi: wildcard in the group
	}
	for f, want := range subs {
		if got := alice.sub(f); got != want {
			t.Errorf("alice SUBSCRIBE %q: SUBACK 0x%02x, want 0x%02x", f, got, want)
		}
	}
	// The service never reads a downlink, device topic or uplink.
	for _, f := range []string{"w/a1/u/alice", "w/a1/u/+", "w/a1/d/alice/d1", "w/a1/up/+/+", "w/a1/#", "w/a2/b/#"} {
		if got := svc.sub(f); got != 0x87 {
			t.Errorf("service SUBSCRIBE %q: 0x%02x, want 0x87", f, got)
		}
	}
	// The victims' own topics carry traffic.
	for _, topic := range traffic {
		e.inject(topic, "secret on "+topic)
	}

	pubs := []struct {
		c     *azClient
		topic string
	}{
		{alice, "w/a1/up/bob/d1"},       // another user's uplink: send as bob
		{alice, "w/a1/up/alice/d2"},     // own uplink of another device
		{alice, "w/a1/u/bob"},           // straight into bob's inbox
		{alice, "w/a1/u/alice"},         // forging server messages to herself
		{alice, "w/a1/d/bob/d1"},        // bob's device topic
		{alice, "w/a1/b/news"},          // broadcasts are for services
		{alice, "w/a2/u/carol"},         // another app
		{alice, "w/a2/up/alice/d1"},     // same user ID, other app
		{alice, "w/a1/iot/bob/t"},       // another user's IoT area
		{svc, "w/a1/u/bob"},             // service into a downlink
		{svc, "w/a1/up/bob/d1"},         // service impersonating a user
		{svc, "w/a2/b/news"},            // service of another app
		{carol, "w/a1/u/bob"},           // cross-app into a downlink
		{a2alice, "w/a1/up/alice/d1"},   // a2's alice as a1's alice
		{bob, "w/a1/iot/alice/cmd"},     // a1 user into another user's IoT area
		{carol, "w/a2/iot/carol/x"},     // a2 has no IoT rules
		{a2alice, "w/a1/iot/alice/cmd"}, // cross-app IoT
	}
	for _, p := range pubs {
		if code := p.c.pub(p.topic, "forged"); code != 0x87 {
			t.Errorf("PUBLISH %q: PUBACK 0x%02x, want 0x87", p.topic, code)
		}
	}
	// Nobody received anything but their own barrier: not alice after her
	// refused subscriptions, not the victims of the refused publishes.
	e.barrier(alice, "w/a1/u/alice")
	e.barrier(bob, "w/a1/u/bob", "secret on w/a1/u/bob")
	e.barrier(carol, "w/a2/u/carol", "secret on w/a2/u/carol")
	e.barrier(a2alice, "w/a2/u/alice", "secret on w/a2/u/alice")

	denied := e.acl.Denials()
	if denied["not_permitted"] == 0 || denied["outside_app"] == 0 || denied["sys_topic"] == 0 || denied["root_wildcard"] == 0 {
		t.Errorf("denial counters %v", denied)
	}
}

// TestACLIoTRules: a user reads and writes their own IoT area and nothing
// of anyone else's, as the app's rule %u says.
func TestACLIoTRules(t *testing.T) {
	e := azStart(t, nil)
	alice := e.user("a1", "alice", "d1")
	bob := e.user("a1", "bob", "d1")
	if code := alice.sub("w/a1/iot/alice/#"); code != 1 {
		t.Fatalf("SUBACK 0x%02x", code)
	}
	alice.sub(protocol.Downlink("a1", "alice"))
	if code := alice.pub("w/a1/iot/alice/temp", "21.5"); code != 0 {
		t.Fatalf("PUBACK 0x%02x", code)
	}
	if m := alice.next(); string(m.Payload) != "21.5" {
		t.Fatalf("got %q", m.Payload)
	}
	if code := bob.pub("w/a1/iot/alice/temp", "99"); code != 0x87 {
		t.Fatalf("bob into alice's area: 0x%02x", code)
	}
	e.barrier(alice, protocol.Downlink("a1", "alice"))
}
