package hooks_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/warblerim/warbler/chat"
	"github.com/warblerim/warbler/hooks"
	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage"
)

// gatedStore is the real store with a gate in front of AppendAsync: while
// the gate is shut, appends are held in order instead of queued, so a test
// can pile up a client's pipeline deterministically and then let it run.
// failSeq makes one append fail where it stands in the queue (its seq is
// moved far ahead and the store's compare-and-set refuses it).
type gatedStore struct {
	storage.ChatStore
	mu      sync.Mutex
	shut    bool
	held    []func()
	failSeq map[string]uint64
}

func (g *gatedStore) AppendAsync(ctx context.Context, app string, b storage.AppendBatch, done func(error)) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(b.Entries) > 0 && g.failSeq[b.Entries[0].Conv] == b.Entries[0].Seq {
		b.Entries = slices.Clone(b.Entries)
		b.Entries[0].Seq += 1 << 40
	}
	if g.shut {
		g.held = append(g.held, func() {
			if err := g.ChatStore.AppendAsync(context.Background(), app, b, done); err != nil {
				panic(err)
			}
		})
		return nil
	}
	return g.ChatStore.AppendAsync(ctx, app, b, done)
}

// fail makes the append of conv's seq fail (0: none).
func (g *gatedStore) fail(conv string, seq uint64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.failSeq[conv] = seq
}

func (g *gatedStore) close() { g.mu.Lock(); g.shut = true; g.mu.Unlock() }

func (g *gatedStore) open() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.shut = false
	for _, f := range g.held {
		f()
	}
	g.held = nil
}

func (g *gatedStore) heldCount() int { g.mu.Lock(); defer g.mu.Unlock(); return len(g.held) }

func startGated(t *testing.T, hookMod func(*hooks.ChatOptions)) (*broker, *gatedStore) {
	g := &gatedStore{failSeq: map[string]uint64{}}
	b := startBrokerHook(t, func(_ *mqtt.Options, co *chat.Options) {
		g.ChatStore = co.Store
		co.Store = g
	}, hookMod)
	return b, g
}

// pub writes a QoS 1 publish without waiting for its PUBACK.
func (c *v3) pub(id uint16, topic, payload string) {
	c.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, ProtocolVersion: 4, PacketID: id, TopicName: topic, Payload: []byte(payload)})
}

// acksUntil reads until a publish on the device topic satisfies ok, and
// returns the PUBACK packet IDs read on the way, in order.
func (c *v3) acksUntil(ok func(map[string]any) bool) []uint16 {
	c.t.Helper()
	var acks []uint16
	for {
		pk := c.read()
		switch pk.FixedHeader.Type {
		case packets.Puback:
			acks = append(acks, pk.PacketID)
		case packets.Publish:
			var m map[string]any
			if json.Unmarshal(pk.Payload, &m) == nil && ok(m) {
				return acks
			}
			c.pending = append(c.pending, pk)
		}
	}
}

// acks reads until it has n PUBACKs and returns their packet IDs in the
// order they came.
func (c *v3) acks(n int) []uint16 {
	c.t.Helper()
	var ids []uint16
	for len(ids) < n {
		pk := c.read()
		switch pk.FixedHeader.Type {
		case packets.Puback:
			ids = append(ids, pk.PacketID)
		case packets.Publish:
			c.pending = append(c.pending, pk)
		}
	}
	return ids
}

func rid(r string) func(map[string]any) bool {
	return func(m map[string]any) bool { return m["rid"] == r }
}

func sendJSON(to, cmid, rid string) string {
	m := map[string]any{"to": to, "cmid": cmid, "type": "text", "body": cmid}
	if rid != "" {
		m["rid"] = rid
	}
	b, _ := json.Marshal(m)
	return string(b)
}

// One client with many publishes in flight: sends to five conversations
// (whose appends complete on different goroutines), requests answered at
// once, and a request refused at once, all while the sends before them
// wait for the disk. The PUBACKs must still leave in publish order, and
// each conversation stores its messages in publish order.
func TestChatPipelinedAcksInOrder(t *testing.T) {
	b, g := startGated(t, nil)
	ann := dialV3(t, b.tcp, "ann", "d1")
	from := chat.Sender{App: app, User: "ann", Device: "d1"}
	peers := []string{"p0", "p1", "p2", "p3", "p4"}
	for _, p := range peers {
		if _, err := b.svc.Send(context.Background(), from, chat.SendRequest{To: p, CMID: "hello-" + p, Type: "text", Body: json.RawMessage(`"hi"`)}); err != nil {
			t.Fatal(err)
		}
	}
	up := protocol.Uplink(app, "ann", "d1")
	g.close()
	const n = 60
	for i := range n {
		id := uint16(100 + i)
		switch {
		case i%10 == 9:
			ann.pub(id, up, fmt.Sprintf(`{"op":"convs","rid":"c%d"}`, i))
		case i == 30:
			ann.pub(id, up, `{"op":`) // refused at once; MQTT 3.1.1 still gets its PUBACK
		default:
			ann.pub(id, up, sendJSON(peers[i%5], fmt.Sprint("m", i), ""))
		}
	}
	// The last request's reply means every publish has been read and
	// handled as far as it can be with the disk held.
	if early := ann.acksUntil(rid(fmt.Sprint("c", n-1))); len(early) > 0 {
		t.Fatalf("PUBACKs %v sent while the first publish is not stored", early)
	}
	if got := g.heldCount(); got != n-n/10-1 {
		t.Fatalf("%d appends queued, want %d", got, n-n/10-1)
	}
	g.open()
	got := ann.acks(n)
	for i, id := range got {
		if id != uint16(100+i) {
			t.Fatalf("PUBACK %d is for packet %d: order %v", i, id, got)
		}
	}
	for p, peer := range peers {
		es, err := b.store.Range(context.Background(), app, protocol.DirectConvID("ann", peer), 2, true, 100)
		if err != nil {
			t.Fatal(err)
		}
		var cmids, want []string
		for _, e := range es {
			var m protocol.Message
			_ = json.Unmarshal(e.Data, &m)
			cmids = append(cmids, m.CMID)
		}
		for i := range n {
			if i%5 == p && i%10 != 9 && i != 30 {
				want = append(want, fmt.Sprint("m", i))
			}
		}
		if !slices.Equal(cmids, want) {
			t.Fatalf("%s stored %v, want %v", peer, cmids, want)
		}
	}
}

// A resend of a cmid whose original is still on its way to the disk is
// answered with the original's id and seq once that is durable, and the
// message is stored and delivered once.
func TestChatRetryWhileOriginalInFlight(t *testing.T) {
	b, g := startGated(t, nil)
	ann := dialV3(t, b.tcp, "ann", "d1")
	bob := dialV3(t, b.tcp, "bob", "d1")
	up := protocol.Uplink(app, "ann", "d1")
	ann.publish(up, sendJSON("bob", "hello", ""))
	bob.next(func(m map[string]any) bool { return m["cmid"] == "hello" })

	g.close()
	ann.pub(201, up, sendJSON("bob", "x", "a"))
	ann.pub(202, up, sendJSON("bob", "x", "b")) // the app gave up waiting and resent
	ann.pub(203, up, `{"op":"convs","rid":"sync"}`)
	if early := ann.acksUntil(rid("sync")); len(early) > 0 {
		t.Fatalf("PUBACKs %v before the original was stored", early)
	}
	if got := g.heldCount(); got != 1 {
		t.Fatalf("%d appends queued for one cmid", got)
	}
	g.open()
	if got := ann.acks(3); !slices.Equal(got, []uint16{201, 202, 203}) {
		t.Fatalf("PUBACK order %v", got)
	}
	ra := ann.next(rid("a"))["result"].(map[string]any)
	rb := ann.next(rid("b"))["result"].(map[string]any)
	if ra["id"] != rb["id"] || ra["seq"] != rb["seq"] || ra["duplicate"] == true || rb["duplicate"] != true {
		t.Fatalf("original %v, resend %v", ra, rb)
	}
	// y follows x in the conversation, so a second copy of x would reach
	// bob before y.
	ann.publish(up, sendJSON("bob", "y", ""))
	if m := bob.next(func(m map[string]any) bool { return m["kind"] == "msg" }); m["cmid"] != "x" {
		t.Fatalf("bob got %v first", m)
	}
	if m := bob.next(func(m map[string]any) bool { return m["kind"] == "msg" }); m["cmid"] != "y" {
		t.Fatalf("bob got %v after x", m)
	}
	es, _ := b.store.Range(context.Background(), app, protocol.DirectConvID("ann", "bob"), 1, true, 100)
	if len(es) != 3 {
		t.Fatalf("stored %d messages, want hello, x, y", len(es))
	}
}

// A connection may have at most MaxPending publishes in progress: the next
// one is not read until one completes, and nobody else is held up.
func TestChatPendingBound(t *testing.T) {
	b, g := startGated(t, func(o *hooks.ChatOptions) { o.MaxPending = 4 })
	ann := dialV3(t, b.tcp, "ann", "d1")
	up := protocol.Uplink(app, "ann", "d1")
	ann.publish(up, sendJSON("bob", "hello", ""))
	g.close()
	for i := range 10 {
		ann.pub(uint16(300+i), up, sendJSON("bob", fmt.Sprint("m", i), ""))
	}
	deadline := time.Now().Add(5 * time.Second)
	for b.hook.Stats().Waits == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the fifth publish never waited for room")
		}
		time.Sleep(time.Millisecond)
	}
	if got, peak := g.heldCount(), b.hook.Stats().PendingPeak; got != 4 || peak != 4 {
		t.Fatalf("%d appends queued, peak %d in progress; the bound is 4", got, peak)
	}
	// Another client is not held up by ann's full pipeline.
	cy := dialV3(t, b.tcp, "cy", "d1")
	if pk := cy.publish(protocol.Uplink(app, "cy", "d1"), `{"op":"convs","rid":"q"}`); pk.FixedHeader.Type != packets.Puback {
		t.Fatalf("cy got %+v", pk)
	}
	g.open()
	got := ann.acks(10)
	for i, id := range got {
		if id != uint16(300+i) {
			t.Fatalf("PUBACK order %v", got)
		}
	}
	if peak := b.hook.Stats().PendingPeak; peak != 4 {
		t.Fatalf("peak %d in progress, bound 4", peak)
	}
}

// A send whose append fails is answered with an error after the sends
// before it: an MQTT 5 client gets PUBACK 0x80, an MQTT 3.1.1 client no
// PUBACK at all (it resends on reconnect), and both an error envelope.
func TestChatStoreFailureAcks(t *testing.T) {
	b, g := startGated(t, nil)
	ctx := context.Background()
	from := chat.Sender{App: app, User: "ann", Device: "d1"}
	if _, err := b.svc.Send(ctx, from, chat.SendRequest{To: "bob", CMID: "hello", Type: "text", Body: json.RawMessage(`"hi"`)}); err != nil {
		t.Fatal(err)
	}
	conv := protocol.DirectConvID("ann", "bob")

	// MQTT 3.1.1.
	ann := dialV3(t, b.tcp, "ann", "d1")
	up := protocol.Uplink(app, "ann", "d1")
	g.fail(conv, 2)
	ann.pub(401, up, sendJSON("bob", "doomed", "r1"))
	ann.pub(402, up, `{"op":"convs","rid":"after"}`)
	// The error envelope and the PUBACK of 402 travel independently; had
	// 401 been acked, its PUBACK would come before 402's.
	acks := ann.acksUntil(func(m map[string]any) bool { return m["rid"] == "r1" && m["kind"] == "error" })
	if len(acks) == 0 {
		acks = ann.acks(1)
	}
	if acks[0] != 402 {
		t.Fatalf("PUBACKs %v, want only 402", acks)
	}
	// The next send takes seq 2: the failure left no gap.
	g.fail(conv, 0)
	ann.publish(up, sendJSON("bob", "doomed", ""))

	// MQTT 5.
	eve := connect(t, "mqtt://"+b.tcp, "ann", "d2")
	g.fail(conv, 3)
	if code := eve.publish(send("", "bob", "doomed2", "x"), nil); code != packets.ErrUnspecifiedError.Code {
		t.Fatalf("MQTT 5 PUBACK reason 0x%x, want 0x80", code)
	}
	eve.expect(func(in inbound) bool { return in.kind() == "error" && in.data["cmid"] == "doomed2" })
	g.fail(conv, 0)
	if code := eve.publish(send("", "bob", "doomed2", "x"), nil); code != 0 {
		t.Fatalf("retry: PUBACK reason 0x%x", code)
	}
	es, _ := b.store.Range(ctx, app, conv, 1, true, 100)
	var cmids []string
	for _, e := range es {
		var m protocol.Message
		_ = json.Unmarshal(e.Data, &m)
		cmids = append(cmids, m.CMID)
		if m.Seq != uint64(len(cmids)) {
			t.Fatalf("gap: position %d holds seq %d", len(cmids), m.Seq)
		}
	}
	if !slices.Equal(cmids, []string{"hello", "doomed", "doomed2"}) {
		t.Fatalf("stored %v", cmids)
	}
}
