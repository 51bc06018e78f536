package hooks

// Broadcast is the mochi hook that handles what backend services publish
// on an app's broadcast topics, w/{app}/b/{channel}. The ACL lets only
// services (an app's API key with the "publish" scope, or the admin key)
// write there; users may only subscribe.
//
// Two kinds of broadcast share the namespace:
//
//   - If {channel} is a chat conversation of kind "channel", the publish
//     is a message of that channel from the service: the payload (a JSON
//     value) becomes the body of a message stored in the channel's log
//     with the next seq, delivered to the members' devices like any
//     channel message and, through the push bridge, notified to members'
//     devices that are offline. Members catch up on it by sync and read it
//     in history. The raw publish itself goes to no one: subscribers of
//     the topic get the stored envelope when the server delivers channels
//     by broadcast (chat.Options.ChannelBroadcast), and members get it on
//     their downlinks otherwise.
//   - Any other {channel} is a plain broadcast: the broker passes the
//     payload as is to the clients subscribed at that moment (and to kept
//     sessions, at QoS 1). Nothing is stored or pushed.
//
// A channel message is acknowledged once it is on disk: at QoS 1 the
// PUBACK (with a reason code on MQTT 5) is written after the append is
// durable, so the service knows it was stored. MQTT 5 user properties set
// the message's "type" (default "text") and "cmid", its idempotency key: a
// resend with the same cmid is stored once. Refusals (a payload that is
// not JSON or too large, a retained publish, an unknown app) answer 0x99,
// 0x9A or 0x87 on MQTT 5; an MQTT 3.1.1 service gets a plain PUBACK for a
// refusal and none for a storage failure, so that it resends.
//
// The send runs in the service connection's read loop, so one connection
// stores one channel message per disk sync; a service that broadcasts at
// high rates uses several connections or the HTTP API.

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/warblerim/warbler/chat"
	"github.com/warblerim/warbler/identity"
	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage"
)

// BroadcastOptions configure the Broadcast hook; pass them to
// server.AddHook.
type BroadcastOptions struct {
	// Service stores channel messages. Required.
	Service *chat.Service
	Logger  *slog.Logger
	// Timeout bounds one channel send (10 s if 0).
	Timeout time.Duration
}

// BroadcastStats are the hook's counters.
type BroadcastStats struct {
	Channel uint64 // publishes stored as channel messages
	Plain   uint64 // publishes passed on as plain broadcasts
	Refused uint64 // publishes refused (bad payload, retained, storage failure)
}

// Broadcast routes services' broadcast publishes. Create it with
// NewBroadcast.
type Broadcast struct {
	mqtt.HookBase
	svc                     *chat.Service
	log                     *slog.Logger
	timeout                 time.Duration
	channel, plain, refused atomic.Uint64
}

// NewBroadcast returns the hook; it is configured by Init.
func NewBroadcast() *Broadcast { return &Broadcast{} }

// ID implements mqtt.Hook.
func (b *Broadcast) ID() string { return "warbler-broadcast" }

// Provides implements mqtt.Hook.
func (b *Broadcast) Provides(x byte) bool { return x == mqtt.OnPublish }

// Init implements mqtt.Hook.
func (b *Broadcast) Init(config any) error {
	o, ok := config.(*BroadcastOptions)
	if !ok || o == nil || o.Service == nil {
		return errors.New("broadcast hook: config must be a *BroadcastOptions with Service")
	}
	b.svc, b.log, b.timeout = o.Service, o.Logger, o.Timeout
	if b.log == nil {
		b.log = slog.New(slog.DiscardHandler)
	}
	if b.timeout <= 0 {
		b.timeout = 10 * time.Second
	}
	return nil
}

// Stats returns the hook's counters.
func (b *Broadcast) Stats() BroadcastStats {
	return BroadcastStats{Channel: b.channel.Load(), Plain: b.plain.Load(), Refused: b.refused.Load()}
}

// OnPublish implements mqtt.Hook.
func (b *Broadcast) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil // the server's own deliveries, channel broadcasts included
	}
	t := protocol.ParseTopic(pk.TopicName)
	if t.Kind != protocol.KindBroadcast {
		return pk, nil
	}
	app, user, _, ok := protocol.ParseClientID(cl.ID)
	if !ok || user != identity.ServiceUser || app != t.App {
		return pk, nil // the ACL refuses these; nothing to add
	}
	ctx, cancel := context.WithTimeout(context.Background(), b.timeout)
	defer cancel()
	kind, err := b.svc.ConvKind(ctx, app, t.Channel)
	switch {
	case errors.Is(err, storage.ErrNotFound) || (err == nil && kind != storage.KindChannel):
		b.plain.Add(1)
		return pk, nil
	case err != nil:
		b.log.Error("broadcast: look up channel", "app", app, "channel", t.Channel, "err", err)
		return b.finish(cl, pk, packets.ErrUnspecifiedError, true)
	}
	if pk.FixedHeader.Retain {
		return b.finish(cl, pk, packets.ErrRetainNotSupported, false)
	}
	typ, cmid := "text", ""
	for _, p := range pk.Properties.User {
		switch p.Key {
		case "type":
			typ = p.Val
		case "cmid":
			cmid = p.Val
		}
	}
	if cmid == "" {
		cmid = randomCMID()
	}
	_, err = b.svc.Send(ctx, chat.Sender{App: app, User: identity.ServiceUser, Service: true},
		chat.SendRequest{Conv: t.Channel, CMID: cmid, Type: typ, Body: pk.Payload})
	if err != nil {
		var pe *protocol.Error
		transient := !errors.As(err, &pe) || pe.Code == protocol.CodeInternal || pe.Code == protocol.CodeUnavailable
		if transient {
			b.log.Error("broadcast: store channel message", "app", app, "channel", t.Channel, "err", err)
		}
		return b.finish(cl, pk, reasonFor(err), transient)
	}
	b.channel.Add(1)
	return b.finish(cl, pk, packets.CodeSuccess, false)
}

// finish acknowledges a channel publish with code, which mochi must not
// route: the hook writes the PUBACK itself (mochi would otherwise retain a
// retained publish or route a refused one from an MQTT 3.1.1 client). A
// transient failure of an MQTT 3.1.1 publish is left unacknowledged, so
// that the client resends it after reconnecting.
func (b *Broadcast) finish(cl *mqtt.Client, pk packets.Packet, code packets.Code, transient bool) (packets.Packet, error) {
	if code != packets.CodeSuccess {
		b.refused.Add(1)
	}
	v5 := cl.Properties.ProtocolVersion == 5
	switch pk.FixedHeader.Qos {
	case 0:
		return pk, packets.ErrRejectPacket
	case 1:
		if code != packets.CodeSuccess && !v5 {
			if transient {
				return pk, packets.ErrRejectPacket
			}
			code = packets.CodeSuccess
		}
		ack := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID}
		if v5 {
			ack.ReasonCode = code.Code
		}
		_ = cl.WritePacket(ack)
		return pk, packets.ErrRejectPacket
	}
	// QoS 2: a success goes through mochi's flow (PUBREC, PUBREL, PUBCOMP)
	// with nothing routed; a refusal gets its PUBREC here, as in the chat
	// hook.
	switch {
	case code == packets.CodeSuccess:
		return pk, packets.CodeSuccessIgnore
	case v5:
		_ = cl.WritePacket(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrec}, PacketID: pk.PacketID, ReasonCode: code.Code})
		return pk, packets.ErrRejectPacket
	case transient:
		return pk, packets.ErrRejectPacket
	}
	return pk, packets.CodeSuccessIgnore
}

func randomCMID() string {
	var b [15]byte
	_, _ = rand.Read(b[:])
	return "b" + base32.HexEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:])
}
