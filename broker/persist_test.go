package broker

import (
	"context"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/warblerim/warbler/internal/mqtttest"
)

func TestRetainedAndPersistentSessionsSurviveRestart(t *testing.T) {
	cfg := loopbackConfig(t)
	start := func() *Server {
		s, err := New(cfg, Options{Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Shutdown(context.Background()) })
		return s
	}
	persistentConnect := func(s *Server, device string) (*mqtttest.Client, *paho.Connack) {
		cid, user, pass := creds(t, s, "keeper", device)
		c, ack, err := mqtttest.Connect(t, mqtttest.DialTCP(t, s.Addrs().MQTT), &paho.Connect{
			ClientID: cid, CleanStart: false, Username: user, UsernameFlag: true, Password: []byte(pass), PasswordFlag: true,
			Properties: &paho.ConnectProperties{SessionExpiryInterval: func() *uint32 { v := uint32(3600); return &v }()},
		})
		if err != nil {
			t.Fatal(err)
		}
		return c, ack
	}

	s := start()
	dev, _ := persistentConnect(s, "device-1")
	if r := dev.Subscribe(t, iot("keeper", "p/1")); r[0] != 1 {
		t.Fatalf("suback %v", r)
	}
	clean := connectAs(t, s, mqtttest.DialTCP(t, s.Addrs().MQTT), "keeper", "clean-1")
	clean.Subscribe(t, iot("keeper", "c/1"))
	pub := connectAs(t, s, mqtttest.DialTCP(t, s.Addrs().MQTT), "keeper", "pub-1")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := pub.Client.Publish(ctx, &paho.Publish{Topic: iot("keeper", "r/1"), QoS: 1, Retain: true, Payload: []byte("kept")}); err != nil {
		t.Fatal(err)
	}
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}

	s = start()
	// The retained message is back.
	late := connectAs(t, s, mqtttest.DialTCP(t, s.Addrs().MQTT), "keeper", "late")
	late.Subscribe(t, iot("keeper", "r/1"))
	if m := late.Expect(t); string(m.Payload) != "kept" || !m.Retain {
		t.Fatalf("retained after restart: %q retain=%v", m.Payload, m.Retain)
	}
	// The persistent session is back with its subscription; the clean one is not.
	if n := len(s.MQTT().Topics.Subscribers(iot("keeper", "c/1")).Subscriptions); n != 0 {
		t.Fatalf("clean session's subscription restored (%d)", n)
	}
	dev, ack := persistentConnect(s, "device-1")
	if !ack.SessionPresent {
		t.Fatal("persistent session not present after restart")
	}
	pub = connectAs(t, s, mqtttest.DialTCP(t, s.Addrs().MQTT), "keeper", "pub-2")
	if _, err := pub.Publish(t, iot("keeper", "p/1"), 1, []byte("after restart")); err != nil {
		t.Fatal(err)
	}
	if m := dev.Expect(t); string(m.Payload) != "after restart" {
		t.Fatalf("got %q", m.Payload)
	}
	// Clearing the retained message is persisted too.
	if _, err := pub.Client.Publish(ctx, &paho.Publish{Topic: iot("keeper", "r/1"), QoS: 1, Retain: true}); err != nil {
		t.Fatal(err)
	}
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	s = start()
	if n := len(s.MQTT().Topics.Messages(iot("keeper", "r/1"))); n != 0 {
		t.Fatalf("cleared retained message came back (%d)", n)
	}
}

// A persistent session that its client ends with DISCONNECT (session
// expiry set to 0) is gone for good: it does not come back after a restart.
func TestSessionEndedByDisconnectStaysEnded(t *testing.T) {
	cfg := loopbackConfig(t)
	start := func() *Server {
		s, err := New(cfg, Options{Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Shutdown(context.Background()) })
		return s
	}
	s := start()
	cid, user, pass := creds(t, s, "leaver", "d1")
	hour, zero := uint32(3600), uint32(0)
	c, _, err := mqtttest.Connect(t, mqtttest.DialTCP(t, s.Addrs().MQTT), &paho.Connect{
		ClientID: cid, Username: user, UsernameFlag: true, Password: []byte(pass), PasswordFlag: true,
		Properties: &paho.ConnectProperties{SessionExpiryInterval: &hour}})
	if err != nil {
		t.Fatal(err)
	}
	c.Subscribe(t, iot("leaver", "x"))
	if err := c.Client.Disconnect(&paho.Disconnect{Properties: &paho.DisconnectProperties{SessionExpiryInterval: &zero}}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(mqtttest.Timeout)
	for len(s.MQTT().Topics.Subscribers(iot("leaver", "x")).Subscriptions) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("session not ended")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	s = start()
	if _, ok := s.MQTT().Clients.Get(cid); ok {
		t.Fatal("the ended session came back after a restart")
	}
	if n := len(s.MQTT().Topics.Subscribers(iot("leaver", "x")).Subscriptions); n != 0 {
		t.Fatalf("its subscription came back (%d)", n)
	}
}
