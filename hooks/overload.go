package hooks

// Overload is the server's load shedder: when more work arrives than the
// machine can carry, the server refuses new work, with a reason code the
// client can act on, instead of queueing without bound until it runs out
// of memory, or taking the work and losing it. It is the last line behind
// the per-client and per-app limits (see Limits), which cannot know how
// much the whole machine carries.
//
// Two signals say the server is overloaded:
//
//   - in-flight sends: uplink requests (chat sends, mostly) accepted but
//     not yet answered, because their durable append waits for the disk.
//     The chat hook answers a send only once it is on disk, so this count
//     is the disk's backlog; past MaxInflightSends it is not keeping up.
//   - live heap: the heap still in use after the last garbage collection
//     (the runtime's /gc/heap/live:bytes), polled every HeapEvery; past
//     MaxHeap memory is running out, whatever the cause.
//
// The server sheds while either is over its limit, and stops shedding
// once both are back under their resume levels (ResumeInflightSends,
// ResumeHeap): the gap between the two levels (hysteresis) keeps it from
// flipping on every message at the edge. While shedding:
//
//	CONNECT          refused before authentication: CONNACK 0x89 "server
//	                 busy" (MQTT 3.1.1: 0x03 "server unavailable"); the
//	                 clients already connected are kept.
//	chat uplink      (any request; the Chat hook asks Shedding) MQTT 5:
//	                 PUBACK 0x97 "quota exceeded" with the reason string
//	                 "server busy" (0x89 is not a valid PUBACK code), in
//	                 order behind the client's earlier publishes; MQTT
//	                 3.1.1, which has no negative PUBACK: the connection is
//	                 closed without an ack, so the client resends the
//	                 message when it reconnects (the chat dedupe makes that
//	                 safe); QoS 0: dropped. In every case an error envelope
//	                 with code "unavailable" goes to the device topic, and
//	                 nothing refused was stored or acknowledged: a client
//	                 never loses a message it was told was sent.
//	other PUBLISH    refused only while the heap is over its limit (plain
//	                 MQTT messages do not wait for the disk): MQTT 5 QoS 1/2
//	                 PUBACK/PUBREC 0x97 "server busy", MQTT 3.1.1 QoS 1/2
//	                 disconnected, QoS 0 dropped.
//
// Work already accepted is finished, so the backlog drains; new work is
// accepted again as soon as it has. Refusals are counted by what was
// refused (Refused); entering and leaving the shedding state is logged, at
// most once a second with the number of episodes not logged, so that a
// server flapping at the edge does not flood its logs.

import (
	"log/slog"
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/warblerim/warbler/protocol"
)

// OverloadPolicy says when the server sheds load. Zero values switch a
// signal off; with both off the server never sheds.
type OverloadPolicy struct {
	// MaxInflightSends is how many uplink requests may wait for the disk
	// (or for their answer) at once, server-wide, before the server sheds;
	// it sheds until they are down to ResumeInflightSends (default three
	// quarters of the maximum).
	MaxInflightSends    int
	ResumeInflightSends int
	// MaxHeap is the live heap, in bytes, past which the server sheds,
	// until the live heap is below ResumeHeap (default 90% of it).
	MaxHeap    uint64
	ResumeHeap uint64
	// HeapEvery is how often the live heap is read (default 250 ms).
	HeapEvery time.Duration
}

// OverloadOptions configure NewOverload.
type OverloadOptions struct {
	Policy OverloadPolicy
	// Logger receives the state changes; nil discards.
	Logger *slog.Logger
	// Heap returns the live heap in bytes; nil reads the Go runtime's
	// /gc/heap/live:bytes. Tests replace it.
	Heap func() uint64
}

// Things the shedder refuses, the labels of Refused.
const (
	ShedConnect = "connect" // CONNECTs
	ShedChat    = "chat"    // chat uplink requests
	ShedPublish = "publish" // other publishes (heap only)
)

// Overload is the shedder and its mochi hook (CONNECT and plain PUBLISH
// refusals). Create it with NewOverload, add it to the server, and give it
// to the Chat hook (ChatOptions.Overload), which reports its in-flight
// sends and refuses uplinks while Shedding. A nil *Overload never sheds.
type Overload struct {
	mqtt.HookBase
	p    OverloadPolicy
	log  *slog.Logger
	heap func() uint64

	inflight atomic.Int64
	heapHigh atomic.Bool
	shedding atomic.Bool

	mu          sync.Mutex // serialises state changes
	since       time.Time  // when shedding began
	cause       string
	refusedAt   uint64 // refusals when shedding began
	lastLog     time.Time
	unlogged    int // episodes not logged since lastLog
	episodes    atomic.Uint64
	refusedConn atomic.Uint64
	refusedChat atomic.Uint64
	refusedPub  atomic.Uint64

	stop     chan struct{}
	stopOnce sync.Once
	done     chan struct{}
}

// NewOverload returns the shedder and starts its heap poller (if MaxHeap
// is set); Stop ends it.
func NewOverload(o OverloadOptions) *Overload {
	p := o.Policy
	if p.MaxInflightSends > 0 && (p.ResumeInflightSends <= 0 || p.ResumeInflightSends >= p.MaxInflightSends) {
		p.ResumeInflightSends = p.MaxInflightSends * 3 / 4
	}
	if p.MaxHeap > 0 && (p.ResumeHeap == 0 || p.ResumeHeap >= p.MaxHeap) {
		p.ResumeHeap = p.MaxHeap / 10 * 9
	}
	if p.HeapEvery <= 0 {
		p.HeapEvery = 250 * time.Millisecond
	}
	ov := &Overload{p: p, log: o.Logger, heap: o.Heap, stop: make(chan struct{}), done: make(chan struct{})}
	if ov.log == nil {
		ov.log = slog.New(slog.DiscardHandler)
	}
	if ov.heap == nil {
		ov.heap = liveHeap
	}
	if p.MaxHeap > 0 {
		ov.checkHeap()
		go ov.pollHeap()
	} else {
		close(ov.done)
	}
	return ov
}

// liveHeap reads the heap that survived the last garbage collection.
func liveHeap() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}

func (o *Overload) pollHeap() {
	defer close(o.done)
	t := time.NewTicker(o.p.HeapEvery)
	defer t.Stop()
	for {
		select {
		case <-o.stop:
			return
		case <-t.C:
			o.checkHeap()
		}
	}
}

// checkHeap reads the live heap and updates the state.
func (o *Overload) checkHeap() {
	h := o.heap()
	switch {
	case h >= o.p.MaxHeap:
		o.heapHigh.Store(true)
	case h < o.p.ResumeHeap:
		o.heapHigh.Store(false)
	}
	o.adjust()
}

// ID implements mqtt.Hook.
func (o *Overload) ID() string { return "warbler-overload" }

// Provides implements mqtt.Hook.
func (o *Overload) Provides(b byte) bool { return b == mqtt.OnConnect || b == mqtt.OnPublish }

// Stop implements mqtt.Hook: it ends the heap poller.
func (o *Overload) Stop() error {
	if o == nil {
		return nil
	}
	o.stopOnce.Do(func() { close(o.stop) })
	<-o.done
	return nil
}

// Shedding reports whether the server is refusing new work.
func (o *Overload) Shedding() bool { return o != nil && o.shedding.Load() }

// HeapHigh reports whether the live heap is over its limit.
func (o *Overload) HeapHigh() bool { return o != nil && o.heapHigh.Load() }

// Inflight returns the uplink requests in flight.
func (o *Overload) Inflight() int64 {
	if o == nil {
		return 0
	}
	return o.inflight.Load()
}

// AddInflight records d more (or, negative, fewer) uplink requests in
// flight; the Chat hook calls it as it queues and answers them.
func (o *Overload) AddInflight(d int) {
	if o == nil {
		return
	}
	o.inflight.Add(int64(d))
	o.adjust()
}

// over and under are the two edges of the hysteresis.
func (o *Overload) over(n int64) bool {
	return (o.p.MaxInflightSends > 0 && n >= int64(o.p.MaxInflightSends)) || o.heapHigh.Load()
}

func (o *Overload) under(n int64) bool {
	return (o.p.MaxInflightSends <= 0 || n <= int64(o.p.ResumeInflightSends)) && !o.heapHigh.Load()
}

// adjust enters or leaves the shedding state. The common case (no change)
// costs two atomic loads.
func (o *Overload) adjust() {
	n := o.inflight.Load()
	if s := o.shedding.Load(); (!s && !o.over(n)) || (s && !o.under(n)) {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	n = o.inflight.Load()
	now := time.Now()
	switch s := o.shedding.Load(); {
	case !s && o.over(n):
		o.cause = "inflight_sends"
		if o.heapHigh.Load() {
			o.cause = "heap"
		}
		o.since, o.refusedAt = now, o.refusedTotal()
		o.episodes.Add(1)
		o.shedding.Store(true)
		if o.lastLog.IsZero() || now.Sub(o.lastLog) >= time.Second {
			o.log.Warn("overload: shedding load (refusing new connections and sends)", "cause", o.cause,
				"inflight_sends", n, "max_inflight_sends", o.p.MaxInflightSends,
				"live_heap", o.heapNow(), "max_heap", o.p.MaxHeap, "episodes_not_logged", o.unlogged)
			o.lastLog, o.unlogged = now, 0
		} else {
			o.unlogged++
		}
	case s && o.under(n):
		o.shedding.Store(false)
		if o.unlogged == 0 {
			o.log.Info("overload: recovered, accepting new work again", "cause", o.cause,
				"shed_for", now.Sub(o.since).String(), "refused", o.refusedTotal()-o.refusedAt)
		}
	}
}

func (o *Overload) heapNow() uint64 {
	if o.p.MaxHeap == 0 {
		return liveHeap()
	}
	return o.heap()
}

func (o *Overload) refusedTotal() uint64 {
	return o.refusedConn.Load() + o.refusedChat.Load() + o.refusedPub.Load()
}

// Episodes returns how many times the server has started shedding.
func (o *Overload) Episodes() uint64 {
	if o == nil {
		return 0
	}
	return o.episodes.Load()
}

// Refused returns the refusals so far by what was refused (ShedConnect,
// ShedChat, ShedPublish); every label is present.
func (o *Overload) Refused() map[string]uint64 {
	if o == nil {
		return map[string]uint64{ShedConnect: 0, ShedChat: 0, ShedPublish: 0}
	}
	return map[string]uint64{ShedConnect: o.refusedConn.Load(), ShedChat: o.refusedChat.Load(), ShedPublish: o.refusedPub.Load()}
}

// RefusedChat counts a chat uplink refused by the Chat hook.
func (o *Overload) RefusedChat() {
	if o != nil {
		o.refusedChat.Add(1)
	}
}

// busy is the reason of refused publishes; 0x89 "server busy" is not a
// valid PUBACK code, so the code is 0x97 with a reason string that says
// what happened.
var busy = packets.Code{Code: packets.ErrQuotaExceeded.Code, Reason: "server busy"}

// OnConnect implements mqtt.Hook: while shedding, a CONNECT is refused
// with CONNACK 0x89 (MQTT 3.1.1: 0x03) before it costs an authentication.
func (o *Overload) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	if cl.Net.Inline || !o.Shedding() {
		return nil
	}
	o.refusedConn.Add(1)
	ack := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack}, ReasonCode: packets.ErrServerBusy.Code}
	if cl.Properties.ProtocolVersion < 5 {
		ack.ReasonCode = packets.Err3ServerUnavailable.Code
	} else {
		ack.Properties.ReasonString = packets.ErrServerBusy.Reason
	}
	_ = cl.WritePacket(ack)
	return packets.ErrServerBusy
}

// OnPublish implements mqtt.Hook: while the heap is over its limit, plain
// MQTT publishes are refused (see the file comment). Chat uplinks are the
// Chat hook's.
func (o *Overload) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline || !o.HeapHigh() || protocol.ParseTopic(pk.TopicName).Kind == protocol.KindUplink {
		return pk, nil
	}
	o.refusedPub.Add(1)
	switch {
	case pk.FixedHeader.Qos == 0:
	case cl.Properties.ProtocolVersion < 5:
		cl.Stop(packets.ErrServerBusy)
	default:
		typ := packets.Puback
		if pk.FixedHeader.Qos == 2 {
			typ = packets.Pubrec
		}
		_ = cl.WritePacket(packets.Packet{
			FixedHeader: packets.FixedHeader{Type: typ},
			PacketID:    pk.PacketID,
			ReasonCode:  busy.Code,
			Properties:  packets.Properties{ReasonString: busy.Reason},
		})
	}
	return pk, packets.ErrRejectPacket
}
