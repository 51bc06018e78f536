package broker

import (
	"context"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/warblerim/warbler/internal/mqtttest"
)

// TestHardenedBrokerSettings checks, through real clients, the broker
// settings that Warbler changes from the embedded broker's defaults.
func TestHardenedBrokerSettings(t *testing.T) {
	s := startServer(t, nil)
	caps := s.MQTT().Options.Capabilities
	if caps.MaximumClientWritesPending != 256 || caps.MaximumPacketSize != 256<<10 || caps.ReceiveMaximum != 256 {
		t.Fatalf("capabilities not applied: %+v", caps)
	}

	t.Run("session expiry is capped", func(t *testing.T) {
		cid, user, pass := creds(t, s, "hard", "forever")
		forever := uint32(0xFFFFFFFF)
		_, ack, err := mqtttest.Connect(t, mqtttest.DialTCP(t, s.Addrs().MQTT), &paho.Connect{
			ClientID: cid, Username: user, UsernameFlag: true, Password: []byte(pass), PasswordFlag: true,
			Properties: &paho.ConnectProperties{SessionExpiryInterval: &forever},
		})
		if err != nil {
			t.Fatal(err)
		}
		if ack.Properties == nil || ack.Properties.SessionExpiryInterval == nil || *ack.Properties.SessionExpiryInterval != uint32((7*24*time.Hour).Seconds()) {
			t.Fatalf("CONNACK session expiry %v, want the 7-day cap", ack.Properties)
		}
	})

	t.Run("retained messages have no forced expiry", func(t *testing.T) {
		c := connectAs(t, s, mqtttest.DialTCP(t, s.Addrs().MQTT), "hard", "retainer")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		topic := iot("hard", "state")
		if _, err := c.Client.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Retain: true, Payload: []byte("on")}); err != nil {
			t.Fatal(err)
		}
		msgs := s.MQTT().Topics.Messages(topic)
		if len(msgs) != 1 || msgs[0].Expiry != 0 {
			t.Fatalf("retained %+v: want one message with no expiry (the broker's default expires it after 24h)", msgs)
		}
	})

	t.Run("acks do not echo user properties", func(t *testing.T) {
		c := connectAs(t, s, mqtttest.DialTCP(t, s.Addrs().MQTT), "hard", "props")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		resp, err := c.Client.Publish(ctx, &paho.Publish{Topic: iot("hard", "p"), QoS: 1, Payload: []byte("x"),
			Properties: &paho.PublishProperties{User: paho.UserProperties{{Key: "k", Value: "v"}}}})
		if err != nil {
			t.Fatal(err)
		}
		if resp.ReasonCode != 0 || (resp.Properties != nil && len(resp.Properties.User) > 0) {
			t.Fatalf("PUBACK reason 0x%x properties %+v; want 0 and none", resp.ReasonCode, resp.Properties)
		}
	})
}
