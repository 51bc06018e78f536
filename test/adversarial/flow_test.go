package adversarial

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/warblerim/warbler/broker"
	"github.com/warblerim/warbler/storage"
)

// Case 14: a QoS 2 packet ID reused before PUBREL gets PUBREC 0x91; more
// QoS 1/2 publishes in flight than the server's Receive Maximum end the
// connection with DISCONNECT 0x93; memory stays flat.
func TestCase14InflightAbuse(t *testing.T) {
	s := start(t, func(c *broker.Config) { c.MQTT.ReceiveMaximum = 64 })
	ctl := newControl(t, s)

	c := rawSession(t, s, controlIP, 5, "qos2", "reuse")
	c.send(publishPacket(iot("qos2", "x"), 2, 7, nil, []byte("one")))
	if rec := c.expect(5); binary.BigEndian.Uint16(rec) != 7 || (len(rec) > 2 && rec[2] >= 0x80) {
		t.Fatalf("first PUBREC % x", rec)
	}
	c.send(publishPacket(iot("qos2", "x"), 2, 7, nil, []byte("two")))
	if rec := c.expect(5); len(rec) < 3 || rec[2] != 0x91 {
		t.Fatalf("PUBREC for a reused ID: % x, want reason 0x91", rec)
	}

	heap := func() uint64 { runtime.GC(); var m runtime.MemStats; runtime.ReadMemStats(&m); return m.HeapAlloc }
	before := heap()
	c = rawSession(t, s, controlIP, 5, "qos2", "flood")
	var batch []byte
	for id := 1; id <= 65; id++ { // never PUBREL
		batch = append(batch, publishPacket(iot("qos2", "y"), 2, uint16(id), nil, bytes.Repeat([]byte("p"), 1000))...)
	}
	c.send(batch)
	if code := c.closedAfter(5 * time.Second); code != 0x93 {
		t.Fatalf("DISCONNECT %d, want 0x93 receive maximum exceeded", code)
	}
	if growth := int64(heap()) - int64(before); growth > 4<<20 {
		t.Fatalf("heap grew by %d KiB", growth>>10)
	}
	ctl.check(t)
}

// Case 15: a payload over a limit is never acked and then dropped. Over
// mqtt.max_packet_size the socket is closed; over the app's
// limits.apps.{app}.max_payload an MQTT 5 QoS 1 publisher gets PUBACK 0x97
// naming the limit, a QoS 0 one is dropped and counted, and an MQTT 3.1.1
// QoS 1 publisher (which cannot be told) is disconnected without a PUBACK.
func TestCase15OversizePayload(t *testing.T) {
	s := start(t, func(c *broker.Config) {
		c.MQTT.MaxPacketSize = 4096
		c.Limits.Apps = map[string]broker.AppLimitsConfig{"demo": {MaxPayload: 1000}}
	})
	ctl := newControl(t, s)
	spy := connect(t, s, "big", "spy")
	spy.Subscribe(t, iot("big", "#"))
	topic := iot("big", "x")
	big := bytes.Repeat([]byte("b"), 1001)

	c := rawSession(t, s, controlIP, 5, "big", "v5")
	c.send(publishPacket(topic, 1, 1, nil, big))
	ack := c.expect(4)
	if len(ack) < 3 || ack[2] != 0x97 || !bytes.Contains(ack, []byte("exceeds the limit of 1000")) {
		t.Fatalf("PUBACK % x, want 0x97 with a reason string", ack)
	}
	c.send(publishPacket(topic, 0, 0, nil, big))
	c.send(publishPacket(topic, 1, 2, nil, big[:1000])) // at the limit: fine
	if ack := c.expect(4); len(ack) > 2 && ack[2] != 0 {
		t.Fatalf("PUBACK for 1000 bytes: % x", ack)
	}
	if m := spy.Expect(t); len(m.Payload) != 1000 {
		t.Fatalf("spy got %d bytes first, want the 1000-byte message only", len(m.Payload))
	}
	if n := limited(t, s, "payload_size"); n != 2 {
		t.Fatalf("payload_size = %v, want 2", n)
	}

	v3 := rawSession(t, s, controlIP, 4, "big", "v3")
	v3.send(append([]byte{0x32}, append(varint(2+len(topic)+2+len(big)), append(append(mstr(topic), 0, 9), big...)...)...))
	if code := v3.closedAfter(5 * time.Second); code != -1 {
		t.Fatalf("MQTT 3 client got DISCONNECT %d", code)
	}

	over := rawSession(t, s, controlIP, 5, "big", "huge")
	over.send(publishPacket(topic, 1, 1, nil, bytes.Repeat([]byte("h"), 5000)))
	over.closedAfter(5 * time.Second)

	ctl.check(t)
	select {
	case m := <-spy.Msgs:
		t.Fatalf("an oversized message was delivered (%d bytes)", len(m.Payload))
	default:
	}
}

// Publish rate limits: past its burst an MQTT 5 client's QoS 1 publish
// gets PUBACK 0x97 "message rate too high", its QoS 0 publish is dropped
// and counted, and after limits.disconnect_after refusals in a row it is
// disconnected with DISCONNECT 0x96. The byte rate works the same way.
func TestPublishRateLimits(t *testing.T) {
	s := start(t, func(c *broker.Config) {
		c.Limits.PublishRate, c.Limits.PublishBurst = 0.001, 5
		c.Limits.PublishBytesRate, c.Limits.PublishBytesBurst = 0.001, 64<<10
		c.Limits.DisconnectAfter = 4
	})
	ctl := newControl(t, s)
	spy := connect(t, s, "rate", "spy")
	spy.Subscribe(t, iot("rate", "#"))
	topic := iot("rate", "x")

	c := rawSession(t, s, controlIP, 5, "rate", "d1")
	for id := uint16(1); id <= 5; id++ {
		c.send(publishPacket(topic, 1, id, nil, []byte(fmt.Sprint(id))))
		if ack := c.expect(4); len(ack) > 2 && ack[2] != 0 {
			t.Fatalf("publish %d within the burst: % x", id, ack)
		}
	}
	c.send(publishPacket(topic, 1, 6, nil, []byte("6")))
	if ack := c.expect(4); len(ack) < 3 || ack[2] != 0x97 || !bytes.Contains(ack, []byte("message rate too high")) {
		t.Fatalf("sixth publish: % x, want 0x97 message rate too high", ack)
	}
	c.send(publishPacket(topic, 0, 0, nil, []byte("7"))) // dropped
	c.send(publishPacket(topic, 1, 8, nil, []byte("8")))
	c.expect(4)
	c.send(publishPacket(topic, 1, 9, nil, []byte("9"))) // fourth refusal in a row
	if code := c.closedAfter(5 * time.Second); code != 0x96 {
		t.Fatalf("DISCONNECT %d, want 0x96", code)
	}
	for i := 1; i <= 5; i++ {
		if m := spy.Expect(t); string(m.Payload) != fmt.Sprint(i) {
			t.Fatalf("delivery %d: %q", i, m.Payload)
		}
	}
	if limited(t, s, "publish_rate") != 4 || limited(t, s, "rate_disconnect") != 1 {
		t.Fatalf("counters: publish_rate %v rate_disconnect %v", limited(t, s, "publish_rate"), limited(t, s, "rate_disconnect"))
	}

	b := rawSession(t, s, controlIP, 5, "rate", "bytes")
	b.send(publishPacket(topic, 1, 1, nil, bytes.Repeat([]byte("x"), 60<<10)))
	b.expect(4)
	b.send(publishPacket(topic, 1, 2, nil, bytes.Repeat([]byte("x"), 8<<10)))
	if ack := b.expect(4); len(ack) < 3 || ack[2] != 0x97 || !bytes.Contains(ack, []byte("byte rate")) {
		t.Fatalf("over the byte burst: % x", ack)
	}
	if m := spy.Expect(t); len(m.Payload) != 60<<10 {
		t.Fatalf("got %d bytes", len(m.Payload))
	}
	ctl.check(t)
}

// An app's quotas: max_connections refuses the next CONNECT of the app
// with 0x97 (a device replacing its own lingering connection excepted);
// msgs_per_sec limits the app's publishes together.
func TestAppQuotas(t *testing.T) {
	s := start(t, nil)
	ctl := newControl(t, s) // two clients of the demo app
	ctx := context.Background()
	q := storage.AppQuotas{MaxConnections: 3, MsgsPerSec: 0.001}
	if _, err := s.Identity().UpdateApp(ctx, "demo", quotaPatch(&q)); err != nil {
		t.Fatal(err)
	}
	third := connect(t, s, "quota", "d1")
	cid, u, p := creds(t, s, "demo", "quota", "d2")
	c := newRaw(t, dial(t, s))
	if code := connackCode(t, c, connectPacket(5, cid, u, p, true, nil)); code != 0x97 {
		t.Fatalf("fourth connection of the app: CONNACK 0x%x, want 0x97", code)
	}
	cid1, u1, p1 := creds(t, s, "demo", "quota", "d1")
	c = newRaw(t, dial(t, s))
	if code := connackCode(t, c, connectPacket(5, cid1, u1, p1, true, nil)); code != 0 {
		t.Fatalf("a device taking over its own connection: 0x%x, want 0", code)
	}
	third.WaitDisconnected(t)
	// msgs_per_sec 0.001: a burst of one message for the whole app.
	if code, _ := ctl.pub.Publish(t, ctl.topic, 1, []byte("one")); code != 0 {
		t.Fatalf("first: 0x%x", code)
	}
	ctl.sub.Expect(t)
	if code, _ := ctl.pub.Publish(t, ctl.topic, 1, []byte("two")); code != 0x97 {
		t.Fatalf("second message of the app: 0x%x, want 0x97", code)
	}
	if limited(t, s, "app_connections") != 1 || limited(t, s, "app_publish_rate") != 1 {
		t.Fatal("not counted")
	}
}

// Each client's subscriptions are capped: past limits.max_subscriptions a
// new filter gets SUBACK 0x97; renewing an existing one is fine.
func TestSubscriptionCap(t *testing.T) {
	s := start(t, func(c *broker.Config) { c.Limits.MaxSubscriptions = 3 })
	ctl := newControl(t, s)
	c := connect(t, s, "subs", "d1")
	if r := c.Subscribe(t, iot("subs", "a"), iot("subs", "b"), iot("subs", "c"), iot("subs", "d")); !bytes.Equal(r, []byte{1, 1, 1, 0x97}) {
		t.Fatalf("SUBACK % x, want 01 01 01 97", r)
	}
	if r := c.Subscribe(t, iot("subs", "a")); r[0] != 1 {
		t.Fatalf("renewing a subscription: 0x%x", r[0])
	}
	if limited(t, s, "subscriptions") != 1 {
		t.Fatal("not counted")
	}
	ctl.check(t)
}

// A client publishing faster than its rate is slowed to it, not refused:
// its reads pause while a publish waits (up to limits.publish_delay) for
// its tokens, so every message arrives, in order, at the client's rate.
func TestPublishSlowedToRate(t *testing.T) {
	s := start(t, func(c *broker.Config) {
		c.Limits.PublishRate, c.Limits.PublishBurst = 100, 10
		c.Limits.PublishDelay = broker.Duration(time.Second)
	})
	ctl := newControl(t, s)
	spy := connect(t, s, "slow", "spy")
	spy.Subscribe(t, iot("slow", "#"))
	c := rawSession(t, s, controlIP, 5, "slow", "d1")
	var burst []byte
	for i := range 60 {
		burst = append(burst, publishPacket(iot("slow", "x"), 0, 0, nil, []byte(fmt.Sprint(i)))...)
	}
	began := time.Now()
	c.send(append(burst, publishPacket(iot("slow", "x"), 1, 1, nil, []byte("marker"))...))
	ctl.check(t) // others are served meanwhile
	if ack := c.expect(4); len(ack) > 2 && ack[2] != 0 {
		t.Fatalf("marker PUBACK % x", ack)
	}
	if took := time.Since(began); took < 450*time.Millisecond {
		t.Fatalf("61 messages at 100/s with a burst of 10 took %v, want about 0.5s", took)
	}
	for i := range 60 {
		if m := spy.Expect(t); string(m.Payload) != fmt.Sprint(i) {
			t.Fatalf("message %d: %q", i, m.Payload)
		}
	}
	if m := spy.Expect(t); string(m.Payload) != "marker" {
		t.Fatalf("got %q", m.Payload)
	}
	if n := limited(t, s, "publish_delayed"); n < 30 { // 61 sent, 10 in the burst, a few refilled meanwhile
		t.Fatalf("publish_delayed = %v", n)
	}
	if n := limited(t, s, "publish_rate"); n != 0 {
		t.Fatalf("publish_rate refusals = %v, want 0", n)
	}
}
