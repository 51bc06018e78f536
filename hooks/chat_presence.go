package hooks

// The chat hook's share of presence: it tells the chat Service when a
// device's connection opens (OnSessionEstablished) and closes
// (OnDisconnect: a DISCONNECT, a broken TCP connection or a keep-alive
// timeout, which are also when mochi publishes a will), and delivers the
// presence events the Service addresses to single devices.

import (
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/warblerim/warbler/protocol"
)

// OnSessionEstablished implements mqtt.Hook: the client's device is online.
func (h *Chat) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	if h.svc == nil || cl.Net.Inline {
		return
	}
	if app, user, device, ok := protocol.ParseClientID(cl.ID); ok {
		h.svc.Connected(app, user, device, cl)
	}
}

// presenceDown tells the Service that cl's connection closed. The Service
// ignores connections it was never told of (such as sessions mochi
// restores from storage at start-up, which it also "disconnects").
func (h *Chat) presenceDown(cl *mqtt.Client) {
	if h.svc == nil || cl.Net.Inline {
		return
	}
	if app, user, device, ok := protocol.ParseClientID(cl.ID); ok {
		h.svc.Disconnected(app, user, device, cl)
	}
}

// DeliverDevice implements chat.DeviceDeliverer: one publish on the
// device topic.
func (h *Chat) DeliverDevice(app, user, device string, payload []byte) {
	h.publish(protocol.DeviceTopic(app, user, device), payload, nil)
}

// quietOp reports whether op is answered only when the client asks for an
// answer (a "rid" or an MQTT 5 Response Topic): sends, and typing notices,
// which are sent often and need no answer.
func quietOp(op string) bool { return op == protocol.OpSend || op == protocol.OpTyping }
