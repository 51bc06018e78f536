package hooks

// Chat is the mochi hook that turns uplink publishes into chat operations.
//
// A device publishes an envelope (protocol.Request) on its uplink
// w/{app}/up/{user}/{device}. OnPublish runs in that client's read loop.
// The uplink publish itself is never delivered to anyone.
//
// Pipelined acks. mochi reads one packet per connection at a time and acks
// a publish when OnPublish returns, so if OnPublish waited for the disk a
// client could get at most one message stored per fsync. Instead, for QoS 0
// and 1, OnPublish parses the request, has the chat Service check it,
// assign its seq and queue its durable append (chat.Service.SendAsync), and
// returns packets.ErrRejectPacket, which makes mochi send nothing and route
// nothing; the next publish is read while the disk works. The hook sends
// the PUBACK itself once the message is durable, so a PUBACK still means
// "stored". Each connection has a queue of its publishes in arrival order
// (see uplink): PUBACKs leave in that order whatever order the outcomes
// come in, and a connection with MaxPending publishes in progress is not
// read further until one completes. Requests other than send run at once
// but queue their PUBACK behind the sends before them. QoS 2 keeps the
// synchronous flow (mochi answers with PUBREC when OnPublish returns).
//
// Outcomes, as PUBACK (QoS 1) or PUBREC (QoS 2):
//
//	success                     -> 0x00
//	failure, MQTT 5             -> the reason code (0x80/0x87/0x97/0x99/0x83)
//	refusal, MQTT 3.1.1         -> a plain ack: the request is answered, and
//	                               resending it would not help
//	storage failure, MQTT 3.1.1 -> no ack at all, so the client resends it
//	                               when it reconnects (dedupe makes that safe)
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
// synchronously in the caller's goroutine (for a send, a goroutine of the
// chat Service, after the message is durable). That re-enters OnPublish with
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
	// MaxPending bounds the uplink publishes of one connection that are in
	// progress (queued for the disk, or waiting for their PUBACK to be
	// due); beyond it the hook stops reading that connection until one
	// completes. Default: the server's Receive Maximum, which a client
	// that follows MQTT 5 never exceeds anyway.
	MaxPending int
	// Overload, if set, is told of the uplink publishes in progress, and
	// while it sheds load every uplink request is refused (see Overload).
	Overload *Overload
}

// ChatStats are the hook's counters.
type ChatStats struct {
	Handled   uint64 // uplink publishes handled (ok or not)
	Failed    uint64 // of which answered with an error
	Published uint64 // outbound publishes injected
	Dropped   uint64 // outbound chat publishes mochi dropped (full client queue)
	Hints     uint64 // sync hints sent
	Panics    uint64 // recovered panics (each one a bug)
	Waits     uint64 // times a connection had MaxPending publishes in progress and was made to wait
	// PendingPeak is the most uplink publishes one connection has had in
	// progress at once.
	PendingPeak int64
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

	uplinks    sync.Map // *mqtt.Client -> *uplink
	maxPending int
	overload   *Overload
	pend       counter // uplink publishes in progress, for Stop
	maxSeen    atomic.Int64

	mu     sync.Mutex
	behind map[string]struct{} // client IDs owed a sync hint
	stop   chan struct{}
	done   chan struct{}

	handled, failed, published, dropped, hints, panics, waits atomic.Uint64
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
	return b == mqtt.OnPublish || b == mqtt.OnPublishDropped || b == mqtt.OnDisconnect || b == mqtt.OnSessionEstablished
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
	h.maxPending = o.MaxPending
	h.overload = o.Overload
	if h.maxPending <= 0 {
		h.maxPending = int(o.Server.Options.Capabilities.ReceiveMaximum)
	}
	if h.maxPending <= 0 {
		h.maxPending = 1024
	}
	every := o.HintInterval
	if every <= 0 {
		every = time.Second
	}
	h.stop, h.done = make(chan struct{}), make(chan struct{})
	go h.hintLoop(every)
	return nil
}

// Stop implements mqtt.Hook: it waits for the uplink publishes in progress
// to be durable and answered (the broker has disconnected the clients by
// then, so the answers mostly go nowhere, but nothing queued is abandoned
// half way), then ends the hint loop.
func (h *Chat) Stop() error {
	h.pend.wait()
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
		Dropped: h.dropped.Load(), Hints: h.hints.Load(), Panics: h.panics.Load(), Waits: h.waits.Load(), PendingPeak: h.maxSeen.Load()}
}

// OnPublish implements mqtt.Hook. See the file comment for what it returns.
func (h *Chat) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil // our own outbound publishes re-entering
	}
	t := protocol.ParseTopic(pk.TopicName)
	if t.Kind != protocol.KindUplink {
		return pk, nil // not ours
	}
	h.handled.Add(1)
	v5 := cl.Properties.ProtocolVersion == 5
	if h.overload.Shedding() {
		return h.shed(cl, pk, t, v5)
	}
	if pk.FixedHeader.Qos == 2 {
		// QoS 2 keeps the synchronous flow: wait for the outcome here and
		// let mochi answer with PUBREC.
		ch := make(chan outcome, 1)
		h.serve(cl, pk, t, false, func(o outcome) { ch <- o })
		o := <-ch
		switch {
		case o.ok:
			return pk, packets.CodeSuccessIgnore
		case v5:
			// The broker would answer a returned reason code with a PUBACK
			// even at QoS 2 (the client's QoS 2 flow would never end), so
			// the PUBREC with the reason is written here.
			_ = cl.WritePacket(packets.Packet{
				FixedHeader: packets.FixedHeader{Type: packets.Pubrec},
				PacketID:    pk.PacketID,
				ReasonCode:  o.code.Code,
			})
			return pk, packets.ErrRejectPacket
		case o.transient:
			return pk, packets.ErrRejectPacket
		}
		return pk, packets.CodeSuccessIgnore
	}
	q := h.uplink(cl)
	e := q.push(pk)
	if e == nil {
		return pk, packets.ErrRejectPacket // a resend of a publish still in progress
	}
	h.serve(cl, pk, t, true, func(o outcome) {
		switch {
		case pk.FixedHeader.Qos == 0:
			q.complete(e, false, packets.CodeSuccess, o.inline)
		case o.ok:
			q.complete(e, true, packets.CodeSuccess, o.inline)
		case v5:
			q.complete(e, true, o.code, o.inline)
		default:
			// MQTT 3.1.1 acks carry no reason: a transient failure stays
			// unacked (the client resends it when it reconnects), a
			// refusal is acked so that it is not resent forever.
			q.complete(e, !o.transient, packets.CodeSuccess, o.inline)
		}
	})
	// mochi sends nothing for a rejected packet: the queue acks it.
	return pk, packets.ErrRejectPacket
}

// shed refuses an uplink request while the server sheds load: an error
// envelope "unavailable" on the device topic, then MQTT 5 PUBACK (or
// PUBREC) 0x97 "server busy", in order behind the client's earlier
// publishes; MQTT 3.1.1, which cannot be told, is disconnected unacked
// (and resends when it reconnects); QoS 0 is dropped. Nothing is stored.
func (h *Chat) shed(cl *mqtt.Client, pk packets.Packet, t protocol.Topic, v5 bool) (packets.Packet, error) {
	h.failed.Add(1)
	h.overload.RefusedChat()
	if pk.FixedHeader.Dup && pk.FixedHeader.Qos == 1 {
		if q, ok := h.uplinks.Load(cl); ok && q.(*uplink).inProgress(pk.PacketID) {
			return pk, packets.ErrRejectPacket // the original's PUBACK answers it
		}
	}
	err := protocol.Errorf(protocol.CodeUnavailable, "server busy: retry later")
	if app, user, device, ok := protocol.ParseClientID(cl.ID); ok && app == t.App && user == t.User && device == t.Device {
		h.reply(protocol.DeviceTopic(app, user, device), nil, errorReply(peek(pk.Payload, h.limits), err))
	}
	switch {
	case pk.FixedHeader.Qos == 0:
	case !v5:
		h.server.DisconnectClient(cl, packets.ErrServerBusy) //nolint:errcheck // no packet for MQTT 3
	case pk.FixedHeader.Qos == 2:
		_ = cl.WritePacket(packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Pubrec},
			PacketID:    pk.PacketID,
			ReasonCode:  busy.Code,
			Properties:  packets.Properties{ReasonString: busy.Reason},
		})
	default:
		q := h.uplink(cl)
		if e := q.push(pk); e != nil {
			q.complete(e, true, busy, true)
		}
	}
	return pk, packets.ErrRejectPacket
}

// outcome is how an uplink request ended.
type outcome struct {
	ok        bool
	code      packets.Code // the MQTT 5 reason code of a failure
	transient bool         // the failure may go away on retry (storage)
	inline    bool         // reported on the client's read goroutine
}

// serve runs one uplink request and calls report exactly once with its
// outcome: at once, on the calling goroutine (inline set), for anything
// but a send, and for a send with async set once it is durable. Replies
// and error envelopes go to the device topic before report is called.
func (h *Chat) serve(cl *mqtt.Client, pk packets.Packet, t protocol.Topic, async bool, report func(outcome)) {
	var reported atomic.Bool
	fail := func(err error, inline bool) {
		h.failed.Add(1)
		o := outcome{code: reasonFor(err), inline: inline}
		var pe *protocol.Error
		o.transient = !errors.As(err, &pe) || pe.Code == protocol.CodeInternal || pe.Code == protocol.CodeUnavailable
		if reported.CompareAndSwap(false, true) {
			report(o)
		}
	}
	defer func() {
		if r := recover(); r != nil {
			h.panics.Add(1)
			h.log.Error("chat hook panic", "client", cl.ID, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			fail(protocol.Errorf(protocol.CodeInternal, "internal error"), true)
		}
	}()

	app, user, device, ok := protocol.ParseClientID(cl.ID)
	if !ok || app != t.App || user != t.User || device != t.Device || h.svc == nil {
		// Only the device itself may use its uplink. The ACL should have
		// refused this already; there is no device topic to answer on.
		h.failed.Add(1)
		reported.Store(true)
		report(outcome{code: packets.ErrNotAuthorized, inline: true})
		return
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
		fail(perr, true)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), h.timeout)
	defer cancel()
	from := chat.Sender{App: app, User: user, Device: device}
	echo := echoOf{Op: req.Op, RID: req.RID, CMID: req.CMID}
	if req.Op == protocol.OpSend && async {
		// The reply (if asked for) and the outcome wait until the message
		// is durable; the client's next publish is read meanwhile.
		wantReply := explicit || req.RID != ""
		h.svc.SendAsync(ctx, from, chat.SendRequestOf(req), func(ack protocol.Ack, err error) {
			if err != nil {
				h.reply(dev, corr, errorReply(echo, err))
				fail(err, false)
				return
			}
			if wantReply {
				h.reply(dev, corr, protocol.Reply{Kind: protocol.KindReply, Op: echo.Op, RID: echo.RID, CMID: echo.CMID, Result: ack})
			}
			if reported.CompareAndSwap(false, true) {
				report(outcome{ok: true})
			}
		})
		return
	}
	result, herr := h.svc.Handle(ctx, from, req)
	if herr != nil {
		h.reply(dev, corr, errorReply(echo, herr))
		fail(herr, true)
		return
	}
	if !quietOp(req.Op) || explicit || req.RID != "" {
		h.reply(dev, corr, protocol.Reply{Kind: protocol.KindReply, Op: echo.Op, RID: echo.RID, CMID: echo.CMID, Result: result})
	}
	if reported.CompareAndSwap(false, true) {
		report(outcome{ok: true, inline: true})
	}
}

// OnDisconnect implements mqtt.Hook: it forgets the client's uplink queue.
// Publishes of it still in progress finish (their acks go nowhere).
func (h *Chat) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	h.uplinks.Delete(cl)
	h.presenceDown(cl)
}

func (h *Chat) uplink(cl *mqtt.Client) *uplink {
	if q, ok := h.uplinks.Load(cl); ok {
		return q.(*uplink)
	}
	q, _ := h.uplinks.LoadOrStore(cl, &uplink{h: h, cl: cl, room: make(chan struct{}, 1)})
	return q.(*uplink)
}

// uplink is one connection's publishes on its uplink that are in progress
// or not yet acknowledged, in arrival order. mochi reads a connection's
// packets one at a time and would ack each when OnPublish returns; the
// hook instead returns as soon as a send is queued, so that the next
// publish is read while the disk works, and acks from here: an entry is
// acked once it and every entry before it have an outcome, so PUBACKs leave
// in the order the PUBLISHes came (MQTT-4.6.0-2) however their sends
// complete. At most maxPending entries are queued; OnPublish waits for
// room beyond that, which holds up that client only.
type uplink struct {
	h    *Chat
	cl   *mqtt.Client
	room chan struct{} // signalled when entries leave

	mu       sync.Mutex
	q        []*upEntry
	flushing bool       // a flush is writing acks
	out      []*upEntry // the flush's batch
}

type upEntry struct {
	id   uint16
	qos  byte
	done bool
	ack  bool // write a PUBACK
	code packets.Code
}

// push queues a publish, waiting while the queue is full. It returns nil
// for a resend (DUP) of a QoS 1 publish that is still queued: that one's
// PUBACK answers both.
func (q *uplink) push(pk packets.Packet) *upEntry {
	q.mu.Lock()
	if pk.FixedHeader.Dup && pk.FixedHeader.Qos > 0 {
		for _, e := range q.q {
			if e.qos > 0 && e.id == pk.PacketID {
				q.mu.Unlock()
				return nil
			}
		}
	}
	if len(q.q) >= q.h.maxPending {
		q.h.waits.Add(1)
		for len(q.q) >= q.h.maxPending {
			q.mu.Unlock()
			<-q.room
			q.mu.Lock()
		}
	}
	e := &upEntry{id: pk.PacketID, qos: pk.FixedHeader.Qos}
	q.q = append(q.q, e)
	if n := int64(len(q.q)); n > q.h.maxSeen.Load() {
		q.h.maxSeen.Store(n) // only this client's read goroutine pushes; races only lower it
	}
	q.mu.Unlock()
	q.h.pend.add(1)
	q.h.overload.AddInflight(1)
	return e
}

// inProgress reports whether a QoS 1 publish with this packet ID is queued.
func (q *uplink) inProgress(id uint16) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, e := range q.q {
		if e.qos > 0 && e.id == id {
			return true
		}
	}
	return false
}

// complete records an entry's outcome and writes the acks that are due:
// on this goroutine if inline (the client's read goroutine, as mochi
// would), else on a goroutine of its own, so that a client that does not
// read its socket holds up no one else.
func (q *uplink) complete(e *upEntry, ack bool, code packets.Code, inline bool) {
	q.mu.Lock()
	e.done, e.ack, e.code = true, ack, code
	if q.flushing || !q.q[0].done {
		q.mu.Unlock()
		return
	}
	q.flushing = true
	q.mu.Unlock()
	if inline {
		q.flush()
	} else {
		go q.flush()
	}
}

// flush writes the acks of the completed entries at the head of the queue
// until it reaches one without an outcome. One flush runs at a time.
func (q *uplink) flush() {
	for {
		q.mu.Lock()
		n := 0
		for n < len(q.q) && q.q[n].done {
			n++
		}
		if n == 0 {
			q.flushing = false
			q.mu.Unlock()
			return
		}
		q.out = append(q.out[:0], q.q[:n]...)
		m := copy(q.q, q.q[n:])
		clear(q.q[m:])
		q.q = q.q[:m]
		q.mu.Unlock()
		for _, e := range q.out {
			if !e.ack {
				continue
			}
			ack := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: e.id, ReasonCode: e.code.Code}
			if e.code.Code >= packets.ErrUnspecifiedError.Code {
				ack.Properties.ReasonString = e.code.Reason
			}
			_ = q.cl.WritePacket(ack) // fails only once the client is gone
		}
		clear(q.out)
		select {
		case q.room <- struct{}{}:
		default:
		}
		q.h.pend.add(-n)
		q.h.overload.AddInflight(-n)
	}
}

// counter counts uplink publishes in progress, so that Stop can wait for
// them.
type counter struct {
	mu   sync.Mutex
	n    int64
	zero *sync.Cond
}

func (c *counter) add(d int) {
	c.mu.Lock()
	c.n += int64(d)
	if c.n == 0 && c.zero != nil {
		c.zero.Broadcast()
	}
	c.mu.Unlock()
}

func (c *counter) wait() {
	c.mu.Lock()
	if c.zero == nil {
		c.zero = sync.NewCond(&c.mu)
	}
	for c.n > 0 {
		c.zero.Wait()
	}
	c.mu.Unlock()
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
	case protocol.CodeNotMember, protocol.CodeForbidden, protocol.CodeBlocked, protocol.CodeMuted, protocol.CodeTooLate:
		return packets.ErrNotAuthorized // 0x87
	case protocol.CodeQuota:
		return packets.ErrQuotaExceeded // 0x97
	case protocol.CodeNotFound, protocol.CodeExists, protocol.CodeFull, protocol.CodeExpired, protocol.CodeBadState:
		return packets.ErrImplementationSpecificError // 0x83
	}
	return packets.ErrUnspecifiedError // 0x80: internal, unavailable
}
