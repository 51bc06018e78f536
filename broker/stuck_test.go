package broker

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/warblerim/warbler/internal/mqtttest"
)

// A client that subscribes and then never reads (with keep-alive 0, so no
// read deadline ever fires) must not hold a graceful stop beyond its
// deadline: the broker's write loop for it is stuck in a socket write while
// holding the client lock.
func TestShutdownIsBoundedByAClientThatStopsReading(t *testing.T) {
	cfg := loopbackConfig(t)
	s, err := New(cfg, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Shutdown(context.Background()) })
	for _, v := range []byte{4, 5} { // MQTT 3.1.1 and 5, both with keep-alive 0
		c := mqtttest.DialTCP(t, s.Addrs().MQTT)
		cid, user, pass := creds(t, s, "stuck", "d"+string('0'+v))
		str := func(b []byte, v string) []byte { return append(append(b, byte(len(v)>>8), byte(len(v))), v...) }
		body := []byte{0, 4, 'M', 'Q', 'T', 'T', v, 0xC2, 0, 0}
		if v == 5 {
			body = append(body, 0) // no properties
		}
		body = str(str(str(body, cid), user), pass)
		mustWrite(t, c, append(append([]byte{0x10}, varint(len(body))...), body...))
		_ = c.SetReadDeadline(time.Now().Add(mqtttest.Timeout))
		ack := make([]byte, 2)
		if _, err := io.ReadFull(c, ack); err != nil || ack[0] != 0x20 {
			t.Fatalf("no CONNACK: % x %v", ack, err)
		}
		if _, err := io.ReadFull(c, make([]byte, ack[1])); err != nil {
			t.Fatal(err)
		}
		sub := []byte{0, 1}
		if v == 5 {
			sub = append(sub, 0)
		}
		sub = append(str(sub, iot("stuck", "flood")), 0)
		mustWrite(t, c, append(append([]byte{0x82}, varint(len(sub))...), sub...))
		if _, err := io.ReadFull(c, make([]byte, 2)); err != nil { // SUBACK header; the rest is left unread
			t.Fatal(err)
		}
	}
	waitSubscribed(t, s, iot("stuck", "flood"))
	// Publish far more than the sockets buffer, and never read.
	payload := make([]byte, 200<<10)
	for range 300 {
		_ = s.MQTT().Publish(iot("stuck", "flood"), payload, false, 0)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- s.Shutdown(ctx) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
		t.Logf("stopped in %v", time.Since(start))
	case <-time.After(20 * time.Second):
		t.Fatal("Shutdown still blocked 20s after it was asked to stop within 3s")
	}
}

// MQTT 5 clients asking for no keep-alive, or a longer one than allowed,
// are given mqtt.max_keepalive in the CONNACK.
func TestKeepaliveIsCapped(t *testing.T) {
	s := startServer(t, func(c *Config) { c.MQTT.MaxKeepalive = Duration(90 * time.Second) })
	cid, user, pass := creds(t, s, "ka", "d1")
	_, ack, err := mqtttest.Connect(t, mqtttest.DialTCP(t, s.Addrs().MQTT), &paho.Connect{ClientID: cid, KeepAlive: 65535,
		Username: user, UsernameFlag: true, Password: []byte(pass), PasswordFlag: true, CleanStart: true})
	if err != nil {
		t.Fatal(err)
	}
	if ack.Properties == nil || ack.Properties.ServerKeepAlive == nil || *ack.Properties.ServerKeepAlive != 90 {
		t.Fatalf("CONNACK properties %+v: want Server Keep Alive 90", ack.Properties)
	}
}

// varint encodes an MQTT remaining length.
func varint(n int) (b []byte) {
	for {
		d := byte(n % 128)
		if n /= 128; n > 0 {
			b = append(b, d|0x80)
			continue
		}
		return append(b, d)
	}
}
