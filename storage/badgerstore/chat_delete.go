package badgerstore

import (
	"bytes"
	"context"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/warblerim/warbler/storage"
)

// DeleteConversation implements storage.Conversations. The log goes
// first, chunk by chunk like Trim, so that the record (and with it the
// conversation's visibility) goes last, in one transaction: a failure
// leaves a conversation that still exists and can be deleted again.
func (s *ChatStore) DeleteConversation(ctx context.Context, app, conv string) ([]string, error) {
	if _, err := s.GetConversation(ctx, app, conv); err != nil {
		return nil, err
	}
	// The log, every entry whatever its seq.
	for {
		var doomed [][]byte
		p := logPrefix(app, conv)
		err := s.view(ctx, func(txn *badger.Txn) error {
			it := txn.NewIterator(badger.IteratorOptions{Prefix: p})
			defer it.Close()
			for it.Rewind(); it.Valid() && len(doomed) < trimChunk; it.Next() {
				doomed = append(doomed, it.Item().KeyCopy(nil))
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		if len(doomed) == 0 {
			break
		}
		if err := s.c.do(ctx, func(*wtxn) ([]writeOp, error) {
			ws := make([]writeOp, len(doomed))
			for i, k := range doomed {
				ws[i] = writeOp{key: k, del: true}
			}
			return ws, nil
		}, nil); err != nil {
			return nil, err
		}
	}
	// Members, and their devices' positions in the conversation.
	var members []string
	var cursors [][]byte
	err := s.view(ctx, func(txn *badger.Txn) error {
		mp := memberPrefix(app, conv)
		it := txn.NewIterator(badger.IteratorOptions{Prefix: mp})
		for it.Rewind(); it.Valid(); it.Next() {
			members = append(members, string(it.Item().Key()[len(mp):]))
		}
		it.Close()
		suffix := []byte("/" + conv)
		for _, u := range members {
			cp := []byte("c/dc/" + app + "/" + u + "/")
			it := txn.NewIterator(badger.IteratorOptions{Prefix: cp, PrefetchValues: false})
			for it.Rewind(); it.Valid(); it.Next() {
				k := it.Item().Key()
				// c/dc/{app}/{user}/{device}/{conv}: the device is one
				// field, so the key ends in "/{conv}" after it.
				if rest := k[len(cp):]; bytes.HasSuffix(rest, suffix) && bytes.IndexByte(rest[:len(rest)-len(suffix)], '/') < 0 {
					cursors = append(cursors, it.Item().KeyCopy(nil))
				}
			}
			it.Close()
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = s.c.do(ctx, func(w *wtxn) ([]writeOp, error) {
		if _, ok, err := w.get(convKey(app, conv)); err != nil {
			return nil, err
		} else if !ok {
			return nil, storage.ErrNotFound
		}
		ws := make([]writeOp, 0, 2+2*len(members)+len(cursors))
		ws = append(ws, writeOp{key: convKey(app, conv), del: true}, writeOp{key: headKey(app, conv), del: true})
		for _, u := range members {
			ws = append(ws, writeOp{key: memberKey(app, conv, u), del: true}, writeOp{key: userConvKey(app, u, conv), del: true})
		}
		for _, k := range cursors {
			ws = append(ws, writeOp{key: k, del: true})
		}
		return ws, nil
	}, nil)
	if err != nil {
		return nil, err
	}
	return members, nil
}
