package broker

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/eclipse/paho.golang/paho"

	"github.com/warblerim/warbler/internal/mqtttest"
	"github.com/warblerim/warbler/protocol"
)

// The chat tests run the whole server: real tokens, the ACL, the durable
// log and fan-out, with paho clients over TCP and WebSocket.

type chatDevice struct {
	*mqtttest.Client
	user, device string
	corr         atomic.Int64
	held         []*paho.Publish // received while waiting for something else
}

// next returns the next payload, held ones first.
func (d *chatDevice) next(t *testing.T) *paho.Publish {
	t.Helper()
	if len(d.held) > 0 {
		p := d.held[0]
		d.held = d.held[1:]
		return p
	}
	return d.Expect(t)
}

// chatConnect connects a device of a demo user and subscribes it to its
// downlink and device topic, as the protocol asks.
func chatConnect(t *testing.T, s *Server, conn net.Conn, user, device string) *chatDevice {
	t.Helper()
	d := &chatDevice{Client: connectAs(t, s, conn, user, device), user: user, device: device}
	if r := d.Subscribe(t, protocol.Downlink("demo", user), protocol.DeviceTopic("demo", user, device)); r[0] != 1 || r[1] != 1 {
		t.Fatalf("%s/%s subscribe: %v", user, device, r)
	}
	return d
}

// request publishes a request with MQTT 5 request/response and returns the
// reply's result, failing on an error reply.
func (d *chatDevice) request(t *testing.T, req map[string]any) map[string]any {
	t.Helper()
	b, _ := json.Marshal(req)
	corr := []byte(strconv.FormatInt(d.corr.Add(1), 10))
	ctx, cancel := context.WithTimeout(context.Background(), mqtttest.Timeout)
	defer cancel()
	resp, err := d.Client.Client.Publish(ctx, &paho.Publish{
		Topic: protocol.Uplink("demo", d.user, d.device), QoS: 1, Payload: b,
		Properties: &paho.PublishProperties{ResponseTopic: protocol.DeviceTopic("demo", d.user, d.device), CorrelationData: corr},
	})
	if err != nil || resp.ReasonCode >= 0x80 {
		t.Fatalf("request %v: %v %+v", req, err, resp)
	}
	for {
		m := d.Expect(t)
		if m.Properties == nil || string(m.Properties.CorrelationData) != string(corr) {
			d.held = append(d.held, m)
			continue
		}
		var rep struct {
			Kind   string
			Result map[string]any
			Error  *protocol.Error
		}
		if err := json.Unmarshal(m.Payload, &rep); err != nil || rep.Kind != "reply" {
			t.Fatalf("reply to %v: %s", req, m.Payload)
		}
		return rep.Result
	}
}

// expectMsg waits for the message of conv at seq on the device, skipping
// other traffic (receipts, replies, earlier messages).
func (d *chatDevice) expectMsg(t *testing.T, conv string, seq uint64) protocol.Message {
	t.Helper()
	for {
		p := d.next(t)
		var m protocol.Message
		if json.Unmarshal(p.Payload, &m) == nil && m.Kind == "msg" && m.Conv == conv && m.Seq == seq {
			return m
		}
	}
}

func TestChatThroughTheWholeServer(t *testing.T) {
	s := startServer(t, nil)
	tcp := func() net.Conn { return mqtttest.DialTCP(t, s.Addrs().MQTT) }
	ws := func() net.Conn {
		c, _, err := mqtttest.DialWS(t, wsURL(s.Addrs().HTTP), "")
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	alice := chatConnect(t, s, tcp(), "alice", "phone")
	aliceWeb := chatConnect(t, s, ws(), "alice", "web")
	bob := chatConnect(t, s, ws(), "bob", "laptop")
	carol := chatConnect(t, s, tcp(), "carol", "phone")

	// 1:1: every device of both users gets it, the sender's other device too.
	ack := alice.request(t, map[string]any{"to": "bob", "cmid": "m1", "type": "text", "body": map[string]string{"text": "hi"}})
	conv := protocol.DirectConvID("alice", "bob")
	if ack["conv"] != conv || ack["seq"] != 1.0 {
		t.Fatalf("ack %v", ack)
	}
	for _, d := range []*chatDevice{alice, aliceWeb, bob} {
		if m := d.expectMsg(t, conv, 1); m.From.User != "alice" || m.From.Device != "phone" || m.CMID != "m1" {
			t.Fatalf("%s got %+v", d.device, m)
		}
	}
	// A retried cmid is answered with the original and not delivered again:
	// the next message bob sees is seq 2.
	again := alice.request(t, map[string]any{"to": "bob", "cmid": "m1", "type": "text", "body": map[string]string{"text": "hi"}})
	if again["seq"] != 1.0 || again["duplicate"] != true {
		t.Fatalf("retry ack %v", again)
	}
	alice.request(t, map[string]any{"to": "bob", "cmid": "m2", "type": "text", "body": map[string]string{"text": "still there?"}})
	if m := bob.expectMsg(t, conv, 2); m.CMID != "m2" {
		t.Fatalf("after the retry bob got %+v", m)
	}

	// Group: created over request/response, fan-out to every member device.
	info := alice.request(t, map[string]any{"op": "create", "kind": "group", "conv": "team", "name": "Team", "members": []string{"bob", "carol"}})
	if c, _ := info["conv"].(map[string]any); c["members"] != 3.0 {
		t.Fatalf("create %v", info)
	}
	bob.request(t, map[string]any{"conv": "team", "cmid": "g1", "type": "text", "body": "hello team"})
	for _, d := range []*chatDevice{alice, aliceWeb, bob, carol} {
		d.expectMsg(t, "team", 2)
	}

	// carol's tablet was offline for all of it; it syncs in order.
	for i := 3; i <= 7; i++ {
		carol.request(t, map[string]any{"conv": "team", "cmid": fmt.Sprint("c", i), "type": "text", "body": i})
	}
	tablet := chatConnect(t, s, ws(), "carol", "tablet")
	var seqs []uint64
	var cursors any
	for page := 0; page < 10; page++ {
		req := map[string]any{"op": "sync", "limit": 2}
		if cursors != nil {
			req["cursors"] = cursors
		}
		r := tablet.request(t, req)
		for _, raw := range r["messages"].([]any) {
			m := raw.(map[string]any)
			if m["conv"] == "team" {
				seqs = append(seqs, uint64(m["seq"].(float64)))
			}
		}
		cursors = r["cursors"]
		if r["more"] != true {
			break
		}
	}
	if fmt.Sprint(seqs) != "[1 2 3 4 5 6 7]" {
		t.Fatalf("tablet synced %v", seqs)
	}

	// Read receipts reach the author's devices.
	bob.request(t, map[string]any{"op": "read", "conv": "team", "seq": 7})
	for _, d := range []*chatDevice{carol, tablet} {
		for {
			var r protocol.Receipt
			if json.Unmarshal(d.next(t).Payload, &r) == nil && r.Kind == "receipt" && r.Type == "read" && r.User == "bob" && r.Seq == 7 {
				break
			}
		}
	}

	// The ACL still holds around chat: bob cannot publish on alice's uplink
	// nor read her downlink.
	if code, _ := bob.Publish(t, protocol.Uplink("demo", "alice", "phone"), 1, []byte(`{"to":"carol","cmid":"x","type":"text","body":1}`)); code != 0x87 {
		t.Fatalf("publish on another user's uplink: 0x%x", code)
	}
	if r := bob.Subscribe(t, protocol.Downlink("demo", "alice")); r[0] != 0x87 {
		t.Fatalf("subscribe to another user's downlink: 0x%x", r[0])
	}
}
