package badgerstore

// The search index lives under "x/":
//
//	x/p/{app}/{conv}/{term} 0x00 {seq:8}   posting: tf, len, ts, author
//	x/d/{app}/{conv}/{seq:8}               the terms indexed for a message
//	x/c/{app}/{conv}                       cursor: highest seq read
//
// Writes are not synced: the index is derived from the log, and its cursor
// moves in the same transaction as the postings, so after a crash it is
// rebuilt from wherever the cursor stands.

import (
	"context"
	"encoding/binary"
	"errors"
	"strings"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/warblerim/warbler/storage"
)

// SearchIndex implements storage.SearchIndex.
type SearchIndex struct{ d *DB }

// NewSearchIndex returns the search index of db.
func NewSearchIndex(db *DB) *SearchIndex { return &SearchIndex{d: db} }

var _ storage.SearchIndex = (*SearchIndex)(nil)

func postingPrefix(app, conv, term string) []byte {
	return []byte("x/p/" + app + "/" + conv + "/" + term + "\x00")
}
func postingKey(app, conv, term string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(postingPrefix(app, conv, term), seq)
}
func docKey(app, conv string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte("x/d/"+app+"/"+conv+"/"), seq)
}
func searchCursorKey(app, conv string) []byte { return []byte("x/c/" + app + "/" + conv) }

func removeDocTxn(txn *badger.Txn, app, conv string, seq uint64) error {
	it, err := txn.Get(docKey(app, conv, seq))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	var terms []string
	if err := it.Value(func(b []byte) error {
		if len(b) > 0 {
			terms = strings.Split(string(b), "\x00")
		}
		return nil
	}); err != nil {
		return err
	}
	for _, t := range terms {
		if err := txn.Delete(postingKey(app, conv, t, seq)); err != nil {
			return err
		}
	}
	return txn.Delete(docKey(app, conv, seq))
}

// PutDoc implements storage.SearchIndex.
func (s *SearchIndex) PutDoc(ctx context.Context, app string, doc *storage.IndexDoc, conv string, cursor uint64) error {
	return s.d.update(ctx, false, func(txn *badger.Txn) error {
		if doc != nil {
			if err := removeDocTxn(txn, app, doc.Conv, doc.Seq); err != nil {
				return err
			}
			if len(doc.Terms) > 0 {
				terms := make([]string, 0, len(doc.Terms))
				for t, tf := range doc.Terms {
					if t == "" || strings.IndexByte(t, 0) >= 0 {
						continue
					}
					terms = append(terms, t)
					v := make([]byte, 0, 16+len(doc.From))
					v = binary.AppendUvarint(v, uint64(tf))
					v = binary.AppendUvarint(v, uint64(doc.Len))
					v = binary.AppendVarint(v, doc.TS)
					v = append(v, doc.From...)
					if err := txn.Set(postingKey(app, doc.Conv, t, doc.Seq), v); err != nil {
						return err
					}
				}
				if err := txn.Set(docKey(app, doc.Conv, doc.Seq), []byte(strings.Join(terms, "\x00"))); err != nil {
					return err
				}
			}
		}
		if cursor > 0 {
			cur, err := getU64Key(txn, searchCursorKey(app, conv))
			if err != nil {
				return err
			}
			if cursor > cur {
				return txn.Set(searchCursorKey(app, conv), u64(cursor))
			}
		}
		return nil
	})
}

// RemoveDoc implements storage.SearchIndex.
func (s *SearchIndex) RemoveDoc(ctx context.Context, app, conv string, seq uint64) error {
	return s.d.update(ctx, false, func(txn *badger.Txn) error { return removeDocTxn(txn, app, conv, seq) })
}

// Postings implements storage.SearchIndex.
func (s *SearchIndex) Postings(ctx context.Context, app, conv, term string, from uint64, limit int) ([]storage.Posting, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	prefix := postingPrefix(app, conv, term)
	var out []storage.Posting
	err := s.d.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix, Reverse: true, PrefetchValues: true, PrefetchSize: 100})
		defer it.Close()
		for it.Seek(append(append([]byte{}, prefix...), 0xff)); it.Valid(); it.Next() {
			k := it.Item().Key()
			if len(k) != len(prefix)+8 {
				continue
			}
			seq := binary.BigEndian.Uint64(k[len(prefix):])
			if seq < from {
				break
			}
			p := storage.Posting{Seq: seq}
			err := it.Item().Value(func(v []byte) error {
				tf, n := binary.Uvarint(v)
				if n <= 0 {
					return errors.New("corrupt posting")
				}
				v = v[n:]
				l, n := binary.Uvarint(v)
				if n <= 0 {
					return errors.New("corrupt posting")
				}
				v = v[n:]
				ts, n := binary.Varint(v)
				if n <= 0 {
					return errors.New("corrupt posting")
				}
				p.TF, p.Len, p.TS, p.From = int(tf), int(l), ts, string(v[n:])
				return nil
			})
			if err != nil {
				return err
			}
			out = append(out, p)
			if limit > 0 && len(out) >= limit {
				break
			}
		}
		return nil
	})
	return out, err
}

// Cursor implements storage.SearchIndex.
func (s *SearchIndex) Cursor(ctx context.Context, app, conv string) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	var v uint64
	err := s.d.db.View(func(txn *badger.Txn) error {
		var err error
		v, err = getU64Key(txn, searchCursorKey(app, conv))
		return err
	})
	return v, err
}
