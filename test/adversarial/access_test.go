package adversarial

import (
	"context"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/warblerim/warbler/identity"
	"github.com/warblerim/warbler/internal/mqtttest"
	"github.com/warblerim/warbler/storage"
)

// Case 12: $SYS, another app's topics and root wildcards are refused at
// SUBSCRIBE with 0x87, and no retained message of another app leaks: the
// first message the client receives afterwards is its own marker.
func TestCase12TenantIsolation(t *testing.T) {
	s := start(t, nil)
	ctl := newControl(t, s)
	ctx := context.Background()
	if _, err := s.Identity().CreateApp(ctx, identity.AppSpec{ID: "other", Settings: storage.AppSettings{
		IoTRules: []storage.TopicRule{{Pattern: "w/{app}/iot/%u/#", Access: "readwrite"}}}}); err != nil {
		t.Fatal(err)
	}
	ocid, ou, op := creds(t, s, "other", "olga", "d1")
	olga := mqtttest.MustConnect(t, mqtttest.DialTCP(t, s.Addrs().MQTT), ocid, ou, op)
	if _, err := olga.Client.Publish(ctx, &paho.Publish{Topic: "w/other/iot/olga/secret", QoS: 1, Retain: true, Payload: []byte("other app's secret")}); err != nil {
		t.Fatal(err)
	}
	mallory := connect(t, s, "mallory", "d1")
	for _, f := range []string{"$SYS/#", "$SYS/broker/clients/connected", "#", "+/other/#", "+/+/iot/#",
		"w/other/iot/#", "w/other/iot/olga/secret", "w/+/iot/olga/#", "$share/g/w/other/iot/#", "w/demo/u/ctl", "w/demo/iot/ctl/#"} {
		if r := mallory.Subscribe(t, f); r[0] != 0x87 {
			t.Errorf("SUBSCRIBE %q: 0x%x, want 0x87", f, r[0])
		}
	}
	if code, _ := mallory.Publish(t, "w/other/iot/olga/secret", 1, []byte("overwrite")); code != 0x87 {
		t.Errorf("PUBLISH into another app: 0x%x, want 0x87", code)
	}
	mine := iot("mallory", "marker")
	mallory.Subscribe(t, mine)
	if _, err := mallory.Publish(t, mine, 1, []byte("marker")); err != nil {
		t.Fatal(err)
	}
	if m := mallory.Expect(t); string(m.Payload) != "marker" {
		t.Fatalf("first message received: %q on %s", m.Payload, m.Topic)
	}
	// The retained message is intact for its own app.
	olga.Subscribe(t, "w/other/iot/olga/#")
	if m := olga.Expect(t); string(m.Payload) != "other app's secret" {
		t.Fatalf("olga's retained message: %q", m.Payload)
	}
	ctl.check(t)
}

// Case 13: revoking a user (disabling it) while its persistent session is
// subscribed: the live client is disconnected with 0x87, the session's
// subscription is removed (from the broker and the stored session), and
// nothing published while it is revoked reaches it, then or after it is
// restored and reconnects to its kept session, which must subscribe again.
func TestCase13RevokedDurableSession(t *testing.T) {
	s := start(t, nil)
	ctl := newControl(t, s)
	ctx := context.Background()
	key, _, err := s.Identity().CreateKey(ctx, "demo", "feeder", []string{identity.ScopePublish})
	if err != nil {
		t.Fatal(err)
	}
	feeder := mqtttest.MustConnect(t, mqtttest.DialTCP(t, s.Addrs().MQTT), "demo:_svc:feeder", "demo:_svc", key)
	topic := iot("rev", "feed")
	expiry := uint32(3600)
	persistent := func() (*mqtttest.Client, *paho.Connack) {
		cid, u, p := creds(t, s, "demo", "rev", "d1")
		c, ack, err := mqtttest.Connect(t, mqtttest.DialTCP(t, s.Addrs().MQTT), &paho.Connect{ClientID: cid, CleanStart: false,
			Username: u, UsernameFlag: true, Password: []byte(p), PasswordFlag: true,
			Properties: &paho.ConnectProperties{SessionExpiryInterval: &expiry}})
		if err != nil {
			t.Fatalf("connect: %v", err)
		}
		return c, ack
	}
	rev, _ := persistent()
	rev.Subscribe(t, topic)
	if _, err := feeder.Publish(t, topic, 1, []byte("before")); err != nil {
		t.Fatal(err)
	}
	if m := rev.Expect(t); string(m.Payload) != "before" {
		t.Fatalf("got %q", m.Payload)
	}
	// The client acks "before" after handing it over; until the server has
	// that PUBACK, "before" stays in flight in the kept session and is
	// rightly sent again on reconnect (QoS 1). Revoke only once it is in.
	waitFor(t, `the PUBACK of "before"`, 30*time.Second, func() bool {
		cl, ok := s.MQTT().Clients.Get("demo:rev:d1")
		return ok && cl.State.Inflight.Len() == 0
	})
	if _, err := s.Identity().DisableUser(ctx, "demo", "rev"); err != nil {
		t.Fatal(err)
	}
	rev.WaitDisconnected(t)
	if rev.ServerDisconnect == nil || rev.ServerDisconnect.ReasonCode != 0x87 {
		t.Fatalf("revoked client disconnected with %+v, want 0x87", rev.ServerDisconnect)
	}
	if cl, ok := s.MQTT().Clients.Get("demo:rev:d1"); !ok || cl.State.Subscriptions.Len() != 0 {
		t.Fatalf("revoked session still has subscriptions (kept: %v)", ok)
	}
	if subs := s.MQTT().Topics.Subscribers(topic); len(subs.Subscriptions) != 0 {
		t.Fatalf("topic still has subscribers after the revocation: %v", subs.Subscriptions)
	}
	if _, err := feeder.Publish(t, topic, 1, []byte("while revoked")); err != nil {
		t.Fatal(err)
	}
	// Restored, the user connects again to the kept session: the message
	// published while revoked was never queued for it.
	f := false
	if _, err := s.Identity().UpdateUser(ctx, "demo", "rev", identity.UserPatch{Disabled: &f}); err != nil {
		t.Fatal(err)
	}
	rev, ack := persistent()
	if !ack.SessionPresent {
		t.Fatal("session not kept")
	}
	if subs := s.MQTT().Topics.Subscribers(topic); len(subs.Subscriptions) != 0 {
		t.Fatalf("the restored session came back subscribed: %v", subs.Subscriptions)
	}
	rev.Subscribe(t, topic)
	if _, err := feeder.Publish(t, topic, 1, []byte("after")); err != nil {
		t.Fatal(err)
	}
	if m := rev.Expect(t); string(m.Payload) != "after" {
		t.Fatalf("first message after restoring: %q, want \"after\"", m.Payload)
	}
	ctl.check(t)
}
