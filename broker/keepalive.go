package broker

import (
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// keepaliveHook caps the keep-alive of MQTT 5 clients at mqtt.max_keepalive
// and gives one to clients that asked for none, through the CONNACK's
// Server Keep Alive. The broker derives the read deadline of a connection
// from its keep-alive, so without a cap a client that stops talking (and
// reading) would hold its connection, and its write loop, forever.
type keepaliveHook struct {
	mqtt.HookBase
	max uint16
}

func (h *keepaliveHook) ID() string { return "warbler-keepalive" }

func (h *keepaliveHook) Provides(b byte) bool { return b == mqtt.OnConnect }

// OnConnect runs before the broker sets the first keep-alive deadline and
// writes the CONNACK.
func (h *keepaliveHook) OnConnect(cl *mqtt.Client, _ packets.Packet) error {
	if cl.Properties.ProtocolVersion == 5 && (cl.State.Keepalive == 0 || cl.State.Keepalive > h.max) {
		cl.State.Keepalive = h.max
		cl.State.ServerKeepalive = true
	}
	return nil
}
