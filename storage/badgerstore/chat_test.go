package badgerstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/warblerim/warbler/storage"
)

func openChat(t testing.TB) (*DB, *ChatStore) {
	t.Helper()
	db, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	s := NewChat(db, ChatOptions{})
	t.Cleanup(func() { s.Close(); db.Close() })
	return db, s
}

var bg = context.Background()

func entries(conv string, from, n int) []storage.LogEntry {
	var es []storage.LogEntry
	for i := from; i < from+n; i++ {
		es = append(es, storage.LogEntry{Conv: conv, Seq: uint64(i), TS: int64(1000 + i), Sender: "u", Data: fmt.Appendf(nil, `{"n":%d}`, i)})
	}
	return es
}

func seqs(es []storage.LogEntry) []uint64 {
	var out []uint64
	for _, e := range es {
		out = append(out, e.Seq)
	}
	return out
}

func TestLogAppendRange(t *testing.T) {
	_, s := openChat(t)
	if err := s.Append(bg, "app", storage.AppendBatch{Entries: entries("a", 1, 10)}); err != nil {
		t.Fatal(err)
	}
	// "ab" must not leak into "a" (the trailing '/' of the prefix).
	if err := s.Append(bg, "app", storage.AppendBatch{Entries: entries("ab", 1, 3)}); err != nil {
		t.Fatal(err)
	}
	got, err := s.Range(bg, "app", "a", 3, true, 4)
	if err != nil || !slices.Equal(seqs(got), []uint64{3, 4, 5, 6}) {
		t.Fatalf("forward: %v %v", seqs(got), err)
	}
	if got[0].Sender != "u" || got[0].TS != 1003 || string(got[0].Data) != `{"n":3}` {
		t.Fatalf("entry round trip: %+v", got[0])
	}
	got, _ = s.Range(bg, "app", "a", 10, false, 3)
	if !slices.Equal(seqs(got), []uint64{10, 9, 8}) {
		t.Fatalf("backward: %v", seqs(got))
	}
	got, _ = s.Range(bg, "app", "a", 100, false, 2) // past the end: starts at the last
	if !slices.Equal(seqs(got), []uint64{10, 9}) {
		t.Fatalf("backward past end: %v", seqs(got))
	}
	got, _ = s.Range(bg, "app", "a", 1, true, 100)
	if len(got) != 10 {
		t.Fatalf("all: %v", seqs(got))
	}
	if n, _ := s.LastSeq(bg, "app", "a"); n != 10 {
		t.Fatalf("last seq %d", n)
	}
	if n, _ := s.LastSeq(bg, "other", "a"); n != 0 {
		t.Fatalf("other app sees %d", n)
	}
}

func TestLogAppendRefusesGaps(t *testing.T) {
	_, s := openChat(t)
	if err := s.Append(bg, "app", storage.AppendBatch{Entries: entries("c", 2, 1)}); !errors.Is(err, storage.ErrConflict) {
		t.Fatalf("first seq 2: %v", err)
	}
	if err := s.Append(bg, "app", storage.AppendBatch{Entries: entries("c", 1, 2)}); err != nil {
		t.Fatal(err)
	}
	for _, bad := range [][]storage.LogEntry{entries("c", 2, 1), entries("c", 4, 1), {{Conv: "c", Seq: 3}, {Conv: "c", Seq: 5}}} {
		if err := s.Append(bg, "app", storage.AppendBatch{Entries: bad}); !errors.Is(err, storage.ErrConflict) {
			t.Fatalf("%v: want conflict, got %v", seqs(bad), err)
		}
	}
	if n, _ := s.LastSeq(bg, "app", "c"); n != 2 {
		t.Fatalf("a refused append changed the head to %d", n)
	}
	if got, _ := s.Range(bg, "app", "c", 1, true, 10); len(got) != 2 {
		t.Fatalf("a refused append wrote %v", seqs(got))
	}
}

// A conflict in one caller's request must not fail the others that share
// its group commit.
func TestLogGroupCommitIsolatesFailures(t *testing.T) {
	_, s := openChat(t)
	var wg sync.WaitGroup
	errs := make([]error, 40)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := 1
			if i%4 == 0 {
				start = 7 // a gap: must fail alone
			}
			errs[i] = s.Append(bg, "app", storage.AppendBatch{Entries: entries(fmt.Sprint("c", i), start, 3)})
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if (i%4 == 0) != errors.Is(err, storage.ErrConflict) || (i%4 != 0 && err != nil) {
			t.Fatalf("request %d: %v", i, err)
		}
	}
}

func TestLogAppendFailsWhenTheDatabaseFails(t *testing.T) {
	db, s := openChat(t)
	db.Close()
	err := s.Append(bg, "app", storage.AppendBatch{Entries: entries("c", 1, 1)})
	if err == nil {
		t.Fatal("append on a closed database reported success")
	}
	s.Close()
	if err := s.Append(bg, "app", storage.AppendBatch{Entries: entries("c", 1, 1)}); !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
}

func TestLogSurvivesReopen(t *testing.T) {
	dir := t.TempDir()
	db, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	s := NewChat(db, ChatOptions{})
	if err := s.Append(bg, "app", storage.AppendBatch{Entries: entries("c", 1, 5),
		Dedupe: []storage.Dedupe{{Key: storage.DedupeKey{User: "u", Device: "d", CMID: "m1"}, Record: storage.DedupeRecord{Conv: "c", ID: "x", Seq: 5}, TTL: time.Hour}}}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	db.Close()
	db, err = Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	s = NewChat(db, ChatOptions{})
	defer s.Close()
	if n, _ := s.LastSeq(bg, "app", "c"); n != 5 {
		t.Fatalf("last seq after reopen %d", n)
	}
	if r, err := s.LookupDedupe(bg, "app", storage.DedupeKey{User: "u", Device: "d", CMID: "m1"}); err != nil || r.Seq != 5 || r.ID != "x" {
		t.Fatalf("dedupe after reopen %+v %v", r, err)
	}
}

func TestDedupeExpires(t *testing.T) {
	_, s := openChat(t)
	k := storage.DedupeKey{User: "u", Device: "d", CMID: "m"}
	if _, err := s.LookupDedupe(bg, "app", k); !errors.Is(err, storage.ErrNotFound) {
		t.Fatal(err)
	}
	err := s.Append(bg, "app", storage.AppendBatch{Entries: entries("c", 1, 1),
		Dedupe: []storage.Dedupe{{Key: k, Record: storage.DedupeRecord{Conv: "c", ID: "i", Seq: 1}, TTL: time.Second}}})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := s.LookupDedupe(bg, "app", k); err != nil || r.Seq != 1 {
		t.Fatalf("%+v %v", r, err)
	}
	deadline := time.Now().Add(5 * time.Second) // Badger TTLs have 1 s resolution
	for {
		if _, err := s.LookupDedupe(bg, "app", k); errors.Is(err, storage.ErrNotFound) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("dedupe entry never expired")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestConversationsAndMembers(t *testing.T) {
	_, s := openChat(t)
	c := storage.Conversation{ID: "g", Kind: storage.KindGroup, Name: "Team", CreatedBy: "alice", Created: 1}
	ms := []storage.Member{{User: "alice", Role: storage.RoleOwner}, {User: "bob", Role: storage.RoleMember}, {User: "bob", Role: storage.RoleMember}}
	if err := s.CreateConversation(bg, "app", c, ms); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateConversation(bg, "app", c, ms); !errors.Is(err, storage.ErrExists) {
		t.Fatalf("second create: %v", err)
	}
	got, err := s.GetConversation(bg, "app", "g")
	if err != nil || got.Members != 2 || got.Name != "Team" || got.Kind != storage.KindGroup {
		t.Fatalf("%+v %v", got, err)
	}
	if _, err := s.GetConversation(bg, "app2", "g"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("other app: %v", err)
	}
	added, err := s.AddMembers(bg, "app", "g", []storage.Member{{User: "bob"}, {User: "carol", Role: storage.RoleMember}}, 3)
	if err != nil || !slices.Equal(added, []string{"carol"}) {
		t.Fatalf("add %v %v", added, err)
	}
	if _, err := s.AddMembers(bg, "app", "g", []storage.Member{{User: "dave"}}, 3); !errors.Is(err, storage.ErrLimit) {
		t.Fatalf("over max: %v", err)
	}
	if _, err := s.AddMembers(bg, "app", "nope", []storage.Member{{User: "dave"}}, 0); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("missing conv: %v", err)
	}
	if err := s.SetRole(bg, "app", "g", "bob", storage.RoleAdmin); err != nil {
		t.Fatal(err)
	}
	if m, _ := s.GetMember(bg, "app", "g", "bob"); m.Role != storage.RoleAdmin {
		t.Fatalf("role %v", m.Role)
	}
	list, _ := s.ListMembers(bg, "app", "g", "", 0)
	if len(list) != 3 || list[0].User != "alice" || list[2].User != "carol" {
		t.Fatalf("members %+v", list)
	}
	list, _ = s.ListMembers(bg, "app", "g", "bob", 1)
	if len(list) != 1 || list[0].User != "bob" {
		t.Fatalf("page %+v", list)
	}
	removed, err := s.RemoveMembers(bg, "app", "g", []string{"carol", "zed"})
	if err != nil || !slices.Equal(removed, []string{"carol"}) {
		t.Fatalf("remove %v %v", removed, err)
	}
	if _, err := s.GetMember(bg, "app", "g", "carol"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatal("carol still a member")
	}
	if got, _ := s.GetConversation(bg, "app", "g"); got.Members != 2 {
		t.Fatalf("count %d", got.Members)
	}
	if err := s.CreateConversation(bg, "app", storage.Conversation{ID: "h", Kind: storage.KindChannel}, []storage.Member{{User: "bob"}}); err != nil {
		t.Fatal(err)
	}
	convs, _ := s.UserConversations(bg, "app", "bob", "", 0)
	if !slices.Equal(convs, []string{"g", "h"}) {
		t.Fatalf("bob's convs %v", convs)
	}
	if convs, _ := s.UserConversations(bg, "app", "carol", "", 0); len(convs) != 0 {
		t.Fatalf("carol's convs %v", convs)
	}
	var walked []string
	s.WalkConversations(bg, func(app, conv string) error { walked = append(walked, app+":"+conv); return nil })
	if !slices.Equal(walked, []string{"app:g", "app:h"}) {
		t.Fatalf("walk %v", walked)
	}
}

func TestPositionsOnlyMoveForward(t *testing.T) {
	_, s := openChat(t)
	s.CreateConversation(bg, "app", storage.Conversation{ID: "g", Kind: storage.KindGroup}, []storage.Member{{User: "u"}})
	for _, step := range []struct{ seq, prev uint64 }{{5, 0}, {3, 5}, {9, 5}, {9, 9}} {
		prev, err := s.MarkRead(bg, "app", "g", "u", step.seq)
		if err != nil || prev != step.prev {
			t.Fatalf("read %d: prev %d %v, want %d", step.seq, prev, err, step.prev)
		}
		prev, err = s.SetCursor(bg, "app", "u", "d", "g", step.seq)
		if err != nil || prev != step.prev {
			t.Fatalf("cursor %d: prev %d %v, want %d", step.seq, prev, err, step.prev)
		}
	}
	if m, _ := s.GetMember(bg, "app", "g", "u"); m.Read != 9 {
		t.Fatalf("read %d", m.Read)
	}
	if _, err := s.MarkRead(bg, "app", "g", "stranger", 1); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("non-member read: %v", err)
	}
	cur, _ := s.Cursors(bg, "app", "u", "d")
	if cur["g"] != 9 || len(cur) != 1 {
		t.Fatalf("cursors %v", cur)
	}
	// An append can advance the author's read position atomically.
	s.Append(bg, "app", storage.AppendBatch{Entries: entries("g", 1, 12), Reads: []storage.ReadMark{{Conv: "g", User: "u", Seq: 12}, {Conv: "g", User: "ghost", Seq: 12}}})
	if m, _ := s.GetMember(bg, "app", "g", "u"); m.Read != 12 {
		t.Fatalf("read after append %d", m.Read)
	}
}

func TestTrim(t *testing.T) {
	_, s := openChat(t)
	s.Append(bg, "app", storage.AppendBatch{Entries: entries("c", 1, 20)}) // ts 1001..1020
	n, err := s.Trim(bg, "app", "c", 0, 15)
	if err != nil || n != 5 {
		t.Fatalf("keep 15: %d %v", n, err)
	}
	n, _ = s.Trim(bg, "app", "c", 1010, 0) // ts < 1010: seqs 6..9
	if n != 4 {
		t.Fatalf("age: %d", n)
	}
	got, _ := s.Range(bg, "app", "c", 0, true, 100)
	if len(got) != 11 || got[0].Seq != 10 {
		t.Fatalf("left %v", seqs(got))
	}
	if last, _ := s.LastSeq(bg, "app", "c"); last != 20 {
		t.Fatalf("trim moved the head to %d", last)
	}
	s.Trim(bg, "app", "c", 1_000_000, 0)
	if err := s.Append(bg, "app", storage.AppendBatch{Entries: entries("c", 21, 1)}); err != nil {
		t.Fatalf("append after trimming everything: %v", err)
	}
}

// The rotated-WAL sweep fsyncs each immutable memtable WAL once and leaves
// the active (newest) one to DB.Sync.
func TestSyncRotatedWALs(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"00003.mem", "00004.mem", "00005.mem", "MANIFEST", "000001.sst", "x.mem"} {
		if err := writeFile(dir, n); err != nil {
			t.Fatal(err)
		}
	}
	c := &committer{syncedWAL: map[int]bool{}}
	if err := c.syncRotatedWALs(dir); err != nil {
		t.Fatal(err)
	}
	if !c.syncedWAL[3] || !c.syncedWAL[4] || c.syncedWAL[5] || len(c.syncedWAL) != 2 {
		t.Fatalf("synced %v", c.syncedWAL)
	}
	removeFile(dir, "00003.mem")
	if err := c.syncRotatedWALs(dir); err != nil {
		t.Fatal(err)
	}
	if c.syncedWAL[3] {
		t.Fatal("a deleted WAL is still remembered")
	}
}

// The durable marks are per batch in progress: once appends are durable
// none is left, however many conversations were written to, and readers
// see every entry.
func TestDurableMarksDoNotAccumulate(t *testing.T) {
	_, s := openChat(t)
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Add(1)
		conv := fmt.Sprint("c", i)
		if err := s.AppendAsync(bg, "app", storage.AppendBatch{Entries: entries(conv, 1, 2)}, func(err error) {
			defer wg.Done()
			if err != nil {
				t.Errorf("append %s: %v", conv, err)
			}
		}); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	s.mu.Lock()
	n := len(s.durable)
	s.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d durable marks kept after every append was durable", n)
	}
	for _, conv := range []string{"c0", "c199"} {
		if head, err := s.LastSeq(bg, "app", conv); err != nil || head != 2 {
			t.Fatalf("%s: head %d %v", conv, head, err)
		}
	}
}
