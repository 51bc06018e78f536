package badgerstore

import (
	"errors"

	badger "github.com/dgraph-io/badger/v4"
)

// KV is a plain key-value view of one key prefix of the database, for state
// that needs no richer model (the broker's retained messages and persistent
// sessions, under "q/"). Writes are blind, so they never conflict; they
// survive a process crash once they return, and a power loss after the
// next Sync.
type KV struct {
	d      *DB
	db     *badger.DB
	prefix string
}

// KV returns the view of keys under prefix.
func (d *DB) KV(prefix string) *KV { return &KV{d: d, db: d.db, prefix: prefix} }

// Put stores val under key.
func (k *KV) Put(key string, val []byte) error {
	if err := k.d.CheckSpace(); err != nil {
		return err
	}
	return k.db.Update(func(txn *badger.Txn) error { return txn.Set([]byte(k.prefix+key), val) })
}

// Delete removes key; a missing key is not an error.
func (k *KV) Delete(key string) error {
	if err := k.d.CheckSpace(); err != nil {
		return err
	}
	return k.db.Update(func(txn *badger.Txn) error { return txn.Delete([]byte(k.prefix + key)) })
}

// DeletePrefix removes every key that starts with p.
func (k *KV) DeletePrefix(p string) error {
	var keys [][]byte
	err := k.Scan(p, func(key string, _ []byte) error {
		keys = append(keys, []byte(k.prefix+key))
		return nil
	})
	if err != nil {
		return err
	}
	if err := k.d.CheckSpace(); err != nil {
		return err
	}
	wb := k.db.NewWriteBatch()
	defer wb.Cancel()
	for _, key := range keys {
		if err := wb.Delete(key); err != nil {
			return err
		}
	}
	return wb.Flush()
}

// errStop ends a Scan early without an error.
var errStop = errors.New("stop")

// Scan calls fn for every key starting with p, in key order, with the key
// relative to the view's prefix. fn must not keep val.
func (k *KV) Scan(p string, fn func(key string, val []byte) error) error {
	err := k.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(k.prefix + p), PrefetchValues: true, PrefetchSize: 64})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			item := it.Item()
			err := item.Value(func(v []byte) error {
				return fn(string(item.Key()[len(k.prefix):]), v)
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if errors.Is(err, errStop) {
		return nil
	}
	return err
}
