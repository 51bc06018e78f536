package badgerstore

// The message log: one key per message, "m/{app}/{conv}/" + big-endian seq,
// so a conversation is a contiguous, seq-ordered key range (the trailing '/'
// keeps conversation "a" from prefixing "ab"). Paging forward is a prefix
// iterator with Seek(key(from)); backward is the same with Reverse, which
// Seek positions at the largest key <= key(from).
//
// The head key c/h/{app}/{conv} holds the last appended seq. Append checks
// it (compare-and-set, in the committer, so nothing races it) and moves it;
// retention never lowers it, so a trimmed conversation keeps counting up.
//
// Value layout: version byte (1), ts int64, sender length byte, sender,
// then the opaque message data.

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/warblerim/warbler/storage"
)

func logPrefix(app, conv string) []byte { return []byte("m/" + app + "/" + conv + "/") }

func logKey(app, conv string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(logPrefix(app, conv), seq)
}

const logValueVersion = 1

func encodeEntry(e storage.LogEntry) []byte {
	b := make([]byte, 0, 10+len(e.Sender)+len(e.Data))
	b = append(b, logValueVersion)
	b = binary.BigEndian.AppendUint64(b, uint64(e.TS))
	b = append(b, byte(len(e.Sender)))
	b = append(b, e.Sender...)
	return append(b, e.Data...)
}

func decodeEntry(conv string, seq uint64, v []byte) (storage.LogEntry, error) {
	if len(v) < 10 || v[0] != logValueVersion || len(v) < 10+int(v[9]) {
		return storage.LogEntry{}, fmt.Errorf("corrupt log entry %s/%d", conv, seq)
	}
	n := int(v[9])
	return storage.LogEntry{
		Conv:   conv,
		Seq:    seq,
		TS:     int64(binary.BigEndian.Uint64(v[1:9])),
		Sender: string(v[10 : 10+n]),
		Data:   append([]byte(nil), v[10+n:]...),
	}, nil
}

func durableKey(app, conv string) string { return app + "/" + conv }

// Append implements storage.MessageLog.
func (s *ChatStore) Append(ctx context.Context, app string, b storage.AppendBatch) error {
	if len(b.Entries) == 0 && len(b.Dedupe) == 0 && len(b.Reads) == 0 && len(b.Updates) == 0 {
		return nil
	}
	prepare, after, err := s.appendReq(app, b)
	if err != nil {
		return err
	}
	return s.c.do(ctx, prepare, after)
}

// AppendAsync implements storage.MessageLog.
func (s *ChatStore) AppendAsync(ctx context.Context, app string, b storage.AppendBatch, done func(error)) error {
	prepare, after, err := s.appendReq(app, b)
	if err != nil {
		return err
	}
	return s.c.submit(ctx, prepare, after, done)
}

// appendReq validates b and returns the committer functions that append
// it: prepare checks that each conversation continues at its head and
// produces the writes; after publishes the new durable marks.
func (s *ChatStore) appendReq(app string, b storage.AppendBatch) (func(*wtxn) ([]writeOp, error), func(), error) {
	for _, e := range append(b.Entries[:len(b.Entries):len(b.Entries)], b.Updates...) {
		if e.Seq == 0 || len(e.Sender) > 255 {
			return nil, nil, fmt.Errorf("append %s: seq must be positive and sender at most 255 bytes", e.Conv)
		}
	}
	heads := map[string]uint64{} // new head per conversation
	prepare := func(w *wtxn) ([]writeOp, error) {
		clear(heads)
		ws := make([]writeOp, 0, 2*len(b.Entries)+len(b.Dedupe)+len(b.Reads))
		for _, e := range b.Entries {
			head, seen := heads[e.Conv]
			if !seen {
				var err error
				if head, err = w.getU64(headKey(app, e.Conv)); err != nil {
					return nil, err
				}
			}
			if e.Seq != head+1 {
				return nil, fmt.Errorf("append %s seq %d after head %d: %w", e.Conv, e.Seq, head, storage.ErrConflict)
			}
			heads[e.Conv] = e.Seq
			ws = append(ws, writeOp{key: logKey(app, e.Conv, e.Seq), val: encodeEntry(e)})
		}
		for conv, head := range heads {
			ws = append(ws, writeOp{key: headKey(app, conv), val: u64(head)})
		}
		for _, e := range b.Updates {
			// The entry must still be there (retention may have trimmed
			// it). Read past the committer's cache: log values are large
			// and read once.
			k := logKey(app, e.Conv, e.Seq)
			if v, ok := w.overlay[string(k)]; ok {
				if !v.found {
					return nil, fmt.Errorf("update %s/%d: %w", e.Conv, e.Seq, storage.ErrNotFound)
				}
			} else if _, err := w.txn.Get(k); errors.Is(err, badger.ErrKeyNotFound) {
				return nil, fmt.Errorf("update %s/%d: %w", e.Conv, e.Seq, storage.ErrNotFound)
			} else if err != nil {
				return nil, err
			}
			ws = append(ws, writeOp{key: k, val: encodeEntry(e)})
		}
		for _, d := range b.Dedupe {
			r := dedupeRec{Conv: d.Record.Conv, ID: d.Record.ID, Seq: d.Record.Seq, TS: d.Record.TS}
			ws = append(ws, writeOp{key: dedupeKey(app, d.Key), val: must(json.Marshal(r)), ttl: d.TTL})
		}
		for _, rm := range b.Reads {
			var rec memberRec
			err := w.getJSON(memberKey(app, rm.Conv, rm.User), &rec)
			if errors.Is(err, storage.ErrNotFound) {
				continue // a service or a member who just left: nothing to mark
			}
			if err != nil {
				return nil, err
			}
			if rm.Seq > rec.Read {
				rec.Read = rm.Seq
				ws = append(ws, writeOp{key: memberKey(app, rm.Conv, rm.User), val: must(json.Marshal(rec))})
			}
		}
		// Before these entries become visible (at commit), pin the
		// durable mark of each conversation at its current head, so
		// readers stop there until the sync below has happened.
		s.mu.Lock()
		for conv, head := range heads {
			k := durableKey(app, conv)
			if _, ok := s.durable[k]; !ok {
				s.durable[k] = head - uint64(countConv(b.Entries, conv))
			}
		}
		s.mu.Unlock()
		return ws, nil
	}
	after := func() {
		s.mu.Lock()
		for conv, head := range heads {
			k := durableKey(app, conv)
			if head > s.durable[k] {
				s.durable[k] = head
			}
		}
		s.mu.Unlock()
	}
	return prepare, after, nil
}

func countConv(es []storage.LogEntry, conv string) int {
	n := 0
	for _, e := range es {
		if e.Conv == conv {
			n++
		}
	}
	return n
}

// durableLimit returns the durable mark of conv and whether there is one
// (there is none for conversations not appended to since start, whose
// stored entries are all durable). Call it after reading the database.
func (s *ChatStore) durableLimit(app, conv string) (uint64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.durable[durableKey(app, conv)]
	return v, ok
}

// LastSeq implements storage.MessageLog.
func (s *ChatStore) LastSeq(ctx context.Context, app, conv string) (uint64, error) {
	var head uint64
	err := s.view(ctx, func(txn *badger.Txn) error {
		var err error
		head, err = getU64Key(txn, headKey(app, conv))
		return err
	})
	if err != nil {
		return 0, err
	}
	if lim, ok := s.durableLimit(app, conv); ok && lim < head {
		head = lim
	}
	return head, nil
}

// Range implements storage.MessageLog.
func (s *ChatStore) Range(ctx context.Context, app, conv string, from uint64, forward bool, limit int) ([]storage.LogEntry, error) {
	if limit <= 0 {
		limit = 100
	}
	var out []storage.LogEntry
	p := logPrefix(app, conv)
	err := s.view(ctx, func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: p, PrefetchValues: true, PrefetchSize: min(limit, 100), Reverse: !forward})
		defer it.Close()
		for it.Seek(logKey(app, conv, from)); it.Valid() && len(out) < limit; it.Next() {
			item := it.Item()
			k := item.Key()
			if len(k) != len(p)+8 {
				continue
			}
			seq := binary.BigEndian.Uint64(k[len(p):])
			var e storage.LogEntry
			err := item.Value(func(v []byte) error {
				var err error
				e, err = decodeEntry(conv, seq, v)
				return err
			})
			if err != nil {
				return err
			}
			out = append(out, e)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if lim, ok := s.durableLimit(app, conv); ok {
		kept := out[:0]
		for _, e := range out {
			if e.Seq <= lim {
				kept = append(kept, e)
			}
		}
		out = kept
	}
	return out, nil
}

// trimChunk is how many deletes one committer request carries.
const trimChunk = 1000

// Trim implements storage.MessageLog.
func (s *ChatStore) Trim(ctx context.Context, app, conv string, olderThan int64, keep int) (int, error) {
	head, err := s.LastSeq(ctx, app, conv)
	if err != nil || head == 0 {
		return 0, err
	}
	var cut uint64 // delete every seq <= cut ...
	if keep > 0 && head > uint64(keep) {
		cut = head - uint64(keep)
	}
	var doomed [][]byte
	p := logPrefix(app, conv)
	err = s.view(ctx, func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: p, PrefetchValues: olderThan > 0, PrefetchSize: 100})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			item := it.Item()
			k := item.Key()
			if len(k) != len(p)+8 {
				continue
			}
			seq := binary.BigEndian.Uint64(k[len(p):])
			if seq > head {
				break // not durable yet; never trimmed
			}
			del := seq <= cut
			if !del && olderThan > 0 {
				// ... and, while they are older than the cut-off, the
				// entries after it (ts follows seq closely enough that
				// the first young entry ends the scan).
				err := item.Value(func(v []byte) error {
					if len(v) >= 9 && int64(binary.BigEndian.Uint64(v[1:9])) < olderThan {
						del = true
					}
					return nil
				})
				if err != nil {
					return err
				}
			}
			if !del {
				break
			}
			doomed = append(doomed, item.KeyCopy(nil))
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	n := 0
	for len(doomed) > 0 {
		chunk := doomed[:min(trimChunk, len(doomed))]
		doomed = doomed[len(chunk):]
		err := s.c.do(ctx, func(*wtxn) ([]writeOp, error) {
			ws := make([]writeOp, len(chunk))
			for i, k := range chunk {
				ws[i] = writeOp{key: k, del: true}
			}
			return ws, nil
		}, nil)
		if err != nil {
			return n, err
		}
		n += len(chunk)
	}
	return n, nil
}
