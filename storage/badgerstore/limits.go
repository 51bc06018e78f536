package badgerstore

import (
	"context"
	"encoding/json"
	"fmt"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/warblerim/warbler/storage"
)

// Ban keys, under the "l/" prefix of the limits store:
//
//	l/b/{kind}/{value}   Ban (JSON)
//
// A value may hold '/' (a CIDR range) or ':' (a client ID); the kind is the
// only segment that is parsed back, and the record carries both fields.
const pfxBan = "l/b/"

// BanStore implements storage.BanStore on a DB. Each write is synced before
// it returns: bans are rare, and one that an operator was told is set must
// survive a power loss.
type BanStore struct {
	db *DB
}

var _ storage.BanStore = (*BanStore)(nil)

// NewBanStore returns the ban store of db.
func NewBanStore(db *DB) *BanStore { return &BanStore{db: db} }

func banKey(kind, value string) []byte { return []byte(pfxBan + kind + "/" + value) }

// PutBan implements storage.BanStore.
func (s *BanStore) PutBan(_ context.Context, b storage.Ban) error {
	v, err := json.Marshal(b)
	if err != nil {
		return err
	}
	if err := s.db.CheckSpace(); err != nil {
		return err
	}
	if err := s.db.db.Update(func(txn *badger.Txn) error { return txn.Set(banKey(b.Kind, b.Value), v) }); err != nil {
		return fmt.Errorf("put ban: %w", err)
	}
	return s.db.Sync()
}

// DeleteBan implements storage.BanStore.
func (s *BanStore) DeleteBan(_ context.Context, kind, value string) error {
	if err := s.db.CheckSpace(); err != nil {
		return err
	}
	err := s.db.db.Update(func(txn *badger.Txn) error {
		k := banKey(kind, value)
		if _, err := txn.Get(k); err != nil {
			if err == badger.ErrKeyNotFound {
				return storage.ErrNotFound
			}
			return err
		}
		return txn.Delete(k)
	})
	if err != nil {
		return err
	}
	return s.db.Sync()
}

// ListBans implements storage.BanStore.
func (s *BanStore) ListBans(_ context.Context) ([]storage.Ban, error) {
	var out []storage.Ban
	err := s.db.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(pfxBan), PrefetchValues: true})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			var b storage.Ban
			if err := it.Item().Value(func(v []byte) error { return json.Unmarshal(v, &b) }); err != nil {
				return fmt.Errorf("ban record %q: %w", it.Item().Key(), err)
			}
			out = append(out, b)
		}
		return nil
	})
	return out, err
}
