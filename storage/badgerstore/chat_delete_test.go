package badgerstore

import (
	"errors"
	"slices"
	"testing"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/warblerim/warbler/storage"
)

// TestDeleteConversation deletes a conversation with a log longer than
// one deletion chunk: nothing of it is left under its keys, its neighbour
// with a longer ID ("ab" next to "a") and the members' other
// conversations and positions are untouched, and the ID can be used again
// from seq 1.
func TestDeleteConversation(t *testing.T) {
	db, s := openChat(t)
	for _, conv := range []string{"a", "ab"} {
		if err := s.CreateConversation(bg, "app", storage.Conversation{ID: conv, Kind: storage.KindGroup},
			[]storage.Member{{User: "u1", Role: storage.RoleOwner}, {User: "u2", Role: storage.RoleMember}}); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 2*trimChunk+5; i += 500 {
		if err := s.Append(bg, "app", storage.AppendBatch{Entries: entries("a", i+1, 500)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Append(bg, "app", storage.AppendBatch{Entries: entries("ab", 1, 3)}); err != nil {
		t.Fatal(err)
	}
	for _, conv := range []string{"a", "ab"} {
		if _, err := s.SetCursor(bg, "app", "u2", "phone", conv, 2); err != nil {
			t.Fatal(err)
		}
	}
	members, err := s.DeleteConversation(bg, "app", "a")
	if err != nil || !slices.Equal(members, []string{"u1", "u2"}) {
		t.Fatalf("delete: %v %v", members, err)
	}
	if _, err := s.GetConversation(bg, "app", "a"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("record still there: %v", err)
	}
	if _, err := s.DeleteConversation(bg, "app", "a"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
	err = db.Badger().View(func(txn *badger.Txn) error {
		for _, k := range [][]byte{headKey("app", "a"), convKey("app", "a"), userConvKey("app", "u1", "a"), userConvKey("app", "u2", "a"),
			cursorKey("app", "u2", "phone", "a")} {
			if _, err := txn.Get(k); !errors.Is(err, badger.ErrKeyNotFound) {
				t.Errorf("key %s left (%v)", k, err)
			}
		}
		for _, p := range [][]byte{logPrefix("app", "a"), memberPrefix("app", "a")} {
			it := txn.NewIterator(badger.IteratorOptions{Prefix: p})
			it.Rewind()
			left := it.Valid()
			it.Close()
			if left {
				t.Errorf("keys left under %s", p)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if cs, _ := s.UserConversations(bg, "app", "u1", "", 0); !slices.Equal(cs, []string{"ab"}) {
		t.Fatalf("u1's conversations: %v", cs)
	}
	if c, _ := s.Cursors(bg, "app", "u2", "phone"); len(c) != 1 || c["ab"] != 2 {
		t.Fatalf("u2's cursors: %v", c)
	}
	if got, _ := s.Range(bg, "app", "ab", 1, true, 10); len(got) != 3 {
		t.Fatalf("neighbour's log: %v", seqs(got))
	}
	// The ID starts afresh.
	if err := s.CreateConversation(bg, "app", storage.Conversation{ID: "a", Kind: storage.KindGroup}, nil); err != nil {
		t.Fatal(err)
	}
	if n, _ := s.LastSeq(bg, "app", "a"); n != 0 {
		t.Fatalf("re-created conversation's head %d", n)
	}
	if err := s.Append(bg, "app", storage.AppendBatch{Entries: entries("a", 1, 1)}); err != nil {
		t.Fatal(err)
	}
}
