package badgerstore

// ChatStore as storage.ChatRecords: the chat service's small keyed records,
// under
//
//	c/x/{app}/{key}    one record (opaque bytes)
//
// Writes go through the group committer like every other chat write, so
// they are durable when they return and UpdateRecord's read-modify-write
// cannot race another write.

import (
	"context"
	"errors"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/warblerim/warbler/storage"
)

func recordKey(app, key string) []byte { return []byte("c/x/" + app + "/" + key) }

// GetRecord implements storage.ChatRecords.
func (s *ChatStore) GetRecord(ctx context.Context, app, key string) ([]byte, error) {
	var out []byte
	err := s.view(ctx, func(txn *badger.Txn) error {
		it, err := txn.Get(recordKey(app, key))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return storage.ErrNotFound
		}
		if err != nil {
			return err
		}
		out, err = it.ValueCopy(nil)
		return err
	})
	return out, err
}

// PutRecord implements storage.ChatRecords.
func (s *ChatStore) PutRecord(ctx context.Context, app, key string, val []byte) error {
	k := recordKey(app, key)
	return s.c.do(ctx, func(*wtxn) ([]writeOp, error) {
		if val == nil {
			return []writeOp{{key: k, del: true}}, nil
		}
		return []writeOp{{key: k, val: val}}, nil
	}, nil)
}

// UpdateRecord implements storage.ChatRecords.
func (s *ChatStore) UpdateRecord(ctx context.Context, app, key string, fn func(old []byte, found bool) ([]byte, error)) error {
	k := recordKey(app, key)
	return s.c.do(ctx, func(w *wtxn) ([]writeOp, error) {
		old, found, err := w.get(k)
		if err != nil {
			return nil, err
		}
		val, err := fn(old, found)
		if err != nil {
			return nil, err
		}
		if val == nil {
			if !found {
				return nil, nil
			}
			return []writeOp{{key: k, del: true}}, nil
		}
		return []writeOp{{key: k, val: val}}, nil
	}, nil)
}

// ScanRecords implements storage.ChatRecords.
func (s *ChatStore) ScanRecords(ctx context.Context, app, prefix, start string, limit int, fn func(key string, val []byte) error) error {
	base := recordKey(app, "")
	p := recordKey(app, prefix)
	seek := p
	if start > prefix {
		seek = recordKey(app, start)
	}
	return s.view(ctx, func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: p, PrefetchValues: true, PrefetchSize: 64})
		defer it.Close()
		n := 0
		for it.Seek(seek); it.Valid(); it.Next() {
			if limit > 0 && n >= limit {
				return nil
			}
			n++
			item := it.Item()
			key := string(item.Key()[len(base):])
			if err := item.Value(func(v []byte) error { return fn(key, v) }); err != nil {
				return err
			}
		}
		return nil
	})
}

var _ storage.ChatRecords = (*ChatStore)(nil)
