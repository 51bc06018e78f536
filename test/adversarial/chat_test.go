package adversarial

import (
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/warblerim/warbler/broker"
)

// Case 23: a subscriber that never reads. Every message sent to it is
// still acknowledged only once stored; its live copies overflow its
// bounded queue and are counted, not silently lost; nobody else slows
// down; and its user's next device finds every message in the log.
func TestCase23SubscriberNeverReads(t *testing.T) {
	s := start(t, func(c *broker.Config) {
		c.Chat.SendRate = -1         // the sender is a test, not a person
		c.MQTT.MaxWritesPending = 16 // fill the stalled device's queue quickly
	})
	ctl := newControl(t, s)

	// Bob's stalled device: subscribes to his downlink, then never reads,
	// with a small receive buffer so the server's writes back up.
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var err error
		_ = c.Control(func(fd uintptr) { err = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		return err
	}}
	conn, err := d.Dial("tcp", s.Addrs().MQTT)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	stalled := newRaw(t, conn)
	cid, u, p := creds(t, s, "demo", "bob", "stalled")
	stalled.send(connectPacket(5, cid, u, p, true, nil))
	stalled.expect(2)
	stalled.send(subscribePacket(1, "w/demo/u/bob"))
	stalled.expect(9)

	alice := connect(t, s, "alice", "phone")
	creds(t, s, "demo", "bob", "fresh")
	droppedBefore := metric(t, s, "warbler_messages_dropped_total")
	const n = 300
	body := strings.Repeat("x", 32<<10)
	for i := range n {
		env := fmt.Sprintf(`{"to":"bob","cmid":"m%d","type":"text","body":{"i":%d,"pad":%q}}`, i, i, body)
		if code, err := alice.Publish(t, "w/demo/up/alice/phone", 1, []byte(env)); err != nil || code != 0 {
			t.Fatalf("send %d: 0x%x %v", i, code, err)
		}
		if i%50 == 0 {
			ctl.check(t) // the others are served while bob's device is stuck
		}
	}
	waitFor(t, "live copies to overflow the stalled queue and be counted", 10*time.Second, func() bool {
		return metric(t, s, "warbler_messages_dropped_total") > droppedBefore
	})
	ctl.check(t)

	// Bob's other device syncs from the log and gets all of them, in order.
	fresh := connect(t, s, "bob", "fresh")
	fresh.Subscribe(t, "w/demo/d/bob/fresh")
	var got []int
	cursors := json.RawMessage("null")
	for page := 0; ; page++ {
		req := fmt.Sprintf(`{"op":"sync","limit":100,"rid":"s%d","cursors":%s}`, page, cursors)
		if code, err := fresh.Publish(t, "w/demo/up/bob/fresh", 1, []byte(req)); err != nil || code != 0 {
			t.Fatalf("sync: 0x%x %v", code, err)
		}
		var reply struct {
			RID    string `json:"rid"`
			Result struct {
				Messages []struct {
					Body struct{ I int } `json:"body"`
					Type string          `json:"type"`
				} `json:"messages"`
				Cursors json.RawMessage `json:"cursors"`
				More    bool            `json:"more"`
			} `json:"result"`
		}
		for reply.RID != fmt.Sprintf("s%d", page) {
			m := fresh.Expect(t)
			reply.RID = ""
			_ = json.Unmarshal(m.Payload, &reply)
		}
		for _, m := range reply.Result.Messages {
			if m.Type == "text" {
				got = append(got, m.Body.I)
			}
		}
		if !reply.Result.More {
			break
		}
		cursors = reply.Result.Cursors
	}
	if len(got) != n {
		t.Fatalf("sync returned %d messages, want %d", len(got), n)
	}
	for i, v := range got {
		if v != i {
			t.Fatalf("message %d is %d", i, v)
		}
	}
}

// Case 23 for plain MQTT: a QoS 1 subscriber that stops reading. The
// broker numbers each QoS 1 delivery under the subscriber's lock, which its
// stuck socket write holds, so the publisher waits, but only until the
// write times out (mqtt.write_timeout) and the stalled subscriber is
// disconnected; every message is still acknowledged and reaches the other
// subscriber, in order, and well-behaved clients elsewhere are served
// throughout.
func TestCase23PlainSubscriberNeverReads(t *testing.T) {
	const writeTimeout = time.Second
	s := start(t, func(c *broker.Config) {
		c.MQTT.WriteTimeout = broker.Duration(writeTimeout)
		c.MQTT.MaxWritesPending = 16
	})
	ctl := newControl(t, s)
	topic := iot("bob", "feed")

	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var err error
		_ = c.Control(func(fd uintptr) { err = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		return err
	}}
	conn, err := d.Dial("tcp", s.Addrs().MQTT)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	stalled := newRaw(t, conn)
	cid, u, p := creds(t, s, "demo", "bob", "stalled")
	stalled.send(connectPacket(5, cid, u, p, true, nil))
	stalled.expect(2)
	stalled.send(subscribePacket(1, topic))
	stalled.expect(9)

	healthy := connect(t, s, "bob", "healthy")
	healthy.Subscribe(t, topic)
	sensor := connect(t, s, "bob", "sensor")
	before := metric(t, s, "warbler_slow_consumer_disconnects_total")

	const n = 200
	payload := strings.Repeat("x", 32<<10)
	var slowest time.Duration
	got := make(chan int, n)
	go func() {
		for range n {
			m := <-healthy.Msgs
			var i int
			fmt.Sscanf(string(m.Payload), "%d:", &i)
			got <- i
		}
	}()
	for i := range n {
		began := time.Now()
		if code, err := sensor.Publish(t, topic, 1, []byte(fmt.Sprintf("%d:%s", i, payload))); err != nil || code != 0 {
			t.Fatalf("publish %d: 0x%x %v", i, code, err)
		}
		slowest = max(slowest, time.Since(began))
		if i%50 == 0 {
			ctl.check(t)
		}
	}
	for i := range n {
		select {
		case v := <-got:
			if v != i {
				t.Fatalf("healthy subscriber got message %d as number %d", v, i)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("healthy subscriber got only %d of %d", i, n)
		}
	}
	waitFor(t, "the stalled subscriber to be disconnected", 10*time.Second, func() bool {
		return metric(t, s, "warbler_slow_consumer_disconnects_total") > before
	})
	ctl.check(t)
	t.Logf("slowest publish while a subscriber was stalled: %v (write_timeout %v)", slowest, writeTimeout)
	// Held up at most once, for about the write timeout (generous margin
	// for a busy machine; without the timeout it is until the stalled
	// client's keep-alive runs out, tens of seconds).
	if slowest > writeTimeout+5*time.Second {
		t.Fatalf("a publish waited %v", slowest)
	}
}
