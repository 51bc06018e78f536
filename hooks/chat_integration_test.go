package hooks_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/warblerim/warbler/chat"
	"github.com/warblerim/warbler/hooks"
	"github.com/warblerim/warbler/internal/mqttstop"
	"github.com/warblerim/warbler/internal/mqtttest"
	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage/badgerstore"
)

const app = "acme"

// broker is a real mochi server with the chat hook, a TCP listener and a
// WebSocket listener, over a real Badger store.
type broker struct {
	srv   *mqtt.Server
	hook  *hooks.Chat
	svc   *chat.Service
	tcp   string // host:port
	ws    string // ws://host:port/mqtt
	store *badgerstore.ChatStore
}

func startBroker(t testing.TB, mod func(*mqtt.Options, *chat.Options)) *broker {
	t.Helper()
	return startBrokerHook(t, mod, nil)
}

// startBrokerHook is startBroker with a say in the hook's options too.
func startBrokerHook(t testing.TB, mod func(*mqtt.Options, *chat.Options), hookMod func(*hooks.ChatOptions)) *broker {
	t.Helper()
	db, err := badgerstore.Open(t.TempDir(), badgerstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	store := badgerstore.NewChat(db, badgerstore.ChatOptions{})
	hook := hooks.NewChat()
	co := chat.Options{Store: store, Deliverer: hook, SendRate: -1}
	caps := mqtt.NewDefaultServerCapabilities()
	caps.Compatibilities.NoInheritedPropertiesOnAck = true
	mo := &mqtt.Options{InlineClient: true, Capabilities: caps, Logger: slog.New(slog.DiscardHandler)}
	if mod != nil {
		mod(mo, &co)
	}
	svc, err := chat.New(co)
	if err != nil {
		t.Fatal(err)
	}
	srv := mqtt.New(mo)
	if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
		t.Fatal(err)
	}
	ho := &hooks.ChatOptions{Server: srv, Service: svc, HintInterval: 20 * time.Millisecond}
	if hookMod != nil {
		hookMod(ho)
	}
	if err := srv.AddHook(hook, ho); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.AddListener(listeners.NewNet("tcp", ln)); err != nil {
		t.Fatal(err)
	}
	// mochi's WebSocket listener binds inside Serve, so find a free port
	// by binding :0 first.
	probe, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	wsAddr := probe.Addr().String()
	probe.Close()
	if err := srv.AddListener(listeners.NewWebsocket(listeners.Config{ID: "ws", Address: wsAddr})); err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	waitDial(t, wsAddr)
	t.Cleanup(func() {
		mqttstop.Close(srv)
		svc.StopCalls()
		store.Close()
		db.Close()
	})
	return &broker{srv: srv, hook: hook, svc: svc, tcp: ln.Addr().String(), ws: "ws://" + wsAddr + "/mqtt", store: store}
}

func waitDial(t testing.TB, addr string) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("listener %s never came up: %v", addr, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// inbound is one publish a test client received.
type inbound struct {
	topic string
	corr  []byte
	data  map[string]any
	raw   []byte
}

func (in inbound) kind() string { s, _ := in.data["kind"].(string); return s }

// device is a real MQTT 5 client (paho autopaho) for one user's device,
// subscribed to its user's downlink and its device topic.
type device struct {
	t            testing.TB
	user, device string
	cm           *autopaho.ConnectionManager
	in           chan inbound
	pending      []inbound
}

func connect(t testing.TB, rawURL, user, dev string) *device {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	d := &device{t: t, user: user, device: dev, in: make(chan inbound, 1000)}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cfg := autopaho.ClientConfig{
		ServerUrls:                    []*url.URL{u},
		KeepAlive:                     30,
		CleanStartOnInitialConnection: true,
		SessionExpiryInterval:         60,
		ConnectTimeout:                2 * time.Second,
		ReconnectBackoff:              func(int) time.Duration { return 50 * time.Millisecond },
		// autopaho sends RequestProblemInfo=0 whenever it sends CONNECT
		// properties, and mochi then strips user properties from what it
		// delivers. Ask for problem info explicitly.
		ConnectPacketBuilder: func(cp *paho.Connect, _ *url.URL) (*paho.Connect, error) {
			if cp.Properties != nil {
				cp.Properties.RequestProblemInfo = true
			}
			return cp, nil
		},
		ClientConfig: paho.ClientConfig{
			ClientID: protocol.ClientID(app, user, dev),
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
				in := inbound{topic: pr.Packet.Topic, raw: pr.Packet.Payload}
				if pr.Packet.Properties != nil {
					in.corr = pr.Packet.Properties.CorrelationData
				}
				_ = json.Unmarshal(pr.Packet.Payload, &in.data)
				select {
				case d.in <- in:
				default:
					t.Errorf("%s/%s: receive buffer full", user, dev)
				}
				return true, nil
			}},
		},
	}
	if d.cm, err = autopaho.NewConnection(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	if err := d.cm.AwaitConnection(ctx); err != nil {
		t.Fatalf("%s/%s connect: %v", user, dev, err)
	}
	_, err = d.cm.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{
		{Topic: protocol.Downlink(app, user), QoS: 1},
		{Topic: protocol.DeviceTopic(app, user, dev), QoS: 1},
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.close)
	return d
}

func (d *device) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = d.cm.Disconnect(ctx)
	<-d.cm.Done()
}

// publish sends v on the device's uplink at QoS 1 and returns the PUBACK
// reason code.
func (d *device) publish(v any, props *paho.PublishProperties) byte {
	d.t.Helper()
	var payload []byte
	switch x := v.(type) {
	case string:
		payload = []byte(x)
	default:
		payload, _ = json.Marshal(v)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := d.cm.Publish(ctx, &paho.Publish{QoS: 1, Topic: protocol.Uplink(app, d.user, d.device), Payload: payload, Properties: props})
	if resp == nil {
		d.t.Fatalf("publish: no PUBACK: %v", err)
	}
	return resp.ReasonCode
}

// request sends an op with MQTT 5 request/response and waits for the
// answer carrying the same correlation data.
func (d *device) request(v map[string]any) inbound {
	d.t.Helper()
	corr := fmt.Appendf(nil, "c-%d", time.Now().UnixNano())
	d.publish(v, &paho.PublishProperties{ResponseTopic: protocol.DeviceTopic(app, d.user, d.device), CorrelationData: corr})
	return d.expect(func(in inbound) bool { return bytes.Equal(in.corr, corr) })
}

// expect waits (with a deadline) for a publish matching ok. Publishes that
// do not match are kept, in order, for later calls.
func (d *device) expect(ok func(inbound) bool) inbound {
	d.t.Helper()
	for i, in := range d.pending {
		if ok(in) {
			d.pending = append(d.pending[:i:i], d.pending[i+1:]...)
			return in
		}
	}
	deadline := time.After(5 * time.Second)
	for {
		select {
		case in := <-d.in:
			if ok(in) {
				return in
			}
			d.pending = append(d.pending, in)
		case <-deadline:
			for _, in := range d.pending {
				d.t.Logf("%s/%s unmatched: %s %s", d.user, d.device, in.topic, in.raw)
			}
			d.t.Fatalf("%s/%s: expected publish never arrived", d.user, d.device)
			return inbound{}
		}
	}
}

func isMsg(conv string, seq float64) func(inbound) bool {
	return func(in inbound) bool {
		return in.kind() == "msg" && in.data["conv"] == conv && in.data["seq"] == seq
	}
}

func result(t testing.TB, in inbound) map[string]any {
	t.Helper()
	if in.kind() != "reply" {
		t.Fatalf("want a reply, got %s", in.raw)
	}
	r, _ := in.data["result"].(map[string]any)
	return r
}

func send(conv, to, cmid, body string) map[string]any {
	m := map[string]any{"cmid": cmid, "type": "text", "body": map[string]any{"text": body}}
	if conv != "" {
		m["conv"] = conv
	} else {
		m["to"] = to
	}
	return m
}

// A direct message reaches every device of the recipient and the sender's
// other devices, over TCP and WebSocket; the reply carries id and seq.
func TestChatDirectDeliveryAllDevices(t *testing.T) {
	b := startBroker(t, nil)
	alicePhone := connect(t, "mqtt://"+b.tcp, "alice", "phone")
	aliceWeb := connect(t, b.ws, "alice", "web")
	bobPhone := connect(t, "mqtt://"+b.tcp, "bob", "phone")
	bobLaptop := connect(t, b.ws, "bob", "laptop")

	conv := protocol.DirectConvID("alice", "bob")
	ack := alicePhone.request(send("", "bob", "m1", "hello bob"))
	r := result(t, ack)
	if r["conv"] != conv || r["seq"] != 1.0 || r["id"] == "" {
		t.Fatalf("ack %s", ack.raw)
	}
	for _, d := range []*device{aliceWeb, bobPhone, bobLaptop, alicePhone} {
		m := d.expect(isMsg(conv, 1))
		from := m.data["from"].(map[string]any)
		if from["user"] != "alice" || from["device"] != "phone" || m.data["body"].(map[string]any)["text"] != "hello bob" || m.data["id"] != r["id"] {
			t.Fatalf("%s/%s got %s", d.user, d.device, m.raw)
		}
	}
	// A plain send (no response topic, no rid) is not answered, only delivered.
	if rc := bobLaptop.publish(send(conv, "", "b1", "hi alice"), nil); rc != 0 {
		t.Fatalf("reason %#x", rc)
	}
	for _, d := range []*device{alicePhone, aliceWeb, bobPhone} {
		d.expect(isMsg(conv, 2))
	}
	m := bobLaptop.expect(func(in inbound) bool { return in.kind() != "" })
	if m.kind() != "msg" || m.data["seq"] != 2.0 {
		t.Fatalf("the sender's device got %s before its own message", m.raw)
	}
}

// Group delivery, an offline device that catches up by paginated sync in
// order, and read receipts reaching the author's devices.
func TestChatGroupSyncAndReceipts(t *testing.T) {
	b := startBroker(t, nil)
	ann := connect(t, "mqtt://"+b.tcp, "ann", "phone")
	annWeb := connect(t, b.ws, "ann", "web")
	ben := connect(t, "mqtt://"+b.tcp, "ben", "phone")
	cal := connect(t, "mqtt://"+b.tcp, "cal", "phone")
	calTablet := connect(t, "mqtt://"+b.tcp, "cal", "tablet")

	info := result(t, ann.request(map[string]any{"op": "create", "kind": "group", "conv": "team", "name": "Team", "members": []string{"ben", "cal"}}))
	if c := info["conv"].(map[string]any); c["members"] != 3.0 || c["role"] != "owner" {
		t.Fatalf("create: %v", info)
	}
	for _, d := range []*device{ann, annWeb, ben, cal, calTablet} {
		d.expect(isMsg("team", 1)) // the "created" event
	}
	calTablet.close()

	for i := 2; i <= 9; i++ {
		who := []*device{ann, ben}[i%2]
		result(t, who.request(send("team", "", fmt.Sprint("m", i), fmt.Sprint("n", i))))
		for _, d := range []*device{ann, annWeb, ben, cal} {
			d.expect(isMsg("team", float64(i)))
		}
	}

	// The tablet reconnects and pages through everything after its cursor.
	calTablet = connect(t, b.ws, "cal", "tablet")
	var got []float64
	var cursors any
	for page := 0; ; page++ {
		req := map[string]any{"op": "sync", "limit": 3}
		if cursors != nil {
			req["cursors"] = cursors
		}
		r := result(t, calTablet.request(req))
		for _, m := range r["messages"].([]any) {
			got = append(got, m.(map[string]any)["seq"].(float64))
		}
		cursors = r["cursors"]
		if r["more"] != true {
			break
		}
		if page > 10 {
			t.Fatal("sync does not end")
		}
	}
	if fmt.Sprint(got) != "[1 2 3 4 5 6 7 8 9]" {
		t.Fatalf("sync got %v", got)
	}
	result(t, calTablet.request(map[string]any{"op": "delivered", "conv": "team", "seq": 9}))

	// cal reads up to 9: ann (author of odd seqs) gets the receipt on both
	// devices, and cal's other device too.
	rr := result(t, cal.request(map[string]any{"op": "read", "conv": "team", "seq": 9}))
	if rr["seq"] != 9.0 {
		t.Fatalf("read: %v", rr)
	}
	isRead := func(in inbound) bool {
		return in.kind() == "receipt" && in.data["type"] == "read" && in.data["user"] == "cal" && in.data["seq"] == 9.0
	}
	for _, d := range []*device{ann, annWeb, ben, calTablet} {
		d.expect(isRead)
	}
	reads := result(t, ann.request(map[string]any{"op": "reads", "conv": "team", "seq": 9}))
	if reads["read"] != 2.0 || reads["members"] != 3.0 { // ann (author of 9) and cal
		t.Fatalf("reads %v", reads)
	}
	convs := result(t, cal.request(map[string]any{"op": "convs"}))
	c0 := convs["convs"].([]any)[0].(map[string]any)
	if c0["conv"] != "team" || c0["last_seq"] != 9.0 || c0["unread"] != 0.0 {
		t.Fatalf("convs %v", convs)
	}
}

// A retried cmid is stored and delivered once; the retry's ack names the
// original message.
func TestChatDuplicateDeliveredOnce(t *testing.T) {
	b := startBroker(t, nil)
	amy := connect(t, "mqtt://"+b.tcp, "amy", "phone")
	bo := connect(t, "mqtt://"+b.tcp, "bo", "phone")
	conv := protocol.DirectConvID("amy", "bo")
	first := result(t, amy.request(send("", "bo", "same", "once")))
	again := result(t, amy.request(send("", "bo", "same", "once")))
	if again["id"] != first["id"] || again["seq"] != first["seq"] || again["duplicate"] != true {
		t.Fatalf("first %v, again %v", first, again)
	}
	result(t, amy.request(send("", "bo", "next", "two")))
	// bo's downlink is ordered: seq 1, then seq 2, nothing in between.
	if m := bo.expect(func(in inbound) bool { return in.kind() == "msg" }); m.data["seq"] != 1.0 {
		t.Fatalf("first delivery %s", m.raw)
	}
	if m := bo.expect(func(in inbound) bool { return in.kind() == "msg" }); m.data["seq"] != 2.0 || m.data["conv"] != conv {
		t.Fatalf("second delivery %s (the duplicate was delivered)", m.raw)
	}
}

// Errors: a malformed envelope and a non-member send get MQTT 5 reason
// codes and an error envelope with code and message; nothing is routed.
func TestChatErrorsV5(t *testing.T) {
	b := startBroker(t, nil)
	spy := connect(t, "mqtt://"+b.tcp, "spy", "d")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := spy.cm.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "w/" + app + "/up/#", QoS: 1}, {Topic: "sentinel", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	owner := connect(t, "mqtt://"+b.tcp, "own", "d")
	eve := connect(t, "mqtt://"+b.tcp, "eve", "d")
	result(t, owner.request(map[string]any{"op": "create", "kind": "group", "conv": "club"}))

	errOf := func(in inbound) (string, string) {
		e, _ := in.data["error"].(map[string]any)
		c, _ := e["code"].(string)
		m, _ := e["message"].(string)
		return c, m
	}
	if rc := eve.publish(`{"conv":"club","cmid":"x","type":"text","body":{"t":1},"oops":1}`, nil); rc != packets.ErrPayloadFormatInvalid.Code {
		t.Fatalf("bad envelope: reason %#x", rc)
	}
	in := eve.expect(func(in inbound) bool { return in.kind() == "error" })
	if c, m := errOf(in); c != "bad_request" || !strings.Contains(m, "oops") || in.data["cmid"] != "x" {
		t.Fatalf("bad envelope error %s", in.raw)
	}
	if rc := eve.publish(send("club", "", "x2", "let me in"), nil); rc != packets.ErrNotAuthorized.Code {
		t.Fatalf("non-member: reason %#x", rc)
	}
	in = eve.expect(func(in inbound) bool { return in.kind() == "error" })
	if c, _ := errOf(in); c != "not_member" || in.data["cmid"] != "x2" {
		t.Fatalf("non-member error %s", in.raw)
	}
	// With request/response the error comes back correlated.
	in = eve.request(map[string]any{"op": "history", "conv": "club"})
	if c, _ := errOf(in); in.kind() != "error" || c != "not_member" || in.data["op"] != "history" {
		t.Fatalf("correlated error %s", in.raw)
	}
	// A response topic other than the device's own is not honoured.
	eve.publish(map[string]any{"op": "convs", "rid": "r9"}, &paho.PublishProperties{ResponseTopic: protocol.Downlink(app, "own"), CorrelationData: []byte("x")})
	in = eve.expect(func(in inbound) bool { return in.data["rid"] == "r9" })
	if in.topic != protocol.DeviceTopic(app, "eve", "d") || in.corr != nil {
		t.Fatalf("reply went to %s with %q", in.topic, in.corr)
	}
	// Nothing published on an uplink was routed to the spy: the sentinel
	// is the first thing it sees.
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	if _, err := owner.cm.Publish(sctx, &paho.Publish{QoS: 1, Topic: "sentinel", Payload: []byte("end")}); err != nil {
		t.Fatal(err)
	}
	first := spy.expect(func(in inbound) bool { return strings.HasPrefix(in.topic, "w/"+app+"/up/") || in.topic == "sentinel" })
	if first.topic != "sentinel" {
		t.Fatalf("an uplink publish was routed: %s %s", first.topic, first.raw)
	}
	if st := b.hook.Stats(); st.Failed < 3 || st.Panics != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// v3 is a raw MQTT 3.1.1 client built from mochi's packet codec, the way
// mosquitto_pub would talk: no properties, so "rid" correlates.
type v3 struct {
	t    testing.TB
	conn net.Conn
	r    *bufio.Reader
	id   uint16
	mu   sync.Mutex
	// pending holds publishes read while waiting for a PUBACK (the broker
	// writes acks and routed messages from different goroutines, so their
	// order on the wire varies).
	pending []packets.Packet
}

func dialV3(t testing.TB, addr, user, dev string) *v3 {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := &v3{t: t, conn: conn, r: bufio.NewReader(conn)}
	c.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 4,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: protocol.ClientID(app, user, dev)}})
	if pk := c.read(); pk.FixedHeader.Type != packets.Connack || pk.ReasonCode != 0 {
		t.Fatalf("connack %+v", pk)
	}
	c.id++
	c.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, ProtocolVersion: 4, PacketID: c.id,
		Filters: packets.Subscriptions{{Filter: protocol.DeviceTopic(app, user, dev), Qos: 1}, {Filter: protocol.Downlink(app, user), Qos: 1}}})
	if pk := c.read(); pk.FixedHeader.Type != packets.Suback {
		t.Fatalf("suback %+v", pk)
	}
	return c
}

func (c *v3) write(pk packets.Packet) {
	c.mu.Lock()
	defer c.mu.Unlock()
	b, err := mqtttest.Encode(pk)
	if err == nil {
		_, err = c.conn.Write(b)
	}
	if err != nil {
		c.t.Fatal(err)
	}
}

// read returns the next packet, acking QoS 1 publishes.
func (c *v3) read() packets.Packet {
	c.t.Helper()
	// Generous: a sync page of large messages on a busy machine with the
	// race detector can take several seconds.
	_ = c.conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	pk, err := readPacket(c.r)
	if err != nil {
		c.t.Fatalf("v3 read: %v", err)
	}
	if pk.FixedHeader.Type == packets.Publish && pk.FixedHeader.Qos == 1 {
		c.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, ProtocolVersion: 4, PacketID: pk.PacketID})
	}
	return pk
}

func readPacket(r *bufio.Reader) (packets.Packet, error) {
	var pk packets.Packet
	hb, err := r.ReadByte()
	if err != nil {
		return pk, err
	}
	if err := pk.FixedHeader.Decode(hb); err != nil {
		return pk, err
	}
	n, mult := 0, 1
	for i := 0; ; i++ {
		b, err := r.ReadByte()
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
	buf := make([]byte, n)
	if _, err := io.ReadFull(r, buf); err != nil {
		return pk, err
	}
	pk.ProtocolVersion = 4
	switch pk.FixedHeader.Type {
	case packets.Connack:
		err = pk.ConnackDecode(buf)
	case packets.Suback:
		err = pk.SubackDecode(buf)
	case packets.Publish:
		err = pk.PublishDecode(buf)
	case packets.Puback:
		err = pk.PubackDecode(buf)
	case packets.Pubrec:
		if n > 2 { // an MQTT 5 PUBREC with a reason code
			pk.ProtocolVersion = 5
		}
		err = pk.PubrecDecode(buf)
	}
	return pk, err
}

// publish sends payload at QoS 1 and returns the PUBACK; publishes that
// arrive meanwhile are kept for next.
func (c *v3) publish(topic, payload string) packets.Packet {
	c.t.Helper()
	c.id++
	id := c.id
	c.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, ProtocolVersion: 4, PacketID: id, TopicName: topic, Payload: []byte(payload)})
	for {
		pk := c.read()
		if pk.FixedHeader.Type == packets.Puback && pk.PacketID == id {
			return pk
		}
		if pk.FixedHeader.Type == packets.Publish {
			c.pending = append(c.pending, pk)
		}
	}
}

// next returns the next publish whose JSON satisfies ok.
func (c *v3) next(ok func(map[string]any) bool) map[string]any {
	c.t.Helper()
	for {
		var pk packets.Packet
		if len(c.pending) > 0 {
			pk, c.pending = c.pending[0], c.pending[1:]
		} else {
			pk = c.read()
		}
		if pk.FixedHeader.Type != packets.Publish {
			continue
		}
		var m map[string]any
		if json.Unmarshal(pk.Payload, &m) == nil && ok(m) {
			m["_topic"] = pk.TopicName
			return m
		}
	}
}

// MQTT 3.1.1: requests correlate by "rid" on the device topic, sends are
// delivered, and errors arrive as error envelopes (the PUBACK cannot say).
func TestChatV3RidFallback(t *testing.T) {
	b := startBroker(t, nil)
	dan := dialV3(t, b.tcp, "dan", "nokia")
	eli := connect(t, "mqtt://"+b.tcp, "eli", "phone")
	up := protocol.Uplink(app, "dan", "nokia")

	dan.publish(up, `{"op":"create","kind":"group","conv":"v3g","members":["eli"],"rid":"r1"}`)
	rep := dan.next(func(m map[string]any) bool { return m["rid"] == "r1" })
	if rep["kind"] != "reply" || rep["op"] != "create" || rep["_topic"] != protocol.DeviceTopic(app, "dan", "nokia") {
		t.Fatalf("create reply %v", rep)
	}
	// A send with a rid is acked with id and seq; eli gets the message.
	dan.publish(up, `{"conv":"v3g","cmid":"k1","type":"text","body":"from 3.1.1","rid":"r2"}`)
	ack := dan.next(func(m map[string]any) bool { return m["rid"] == "r2" })
	if res := ack["result"].(map[string]any); res["seq"] != 2.0 || res["id"] == "" {
		t.Fatalf("ack %v", ack)
	}
	if m := eli.expect(isMsg("v3g", 2)); m.data["body"] != "from 3.1.1" {
		t.Fatalf("eli got %s", m.raw)
	}
	// Errors: plain PUBACK, error envelope with the rid.
	if pk := dan.publish(up, `{"conv":"nope","cmid":"k2","type":"text","body":1,"rid":"r3"}`); pk.ReasonCode != 0 {
		t.Fatalf("v3 puback reason %d", pk.ReasonCode)
	}
	e := dan.next(func(m map[string]any) bool { return m["rid"] == "r3" })
	if e["kind"] != "error" || e["error"].(map[string]any)["code"] != "not_member" {
		t.Fatalf("v3 error %v", e)
	}
	dan.publish(up, `{"rid":"r4", this is not json`)
	e = dan.next(func(m map[string]any) bool { return m["kind"] == "error" })
	if e["error"].(map[string]any)["code"] != "bad_request" {
		t.Fatalf("v3 parse error %v", e)
	}
}

// A payload that would crash a careless parser must only produce errors.
func TestChatHostilePayloads(t *testing.T) {
	b := startBroker(t, nil)
	d := connect(t, "mqtt://"+b.tcp, "h", "d")
	for _, p := range []string{"", "\x00\xff", "null", "[]", `{"body":` + strings.Repeat("[", 10000) + `}`, `{"op":"sync","cursors":{"a":-1}}`, strings.Repeat("x", 200<<10)} {
		if rc := d.publish(p, nil); rc < 0x80 {
			t.Fatalf("%.20q: reason %#x", p, rc)
		}
	}
	if st := b.hook.Stats(); st.Panics != 0 {
		t.Fatalf("panics: %d", st.Panics)
	}
	// The broker still works.
	result(t, d.request(map[string]any{"op": "convs"}))
}
