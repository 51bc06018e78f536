package badgerstore

import (
	"errors"
	"testing"

	"github.com/warblerim/warbler/storage"
)

// An append's Updates rewrite earlier entries atomically with it, survive
// a reopen, and fail the whole batch (nothing appended) when the entry is
// gone.
func TestLogUpdates(t *testing.T) {
	dir := t.TempDir()
	db, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	s := NewChat(db, ChatOptions{})
	if err := s.Append(bg, "app", storage.AppendBatch{Entries: entries("c", 1, 3)}); err != nil {
		t.Fatal(err)
	}
	ev := storage.LogEntry{Conv: "c", Seq: 4, TS: 2000, Sender: "v", Data: []byte(`{"edit":2}`)}
	up := storage.LogEntry{Conv: "c", Seq: 2, TS: 1002, Sender: "u", Data: []byte(`{"n":2,"edited":true}`)}
	if err := s.Append(bg, "app", storage.AppendBatch{Entries: []storage.LogEntry{ev}, Updates: []storage.LogEntry{up}}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	db.Close()
	if db, err = Open(dir, Options{}); err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	s = NewChat(db, ChatOptions{})
	defer s.Close()
	got, _ := s.Range(bg, "app", "c", 1, true, 10)
	if len(got) != 4 || string(got[1].Data) != `{"n":2,"edited":true}` || got[1].TS != 1002 || got[1].Sender != "u" || string(got[3].Data) != `{"edit":2}` {
		t.Fatalf("after reopen: %+v", got)
	}

	// The entry to update was trimmed: nothing of the batch is written.
	if _, err := s.Trim(bg, "app", "c", 0, 3); err != nil { // drops seq 1
		t.Fatal(err)
	}
	gone := storage.LogEntry{Conv: "c", Seq: 1, TS: 1001, Sender: "u", Data: []byte(`{}`)}
	err = s.Append(bg, "app", storage.AppendBatch{Entries: entries("c", 5, 1), Updates: []storage.LogEntry{gone}})
	if !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("update of a trimmed entry: %v", err)
	}
	if last, _ := s.LastSeq(bg, "app", "c"); last != 4 {
		t.Fatalf("the failed batch moved the head to %d", last)
	}
	if got, _ := s.Range(bg, "app", "c", 1, true, 10); len(got) != 3 || got[0].Seq != 2 {
		t.Fatalf("the failed batch wrote: %v", seqs(got))
	}
}
