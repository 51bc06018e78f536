package broker

import (
	"testing"

	"github.com/eclipse/paho.golang/paho"

	"github.com/warblerim/warbler/internal/mqtttest"
)

// TestAnonymousListener checks the configured anonymous listener end to
// end: clients without credentials share the sandbox app's IoT area as its
// rules allow, and nothing else; the main listener still demands a token.
func TestAnonymousListener(t *testing.T) {
	s := startServer(t, func(c *Config) { c.MQTT.Anonymous.Addr = "127.0.0.1:0" })
	if s.Addrs().Anonymous == "" {
		t.Fatal("anonymous listener not started")
	}
	sensor := mqtttest.MustConnect(t, mqtttest.DialTCP(t, s.Addrs().Anonymous), "sensor1", "", "")
	reader := mqtttest.MustConnect(t, mqtttest.DialTCP(t, s.Addrs().Anonymous), "reader1", "", "")
	if r := reader.Subscribe(t, "w/sandbox/iot/public/#"); r[0] != 1 {
		t.Fatalf("subscribe to the public area: 0x%x", r[0])
	}
	for _, f := range []string{"#", "w/demo/iot/alice/#", "w/sandbox/iot/sensor1/#", "w/demo/u/alice", "$SYS/#"} {
		if r := reader.Subscribe(t, f); r[0] != 0x87 {
			t.Errorf("anonymous subscribe %s: 0x%x, want 0x87", f, r[0])
		}
	}
	if code, err := sensor.Publish(t, "w/demo/iot/alice/x", 1, []byte("no")); err == nil && code != 0x87 {
		t.Errorf("anonymous publish into the demo app: 0x%x, want 0x87", code)
	}
	if code, err := sensor.Publish(t, "w/sandbox/iot/public/temp", 1, []byte("21.5")); err != nil || code != 0 {
		t.Fatalf("publish to the public area: 0x%x %v", code, err)
	}
	if m := reader.Expect(t); string(m.Payload) != "21.5" || m.Topic != "w/sandbox/iot/public/temp" {
		t.Fatalf("got %s %q", m.Topic, m.Payload)
	}

	// The main listener is not anonymous.
	before := metricValue(t, s, `warbler_auth_refusals_total{reason="no_credentials"}`)
	_, ack, err := mqtttest.Connect(t, mqtttest.DialTCP(t, s.Addrs().MQTT), &paho.Connect{ClientID: "sensor2", CleanStart: true})
	if err == nil || ack == nil || ack.ReasonCode != 0x87 {
		t.Fatalf("connect without credentials on the main listener: %v %+v", err, ack)
	}
	if after := metricValue(t, s, `warbler_auth_refusals_total{reason="no_credentials"}`); after != before+1 {
		t.Fatalf("refusal not counted: %v -> %v", before, after)
	}
}
