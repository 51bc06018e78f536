package chat

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage"
)

// gatedStore is the real store with a gate in front of AppendAsync: while
// the gate is shut, appends are held (in order) instead of queued, so a
// test can build up a pipeline and then let it run. failSeq makes the
// append of one message fail where it stands in the queue: its seq is moved
// far ahead, so the store's own compare-and-set refuses it, in order, like
// any failure of the committer.
type gatedStore struct {
	storage.ChatStore
	mu      sync.Mutex
	shut    bool
	held    []heldAppend
	failSeq map[string]uint64 // conv -> seq to fail
}

type heldAppend struct {
	app  string
	b    storage.AppendBatch
	done func(error)
}

func (g *gatedStore) AppendAsync(ctx context.Context, app string, b storage.AppendBatch, done func(error)) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(b.Entries) > 0 && g.failSeq[b.Entries[0].Conv] == b.Entries[0].Seq {
		b.Entries = slices.Clone(b.Entries)
		b.Entries[0].Seq += 1 << 40
	}
	if g.shut {
		g.held = append(g.held, heldAppend{app, b, done})
		return nil
	}
	return g.ChatStore.AppendAsync(ctx, app, b, done)
}

func (g *gatedStore) close() { g.mu.Lock(); g.shut = true; g.mu.Unlock() }

func (g *gatedStore) open(t testing.TB) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.shut = false
	for _, h := range g.held {
		if err := g.ChatStore.AppendAsync(context.Background(), h.app, h.b, h.done); err != nil {
			t.Error(err)
		}
	}
	g.held = nil
}

func (g *gatedStore) heldCount() int { g.mu.Lock(); defer g.mu.Unlock(); return len(g.held) }

func gatedEnv(t testing.TB) (*env, *gatedStore) {
	e := newEnv(t, nil)
	g := &gatedStore{ChatStore: e.store, failSeq: map[string]uint64{}}
	e.svc = e.service(t, func(o *Options) { o.Store = g })
	return e, g
}

type sendResult struct {
	i   int
	ack protocol.Ack
	err error
}

// A failed append in the middle of a pipeline fails every later append of
// its conversation (none of them may land after the hole), leaves other
// conversations alone, and the conversation carries on from the last stored
// seq: the log never has a gap and nothing unstored is delivered.
func TestPipelineFailureLeavesNoGap(t *testing.T) {
	e, g := gatedEnv(t)
	mustCreate(t, e.svc, dev("ann", "d"), "g", "group", "bob")
	mustCreate(t, e.svc, dev("ann", "d"), "h", "group", "bob")
	g.close()
	g.failSeq["g"] = 5 // seq 1 is the "created" event: this is the 4th message
	const n = 10
	res := make(chan sendResult, 2*n)
	for i := range n {
		for _, conv := range []string{"g", "h"} {
			e.svc.SendAsync(ctx, dev("ann", "d"), SendRequest{Conv: conv, CMID: fmt.Sprint(conv, i), Type: "text", Body: text(fmt.Sprint(i))}, func(a protocol.Ack, err error) {
				res <- sendResult{i, a, err}
			})
		}
	}
	if got := g.heldCount(); got != 2*n {
		t.Fatalf("%d appends queued, want %d", got, 2*n)
	}
	g.open(t)
	okG, okH := map[int]uint64{}, 0
	for range 2 * n {
		r := <-res
		switch {
		case r.err == nil && r.ack.Conv == "g":
			okG[r.i] = r.ack.Seq
		case r.err == nil && r.ack.Conv == "h":
			okH++
		case r.err != nil && code(r.err) != protocol.CodeInternal:
			t.Fatalf("send %d failed with %v, want an internal error", r.i, r.err)
		}
	}
	if want := map[int]uint64{0: 2, 1: 3, 2: 4}; !sameSeqs(okG, want) {
		t.Fatalf("stored in g: %v, want %v (everything from the failed one on must fail)", okG, want)
	}
	if okH != n {
		t.Fatalf("h stored %d of %d: a failure in g must not touch h", okH, n)
	}
	// The conversation goes on from seq 4, and a failed cmid may be retried.
	delete(g.failSeq, "g")
	for i, cmid := range []string{"after", "g3", "g9"} {
		a, err := e.svc.Send(ctx, dev("ann", "d"), SendRequest{Conv: "g", CMID: cmid, Type: "text", Body: text(cmid)})
		if err != nil || a.Seq != uint64(5+i) || a.Duplicate {
			t.Fatalf("send %s after the failure: %+v %v", cmid, a, err)
		}
	}
	es, err := e.store.Range(ctx, "app", "g", 1, true, 100)
	if err != nil {
		t.Fatal(err)
	}
	for i, en := range es {
		if en.Seq != uint64(i+1) {
			t.Fatalf("log position %d holds seq %d", i, en.Seq)
		}
	}
	if len(es) != 7 {
		t.Fatalf("log holds %d messages, want 7", len(es))
	}
	// Only stored messages were delivered, in seq order.
	var seqs []uint64
	for _, m := range e.rec.msgs("g") {
		seqs = append(seqs, m.Seq)
	}
	if !slices.Equal(seqs, []uint64{1, 2, 3, 4, 5, 6, 7}) {
		t.Fatalf("delivered seqs %v", seqs)
	}
}

func sameSeqs(a, b map[int]uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// A retry that arrives while the original is still queued is answered with
// the original's position once that is durable, and stored and delivered
// once.
func TestPipelineRetryOfQueuedCMID(t *testing.T) {
	e, g := gatedEnv(t)
	mustCreate(t, e.svc, dev("ann", "d"), "g", "group", "bob")
	g.close()
	res := make(chan sendResult, 4)
	for i := range 4 {
		e.svc.SendAsync(ctx, dev("ann", "d"), SendRequest{Conv: "g", CMID: "once", Type: "text", Body: text("x")}, func(a protocol.Ack, err error) {
			res <- sendResult{i, a, err}
		})
	}
	if got := g.heldCount(); got != 1 {
		t.Fatalf("%d appends queued for one cmid", got)
	}
	select {
	case r := <-res:
		t.Fatalf("send %d answered before its original was durable: %+v", r.i, r)
	default:
	}
	g.open(t)
	var first protocol.Ack
	dups := 0
	for range 4 {
		r := <-res
		if r.err != nil {
			t.Fatal(r.err)
		}
		if first.ID == "" {
			first = r.ack
		} else if r.ack.ID != first.ID || r.ack.Seq != first.Seq {
			t.Fatalf("answers differ: %+v vs %+v", r.ack, first)
		}
		if r.ack.Duplicate {
			dups++
		}
	}
	if dups != 3 || first.Duplicate {
		t.Fatalf("%d duplicates (first: %+v), want the original plus 3", dups, first)
	}
	if n := len(e.rec.msgs("g")); n != 2 {
		t.Fatalf("delivered %d messages, want the created event and one", n)
	}
	if st := e.svc.Stats(); st.Sent != 2 || st.Duplicates != 3 {
		t.Fatalf("stats %+v", st)
	}
}
