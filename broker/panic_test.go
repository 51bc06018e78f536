package broker

import (
	"context"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/warblerim/warbler/internal/mqtttest"
)

// boomHook panics in OnPublish for topics ending in "/boom": a stand-in for
// a bug in some hook.
type boomHook struct{ mqtt.HookBase }

func (*boomHook) ID() string           { return "boom" }
func (*boomHook) Provides(b byte) bool { return b == mqtt.OnPublish }
func (*boomHook) OnPublish(_ *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if len(pk.TopicName) > 5 && pk.TopicName[len(pk.TopicName)-5:] == "/boom" {
		panic("boom")
	}
	return pk, nil
}

// A connection whose handler panics is contained, and still disconnected
// properly: its will is published, the hooks hear of the disconnect (the
// app's connection count and the ACL's principals drop back), its clean
// session is removed, and the device can connect again.
func TestPanicStillDisconnectsCleanly(t *testing.T) {
	cfg := loopbackConfig(t)
	s, err := New(cfg, Options{Logger: testLogger(t), Hooks: []mqtt.Hook{&boomHook{}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
	})
	watcher := connectAs(t, s, mqtttest.DialTCP(t, s.Addrs().MQTT), "bang", "watcher")
	watcher.Subscribe(t, iot("bang", "will"))
	// The watcher is the app's only connection (counted just after its
	// CONNACK).
	waitFor(t, "the watcher to be counted", func() bool { return s.Limits().AppConnections("demo") == 1 })
	conns, principals := int64(1), s.principals.Len()

	cid, u, p := creds(t, s, "bang", "victim")
	victim, _, err := mqtttest.Connect(t, mqtttest.DialTCP(t, s.Addrs().MQTT), &paho.Connect{
		ClientID: cid, CleanStart: true, Username: u, UsernameFlag: true, Password: []byte(p), PasswordFlag: true,
		WillMessage: &paho.WillMessage{Topic: iot("bang", "will"), Payload: []byte("gone"), QoS: 0},
	})
	if err != nil {
		t.Fatal(err)
	}
	// (The broker counts the connection just after its CONNACK.)
	waitFor(t, "the connection to be counted", func() bool { return s.Limits().AppConnections("demo") == conns+1 })
	_, _ = victim.Publish(t, iot("bang", "boom"), 0, []byte("x"))
	victim.WaitDisconnected(t)

	if m := watcher.Expect(t); string(m.Payload) != "gone" {
		t.Fatalf("watcher got %q, want the will", m.Payload)
	}
	waitFor(t, "the hooks to hear of the disconnect", func() bool {
		_, present := s.MQTT().Clients.Get(cid)
		return s.Limits().AppConnections("demo") == conns && s.principals.Len() == principals && !present
	})
	if n := metricValue(t, s, "warbler_connection_panics_total"); n != 1 {
		t.Fatalf("%v panics counted", n)
	}
	again := connectAs(t, s, mqtttest.DialTCP(t, s.Addrs().MQTT), "bang", "victim")
	if code, err := again.Publish(t, iot("bang", "fine"), 1, []byte("ok")); code != 0 || err != nil {
		t.Fatalf("after reconnecting: 0x%x %v", code, err)
	}
}
