package badgerstore

import (
	"context"

	badger "github.com/dgraph-io/badger/v4"
)

// dropChunk bounds the keys one DropConv transaction deletes.
const dropChunk = 1000

// DropConv implements storage.SearchIndex: the conversation's postings,
// documents and cursor, in transactions of at most dropChunk keys.
func (s *SearchIndex) DropConv(ctx context.Context, app, conv string) error {
	for _, p := range [][]byte{[]byte("x/p/" + app + "/" + conv + "/"), []byte("x/d/" + app + "/" + conv + "/")} {
		for {
			var doomed [][]byte
			err := s.d.db.View(func(txn *badger.Txn) error {
				it := txn.NewIterator(badger.IteratorOptions{Prefix: p})
				defer it.Close()
				for it.Rewind(); it.Valid() && len(doomed) < dropChunk; it.Next() {
					doomed = append(doomed, it.Item().KeyCopy(nil))
				}
				return nil
			})
			if err != nil {
				return err
			}
			if len(doomed) == 0 {
				break
			}
			if err := s.d.update(ctx, false, func(txn *badger.Txn) error {
				for _, k := range doomed {
					if err := txn.Delete(k); err != nil {
						return err
					}
				}
				return nil
			}); err != nil {
				return err
			}
		}
	}
	return s.d.update(ctx, false, func(txn *badger.Txn) error { return txn.Delete(searchCursorKey(app, conv)) })
}
