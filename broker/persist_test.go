package broker

import (
	"context"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"

	"github.com/warblerim/warbler/internal/mqtttest"
)

func TestRetainedAndPersistentSessionsSurviveRestart(t *testing.T) {
	cfg := loopbackConfig(t)
	start := func() *Server {
		s, err := New(cfg, Options{Logger: testLogger(t), Hooks: []mqtt.Hook{new(auth.AllowHook)}})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Shutdown(context.Background()) })
		return s
	}
	persistentConnect := func(s *Server, id string) (*mqtttest.Client, *paho.Connack) {
		c, ack, err := mqtttest.Connect(t, mqtttest.DialTCP(t, s.Addrs().MQTT), &paho.Connect{
			ClientID: id, CleanStart: false,
			Properties: &paho.ConnectProperties{SessionExpiryInterval: func() *uint32 { v := uint32(3600); return &v }()},
		})
		if err != nil {
			t.Fatal(err)
		}
		return c, ack
	}

	s := start()
	dev, _ := persistentConnect(s, "device-1")
	if r := dev.Subscribe(t, "p/1"); r[0] != 1 {
		t.Fatalf("suback %v", r)
	}
	clean := mqtttest.MustConnect(t, mqtttest.DialTCP(t, s.Addrs().MQTT), "clean-1", "", "")
	clean.Subscribe(t, "c/1")
	pub := mqtttest.MustConnect(t, mqtttest.DialTCP(t, s.Addrs().MQTT), "pub-1", "", "")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := pub.Client.Publish(ctx, &paho.Publish{Topic: "r/1", QoS: 1, Retain: true, Payload: []byte("kept")}); err != nil {
		t.Fatal(err)
	}
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}

	s = start()
	// The retained message is back.
	late := mqtttest.MustConnect(t, mqtttest.DialTCP(t, s.Addrs().MQTT), "late", "", "")
	late.Subscribe(t, "r/1")
	if m := late.Expect(t); string(m.Payload) != "kept" || !m.Retain {
		t.Fatalf("retained after restart: %q retain=%v", m.Payload, m.Retain)
	}
	// The persistent session is back with its subscription; the clean one is not.
	if n := len(s.MQTT().Topics.Subscribers("c/1").Subscriptions); n != 0 {
		t.Fatalf("clean session's subscription restored (%d)", n)
	}
	dev, ack := persistentConnect(s, "device-1")
	if !ack.SessionPresent {
		t.Fatal("persistent session not present after restart")
	}
	pub = mqtttest.MustConnect(t, mqtttest.DialTCP(t, s.Addrs().MQTT), "pub-2", "", "")
	if _, err := pub.Publish(t, "p/1", 1, []byte("after restart")); err != nil {
		t.Fatal(err)
	}
	if m := dev.Expect(t); string(m.Payload) != "after restart" {
		t.Fatalf("got %q", m.Payload)
	}
	// Clearing the retained message is persisted too.
	if _, err := pub.Client.Publish(ctx, &paho.Publish{Topic: "r/1", QoS: 1, Retain: true}); err != nil {
		t.Fatal(err)
	}
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	s = start()
	if n := len(s.MQTT().Topics.Messages("r/1")); n != 0 {
		t.Fatalf("cleared retained message came back (%d)", n)
	}
}
