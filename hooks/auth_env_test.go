package hooks

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/warblerim/warbler/identity"
	"github.com/warblerim/warbler/internal/mqttstop"
	"github.com/warblerim/warbler/internal/mqtttest"
	"github.com/warblerim/warbler/storage"
	"github.com/warblerim/warbler/storage/badgerstore"
)

// azClock is the identity service's clock in these tests.
type azClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *azClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *azClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// azEnv is a running broker with the Auth and ACL hooks over a real
// identity service on a real Badger store.
//
// Apps and identities:
//
//	a1  users alice, bob; IoT rule w/{app}/iot/%u/# readwrite
//	    keys: pub (publish), usersOnly (users)
//	a2  users alice (same ID, other app), carol; key: pub
//	admin key
//
// Listeners: "tcp" (authenticated) and, if anon is set, "anon".
type azEnv struct {
	t        testing.TB
	svc      *identity.Service
	clock    *azClock
	server   *mqtt.Server
	auth     *Auth
	acl      *ACL
	reg      *Principals
	addr     string
	anonAddr string
	keys     map[string]string // "a1", "a1-users", "a2", "admin"
	injector *mqtt.Client
}

func azStart(t testing.TB, anon *AnonymousOptions) *azEnv {
	t.Helper()
	ctx := context.Background()
	db, err := badgerstore.Open(t.TempDir(), badgerstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	master := bytes.Repeat([]byte{7}, 32)
	clock := &azClock{t: time.Now()}
	svc, err := identity.New(ctx, identity.Options{Store: badgerstore.NewIdentityStore(db), MasterKey: master, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	e := &azEnv{t: t, svc: svc, clock: clock, keys: map[string]string{}}
	ok := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	_, err = svc.CreateApp(ctx, identity.AppSpec{ID: "a1", Settings: storage.AppSettings{
		IoTRules: []storage.TopicRule{{Pattern: "w/{app}/iot/%u/#", Access: "readwrite"}},
	}})
	ok(err)
	_, err = svc.CreateApp(ctx, identity.AppSpec{ID: "a2"})
	ok(err)
	for _, u := range [][2]string{{"a1", "alice"}, {"a1", "bob"}, {"a2", "alice"}, {"a2", "carol"}} {
		_, err = svc.CreateUser(ctx, u[0], identity.UserSpec{ID: u[1]})
		ok(err)
	}
	for name, spec := range map[string]struct {
		app    string
		scopes []string
	}{
		"a1": {"a1", []string{identity.ScopePublish}}, "a1-users": {"a1", []string{identity.ScopeUsers}},
		"a2": {"a2", []string{identity.ScopePublish}}, "admin": {identity.AdminApp, []string{identity.ScopeAdmin}},
	} {
		k, _, err := svc.CreateKey(ctx, spec.app, name, spec.scopes)
		ok(err)
		e.keys[name] = k
	}

	e.reg = NewPrincipals()
	e.auth, err = NewAuth(AuthOptions{Identity: svc, Principals: e.reg, Anonymous: anon,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	ok(err)
	e.acl, err = NewACL(ACLOptions{Principals: e.reg})
	ok(err)

	caps := mqtt.NewDefaultServerCapabilities()
	caps.Compatibilities.NoInheritedPropertiesOnAck = true
	e.server = mqtt.New(&mqtt.Options{InlineClient: false, Capabilities: caps,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	ok(e.server.AddHook(e.auth, nil))
	ok(e.server.AddHook(e.acl, nil))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	ok(err)
	e.addr = ln.Addr().String()
	ok(e.server.AddListener(listeners.NewNet("tcp", ln)))
	if anon != nil {
		aln, err := net.Listen("tcp", "127.0.0.1:0")
		ok(err)
		e.anonAddr = aln.Addr().String()
		ok(e.server.AddListener(listeners.NewNet(anon.Listeners[0], aln)))
	}
	ok(e.server.Serve())
	t.Cleanup(func() { mqttstop.Close(e.server) })
	// A server-side publisher that skips the write ACL, the way mochi's
	// inline client does, so tests can put messages on any topic and see
	// what the read ACL lets through.
	e.injector = e.server.NewClient(nil, "local", "injector", true)
	return e
}

// token issues an access token for app/user on device.
func (e *azEnv) token(app, user, device string) string {
	e.t.Helper()
	tok, err := e.svc.IssueToken(context.Background(), app, user, device, 0)
	if err != nil {
		e.t.Fatal(err)
	}
	return tok.Value
}

// inject publishes payload on topic from the server side.
func (e *azEnv) inject(topic, payload string) {
	e.t.Helper()
	err := e.server.InjectPacket(e.injector, packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
		TopicName:   topic, Payload: []byte(payload), PacketID: 1,
	})
	if err != nil {
		e.t.Fatal(err)
	}
}

// azClient is a paho (MQTT 5) client whose received messages land in msgs.
type azClient struct {
	t    testing.TB
	c    *paho.Client
	msgs chan *paho.Publish
	down chan *paho.Disconnect
}

type azConn struct {
	clientID, username, password string
	will                         *paho.WillMessage
	keepSession                  bool // clean start false, session expiry 1h
}

// dial connects a paho client; it returns the CONNACK reason code and,
// when the connection is up, the client.
func (e *azEnv) dial(addr string, o azConn) (*azClient, byte) {
	e.t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		e.t.Fatal(err)
	}
	c := &azClient{t: e.t, msgs: make(chan *paho.Publish, 64), down: make(chan *paho.Disconnect, 1)}
	c.c = paho.NewClient(paho.ClientConfig{
		Conn: conn, ClientID: o.clientID,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			c.msgs <- pr.Packet
			return true, nil
		}},
		OnServerDisconnect: func(d *paho.Disconnect) { c.down <- d },
	})
	cp := &paho.Connect{
		ClientID: o.clientID, KeepAlive: 30, CleanStart: !o.keepSession,
		Username: o.username, UsernameFlag: o.username != "",
		Password: []byte(o.password), PasswordFlag: o.password != "",
		// Without RequestProblemInfo=true mochi strips user properties and
		// reason strings (integration notes §5).
		Properties: &paho.ConnectProperties{RequestProblemInfo: true},
	}
	if o.keepSession {
		cp.Properties.SessionExpiryInterval = paho.Uint32(3600)
	}
	if o.will != nil {
		cp.WillMessage = o.will
		cp.WillProperties = &paho.WillProperties{}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ca, err := c.c.Connect(ctx, cp)
	if ca == nil {
		e.t.Fatalf("connect %s: no CONNACK: %v", o.clientID, err)
	}
	if err != nil || ca.ReasonCode != 0 {
		conn.Close()
		return nil, ca.ReasonCode
	}
	e.t.Cleanup(func() { _ = c.c.Disconnect(&paho.Disconnect{}) })
	return c, 0
}

// mustDial connects or fails the test.
func (e *azEnv) mustDial(o azConn) *azClient {
	e.t.Helper()
	c, code := e.dial(e.addr, o)
	if c == nil {
		e.t.Fatalf("connect %s refused with 0x%02x", o.clientID, code)
	}
	return c
}

// user connects app/user on device with a fresh token.
func (e *azEnv) user(app, user, device string) *azClient {
	e.t.Helper()
	return e.mustDial(azConn{clientID: app + ":" + user + ":" + device, password: e.token(app, user, device)})
}

// sub subscribes to one filter and returns the SUBACK reason code.
func (c *azClient) sub(filter string) byte {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sa, err := c.c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: 1}}})
	if sa == nil {
		c.t.Fatalf("subscribe %q: %v", filter, err)
	}
	return sa.Reasons[0]
}

// pub publishes at QoS 1 and returns the PUBACK reason code.
func (c *azClient) pub(topic, payload string) byte {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pr, err := c.c.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: []byte(payload)})
	if pr == nil {
		c.t.Fatalf("publish %q: %v", topic, err)
	}
	return pr.ReasonCode
}

// next waits for the next message.
func (c *azClient) next() *paho.Publish {
	c.t.Helper()
	select {
	case m := <-c.msgs:
		return m
	case <-time.After(5 * time.Second):
		c.t.Fatal("no message within 5s")
		return nil
	}
}

// barrier proves that nothing but the messages in allowed reached c up to
// now: it injects a marker on c's own downlink (which c must be subscribed
// to) and drains messages until the marker, failing on anything else.
// mochi delivers to one client in order, so anything sent before the
// marker would have arrived before it.
// Messages whose payload is in expected are legitimate and skipped.
func (e *azEnv) barrier(c *azClient, downlink string, expected ...string) {
	e.t.Helper()
	marker := "barrier-" + time.Now().Format(time.RFC3339Nano)
	e.inject(downlink, marker)
	for {
		m := c.next()
		if string(m.Payload) == marker {
			return
		}
		if slices.Contains(expected, string(m.Payload)) {
			continue
		}
		e.t.Fatalf("received %q on %q, which the ACL should have withheld", m.Payload, m.Topic)
	}
}

// rawClient speaks MQTT over a plain socket, for MQTT 3.1.1 (which paho
// v0.23 does not implement) and for checking what the server sends after
// a refusal.
type rawClient struct {
	t       testing.TB
	conn    net.Conn
	r       *bufio.Reader
	version byte
}

type rawConn struct {
	version                      byte // 4 or 5
	clientID, username, password string
	willTopic                    string
}

// rawDial connects and returns the client and its CONNACK.
func (e *azEnv) rawDial(addr string, o rawConn) (*rawClient, packets.Packet) {
	e.t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { conn.Close() })
	c := &rawClient{t: e.t, conn: conn, r: bufio.NewReader(conn), version: o.version}
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: o.version,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30,
			ClientIdentifier: o.clientID}}
	if o.version == 5 {
		pk.Properties.RequestProblemInfo, pk.Properties.RequestProblemInfoFlag = 1, true
	}
	if o.username != "" {
		pk.Connect.UsernameFlag, pk.Connect.Username = true, []byte(o.username)
	}
	if o.password != "" {
		pk.Connect.PasswordFlag, pk.Connect.Password = true, []byte(o.password)
	}
	if o.willTopic != "" {
		pk.Connect.WillFlag, pk.Connect.WillTopic, pk.Connect.WillPayload = true, o.willTopic, []byte("gone")
	}
	c.write(pk)
	return c, c.read()
}

func (c *rawClient) write(pk packets.Packet) {
	c.t.Helper()
	pk.ProtocolVersion = c.version
	b, err := mqtttest.Encode(pk)
	if err == nil {
		_, err = c.conn.Write(b)
	}
	if err != nil {
		c.t.Fatal(err)
	}
}

// readErr reads the next packet within 5 seconds.
func (c *rawClient) readErr() (packets.Packet, error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	var pk packets.Packet
	hb, err := c.r.ReadByte()
	if err != nil {
		return pk, err
	}
	if err := pk.FixedHeader.Decode(hb); err != nil {
		return pk, err
	}
	n, mult := 0, 1
	for i := 0; ; i++ {
		b, err := c.r.ReadByte()
		if err != nil {
			return pk, err
		}
		n += int(b&127) * mult
		if b&128 == 0 {
			break
		}
		if mult *= 128; i > 3 {
			return pk, errors.New("bad remaining length")
		}
	}
	pk.FixedHeader.Remaining = n
	body := make([]byte, n)
	if _, err := io.ReadFull(c.r, body); err != nil {
		return pk, err
	}
	pk.ProtocolVersion = c.version
	switch pk.FixedHeader.Type {
	case packets.Connack:
		err = pk.ConnackDecode(body)
	case packets.Suback:
		err = pk.SubackDecode(body)
	case packets.Publish:
		err = pk.PublishDecode(body)
	case packets.Puback:
		err = pk.PubackDecode(body)
	case packets.Disconnect:
		err = pk.DisconnectDecode(body)
	}
	return pk, err
}

func (c *rawClient) read() packets.Packet {
	c.t.Helper()
	pk, err := c.readErr()
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return pk
}

// expectClosed asserts that the server sends nothing more and closes the
// connection.
func (c *rawClient) expectClosed() {
	c.t.Helper()
	pk, err := c.readErr()
	if err == nil {
		c.t.Fatalf("server sent %v after the refusal", pk.FixedHeader.Type)
	}
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		c.t.Fatal("server kept the connection open after the refusal")
	}
}

func (c *rawClient) subscribe(id uint16, filter string) packets.Packet {
	c.t.Helper()
	c.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: id,
		Filters: packets.Subscriptions{{Filter: filter, Qos: 1}}})
	return c.read()
}
