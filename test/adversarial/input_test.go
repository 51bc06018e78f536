package adversarial

import (
	"bytes"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/warblerim/warbler/broker"
	"github.com/warblerim/warbler/internal/mqtttest"
)

// Cases 1 and 3: a first packet that is not CONNECT, a 268 MB length claim,
// a five-byte remaining length. The guard closes the socket before the
// broker allocates or decodes anything; the heap stays flat.
func TestCase01And03BadFraming(t *testing.T) {
	s := start(t, nil)
	ctl := newControl(t, s)
	for i, tc := range []struct {
		name    string
		connect bool
		send    []byte
	}{
		{"PINGREQ first", false, []byte{0xC0, 0x00}},
		{"PUBLISH first", false, publishPacket("w/demo/iot/x/y", 0, 0, nil, []byte("x"))},
		{"268 MB CONNECT length claim", false, []byte{0x10, 0xFF, 0xFF, 0xFF, 0x7F}},
		{"268 MB PUBLISH length claim after CONNECT", true, []byte{0x30, 0xFF, 0xFF, 0xFF, 0x7F}},
		{"five-byte remaining length", true, []byte{0x30, 0x80, 0x80, 0x80, 0x80, 0x01}},
		{"CONNACK sent by a client", true, []byte{0x20, 0x02, 0x00, 0x00}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := metric(t, s, "warbler_malformed_packets_total")
			var c *rawConn
			if tc.connect {
				c = rawSession(t, s, controlIP, 5, "bad", fmt.Sprintf("d%d", i))
			} else {
				c = newRaw(t, mqtttest.DialTCP(t, s.Addrs().MQTT))
			}
			c.send(tc.send)
			c.closedAfter(5 * time.Second)
			if after := metric(t, s, "warbler_malformed_packets_total"); after != before+1 {
				t.Errorf("malformed counter %v -> %v, want +1", before, after)
			}
			ctl.check(t)
		})
	}
	t.Run("heap bounded by max_packet_size", func(t *testing.T) {
		heap := func() uint64 {
			runtime.GC()
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			return m.HeapAlloc
		}
		before := heap()
		const n = 64
		conns := make([]*rawConn, n)
		for i := range conns {
			conns[i] = newRaw(t, mqtttest.DialTCP(t, s.Addrs().MQTT))
			conns[i].send([]byte{0x10, 0xFF, 0xFF, 0xFF, 0x7F})
		}
		for _, c := range conns {
			c.closedAfter(5 * time.Second)
		}
		growth := int64(heap()) - int64(before)
		t.Logf("64 claims of 256 MiB each: heap growth %d KiB", growth>>10)
		if growth > 8<<20 { // 16 GiB if any claim had been allocated
			t.Fatalf("heap grew by %d KiB", growth>>10)
		}
		ctl.check(t)
	})
}

// Case 4: a truncated v5 SUBSCRIBE (the input that panics the broker's
// decoder), a QoS 1 PUBLISH without a packet ID, a remaining length larger
// than the data. The connection is closed (the guard refuses the packet
// before the decoder runs, so no DISCONNECT 0x81 is sent), and the process
// and every other client carry on.
func TestCase04MalformedPackets(t *testing.T) {
	s := start(t, func(c *broker.Config) { c.MQTT.ConnectTimeout = broker.Duration(time.Second) })
	ctl := newControl(t, s)
	malformed, protocolErr := int(packets.ErrMalformedPacket.Code), int(packets.ErrProtocolViolation.Code)
	for i, tc := range []struct {
		name string
		send []byte
		code int // the DISCONNECT reason: 0x81 from the guard, 0x82 from the broker's checks
	}{
		{"truncated v5 SUBSCRIBE", []byte{0x82, 0x08, 0x00, 0x01, 0x00, 0x00, 0x03, 'a', '/', 'b'}, malformed},
		{"QoS 1 PUBLISH with packet ID 0", publishPacket(iot("bad", "x"), 1, 0, nil, []byte("x")), protocolErr},
		{"SUBSCRIBE topic length beyond the packet", []byte{0x82, 0x06, 0x00, 0x01, 0x00, 0xFF, 0xFF, 'a'}, malformed},
		{"UNSUBSCRIBE with no filter", []byte{0xA2, 0x03, 0x00, 0x01, 0x00}, protocolErr},
		{"SUBSCRIBE with reserved flags wrong", []byte{0x80, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, 'a', 0x01}, malformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := rawSession(t, s, controlIP, 5, "bad", fmt.Sprintf("m%d", i))
			c.send(tc.send)
			// An MQTT 5 client is told why before the socket closes.
			if code := c.closedAfter(5 * time.Second); code != tc.code {
				t.Fatalf("DISCONNECT reason 0x%x, want 0x%x", code, tc.code)
			}
			ctl.check(t)
		})
	}
	t.Run("remaining length larger than the data, then silence", func(t *testing.T) {
		c := rawSession(t, s, controlIP, 5, "bad", "short")
		c.send([]byte{0x30, 0x7F, 0x00, 0x03, 'a', '/', 'b'}) // claims 127 bytes, sends 5
		// Held until the keep-alive (60 s × 1.5) would end it; here we
		// only need the server to go on serving others meanwhile.
		ctl.check(t)
		_ = c.Close()
	})
	if n := metric(t, s, "warbler_connection_panics_total"); n != 0 {
		t.Fatalf("%v connection handlers panicked (contained, but the guard should refuse first)", n)
	}
}

// Case 5: PUBLISH to a topic with a wildcard, to an empty topic without an
// alias, to $SYS, or with NUL or invalid UTF-8. The broker would drop these
// without an ack; the limits hook ends the connection with DISCONNECT 0x90
// "topic name invalid" instead, and nothing is delivered.
func TestCase05BadPublishTopics(t *testing.T) {
	s := start(t, nil)
	ctl := newControl(t, s)
	spy := connect(t, s, "ctl", "spy")
	if r := spy.Subscribe(t, iot("ctl", "#")); r[0] != 1 {
		t.Fatal(r)
	}
	for i, tc := range []struct {
		name  string
		topic string
		want  int // DISCONNECT reason code, -1 for a plain close
	}{
		{"plus", iot("ctl", "+/x"), 0x90},
		{"hash", iot("ctl", "#"), 0x90},
		{"empty without alias", "", 0x90},
		{"$SYS", "$SYS/broker/fake", 0x90},
		{"NUL", iot("ctl", "a\x00b"), -1},             // the decoder refuses it first
		{"invalid UTF-8", iot("ctl", "\xff\xfe"), -1}, // likewise
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := rawSession(t, s, controlIP, 5, "bad", fmt.Sprintf("t%d", i))
			c.send(publishPacket(tc.topic, 1, 1, nil, []byte("x")))
			if code := c.closedAfter(5 * time.Second); code != tc.want {
				t.Fatalf("DISCONNECT reason %d, want %d", code, tc.want)
			}
			ctl.check(t)
			// The spy saw the control message only.
			if m := spy.Expect(t); !bytes.HasPrefix(m.Payload, []byte("control-")) {
				t.Fatalf("delivered %q on %s", m.Payload, m.Topic)
			}
		})
	}
}

// Case 6: malformed shared subscriptions are refused at SUBSCRIBE.
func TestCase06BadSharedSubscriptions(t *testing.T) {
	s := start(t, nil)
	ctl := newControl(t, s)
	c := connect(t, s, "shr", "d1")
	// The broker's filter check refuses most (0x8F); "$share//t" passes it
	// and is refused by the ACL's shared-filter check (0x87).
	for _, tc := range []struct {
		filter string
		want   byte
	}{
		{"$share/g", 0x8F},
		{"$share//" + iot("shr", "t"), 0x87},
		{"$share/g+/" + iot("shr", "t"), 0x8F},
		{"$share/#/" + iot("shr", "t"), 0x8F},
	} {
		if r := c.Subscribe(t, tc.filter); r[0] != tc.want {
			t.Errorf("SUBSCRIBE %q: 0x%x, want 0x%x", tc.filter, r[0], tc.want)
		}
	}
	if r := c.Subscribe(t, "$share/g/"+iot("shr", "t")); r[0] != 1 {
		t.Errorf("a well-formed shared subscription: 0x%x", r[0])
	}
	ctl.check(t)
}

// Case 7: more than mqtt.max_topic_levels (32) levels, or 64 KiB of
// slashes: SUBACK 0x8F for a filter, DISCONNECT 0x90 for a topic, quickly.
func TestCase07DeepAndLongTopics(t *testing.T) {
	s := start(t, nil)
	ctl := newControl(t, s)
	c := connect(t, s, "deep", "d1")
	deep := iot("deep", strings.Repeat("a/", 30)+"z") // 34 levels
	if r := c.Subscribe(t, deep); r[0] != 0x8F {
		t.Errorf("SUBSCRIBE of 34 levels: 0x%x, want 0x8F", r[0])
	}
	if r := c.Subscribe(t, iot("deep", strings.Repeat("a/", 27)+"z")); r[0] != 1 {
		t.Errorf("SUBSCRIBE of 32 levels: 0x%x, want 1", r[0])
	}
	slashes := strings.Repeat("/", 65535)
	began := time.Now()
	if r := c.Subscribe(t, slashes); r[0] != 0x8F {
		t.Errorf("SUBSCRIBE of 64 KiB of slashes: 0x%x, want 0x8F", r[0])
	}
	if d := time.Since(began); d > time.Second {
		t.Errorf("refusing 64 KiB of slashes took %v", d)
	}
	for i, topic := range []string{deep, slashes, iot("deep", strings.Repeat("x", 2000))} {
		r := rawSession(t, s, controlIP, 5, "deep", fmt.Sprintf("p%d", i))
		r.send(publishPacket(topic, 1, 1, nil, []byte("x")))
		if code := r.closedAfter(5 * time.Second); code != 0x90 {
			t.Errorf("PUBLISH to topic %d: DISCONNECT %d, want 0x90", i, code)
		}
	}
	// 64 KiB of slashes is refused for its length before its depth.
	if limited(t, s, "topic_levels") != 2 || limited(t, s, "topic_length") != 3 {
		t.Errorf("counters: levels %v length %v", limited(t, s, "topic_levels"), limited(t, s, "topic_length"))
	}
	ctl.check(t)
}

// userProps encodes n user properties.
func userProps(n int) []byte {
	var b []byte
	for i := range n {
		b = append(b, 0x26)
		b = append(b, mstr(fmt.Sprint("k", i))...)
		b = append(b, mstr("v")...)
	}
	return b
}

// Case 8: 10,000 user properties (refused past limits.max_user_properties
// with DISCONNECT 0x83, in bounded time), a duplicated property, a
// property not allowed in the packet type.
func TestCase08Properties(t *testing.T) {
	s := start(t, nil)
	ctl := newControl(t, s)
	spy := connect(t, s, "props", "spy")
	spy.Subscribe(t, iot("props", "#"))

	t.Run("10k user properties", func(t *testing.T) {
		c := rawSession(t, s, controlIP, 5, "props", "many")
		began := time.Now()
		c.send(publishPacket(iot("props", "x"), 1, 1, userProps(10000), []byte("x")))
		if code := c.closedAfter(5 * time.Second); code != 0x83 {
			t.Fatalf("DISCONNECT %d, want 0x83", code)
		}
		if d := time.Since(began); d > 2*time.Second {
			t.Fatalf("took %v", d)
		}
		if limited(t, s, "user_properties") != 1 {
			t.Fatal("not counted")
		}
		ctl.check(t)
		select {
		case m := <-spy.Msgs:
			t.Fatalf("delivered %q", m.Payload)
		default:
		}
	})
	t.Run("64 user properties pass", func(t *testing.T) {
		c := connect(t, s, "props", "some")
		ctx := t.Context()
		up := make(paho.UserProperties, 64)
		for i := range up {
			up[i] = paho.UserProperty{Key: fmt.Sprint("k", i), Value: "v"}
		}
		if _, err := c.Client.Publish(ctx, &paho.Publish{Topic: iot("props", "p"), QoS: 1, Payload: []byte("p"),
			Properties: &paho.PublishProperties{User: up}}); err != nil {
			t.Fatal(err)
		}
		if m := spy.Expect(t); len(m.Properties.User) != 64 {
			t.Fatalf("delivered with %d user properties", len(m.Properties.User))
		}
	})
	t.Run("duplicate properties", func(t *testing.T) {
		// MQTT 5 §2.2.2.2: a property other than User Property given twice
		// is a protocol error. The guard reads each PUBLISH's properties
		// (the broker's decoder would keep the last value).
		for i, props := range [][]byte{
			{0x01, 0x00, 0x01, 0x01},                              // payload format indicator
			{0x02, 0, 0, 0, 9, 0x03, 0, 1, 'a', 0x02, 0, 0, 0, 9}, // message expiry around a content type
			{0x09, 0, 1, 'c', 0x09, 0, 1, 'c'},                    // correlation data
		} {
			c := rawSession(t, s, controlIP, 5, "props", fmt.Sprint("dup", i))
			c.send(publishPacket(iot("props", "dup"), 1, 1, props, []byte("dup")))
			if code := c.closedAfter(5 * time.Second); code != int(packets.ErrProtocolViolation.Code) {
				t.Fatalf("properties % x: DISCONNECT 0x%x, want 0x82", props, code)
			}
		}
		// Repeated user properties are fine.
		c := rawSession(t, s, controlIP, 5, "props", "dupuser")
		up := []byte{0x26, 0, 1, 'k', 0, 1, 'v', 0x26, 0, 1, 'k', 0, 1, 'w', 0x01, 0x01}
		c.send(publishPacket(iot("props", "dup"), 1, 1, up, []byte("ok")))
		if ack := c.expect(4); len(ack) > 2 && ack[2] >= 0x80 {
			t.Fatalf("repeated user properties refused: 0x%x", ack[2])
		}
		if m := spy.Expect(t); string(m.Payload) != "ok" || len(m.Properties.User) != 2 {
			t.Fatalf("delivered %q with %d user properties", m.Payload, len(m.Properties.User))
		}
		ctl.check(t)
	})
	t.Run("property not allowed in PUBLISH", func(t *testing.T) {
		c := rawSession(t, s, controlIP, 5, "props", "wrong")
		// Session Expiry Interval (0x11) belongs to CONNECT and DISCONNECT.
		c.send(publishPacket(iot("props", "x"), 1, 1, []byte{0x11, 0, 0, 0, 10}, []byte("x")))
		// The broker's decoder refuses it; the connection is closed
		// without a DISCONNECT.
		if code := c.closedAfter(5 * time.Second); code != -1 {
			t.Fatalf("DISCONNECT 0x%x", code)
		}
		ctl.check(t)
		select {
		case m := <-spy.Msgs:
			t.Fatalf("delivered %q", m.Payload)
		default:
		}
	})
}
