package badgerstore

// ChatStore: storage.ChatStore on the shared Badger database.
//
// Keys. IDs never contain '/', so '/' separates fields unambiguously.
// Record type comes before the app so that one prefix scan can walk a type
// across all apps (retention walks every conversation):
//
//	m/{app}/{conv}/{seq:8 bytes big-endian}    log entry (see log.go)
//	c/h/{app}/{conv}                           head: last appended seq (8 bytes)
//	c/v/{app}/{conv}                           conversation record (JSON)
//	c/mb/{app}/{conv}/{user}                   member record with read position (JSON)
//	c/uc/{app}/{user}/{conv}                   index: a user's conversations (empty value)
//	c/dc/{app}/{user}/{device}/{conv}          a device's delivered position (8 bytes)
//	c/dd/{app}/{user}/{device}/{cmid}          dedupe record (JSON, with TTL)
//
// Every write goes through the group committer (log_commit.go), so writes
// are durable when they return and read-modify-writes never race.

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/warblerim/warbler/storage"
)

// ChatOptions tunes the chat store. The zero value is a sensible default.
type ChatOptions struct {
	// MaxBatch is the most requests one group commit gathers (default 1024).
	MaxBatch int
	// MaxTxnBytes bounds one Badger transaction of a group commit (default
	// 512 KiB, well below Badger's limit of 15% of the 8 MiB memtable); a
	// larger batch is split into several transactions and one sync.
	MaxTxnBytes int
}

// ChatStore implements storage.ChatStore. Create it with NewChat and Close
// it before closing the DB.
type ChatStore struct {
	db *badger.DB
	c  *committer

	// durable holds, for every conversation appended to in the batch the
	// committer is working on, the highest seq known to be on stable
	// storage. Entries above it may be committed (visible to Badger
	// readers) but not yet synced; readers of the log never see them, so no
	// device can be told of a message that a power loss could then take
	// back (and whose seq would be reused). The committer works one batch
	// at a time, so once a batch is synced everything committed is durable
	// and the map is emptied: it holds at most one batch's conversations,
	// not every one written to since start. After a failed sync it is kept
	// (the store refuses writes from then on).
	mu      sync.Mutex
	durable map[string]uint64
}

var _ storage.ChatStore = (*ChatStore)(nil)

// NewChat starts the chat store on db, with its committer goroutine. At
// most one chat store may be open on a DB at a time: its committer must be
// the only writer of the chat keys, and it caches some of what it wrote.
func NewChat(db *DB, o ChatOptions) *ChatStore {
	if o.MaxBatch <= 0 {
		o.MaxBatch = 1024
	}
	if o.MaxTxnBytes <= 0 {
		o.MaxTxnBytes = 512 << 10
	}
	s := &ChatStore{
		db:      db.Badger(),
		c:       newCommitter(db.Badger(), o.MaxBatch, o.MaxTxnBytes),
		durable: map[string]uint64{},
	}
	s.c.synced = func() {
		s.mu.Lock()
		clear(s.durable)
		s.mu.Unlock()
	}
	return s
}

// Close finishes queued writes and stops the committer. Later writes fail
// with ErrClosed. It does not close the DB.
func (s *ChatStore) Close() error {
	s.c.close()
	return nil
}

// Stats reports the group committer's counters.
func (s *ChatStore) Stats() CommitStats { return s.c.stats() }

// Keys.

func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

func getU64(b []byte) uint64 {
	if len(b) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

func headKey(app, conv string) []byte { return []byte("c/h/" + app + "/" + conv) }
func convKey(app, conv string) []byte { return []byte("c/v/" + app + "/" + conv) }
func memberPrefix(app, conv string) []byte {
	return []byte("c/mb/" + app + "/" + conv + "/")
}
func memberKey(app, conv, user string) []byte {
	return []byte("c/mb/" + app + "/" + conv + "/" + user)
}
func userConvPrefix(app, user string) []byte { return []byte("c/uc/" + app + "/" + user + "/") }
func userConvKey(app, user, conv string) []byte {
	return []byte("c/uc/" + app + "/" + user + "/" + conv)
}
func cursorPrefix(app, user, device string) []byte {
	return []byte("c/dc/" + app + "/" + user + "/" + device + "/")
}
func cursorKey(app, user, device, conv string) []byte {
	return []byte("c/dc/" + app + "/" + user + "/" + device + "/" + conv)
}
func dedupeKey(app string, k storage.DedupeKey) []byte {
	return []byte("c/dd/" + app + "/" + k.User + "/" + k.Device + "/" + k.CMID)
}

// Records.

type convRec struct {
	Kind      storage.ConvKind `json:"k"`
	Name      string           `json:"n,omitempty"`
	CreatedBy string           `json:"b,omitempty"`
	Created   int64            `json:"c"`
	Members   int              `json:"m"`
}

type memberRec struct {
	Role   storage.Role `json:"r"`
	Joined int64        `json:"j"`
	Read   uint64       `json:"rd,omitempty"`
}

type dedupeRec struct {
	Conv string `json:"c"`
	ID   string `json:"i"`
	Seq  uint64 `json:"s"`
	TS   int64  `json:"t"`
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err) // only plain structs are marshalled here
	}
	return b
}

// getJSON reads key into v; storage.ErrNotFound if absent.
func getJSON(txn *badger.Txn, key []byte, v any) error {
	it, err := txn.Get(key)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return storage.ErrNotFound
	}
	if err != nil {
		return err
	}
	return it.Value(func(b []byte) error {
		if err := json.Unmarshal(b, v); err != nil {
			return fmt.Errorf("corrupt record %q: %w", key, err)
		}
		return nil
	})
}

func getU64Key(txn *badger.Txn, key []byte) (uint64, error) {
	it, err := txn.Get(key)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	var v uint64
	err = it.Value(func(b []byte) error { v = getU64(b); return nil })
	return v, err
}

func (s *ChatStore) view(ctx context.Context, fn func(*badger.Txn) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.db.View(fn)
}

// Conversations.

// CreateConversation implements storage.Conversations.
func (s *ChatStore) CreateConversation(ctx context.Context, app string, c storage.Conversation, members []storage.Member) error {
	return s.c.do(ctx, func(w *wtxn) ([]writeOp, error) {
		var existing convRec
		switch err := w.getJSON(convKey(app, c.ID), &existing); {
		case err == nil:
			return nil, storage.ErrExists
		case !errors.Is(err, storage.ErrNotFound):
			return nil, err
		}
		seen := map[string]bool{}
		var ws []writeOp
		for _, m := range members {
			if seen[m.User] {
				continue
			}
			seen[m.User] = true
			ws = append(ws,
				writeOp{key: memberKey(app, c.ID, m.User), val: must(json.Marshal(memberRec{Role: m.Role, Joined: m.Joined, Read: m.Read}))},
				writeOp{key: userConvKey(app, m.User, c.ID), val: []byte{}})
		}
		rec := convRec{Kind: c.Kind, Name: c.Name, CreatedBy: c.CreatedBy, Created: c.Created, Members: len(seen)}
		ws = append(ws, writeOp{key: convKey(app, c.ID), val: must(json.Marshal(rec))})
		return ws, nil
	}, nil)
}

// GetConversation implements storage.Conversations.
func (s *ChatStore) GetConversation(ctx context.Context, app, conv string) (storage.Conversation, error) {
	var rec convRec
	err := s.view(ctx, func(txn *badger.Txn) error { return getJSON(txn, convKey(app, conv), &rec) })
	if err != nil {
		return storage.Conversation{}, err
	}
	return storage.Conversation{ID: conv, Kind: rec.Kind, Name: rec.Name, CreatedBy: rec.CreatedBy, Created: rec.Created, Members: rec.Members}, nil
}

// GetMember implements storage.Conversations.
func (s *ChatStore) GetMember(ctx context.Context, app, conv, user string) (storage.Member, error) {
	var rec memberRec
	err := s.view(ctx, func(txn *badger.Txn) error { return getJSON(txn, memberKey(app, conv, user), &rec) })
	if err != nil {
		return storage.Member{}, err
	}
	return storage.Member{User: user, Role: rec.Role, Joined: rec.Joined, Read: rec.Read}, nil
}

// ListMembers implements storage.Conversations.
func (s *ChatStore) ListMembers(ctx context.Context, app, conv, start string, limit int) ([]storage.Member, error) {
	var out []storage.Member
	p := memberPrefix(app, conv)
	err := s.view(ctx, func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: p, PrefetchValues: true, PrefetchSize: 100})
		defer it.Close()
		for it.Seek(append(p, start...)); it.Valid(); it.Next() {
			if limit > 0 && len(out) >= limit {
				return nil
			}
			item := it.Item()
			var rec memberRec
			if err := item.Value(func(b []byte) error { return json.Unmarshal(b, &rec) }); err != nil {
				return fmt.Errorf("corrupt member %q: %w", item.Key(), err)
			}
			out = append(out, storage.Member{User: string(item.Key()[len(p):]), Role: rec.Role, Joined: rec.Joined, Read: rec.Read})
		}
		return nil
	})
	return out, err
}

// AddMembers implements storage.Conversations.
func (s *ChatStore) AddMembers(ctx context.Context, app, conv string, members []storage.Member, max int) ([]string, error) {
	var added []string
	err := s.c.do(ctx, func(w *wtxn) ([]writeOp, error) {
		added = nil
		var rec convRec
		if err := w.getJSON(convKey(app, conv), &rec); err != nil {
			return nil, err
		}
		var ws []writeOp
		seen := map[string]bool{}
		for _, m := range members {
			if seen[m.User] {
				continue
			}
			seen[m.User] = true
			var old memberRec
			switch err := w.getJSON(memberKey(app, conv, m.User), &old); {
			case err == nil:
				continue
			case !errors.Is(err, storage.ErrNotFound):
				return nil, err
			}
			added = append(added, m.User)
			ws = append(ws,
				writeOp{key: memberKey(app, conv, m.User), val: must(json.Marshal(memberRec{Role: m.Role, Joined: m.Joined, Read: m.Read}))},
				writeOp{key: userConvKey(app, m.User, conv), val: []byte{}})
		}
		if max > 0 && rec.Members+len(added) > max {
			added = nil
			return nil, storage.ErrLimit
		}
		rec.Members += len(added)
		return append(ws, writeOp{key: convKey(app, conv), val: must(json.Marshal(rec))}), nil
	}, nil)
	if err != nil {
		return nil, err
	}
	return added, nil
}

// RemoveMembers implements storage.Conversations.
func (s *ChatStore) RemoveMembers(ctx context.Context, app, conv string, users []string) ([]string, error) {
	var removed []string
	err := s.c.do(ctx, func(w *wtxn) ([]writeOp, error) {
		removed = nil
		var rec convRec
		if err := w.getJSON(convKey(app, conv), &rec); err != nil {
			return nil, err
		}
		var ws []writeOp
		seen := map[string]bool{}
		for _, u := range users {
			if seen[u] {
				continue
			}
			seen[u] = true
			var old memberRec
			switch err := w.getJSON(memberKey(app, conv, u), &old); {
			case errors.Is(err, storage.ErrNotFound):
				continue
			case err != nil:
				return nil, err
			}
			removed = append(removed, u)
			ws = append(ws,
				writeOp{key: memberKey(app, conv, u), del: true},
				writeOp{key: userConvKey(app, u, conv), del: true})
		}
		rec.Members -= len(removed)
		return append(ws, writeOp{key: convKey(app, conv), val: must(json.Marshal(rec))}), nil
	}, nil)
	if err != nil {
		return nil, err
	}
	return removed, nil
}

// SetRole implements storage.Conversations.
func (s *ChatStore) SetRole(ctx context.Context, app, conv, user string, role storage.Role) error {
	return s.c.do(ctx, func(w *wtxn) ([]writeOp, error) {
		var rec memberRec
		if err := w.getJSON(memberKey(app, conv, user), &rec); err != nil {
			return nil, err
		}
		rec.Role = role
		return []writeOp{{key: memberKey(app, conv, user), val: must(json.Marshal(rec))}}, nil
	}, nil)
}

// RenameConversation implements storage.Conversations.
func (s *ChatStore) RenameConversation(ctx context.Context, app, conv, name string) error {
	return s.c.do(ctx, func(w *wtxn) ([]writeOp, error) {
		var rec convRec
		if err := w.getJSON(convKey(app, conv), &rec); err != nil {
			return nil, err
		}
		rec.Name = name
		return []writeOp{{key: convKey(app, conv), val: must(json.Marshal(rec))}}, nil
	}, nil)
}

// UserConversations implements storage.Conversations.
func (s *ChatStore) UserConversations(ctx context.Context, app, user, start string, limit int) ([]string, error) {
	var out []string
	p := userConvPrefix(app, user)
	err := s.view(ctx, func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: p})
		defer it.Close()
		for it.Seek(append(p, start...)); it.Valid(); it.Next() {
			if limit > 0 && len(out) >= limit {
				return nil
			}
			out = append(out, string(it.Item().Key()[len(p):]))
		}
		return nil
	})
	return out, err
}

// WalkConversations implements storage.Conversations.
func (s *ChatStore) WalkConversations(ctx context.Context, fn func(app, conv string) error) error {
	p := []byte("c/v/")
	return s.view(ctx, func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: p})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			app, conv, ok := strings.Cut(string(it.Item().Key()[len(p):]), "/")
			if !ok {
				continue
			}
			if err := fn(app, conv); err != nil {
				return err
			}
		}
		return nil
	})
}

// State.

// MarkRead implements storage.ChatState.
func (s *ChatStore) MarkRead(ctx context.Context, app, conv, user string, seq uint64) (uint64, error) {
	var prev uint64
	err := s.c.do(ctx, func(w *wtxn) ([]writeOp, error) {
		var rec memberRec
		if err := w.getJSON(memberKey(app, conv, user), &rec); err != nil {
			return nil, err
		}
		prev = rec.Read
		if seq <= rec.Read {
			return nil, nil
		}
		rec.Read = seq
		return []writeOp{{key: memberKey(app, conv, user), val: must(json.Marshal(rec))}}, nil
	}, nil)
	return prev, err
}

// SetCursor implements storage.ChatState.
func (s *ChatStore) SetCursor(ctx context.Context, app, user, device, conv string, seq uint64) (uint64, error) {
	var prev uint64
	err := s.c.do(ctx, func(w *wtxn) ([]writeOp, error) {
		k := cursorKey(app, user, device, conv)
		var err error
		if prev, err = w.getU64(k); err != nil {
			return nil, err
		}
		if seq <= prev {
			return nil, nil
		}
		return []writeOp{{key: k, val: u64(seq)}}, nil
	}, nil)
	return prev, err
}

// Cursors implements storage.ChatState.
func (s *ChatStore) Cursors(ctx context.Context, app, user, device string) (map[string]uint64, error) {
	out := map[string]uint64{}
	p := cursorPrefix(app, user, device)
	err := s.view(ctx, func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: p, PrefetchValues: true})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			item := it.Item()
			if err := item.Value(func(b []byte) error {
				out[string(item.Key()[len(p):])] = getU64(b)
				return nil
			}); err != nil {
				return err
			}
		}
		return nil
	})
	return out, err
}

// LookupDedupe implements storage.Deduper.
func (s *ChatStore) LookupDedupe(ctx context.Context, app string, k storage.DedupeKey) (storage.DedupeRecord, error) {
	var rec dedupeRec
	err := s.view(ctx, func(txn *badger.Txn) error { return getJSON(txn, dedupeKey(app, k), &rec) })
	if err != nil {
		return storage.DedupeRecord{}, err
	}
	return storage.DedupeRecord{Conv: rec.Conv, ID: rec.ID, Seq: rec.Seq, TS: rec.TS}, nil
}
