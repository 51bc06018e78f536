package hooks_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/warblerim/warbler/hooks"
	"github.com/warblerim/warbler/internal/mqtttest"
	"github.com/warblerim/warbler/protocol"
)

// startShedding is a gated broker (see startGated) whose chat hook reports
// to a shedder with the given policy, installed as a hook too.
func startShedding(t *testing.T, p hooks.OverloadPolicy, heap func() uint64) (*broker, *gatedStore, *hooks.Overload) {
	ov := hooks.NewOverload(hooks.OverloadOptions{Policy: p, Heap: heap})
	b, g := startGated(t, func(o *hooks.ChatOptions) {
		if err := o.Server.AddHook(ov, nil); err != nil {
			t.Fatal(err)
		}
		o.Overload = ov
	})
	// Cleanups run last-in first-out: this one runs before the broker's, so
	// nothing held at the gate is left for the broker's Stop to wait on.
	t.Cleanup(g.open)
	return b, g, ov
}

// v5 connects an MQTT 5 client (paho) for user/dev, subscribed to its
// device topic; it fails the test if the CONNECT is refused.
func v5(t *testing.T, addr, user, dev string) *mqtttest.Client {
	t.Helper()
	c := mqtttest.MustConnect(t, mqtttest.DialTCP(t, addr), protocol.ClientID(app, user, dev), "", "")
	c.Subscribe(t, protocol.DeviceTopic(app, user, dev))
	return c
}

// connectCode sends an MQTT 5 CONNECT and returns the CONNACK's reason.
func connectCode(t *testing.T, addr, user, dev string) byte {
	t.Helper()
	_, ack, err := mqtttest.Connect(t, mqtttest.DialTCP(t, addr), &paho.Connect{ClientID: protocol.ClientID(app, user, dev), CleanStart: true})
	if ack == nil {
		t.Fatalf("connect %s/%s: no CONNACK: %v", user, dev, err)
	}
	return ack.ReasonCode
}

// connectCodeV3 sends an MQTT 3.1.1 CONNECT and returns the CONNACK's
// return code.
func connectCodeV3(t *testing.T, addr, user, dev string) byte {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := &v3{t: t, conn: conn, r: bufio.NewReader(conn)}
	c.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 4,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: protocol.ClientID(app, user, dev)}})
	pk := c.read()
	if pk.FixedHeader.Type != packets.Connack {
		t.Fatalf("want a CONNACK, got %+v", pk)
	}
	return pk.ReasonCode
}

// waitFor polls cond (a state of the server under test) until it holds;
// state, if given, describes what was seen instead.
func waitFor(t *testing.T, what string, cond func() bool, state ...func() string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			seen := ""
			for _, f := range state {
				seen = ": " + f()
			}
			t.Fatalf("timed out waiting for %s%s", what, seen)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// storedCMIDs lists the cmids of a direct conversation's log.
func storedCMIDs(t *testing.T, b *broker, a, c string) []string {
	t.Helper()
	es, err := b.store.Range(context.Background(), app, protocol.DirectConvID(a, c), 1, true, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range es {
		var m protocol.Message
		_ = json.Unmarshal(e.Data, &m)
		out = append(out, m.CMID)
	}
	return out
}

// With the disk held, sends pile up past max_inflight_sends and the server
// sheds: new CONNECTs get 0x89 (MQTT 3.1.1: 0x03), chat requests PUBACK
// 0x97 "server busy" (MQTT 3.1.1: the connection closes unacked) with an
// "unavailable" error envelope, and nothing refused is stored. Every send
// accepted before is stored and acked once the disk moves, the server
// recovers (connects and sends accepted again), and the MQTT 3.1.1
// client's unacked message, resent after reconnecting, is stored once.
func TestOverloadShedsAndRecovers(t *testing.T) {
	b, g, ov := startShedding(t, hooks.OverloadPolicy{MaxInflightSends: 8, ResumeInflightSends: 2}, nil)
	ann := v5(t, b.tcp, "ann", "d1")
	cy := v5(t, b.tcp, "cy", "d1")
	dee := dialV3(t, b.tcp, "dee", "d1")
	annUp, cyUp, deeUp := protocol.Uplink(app, "ann", "d1"), protocol.Uplink(app, "cy", "d1"), protocol.Uplink(app, "dee", "d1")
	if code, err := ann.Publish(t, annUp, 1, []byte(sendJSON("bob", "warm", ""))); code != 0 || err != nil {
		t.Fatalf("send before the overload: 0x%x %v", code, err)
	}

	// (The PUBACK leaves just before the send stops counting as in flight.)
	waitFor(t, "the warm-up send to be done", func() bool { return ov.Inflight() == 0 })

	// Eight sends held at the disk reach the limit.
	g.close()
	var acked sync.WaitGroup
	codes, errs := make([]byte, 8), make([]error, 8)
	for i := range 8 {
		acked.Add(1)
		go func() {
			defer acked.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			resp, err := ann.Client.Publish(ctx, &paho.Publish{Topic: annUp, QoS: 1, Payload: []byte(sendJSON("bob", fmt.Sprint("held", i), ""))})
			if resp == nil {
				codes[i], errs[i] = 0xff, err
				return
			}
			codes[i] = resp.ReasonCode
		}()
	}
	// If the test stops early, the disk moves and the senders finish
	// before their client is closed.
	t.Cleanup(func() { g.open(); acked.Wait() })
	waitFor(t, "eight sends at the disk and the server shedding", func() bool { return g.heldCount() == 8 && ov.Shedding() },
		func() string {
			return fmt.Sprintf("%d held, %d in flight, shedding %v", g.heldCount(), ov.Inflight(), ov.Shedding())
		})

	// MQTT 5 chat request: PUBACK 0x97 "server busy", an error envelope,
	// nothing stored.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, _ := cy.Client.Publish(ctx, &paho.Publish{Topic: cyUp, QoS: 1, Payload: []byte(sendJSON("bob", "refused", "r1"))})
	if resp == nil || resp.ReasonCode != 0x97 || resp.Properties == nil || resp.Properties.ReasonString != "server busy" {
		t.Fatalf("send while shedding: PUBACK %+v, want 0x97 \"server busy\"", resp)
	}
	for {
		m := cy.Expect(t)
		var env struct {
			Kind  string                `json:"kind"`
			RID   string                `json:"rid"`
			Error struct{ Code string } `json:"error"`
		}
		_ = json.Unmarshal(m.Payload, &env)
		if env.RID == "r1" {
			if env.Kind != "error" || env.Error.Code != protocol.CodeUnavailable {
				t.Fatalf("envelope for the refused send: %s", m.Payload)
			}
			break
		}
	}
	// A request other than a send is refused too (it is new work).
	if code, _ := cy.Publish(t, cyUp, 1, []byte(`{"op":"convs","rid":"c"}`)); code != 0x97 {
		t.Fatalf("convs while shedding: 0x%x", code)
	}

	// MQTT 3.1.1 chat request: the connection closes, no PUBACK.
	dee.pub(7, deeUp, sendJSON("bob", "dee-1", ""))
	_ = dee.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		pk, err := readPacket(dee.r)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("MQTT 3.1.1 sender while shedding: %v (want the connection closed)", err)
		}
		if pk.FixedHeader.Type == packets.Puback {
			t.Fatalf("MQTT 3.1.1 send acked while shedding: %+v", pk)
		}
	}

	// New connections are refused before authentication.
	if code := connectCode(t, b.tcp, "eve", "d1"); code != 0x89 {
		t.Fatalf("MQTT 5 CONNECT while shedding: 0x%x, want 0x89", code)
	}
	if code := connectCodeV3(t, b.tcp, "eve", "d2"); code != 0x03 {
		t.Fatalf("MQTT 3.1.1 CONNECT while shedding: 0x%x, want 0x03", code)
	}

	// The disk moves: every accepted send is stored and acked, and the
	// server recovers.
	g.open()
	acked.Wait()
	for i, c := range codes {
		if c != 0 {
			t.Fatalf("held send %d: PUBACK 0x%x (%v)", i, c, errs[i])
		}
	}
	waitFor(t, "the server to stop shedding", func() bool { return !ov.Shedding() })
	if code := connectCode(t, b.tcp, "eve", "d1"); code != 0 {
		t.Fatalf("CONNECT after recovery: 0x%x", code)
	}
	if code, err := cy.Publish(t, cyUp, 1, []byte(sendJSON("bob", "after", ""))); code != 0 || err != nil {
		t.Fatalf("send after recovery: 0x%x %v", code, err)
	}
	// The MQTT 3.1.1 client reconnects and resends its unacked message.
	dee = dialV3(t, b.tcp, "dee", "d1")
	dee.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1, Dup: true}, ProtocolVersion: 4,
		PacketID: 7, TopicName: deeUp, Payload: []byte(sendJSON("bob", "dee-1", ""))})
	if ids := dee.acks(1); ids[0] != 7 {
		t.Fatalf("resend acked as %v", ids)
	}

	want := []string{"warm"}
	for i := range 8 {
		want = append(want, fmt.Sprint("held", i))
	}
	got := storedCMIDs(t, b, "ann", "bob")
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("ann->bob stored %v, want %v", got, want)
	}
	if got := storedCMIDs(t, b, "cy", "bob"); !slices.Equal(got, []string{"after"}) {
		t.Fatalf("cy->bob stored %v: a refused send was stored", got)
	}
	if got := storedCMIDs(t, b, "dee", "bob"); !slices.Equal(got, []string{"dee-1"}) {
		t.Fatalf("dee->bob stored %v", got)
	}
	r := ov.Refused()
	if r[hooks.ShedConnect] != 2 || r[hooks.ShedChat] != 3 || r[hooks.ShedPublish] != 0 || ov.Episodes() != 1 {
		t.Fatalf("refused %v in %d episodes, want 2 connects and 3 chat requests in 1", r, ov.Episodes())
	}
}

// Past the live-heap limit plain MQTT publishes are refused too: MQTT 5
// QoS 1 gets PUBACK 0x97 "server busy"; below the resume level they pass.
func TestOverloadHeap(t *testing.T) {
	var heap atomic.Uint64
	heap.Store(10 << 20)
	b, _, ov := startShedding(t, hooks.OverloadPolicy{MaxHeap: 100 << 20, ResumeHeap: 80 << 20, HeapEvery: time.Millisecond}, heap.Load)
	sub := mqtttest.MustConnect(t, mqtttest.DialTCP(t, b.tcp), "sensor-sub", "", "")
	sub.Subscribe(t, "plant/#")
	pub := mqtttest.MustConnect(t, mqtttest.DialTCP(t, b.tcp), "sensor-pub", "", "")
	if code, err := pub.Publish(t, "plant/t", 1, []byte("20")); code != 0 || err != nil {
		t.Fatalf("publish: 0x%x %v", code, err)
	}
	sub.Expect(t)

	heap.Store(120 << 20)
	waitFor(t, "shedding on the heap", ov.Shedding)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, _ := pub.Client.Publish(ctx, &paho.Publish{Topic: "plant/t", QoS: 1, Payload: []byte("21")})
	if resp == nil || resp.ReasonCode != 0x97 || resp.Properties == nil || resp.Properties.ReasonString != "server busy" {
		t.Fatalf("publish over the heap limit: %+v", resp)
	}
	if code := connectCode(t, b.tcp, "eve", "d1"); code != 0x89 {
		t.Fatalf("CONNECT over the heap limit: 0x%x", code)
	}

	heap.Store(90 << 20) // between the levels: still shedding
	time.Sleep(20 * time.Millisecond)
	if !ov.Shedding() {
		t.Fatal("stopped shedding above the resume level")
	}
	heap.Store(70 << 20)
	waitFor(t, "recovery", func() bool { return !ov.Shedding() })
	if code, err := pub.Publish(t, "plant/t", 1, []byte("22")); code != 0 || err != nil {
		t.Fatalf("publish after recovery: 0x%x %v", code, err)
	}
	if m := sub.Expect(t); string(m.Payload) != "22" {
		t.Fatalf("subscriber got %q after recovery (the refused message must not be delivered)", m.Payload)
	}
	if r := ov.Refused(); r[hooks.ShedPublish] != 1 || r[hooks.ShedConnect] != 1 {
		t.Fatalf("refused %v", r)
	}
}
