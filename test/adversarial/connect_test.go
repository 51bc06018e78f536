package adversarial

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/warblerim/warbler/broker"
	"github.com/warblerim/warbler/identity"
	"github.com/warblerim/warbler/internal/mqtttest"
	"github.com/warblerim/warbler/storage"
)

// Case 2: an idle socket, or one that sends part of a CONNECT and stops,
// is closed at the connect deadline; until then it counts toward its
// address's and the server's socket caps.
func TestCase02PreConnectSockets(t *testing.T) {
	const deadline = 500 * time.Millisecond
	t.Run("closed at the connect deadline", func(t *testing.T) {
		s := start(t, func(c *broker.Config) { c.MQTT.ConnectTimeout = broker.Duration(deadline) })
		ctl := newControl(t, s)
		for _, send := range [][]byte{nil, {0x10, 0x20, 0x00, 0x04, 'M'}} {
			conn, err := mqtttest.DialTCPFrom(t, attacker, s.Addrs().MQTT)
			if err != nil {
				t.Fatal(err)
			}
			c := newRaw(t, conn)
			began := time.Now()
			if send != nil {
				c.send(send)
			}
			c.closedAfter(5 * time.Second)
			if took := time.Since(began); took < deadline-100*time.Millisecond {
				t.Fatalf("closed after %v, before the %v deadline", took, deadline)
			}
			ctl.check(t)
		}
	})
	t.Run("count toward the per-address cap", func(t *testing.T) {
		s := start(t, func(c *broker.Config) {
			c.MQTT.ConnectTimeout = broker.Duration(2 * time.Second)
			c.Limits.MaxConnectionsPerIP = 3
		})
		ctl := newControl(t, s)
		base := metric(t, s, "warbler_mqtt_sockets")
		var idle []*rawConn
		for range 3 {
			conn, err := mqtttest.DialTCPFrom(t, attacker, s.Addrs().MQTT)
			if err != nil {
				t.Fatal(err)
			}
			idle = append(idle, newRaw(t, conn))
		}
		waitFor(t, "three idle sockets admitted", 5*time.Second, func() bool { return metric(t, s, "warbler_mqtt_sockets") == base+3 })
		conn, err := mqtttest.DialTCPFrom(t, attacker, s.Addrs().MQTT)
		if err != nil {
			t.Fatal(err)
		}
		fourth := newRaw(t, conn)
		began := time.Now()
		fourth.closedAfter(time.Second) // closed at accept, not at the deadline
		if took := time.Since(began); took > time.Second {
			t.Fatalf("fourth socket closed after %v", took)
		}
		if n := limited(t, s, "ip_connections"); n != 1 {
			t.Fatalf("ip_connections = %v, want 1", n)
		}
		ctl.check(t) // another address is not affected
		for _, c := range idle {
			c.closedAfter(5 * time.Second)
		}
		// Once the deadline has closed them the address may connect again.
		rawSession(t, s, attacker, 5, "idle", "back")
		ctl.check(t)
	})
	t.Run("count toward the global cap", func(t *testing.T) {
		s := start(t, func(c *broker.Config) {
			c.MQTT.ConnectTimeout = broker.Duration(time.Second)
			c.Limits.MaxConnections = 4 // the control pair, and two more
		})
		ctl := newControl(t, s)
		for range 2 {
			if _, err := mqtttest.DialTCPFrom(t, "127.0.0.3", s.Addrs().MQTT); err != nil {
				t.Fatal(err)
			}
		}
		waitFor(t, "four sockets open", 5*time.Second, func() bool { return metric(t, s, "warbler_mqtt_sockets") == 4 })
		conn, err := mqtttest.DialTCPFrom(t, controlIP, s.Addrs().MQTT)
		if err != nil {
			t.Fatal(err)
		}
		newRaw(t, conn).closedAfter(time.Second)
		if n := limited(t, s, "max_connections"); n != 1 {
			t.Fatalf("max_connections = %v, want 1", n)
		}
		ctl.check(t) // connected clients are not affected
		waitFor(t, "idle sockets closed at the deadline", 5*time.Second, func() bool { return metric(t, s, "warbler_mqtt_sockets") == 2 })
		connect(t, s, "cap", "d1")
	})
}

// Case 9: an MQTT 3.1.1 CONNECT with an empty client ID and clean session
// off gets CONNACK 0x02 "identifier rejected". MQTT 5 with an empty ID
// gets a server-assigned one, which no Warbler identity matches: 0x87.
func TestCase09EmptyClientID(t *testing.T) {
	s := start(t, nil)
	ctl := newControl(t, s)
	c := newRaw(t, mqtttest.DialTCP(t, s.Addrs().MQTT))
	_, u, p := creds(t, s, "demo", "empty", "d1")
	if code := connackCode(t, c, connectPacket(4, "", u, p, false, nil)); code != 0x02 {
		t.Fatalf("v3.1.1 empty ID, clean=false: CONNACK %d, want 2", code)
	}
	c = newRaw(t, mqtttest.DialTCP(t, s.Addrs().MQTT))
	if code := connackCode(t, c, connectPacket(5, "", u, p, true, nil)); code != 0x87 {
		t.Fatalf("v5 empty ID: CONNACK 0x%x, want 0x87", code)
	}
	ctl.check(t)
}

// Case 10: a client ID or username with '/', '+', '#', '$' or NUL, or too
// long, is refused before it can reach a topic (ACL patterns substitute the
// client ID): CONNACK 0x87, counted as bad_client_id or username_mismatch.
// A NUL is refused by the broker's decoder first (socket closed).
func TestCase10HostileIdentifiers(t *testing.T) {
	s := start(t, func(c *broker.Config) { c.MQTT.Anonymous.Addr = "127.0.0.1:0" })
	ctl := newControl(t, s)
	_, u, p := creds(t, s, "demo", "alice", "d1")
	for _, tc := range []struct {
		cid, user string
		want      int
	}{
		{"demo:alice:d/1", u, 0x87},
		{"demo:alice:+", u, 0x87},
		{"demo:alice:#", u, 0x87},
		{"demo:alice:$x", u, 0x87},
		{"$SYS", u, 0x87},
		{"demo:alice:" + strings.Repeat("d", 65), u, 0x87},
		{"demo:alice/x:d1", u, 0x87},
		{"demo:alice:d1", "demo:alice/#", 0x87},
		{"demo:alice:d1", "demo:+", 0x87},
		{"demo:alice:d\x001", u, -1},
	} {
		c := newRaw(t, mqtttest.DialTCP(t, s.Addrs().MQTT))
		if code := connackCode(t, c, connectPacket(5, tc.cid, tc.user, p, true, nil)); code != tc.want {
			t.Errorf("client ID %q username %q: CONNACK %d, want %d", tc.cid, tc.user, code, tc.want)
		}
	}
	if n := metric(t, s, `warbler_auth_refusals_total{reason="bad_client_id"}`); n != 7 {
		t.Errorf("bad_client_id refusals %v, want 7", n)
	}
	if n := metric(t, s, `warbler_auth_refusals_total{reason="username_mismatch"}`); n != 2 {
		t.Errorf("username_mismatch refusals %v, want 2", n)
	}
	// On the anonymous listener the client ID must be a plain identifier.
	for _, cid := range []string{"a/b", "+", "#", "$x", "demo:alice:d1"} {
		c := newRaw(t, mqtttest.DialTCP(t, s.Addrs().Anonymous))
		if code := connackCode(t, c, connectPacket(5, cid, "", "", true, nil)); code != 0x87 {
			t.Errorf("anonymous client ID %q: CONNACK %d, want 0x87", cid, code)
		}
	}
	ctl.check(t)
}

// Case 11: connecting with another user's, or another app's, client ID is
// refused (0x87) before the broker's session takeover, so the owner stays
// connected and keeps its subscriptions.
func TestCase11ForeignClientID(t *testing.T) {
	s := start(t, nil)
	ctl := newControl(t, s)
	ctx := context.Background()
	if _, err := s.Identity().CreateApp(ctx, identity.AppSpec{ID: "other"}); err != nil {
		t.Fatal(err)
	}
	aliceCID, aliceUser, alicePass := creds(t, s, "demo", "alice", "phone")
	expiry := uint32(3600)
	alice, ack, err := mqtttest.Connect(t, mqtttest.DialTCP(t, s.Addrs().MQTT), &paho.Connect{
		ClientID: aliceCID, CleanStart: true, Username: aliceUser, UsernameFlag: true, Password: []byte(alicePass), PasswordFlag: true,
		Properties: &paho.ConnectProperties{SessionExpiryInterval: &expiry}})
	if err != nil || ack.ReasonCode != 0 {
		t.Fatal(err)
	}
	alice.Subscribe(t, iot("alice", "inbox"))
	_, _, bobPass := creds(t, s, "demo", "bob", "phone")
	_, _, otherPass := creds(t, s, "other", "alice", "phone")
	for name, pass := range map[string]string{"another user's token": bobPass, "another app's token": otherPass} {
		_, code, _ := connectConn(t, mqtttest.DialTCP(t, s.Addrs().MQTT), aliceCID, "", pass)
		if code != 0x87 {
			t.Errorf("%s with alice's client ID: CONNACK 0x%x, want 0x87", name, code)
		}
	}
	if n := metric(t, s, `warbler_auth_refusals_total{reason="client_id_mismatch"}`); n != 2 {
		t.Errorf("client_id_mismatch refusals %v, want 2", n)
	}
	// Alice was not taken over: still connected, still subscribed.
	pub := connect(t, s, "alice", "laptop")
	if code, err := pub.Publish(t, iot("alice", "inbox"), 1, []byte("still mine")); err != nil || code != 0 {
		t.Fatal(code, err)
	}
	if m := alice.Expect(t); string(m.Payload) != "still mine" {
		t.Fatalf("got %q", m.Payload)
	}
	ctl.check(t)
}

// Case 16 (storm): a burst of connections from one address beyond its
// connection rate is closed at accept; other addresses are unaffected.
func TestCase16ConnectStorm(t *testing.T) {
	s := start(t, func(c *broker.Config) {
		c.Limits.ConnectRatePerIP, c.Limits.ConnectBurstPerIP = 1, 10
		c.Limits.MaxConnectionsPerIP = 1000
	})
	ctl := newControl(t, s)
	refused := 0
	began := time.Now()
	for range 30 {
		conn, err := mqtttest.DialTCPFrom(t, attacker, s.Addrs().MQTT)
		if err != nil {
			refused++
			continue
		}
		c := newRaw(t, conn)
		_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if _, err := c.r.ReadByte(); err != nil && !isTimeout(err) {
			refused++ // closed by the server at once
		}
	}
	// A burst of 10, then one a second while the loop ran.
	allowed := 10 + int(time.Since(began).Seconds()) + 1
	if admitted := 30 - refused; admitted > allowed || admitted < 10 {
		t.Fatalf("%d of 30 sockets admitted, want 10 to %d", admitted, allowed)
	}
	if n := limited(t, s, "ip_connect_rate"); int(n) != refused {
		t.Fatalf("ip_connect_rate = %v, want %d", n, refused)
	}
	ctl.check(t)
	connect(t, s, "storm", "other-address") // 127.0.0.1 is not the attacker
}

// Case 16 (flapping): a client ID that connects more than
// limits.flapping.max_connects times within the window is banned, before
// authentication, for limits.flapping.ban; so is an address that sends
// more than max_connects_per_ip CONNECTs (wrong passwords count).
func TestCase16Flapping(t *testing.T) {
	s := start(t, func(c *broker.Config) {
		c.Limits.Flapping.MaxConnects = 3
		c.Limits.Flapping.MaxConnectsPerIP = 5
		c.Limits.Flapping.Ban = broker.Duration(time.Hour)
	})
	ctl := newControl(t, s)
	key := adminKey(t, s)

	cid, u, p := creds(t, s, "demo", "flappy", "d1")
	for i := range 3 {
		c, code, err := connectConn(t, mqtttest.DialTCP(t, s.Addrs().MQTT), cid, u, p)
		if err != nil || code != 0 {
			t.Fatalf("connect %d: 0x%x %v", i+1, code, err)
		}
		// The broker counts a connect just after its CONNACK, before it
		// reads the client's first packet: a SUBACK means it has.
		c.Subscribe(t, iot("flappy", "x"))
		_ = c.Disconnect(&paho.Disconnect{})
	}
	if _, code, _ := connectConn(t, mqtttest.DialTCP(t, s.Addrs().MQTT), cid, u, p); code != 0x8A {
		t.Fatalf("fourth connect within the window: CONNACK 0x%x, want 0x8A banned", code)
	}
	var list struct{ Bans []storage.Ban }
	api(t, s, "GET", "/v1/bans", key, nil, &list)
	if len(list.Bans) != 1 || list.Bans[0].Kind != "clientid" || list.Bans[0].Value != cid || list.Bans[0].By != "flapping" ||
		list.Bans[0].ExpiresAt.Sub(time.Now()) < 59*time.Minute {
		t.Fatalf("bans: %+v", list.Bans)
	}
	// Another device of the same user is not banned.
	connect(t, s, "flappy", "d2")

	// The address: six CONNECTs with a wrong password.
	for i := range 6 {
		conn, err := mqtttest.DialTCPFrom(t, attacker, s.Addrs().MQTT)
		if err != nil {
			t.Fatal(err)
		}
		want := 0x87
		if i == 5 {
			want = 0x8A
		}
		if code := connackCode(t, newRaw(t, conn), connectPacket(5, "demo:guess:d1", "", "wrong-"+fmt.Sprint(i), true, nil)); code != want {
			t.Fatalf("CONNECT %d from %s: %d, want 0x%x", i+1, attacker, code, want)
		}
	}
	// Now its sockets are closed at accept, before any MQTT.
	conn, err := mqtttest.DialTCPFrom(t, attacker, s.Addrs().MQTT)
	if err == nil {
		newRaw(t, conn).closedAfter(time.Second)
	}
	if n := limited(t, s, "flapping"); n != 2 {
		t.Fatalf("flapping = %v, want 2", n)
	}
	if n := metric(t, s, `warbler_bans{kind="ip"}`); n != 1 {
		t.Fatalf("warbler_bans{kind=ip} = %v", n)
	}
	ctl.check(t)
}

// Case 16 (bans): bans by client ID, user and address range, set through
// the admin API, disconnect the clients they cover at once (DISCONNECT
// 0x8A), are checked before authentication (a banned client gets 0x8A
// even with a wrong password, and authentication never runs), survive a
// restart, lapse at their expiry, and can be lifted.
func TestCase16Bans(t *testing.T) {
	s := start(t, nil)
	key := adminKey(t, s)
	ctl := newControl(t, s)

	victim := connect(t, s, "banme", "d1")
	otherDev := connect(t, s, "banme", "d2")
	byUser := connect(t, s, "banuser", "d1")
	ipConn := rawSession(t, s, attacker, 5, "banip", "d1")

	post := func(b map[string]any) (int, storage.Ban) {
		var out struct{ Ban storage.Ban }
		resp := api(t, s, "POST", "/v1/bans", key, b, &out)
		return resp.StatusCode, out.Ban
	}
	if code, b := post(map[string]any{"kind": "clientid", "value": "demo:banme:d1", "reason": "test"}); code != 201 || b.By != "admin" {
		t.Fatalf("ban client ID: %d %+v", code, b)
	}
	victim.WaitDisconnected(t)
	if victim.ServerDisconnect == nil || victim.ServerDisconnect.ReasonCode != 0x8A {
		t.Fatalf("banned client disconnected with %+v, want 0x8A", victim.ServerDisconnect)
	}
	if code, _ := post(map[string]any{"kind": "user", "value": "demo:banuser"}); code != 201 {
		t.Fatal(code)
	}
	byUser.WaitDisconnected(t)
	if code, b := post(map[string]any{"kind": "ip", "value": "127.0.0.2/31", "ttl": 3600}); code != 201 || b.Value != "127.0.0.2/31" || b.ExpiresAt.IsZero() {
		t.Fatalf("ban range: %d %+v", code, b)
	}
	if c := ipConn.closedAfter(5 * time.Second); c != 0x8A {
		t.Fatalf("client in the banned range: DISCONNECT %d, want 0x8A", c)
	}
	// The other device of the banned client ID's user is untouched.
	if code, err := otherDev.Publish(t, iot("banme", "x"), 1, []byte("x")); err != nil || code != 0 {
		t.Fatalf("other device: 0x%x %v", code, err)
	}
	for _, bad := range []map[string]any{
		{"kind": "ip", "value": "999.0.0.1"}, {"kind": "user", "value": "nocolon"}, {"kind": "device", "value": "x"},
		{"kind": "ip", "value": "10.0.0.1", "ttl": 10, "expires_at": time.Now().Add(time.Hour)},
	} {
		if code, _ := post(bad); code != 400 {
			t.Errorf("POST %v: %d, want 400", bad, code)
		}
	}
	if resp := api(t, s, "GET", "/v1/bans", "", nil, nil); resp.StatusCode != 401 {
		t.Errorf("GET /v1/bans without a key: %d", resp.StatusCode)
	}

	check := func(s *broker.Server) {
		t.Helper()
		authBefore := metric(t, s, `warbler_auth_refusals_total{reason="bad_token"}`)
		// A banned client ID with a wrong password still gets "banned":
		// the ban is checked first.
		if _, code, _ := connectConn(t, mqtttest.DialTCP(t, s.Addrs().MQTT), "demo:banme:d1", "", "not-a-token"); code != 0x8A {
			t.Errorf("banned client ID: CONNACK 0x%x, want 0x8A", code)
		}
		cid, u, p := creds(t, s, "demo", "banuser", "d9")
		if _, code, _ := connectConn(t, mqtttest.DialTCP(t, s.Addrs().MQTT), cid, u, p); code != 0x8A {
			t.Errorf("banned user's new device: CONNACK 0x%x, want 0x8A", code)
		}
		if after := metric(t, s, `warbler_auth_refusals_total{reason="bad_token"}`); after != authBefore {
			t.Errorf("authentication ran for a banned client (%v -> %v)", authBefore, after)
		}
		for _, ip := range []string{"127.0.0.2", "127.0.0.3"} {
			conn, err := mqtttest.DialTCPFrom(t, ip, s.Addrs().MQTT)
			if err == nil {
				newRaw(t, conn).closedAfter(time.Second) // closed at accept
			}
		}
		if r := apiFrom(t, httpFrom("127.0.0.2"), s, "GET", "/healthz", "", nil, nil); r.StatusCode != http.StatusForbidden {
			t.Errorf("HTTP from a banned address: %d, want 403", r.StatusCode)
		}
		if n := metric(t, s, `warbler_bans{kind="clientid"}`) + metric(t, s, `warbler_bans{kind="user"}`) + metric(t, s, `warbler_bans{kind="ip"}`); n != 3 {
			t.Errorf("warbler_bans total %v, want 3", n)
		}
	}
	check(s)
	ctl.check(t)

	// The bans survive a restart.
	s = restart(t, s)
	check(s)
	ctl = newControl(t, s)

	// Lifting a ban lets the client back in.
	if r := api(t, s, "DELETE", "/v1/bans/ip/127.0.0.2/31", key, nil, nil); r.StatusCode != 204 {
		t.Fatalf("DELETE range: %d", r.StatusCode)
	}
	if r := api(t, s, "DELETE", "/v1/bans/ip/127.0.0.2/31", key, nil, nil); r.StatusCode != 404 {
		t.Fatalf("DELETE again: %d, want 404", r.StatusCode)
	}
	rawSession(t, s, attacker, 5, "banip", "d2")
	if r := api(t, s, "DELETE", "/v1/bans/clientid/demo:banme:d1", key, nil, nil); r.StatusCode != 204 {
		t.Fatalf("DELETE client ID: %d", r.StatusCode)
	}
	connect(t, s, "banme", "d1")

	// A ban with a lifetime lapses by itself.
	if code, _ := post(map[string]any{"kind": "clientid", "value": "demo:brief:d1", "ttl": 1}); code != 201 {
		t.Fatal(code)
	}
	cid, u, p := creds(t, s, "demo", "brief", "d1")
	if _, code, _ := connectConn(t, mqtttest.DialTCP(t, s.Addrs().MQTT), cid, u, p); code != 0x8A {
		t.Fatalf("while banned: 0x%x", code)
	}
	waitFor(t, "the one-second ban to lapse", 5*time.Second, func() bool {
		c, code, _ := connectConn(t, mqtttest.DialTCP(t, s.Addrs().MQTT), cid, u, p)
		if c != nil {
			_ = c.Disconnect(&paho.Disconnect{})
		}
		return code == 0
	})
	ctl.check(t)
}

// The HTTP API is limited per address and per credential: past the burst
// a request gets 429 with Retry-After and a JSON error; other addresses
// and credentials are unaffected.
func TestHTTPRateLimits(t *testing.T) {
	s := start(t, func(c *broker.Config) {
		c.Limits.HTTP = broker.HTTPLimitsConfig{RatePerIP: 1, BurstPerIP: 5, RatePerKey: 1, BurstPerKey: 5}
	})
	hc := httpFrom(attacker)
	for i := range 5 {
		if r := apiFrom(t, hc, s, "GET", "/healthz", "", nil, nil); r.StatusCode != 200 {
			t.Fatalf("request %d: %d", i+1, r.StatusCode)
		}
	}
	var body struct{ Error struct{ Code string } }
	r := apiFrom(t, hc, s, "GET", "/healthz", "", nil, &body)
	if r.StatusCode != 429 || body.Error.Code != "rate_limited" || r.Header.Get("Retry-After") != "1" {
		t.Fatalf("sixth request: %d %+v Retry-After=%q", r.StatusCode, body, r.Header.Get("Retry-After"))
	}
	if r := api(t, s, "GET", "/healthz", "", nil, nil); r.StatusCode != 200 {
		t.Fatalf("another address: %d", r.StatusCode)
	}
	// Per credential, from the exempt address: the sixth call with one key
	// is refused, a call with another key is not.
	key := adminKey(t, s)
	for range 5 {
		api(t, s, "GET", "/v1/bans", key, nil, nil)
	}
	if r := api(t, s, "GET", "/v1/bans", key, nil, nil); r.StatusCode != 429 {
		t.Fatalf("sixth call with one key: %d", r.StatusCode)
	}
	if r := api(t, s, "GET", "/v1/bans", "another-key", nil, nil); r.StatusCode != 401 {
		t.Fatalf("another key: %d, want 401 (not limited)", r.StatusCode)
	}
	if metric(t, s, `warbler_limited_total{reason="http_ip"}`) != 1 || metric(t, s, `warbler_limited_total{reason="http_key"}`) != 1 {
		t.Fatal("HTTP refusals not counted")
	}
}

func isTimeout(err error) bool {
	type timeout interface{ Timeout() bool }
	te, ok := err.(timeout)
	return ok && te.Timeout()
}
