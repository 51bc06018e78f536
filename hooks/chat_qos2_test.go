package hooks_test

import (
	"bufio"
	"net"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/warblerim/warbler/internal/mqtttest"
	"github.com/warblerim/warbler/protocol"
)

// A refused QoS 2 uplink on MQTT 5 is answered with a PUBREC carrying the
// reason code, never a PUBACK (which would leave the client's QoS 2 flow
// open forever).
func TestChatQoS2RefusalGetsPubrec(t *testing.T) {
	b := startBroker(t, nil)
	conn, err := net.Dial("tcp", b.tcp)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	write := func(pk packets.Packet) {
		pk.ProtocolVersion = 5
		b, err := mqtttest.Encode(pk)
		if err == nil {
			_, err = conn.Write(b)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, Connect: packets.ConnectParams{
		ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: protocol.ClientID(app, "ann", "d1")}})
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if pk, err := readPacket(r); err != nil || pk.FixedHeader.Type != packets.Connack {
		t.Fatalf("connack: %v %v", pk, err)
	}
	write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 2}, PacketID: 7,
		TopicName: protocol.Uplink(app, "ann", "d1"), Payload: []byte(`{"op":`)})
	for {
		pk, err := readPacket(r)
		if err != nil {
			t.Fatal(err)
		}
		switch pk.FixedHeader.Type {
		case packets.Puback:
			t.Fatalf("QoS 2 PUBLISH %d answered with a PUBACK", pk.PacketID)
		case packets.Pubrec:
			if pk.PacketID != 7 || pk.ReasonCode != packets.ErrPayloadFormatInvalid.Code {
				t.Fatalf("PUBREC id %d reason 0x%x, want 7 and 0x99", pk.PacketID, pk.ReasonCode)
			}
			return
		}
	}
}
