package search_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/search"
	"github.com/warblerim/warbler/storage"
	"github.com/warblerim/warbler/storage/badgerstore"
)

type access map[string]map[string]uint64 // user -> conv -> floor

func (a access) Readable(_ context.Context, _, user string) (map[string]uint64, error) {
	return a[user], nil
}

type fixture struct {
	t     *testing.T
	store *badgerstore.ChatStore
	idx   *badgerstore.SearchIndex
	heads map[string]uint64
	now   time.Time
}

func newFixture(t *testing.T) *fixture {
	db, err := badgerstore.Open(t.TempDir(), badgerstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	st := badgerstore.NewChat(db, badgerstore.ChatOptions{})
	t.Cleanup(func() { st.Close() })
	for _, c := range []string{"team", "other"} {
		if err := st.CreateConversation(context.Background(), "demo", storage.Conversation{ID: c, Kind: storage.KindGroup}, []storage.Member{{User: "alice"}}); err != nil {
			t.Fatal(err)
		}
	}
	return &fixture{t: t, store: st, idx: badgerstore.NewSearchIndex(db), heads: map[string]uint64{}, now: time.Unix(1_800_000_000, 0)}
}

// append writes a message to the log directly, as the chat service would.
func (f *fixture) append(conv, typ string, body any, ref *protocol.Ref, age time.Duration) protocol.Message {
	f.t.Helper()
	raw, _ := json.Marshal(body)
	f.heads[conv]++
	m := protocol.Message{Kind: "msg", ID: "m" + conv + string(rune('a'+f.heads[conv])), Conv: conv, Seq: f.heads[conv],
		TS: f.now.Add(-age).UnixMilli(), From: protocol.Sender{User: "alice"}, Type: typ, Body: raw, Ref: ref}
	data, _ := json.Marshal(m)
	b := storage.AppendBatch{Entries: []storage.LogEntry{{Conv: conv, Seq: m.Seq, TS: m.TS, Sender: "alice", Data: data}}}
	if err := f.store.Append(context.Background(), "demo", b); err != nil {
		f.t.Fatal(err)
	}
	return m
}

// rewrite replaces a stored message (what an edit or recall does to the
// stored copy).
func (f *fixture) rewrite(m protocol.Message) {
	data, _ := json.Marshal(m)
	f.heads[m.Conv]++
	ev, _ := json.Marshal(protocol.Message{Kind: "msg", Conv: m.Conv, Seq: f.heads[m.Conv], Type: "x"})
	b := storage.AppendBatch{
		Entries: []storage.LogEntry{{Conv: m.Conv, Seq: f.heads[m.Conv], Data: ev}},
		Updates: []storage.LogEntry{{Conv: m.Conv, Seq: m.Seq, TS: m.TS, Sender: "alice", Data: data}},
	}
	if err := f.store.Append(context.Background(), "demo", b); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) service(a access) *search.Service {
	s, err := search.New(search.Options{Index: f.idx, Log: f.store, Convs: f.store, Access: a, Now: func() time.Time { return f.now }})
	if err != nil {
		f.t.Fatal(err)
	}
	return s
}

func seqs(r protocol.SearchResult) []uint64 {
	var out []uint64
	for _, h := range r.Hits {
		out = append(out, h.Seq)
	}
	return out
}

// waitFor polls cond until it holds or the deadline passes (the indexer
// works on its own goroutine).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestCatchUpRankAndEvents(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	// Written before the indexer runs: the catch-up reads them.
	f.append("team", "text", map[string]string{"text": "meeting about the Beijing trip"}, nil, 90*24*time.Hour)     // 1, old
	f.append("team", "text", map[string]string{"text": "我们下周去北京开会"}, nil, time.Hour)                                // 2
	f.append("team", "text", map[string]string{"text": "Beijing trip: trip trip, bring passports"}, nil, time.Hour) // 3, new and more trip
	f.append("team", "image", map[string]string{"text": "北京的照片"}, nil, time.Minute)                                 // 4
	f.append("other", "text", map[string]string{"text": "Beijing elsewhere"}, nil, time.Minute)                     // other conv
	f.append("team", "e2e", map[string]string{"ciphertext": "QmVpamluZw=="}, nil, time.Minute)                      // 5, opaque
	a := access{"alice": {"team": 0}, "late": {"team": 3}}
	s := f.service(a)
	stop := s.Start()
	defer stop()
	waitFor(t, "catch-up", func() bool { c, _ := f.idx.Cursor(ctx, "demo", "team"); return c == 5 })

	r, err := s.Search(ctx, "demo", "alice", "beijing trip", "", 0)
	if err != nil || len(r.Hits) != 2 || r.Hits[0].Seq != 3 || r.Hits[1].Seq != 1 {
		t.Fatalf("beijing trip: %v %v", seqs(r), err)
	}
	if r, _ := s.Search(ctx, "demo", "alice", "北京", "", 0); len(r.Hits) != 2 || r.Hits[0].Seq != 4 {
		t.Fatalf("北京: %v", seqs(r))
	}
	if r, _ := s.Search(ctx, "demo", "alice", "去北京", "", 0); len(r.Hits) != 1 || r.Hits[0].Seq != 2 {
		t.Fatalf("去北京: %v", seqs(r))
	}
	if r, _ := s.Search(ctx, "demo", "alice", "京", "", 0); len(r.Hits) != 2 {
		t.Fatalf("京: %v", seqs(r))
	}
	// Only readable conversations; "late" joined at seq 3.
	if r, _ := s.Search(ctx, "demo", "alice", "elsewhere", "", 0); len(r.Hits) != 0 {
		t.Fatalf("another conversation: %v", seqs(r))
	}
	if r, _ := s.Search(ctx, "demo", "late", "beijing", "", 0); len(r.Hits) != 1 || r.Hits[0].Seq != 3 {
		t.Fatalf("history from join: %v", seqs(r))
	}
	if _, err := s.Search(ctx, "demo", "late", "beijing", "other", 0); err == nil {
		t.Fatal("search in a conversation of which the user is not a member")
	}

	// Live: an edit (the stored copy rewritten, then the event) and a
	// recall, handed over as the chat service does.
	m3 := protocol.Message{Kind: "msg", Conv: "team", Seq: 3, TS: f.now.Add(-time.Hour).UnixMilli(), From: protocol.Sender{User: "alice"}, Type: "text",
		Body: json.RawMessage(`{"text":"Shanghai instead"}`), Edited: true}
	f.rewrite(m3)                                                                                                                 // seq 6, a plain event the indexer skips
	edit := f.append("team", protocol.TypeEdit, map[string]string{"text": "Shanghai instead"}, &protocol.Ref{ID: "x", Seq: 3}, 0) // 7
	s.Stored("demo", edit)
	waitFor(t, "edit", func() bool { r, _ := s.Search(ctx, "demo", "alice", "shanghai", "", 0); return len(r.Hits) == 1 })
	if r, _ := s.Search(ctx, "demo", "alice", "passports", "", 0); len(r.Hits) != 0 {
		t.Fatalf("the edited-away text is still found: %v", seqs(r))
	}
	rec := f.append("team", protocol.TypeRecall, map[string]string{}, &protocol.Ref{ID: "x", Seq: 2}, 0) // 8
	s.Stored("demo", rec)
	waitFor(t, "recall", func() bool { r, _ := s.Search(ctx, "demo", "alice", "开会", "", 0); return len(r.Hits) == 0 })
	fresh := f.append("team", "text", map[string]string{"text": "Shanghai again"}, nil, 0) // 9
	s.Stored("demo", fresh)
	waitFor(t, "live message", func() bool { r, _ := s.Search(ctx, "demo", "alice", "shanghai", "", 0); return len(r.Hits) == 2 })
	if r, _ := s.Search(ctx, "demo", "alice", "shanghai from:bob", "", 0); len(r.Hits) != 0 {
		t.Fatalf("from:bob: %v", seqs(r))
	}
}

// TestReplySizeBound: an answer stays within MaxReplyBytes, with at least
// one hit, and says it was cut.
func TestReplySizeBound(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	long := strings.Repeat("padding ", 1000) + "needle"
	for i := 0; i < 5; i++ {
		f.append("team", "text", map[string]string{"text": long}, nil, time.Duration(i)*time.Minute)
	}
	s, err := search.New(search.Options{Index: f.idx, Log: f.store, Convs: f.store, Access: access{"alice": {"team": 0}}, MaxReplyBytes: 20000})
	if err != nil {
		t.Fatal(err)
	}
	stop := s.Start()
	defer stop()
	waitFor(t, "catch-up", func() bool { c, _ := f.idx.Cursor(ctx, "demo", "team"); return c == 5 })
	r, err := s.Search(ctx, "demo", "alice", "needle", "", 0)
	if err != nil || len(r.Hits) != 2 || !r.More {
		t.Fatalf("%d hits, more %v, %v", len(r.Hits), r.More, err)
	}
	s1, _ := search.New(search.Options{Index: f.idx, Log: f.store, Convs: f.store, Access: access{"alice": {"team": 0}}, MaxReplyBytes: 10})
	if r, _ := s1.Search(ctx, "demo", "alice", "needle", "", 0); len(r.Hits) != 1 || !r.More {
		t.Fatalf("tiny limit: %d hits, more %v", len(r.Hits), r.More)
	}
}

// TestDroppedHandOffsAreReadFromTheLog: with a queue of one, most live
// hand-offs are dropped; the indexer reads those messages from the log.
func TestDroppedHandOffsAreReadFromTheLog(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	s, err := search.New(search.Options{Index: f.idx, Log: f.store, Convs: f.store, Access: access{"alice": {"team": 0, "other": 0}}, Queue: 1})
	if err != nil {
		t.Fatal(err)
	}
	stop := s.Start()
	defer stop()
	var ms []protocol.Message
	for i := 0; i < 200; i++ {
		ms = append(ms, f.append([]string{"team", "other"}[i%2], "text", map[string]string{"text": "flood message"}, nil, 0))
	}
	for _, m := range ms { // faster than the indexer takes them
		s.Stored("demo", m)
	}
	waitFor(t, "every message indexed", func() bool {
		r, _ := s.Search(ctx, "demo", "alice", "flood", "", 100)
		return len(r.Hits) == 100
	})
	waitFor(t, "both cursors at the end", func() bool {
		a, _ := f.idx.Cursor(ctx, "demo", "team")
		b, _ := f.idx.Cursor(ctx, "demo", "other")
		return a == 100 && b == 100
	})
	if s.Stats().Dropped == 0 {
		t.Fatal("no hand-off was dropped; the test did not test the catch-up")
	}
}
