package hooks

// Chat is the mochi hook that turns uplink publishes into chat operations.
//
// A device publishes an envelope (protocol.Request) on its uplink
// w/{app}/up/{user}/{device}. OnPublish runs in that client's read loop,
// before the broker acks the publish, so the hook does the whole operation
// there: parse, run it through the chat Service (which persists with a
// durable group commit), reply, and only then return. The PUBACK therefore
// means "stored". The uplink publish itself is never delivered to anyone:
//
//	success                     -> packets.CodeSuccessIgnore (PUBACK 0x00, not routed)
//	failure, MQTT 5 and QoS > 0 -> the reason code (PUBACK 0x80/0x87/0x97/0x99/0x83)
//	failure, MQTT 3.1.1 or QoS 0 -> packets.CodeSuccessIgnore as well, because
//	                               mochi would route the original packet on any
//	                               other error for those clients
//
// and in every failure case an error envelope goes to the device topic, which
// is how MQTT 3.1.1 clients (whose PUBACK has no reason code) learn of it.
//
// Replies. A request is answered on the device topic w/{app}/d/{user}/{device}
// with kind "reply" or "error", echoing "rid" and, for MQTT 5, the
// Correlation Data. A Response Topic is honoured only if it is that device
// topic: anything else would let a client make the server publish to a topic
// of its choosing. A plain send gets an ack (id, seq) only if it asked for
// one with a Response Topic or a "rid".
//
// Outbound messages go through the server's inline client (InjectPacket),
// synchronously in the caller's goroutine. That re-enters OnPublish with
// cl.Net.Inline set; the hook returns at once for those.
//
// Live delivery is QoS 0 by default, on purpose. The log is the durable
// copy and devices sync on connect, on a seq gap and on a hint, so MQTT-level
// redelivery adds nothing but duplicates. And QoS 1 fan-out in mochi v2.7.9
// is not non-blocking: publishToClient takes the subscriber's client lock
// (NextPacketID, clients.go:277) and the subscriber's write loop holds that
// same lock while it writes to the socket (WritePacket, clients.go:603). A
// subscriber that stops reading therefore stalls every publisher to it,
// sender and conversation lock included, until its connection times out
// (measured: 45 s with a 30 s keepalive). At QoS 0 mochi only does a
// non-blocking channel send; a client whose queue is full loses the message
// (OnPublishDropped). The hook counts those and sends the client a sync
// hint on its device topic a moment later, retrying until one gets through;
// the device then syncs from the log and misses nothing.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/warblerim/warbler/chat"
	"github.com/warblerim/warbler/protocol"
)

// ChatOptions configure the Chat hook; pass them to server.AddHook.
type ChatOptions struct {
	// Server is the broker; it must run with Options.InlineClient true.
	Server *mqtt.Server
	// Service runs the chat operations. Create it with the hook itself as
	// its Deliverer.
	Service *chat.Service
	// Logger receives failures; nil discards.
	Logger *slog.Logger
	// Timeout bounds one request (default 10 s).
	Timeout time.Duration
	// HintInterval is how often clients that lost a live message are sent
	// a sync hint (default 1 s).
	HintInterval time.Duration
	// DeliveryQoS is the QoS of outbound publishes (default 0). 1 makes
	// mochi track each delivery as inflight, and lets one stalled
	// subscriber block its publishers; see the file comment.
	DeliveryQoS byte
}

// ChatStats are the hook's counters.
type ChatStats struct {
	Handled   uint64 // uplink publishes handled (ok or not)
	Failed    uint64 // of which answered with an error
	Published uint64 // outbound publishes injected
	Dropped   uint64 // outbound chat publishes mochi dropped (full client queue)
	Hints     uint64 // sync hints sent
	Panics    uint64 // recovered panics (each one a bug)
}

// Chat is the chat hook. Create it with NewChat, give it to chat.New as
// the Deliverer, then add it to the server with server.AddHook(h,
// &ChatOptions{...}).
type Chat struct {
	mqtt.HookBase

	server  *mqtt.Server
	inline  *mqtt.Client
	svc     *chat.Service
	limits  protocol.Limits
	log     *slog.Logger
	timeout time.Duration
	qos     byte

	mu     sync.Mutex
	behind map[string]struct{} // client IDs owed a sync hint
	stop   chan struct{}
	done   chan struct{}

	handled, failed, published, dropped, hints, panics atomic.Uint64
}

// NewChat returns an uninitialised hook; it delivers nothing until the
// server has called Init.
func NewChat() *Chat {
	return &Chat{behind: map[string]struct{}{}}
}

// ID implements mqtt.Hook.
func (h *Chat) ID() string { return "warbler-chat" }

// Provides implements mqtt.Hook.
func (h *Chat) Provides(b byte) bool {
	return b == mqtt.OnPublish || b == mqtt.OnPublishDropped
}

// Init implements mqtt.Hook; config must be a *ChatOptions.
func (h *Chat) Init(config any) error {
	o, ok := config.(*ChatOptions)
	if !ok || o == nil || o.Server == nil || o.Service == nil {
		return errors.New("chat hook: config must be a *ChatOptions with Server and Service")
	}
	if !o.Server.Options.InlineClient {
		return errors.New("chat hook: the server needs Options.InlineClient = true")
	}
	inline, ok := o.Server.Clients.Get(mqtt.InlineClientId)
	if !ok {
		return errors.New("chat hook: the server has no inline client")
	}
	h.server, h.inline, h.svc = o.Server, inline, o.Service
	h.limits = o.Service.Limits()
	h.log = o.Logger
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	h.timeout = o.Timeout
	h.qos = min(o.DeliveryQoS, 1)
	if h.timeout <= 0 {
		h.timeout = 10 * time.Second
	}
	every := o.HintInterval
	if every <= 0 {
		every = time.Second
	}
	h.stop, h.done = make(chan struct{}), make(chan struct{})
	go h.hintLoop(every)
	return nil
}

// Stop implements mqtt.Hook: it ends the hint loop.
func (h *Chat) Stop() error {
	if h.stop != nil {
		select {
		case <-h.stop:
		default:
			close(h.stop)
			<-h.done
		}
	}
	return nil
}

// Stats returns the hook's counters.
func (h *Chat) Stats() ChatStats {
	return ChatStats{Handled: h.handled.Load(), Failed: h.failed.Load(), Published: h.published.Load(),
		Dropped: h.dropped.Load(), Hints: h.hints.Load(), Panics: h.panics.Load()}
}

// OnPublish implements mqtt.Hook. See the file comment for what it returns.
func (h *Chat) OnPublish(cl *mqtt.Client, pk packets.Packet) (out packets.Packet, err error) {
	if cl.Net.Inline {
		return pk, nil // our own outbound publishes re-entering
	}
	t := protocol.ParseTopic(pk.TopicName)
	if t.Kind != protocol.KindUplink {
		return pk, nil // not ours
	}
	h.handled.Add(1)
	v5qos := cl.Properties.ProtocolVersion == 5 && pk.FixedHeader.Qos > 0
	fail := func(c packets.Code) error {
		h.failed.Add(1)
		if v5qos {
			return c
		}
		return packets.CodeSuccessIgnore
	}
	defer func() {
		if r := recover(); r != nil {
			h.panics.Add(1)
			h.log.Error("chat hook panic", "client", cl.ID, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			out, err = pk, fail(packets.ErrUnspecifiedError)
		}
	}()

	app, user, device, ok := protocol.ParseClientID(cl.ID)
	if !ok || app != t.App || user != t.User || device != t.Device {
		// Only the device itself may use its uplink. The ACL should have
		// refused this already; there is no device topic to answer on.
		return pk, fail(packets.ErrNotAuthorized)
	}
	if h.svc == nil {
		return pk, fail(packets.ErrUnspecifiedError)
	}
	dev := protocol.DeviceTopic(app, user, device)
	var corr []byte
	explicit := false
	if rt := pk.Properties.ResponseTopic; rt != "" {
		explicit = true
		if rt == dev {
			corr = pk.Properties.CorrelationData
		}
	}

	req, perr := protocol.ParseRequest(pk.Payload, h.limits)
	if perr != nil {
		h.reply(dev, corr, errorReply(peek(pk.Payload, h.limits), perr))
		return pk, fail(reasonFor(perr))
	}
	ctx, cancel := context.WithTimeout(context.Background(), h.timeout)
	defer cancel()
	result, herr := h.svc.Handle(ctx, chat.Sender{App: app, User: user, Device: device}, req)
	echo := echoOf{Op: req.Op, RID: req.RID, CMID: req.CMID}
	if herr != nil {
		h.reply(dev, corr, errorReply(echo, herr))
		return pk, fail(reasonFor(herr))
	}
	if req.Op != protocol.OpSend || explicit || req.RID != "" {
		h.reply(dev, corr, protocol.Reply{Kind: protocol.KindReply, Op: echo.Op, RID: echo.RID, CMID: echo.CMID, Result: result})
	}
	return pk, packets.CodeSuccessIgnore
}

// OnPublishDropped implements mqtt.Hook: mochi dropped an outbound message
// because the client's queue was full. Chat deliveries are remembered so
// the client gets a sync hint.
func (h *Chat) OnPublishDropped(cl *mqtt.Client, pk packets.Packet) {
	switch protocol.ParseTopic(pk.TopicName).Kind {
	case protocol.KindDownlink, protocol.KindDevice, protocol.KindBroadcast:
	default:
		return
	}
	h.dropped.Add(1)
	h.mu.Lock()
	h.behind[cl.ID] = struct{}{}
	h.mu.Unlock()
}

// Deliver implements chat.Deliverer: one publish per user downlink.
func (h *Chat) Deliver(app string, users []string, payload []byte) {
	for _, u := range users {
		h.publish(protocol.Downlink(app, u), payload, nil)
	}
}

// Broadcast implements chat.Deliverer: one publish on the channel topic.
func (h *Chat) Broadcast(app, conv string, payload []byte) {
	h.publish(protocol.Broadcast(app, conv), payload, nil)
}

// publish injects a JSON publish from the inline client.
func (h *Chat) publish(topic string, payload, corr []byte) {
	if h.server == nil {
		return
	}
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: h.qos},
		TopicName:   topic,
		Payload:     payload,
		PacketID:    uint16(h.qos), // validation wants one for QoS 1; the inline client has no ack flow
		Properties: packets.Properties{
			CorrelationData:   corr,
			ContentType:       "application/json",
			PayloadFormat:     1,
			PayloadFormatFlag: true,
		},
	}
	if err := h.server.InjectPacket(h.inline, pk); err != nil {
		h.log.Error("chat publish failed", "topic", topic, "err", err)
		return
	}
	h.published.Add(1)
}

func (h *Chat) reply(topic string, corr []byte, r protocol.Reply) {
	b, err := json.Marshal(r)
	if err != nil {
		h.log.Error("chat reply encode", "err", err)
		return
	}
	h.publish(topic, b, corr)
}

func (h *Chat) hintLoop(every time.Duration) {
	defer close(h.done)
	t := time.NewTicker(every)
	defer t.Stop()
	hint, _ := json.Marshal(protocol.SyncHint{Kind: protocol.KindSyncHint})
	for {
		select {
		case <-h.stop:
			return
		case <-t.C:
		}
		h.mu.Lock()
		owed := h.behind
		h.behind = map[string]struct{}{}
		h.mu.Unlock()
		for id := range owed {
			app, user, device, ok := protocol.ParseClientID(id)
			if !ok {
				continue
			}
			if cl, ok := h.server.Clients.Get(id); !ok || cl.Closed() {
				continue // it syncs when it reconnects
			}
			// A hint that is dropped too lands the client back in behind.
			h.publish(protocol.DeviceTopic(app, user, device), hint, nil)
			h.hints.Add(1)
		}
	}
}

type echoOf struct {
	Op   string `json:"op"`
	RID  string `json:"rid"`
	CMID string `json:"cmid"`
}

// peek pulls op, rid and cmid out of a payload that failed to parse, so the
// error can still be matched by a client that uses rid.
func peek(payload []byte, lim protocol.Limits) echoOf {
	var e echoOf
	if len(payload) <= lim.MaxPayload() {
		_ = json.Unmarshal(payload, &e)
	}
	if !protocol.ValidID(e.CMID) {
		e.CMID = ""
	}
	if len(e.RID) > 64 || len(e.Op) > 16 {
		e.RID, e.Op = "", ""
	}
	return e
}

func errorReply(e echoOf, err error) protocol.Reply {
	var pe *protocol.Error
	if !errors.As(err, &pe) {
		pe = protocol.Errorf(protocol.CodeInternal, "internal error")
	}
	return protocol.Reply{Kind: protocol.KindError, Op: e.Op, RID: e.RID, CMID: e.CMID, Error: pe}
}

// reasonFor maps a chat error code to the MQTT 5 PUBACK reason code.
func reasonFor(err error) packets.Code {
	var pe *protocol.Error
	if !errors.As(err, &pe) {
		return packets.ErrUnspecifiedError
	}
	switch pe.Code {
	case protocol.CodeBadRequest, protocol.CodeTooLarge:
		return packets.ErrPayloadFormatInvalid // 0x99
	case protocol.CodeNotMember, protocol.CodeForbidden:
		return packets.ErrNotAuthorized // 0x87
	case protocol.CodeQuota:
		return packets.ErrQuotaExceeded // 0x97
	case protocol.CodeNotFound, protocol.CodeExists, protocol.CodeFull:
		return packets.ErrImplementationSpecificError // 0x83
	}
	return packets.ErrUnspecifiedError // 0x80: internal, unavailable
}
