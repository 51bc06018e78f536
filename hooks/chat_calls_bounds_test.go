package hooks_test

import (
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/warblerim/warbler/chat"
)

// The signals relayed in a call (offer, answer, ICE candidates) are not
// stored, but each costs a publish to the peer: they count against the
// sender's send quota like the state changes, so one device cannot flood
// the other.
func TestCallSignalsQuota(t *testing.T) {
	b := startBroker(t, func(_ *mqtt.Options, co *chat.Options) { co.SendRate, co.SendBurst = 0.001, 4 })
	alice := connect(t, "mqtt://"+b.tcp, "alice", "phone")
	bob := connect(t, "mqtt://"+b.tcp, "bob", "phone")
	result(t, alice.request(callReq("bob", "c1", "ring", nil)))   // 1
	result(t, bob.request(callReq("alice", "c1", "accept", nil))) // bob's own quota
	result(t, alice.request(callReq("bob", "c1", "offer", map[string]any{"sdp": "v=0"})))
	bob.expect(signal("c1", "offer"))
	cand := map[string]any{"candidate": "candidate:1 1 udp 2122260223 192.0.2.1 54400 typ host", "sdpMid": "0"}
	result(t, alice.request(callReq("bob", "c1", "ice", map[string]any{"candidate": cand})))
	result(t, alice.request(callReq("bob", "c1", "ice", map[string]any{"candidate": cand})))
	alice.refused(callReq("bob", "c1", "ice", map[string]any{"candidate": cand}), "quota_exceeded", packets.ErrQuotaExceeded.Code)
}
