package badgerstore

// Media records live under "f/":
//
//	f/f/{app}/{id}             file record (JSON storage.File)
//	f/h/{sha256}/{app}/{id}    blob reference: one per file record
//	f/u/{app}/{id}             upload in progress (JSON storage.Upload)

import (
	"context"
	"encoding/json"
	"errors"
	"slices"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/warblerim/warbler/storage"
)

// MediaStore implements storage.MediaStore.
type MediaStore struct{ d *DB }

// NewMediaStore returns the media records of db.
func NewMediaStore(db *DB) *MediaStore { return &MediaStore{d: db} }

var _ storage.MediaStore = (*MediaStore)(nil)

func fileKey(app, id string) []byte { return []byte("f/f/" + app + "/" + id) }
func blobRefKey(sha, app, id string) []byte {
	return []byte("f/h/" + sha + "/" + app + "/" + id)
}
func uploadKey(app, id string) []byte { return []byte("f/u/" + app + "/" + id) }

// PutFile implements storage.MediaStore.
func (s *MediaStore) PutFile(ctx context.Context, f storage.File) error {
	return s.d.update(ctx, true, func(txn *badger.Txn) error {
		var old storage.File
		switch err := getJSON(txn, fileKey(f.App, f.ID), &old); {
		case err == nil:
			if old.SHA256 != f.SHA256 {
				if err := txn.Delete(blobRefKey(old.SHA256, f.App, f.ID)); err != nil {
					return err
				}
			}
		case !errors.Is(err, storage.ErrNotFound):
			return err
		}
		if err := txn.Set(fileKey(f.App, f.ID), must(json.Marshal(f))); err != nil {
			return err
		}
		return txn.Set(blobRefKey(f.SHA256, f.App, f.ID), nil)
	})
}

// GetFile implements storage.MediaStore.
func (s *MediaStore) GetFile(ctx context.Context, app, id string) (storage.File, error) {
	var f storage.File
	if err := ctx.Err(); err != nil {
		return f, err
	}
	err := s.d.db.View(func(txn *badger.Txn) error { return getJSON(txn, fileKey(app, id), &f) })
	return f, err
}

// LinkFile implements storage.MediaStore. It does not sync: the message
// append that follows it does.
func (s *MediaStore) LinkFile(ctx context.Context, app, id, conv string, seq uint64) (storage.File, error) {
	var f storage.File
	err := s.d.update(ctx, false, func(txn *badger.Txn) error {
		f = storage.File{}
		if err := getJSON(txn, fileKey(app, id), &f); err != nil {
			return err
		}
		old, ok := f.Seqs[conv]
		newSeq := seq > 0 && (!ok || seq > old)
		if f.Linked && slices.Contains(f.Convs, conv) && !newSeq {
			return nil
		}
		f.Linked = true
		if !slices.Contains(f.Convs, conv) {
			f.Convs = append(f.Convs, conv)
		}
		if newSeq {
			if f.Seqs == nil {
				f.Seqs = map[string]uint64{}
			}
			f.Seqs[conv] = seq
		}
		return txn.Set(fileKey(app, id), must(json.Marshal(f)))
	})
	return f, err
}

// DeleteFile implements storage.MediaStore.
func (s *MediaStore) DeleteFile(ctx context.Context, app, id string) (int, error) {
	var sha string
	err := s.d.update(ctx, true, func(txn *badger.Txn) error {
		var f storage.File
		switch err := getJSON(txn, fileKey(app, id), &f); {
		case errors.Is(err, storage.ErrNotFound):
			return nil
		case err != nil:
			return err
		}
		sha = f.SHA256
		if err := txn.Delete(fileKey(app, id)); err != nil {
			return err
		}
		return txn.Delete(blobRefKey(f.SHA256, app, id))
	})
	if err != nil || sha == "" {
		return 0, err
	}
	return s.BlobRefs(ctx, sha)
}

// BlobRefs implements storage.MediaStore.
func (s *MediaStore) BlobRefs(ctx context.Context, sha string) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	n := 0
	err := s.d.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte("f/h/" + sha + "/")})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			n++
		}
		return nil
	})
	return n, err
}

// WalkFiles implements storage.MediaStore.
func (s *MediaStore) WalkFiles(ctx context.Context, fn func(storage.File) error) error {
	return s.walk(ctx, "f/f/", func(b []byte) error {
		var f storage.File
		if err := json.Unmarshal(b, &f); err != nil {
			return err
		}
		return fn(f)
	})
}

// PutUpload implements storage.MediaStore.
func (s *MediaStore) PutUpload(ctx context.Context, u storage.Upload) error {
	return s.d.update(ctx, true, func(txn *badger.Txn) error {
		return txn.Set(uploadKey(u.App, u.ID), must(json.Marshal(u)))
	})
}

// GetUpload implements storage.MediaStore.
func (s *MediaStore) GetUpload(ctx context.Context, app, id string) (storage.Upload, error) {
	var u storage.Upload
	if err := ctx.Err(); err != nil {
		return u, err
	}
	err := s.d.db.View(func(txn *badger.Txn) error { return getJSON(txn, uploadKey(app, id), &u) })
	return u, err
}

// DeleteUpload implements storage.MediaStore.
func (s *MediaStore) DeleteUpload(ctx context.Context, app, id string) error {
	return s.d.update(ctx, true, func(txn *badger.Txn) error { return txn.Delete(uploadKey(app, id)) })
}

// WalkUploads implements storage.MediaStore.
func (s *MediaStore) WalkUploads(ctx context.Context, fn func(storage.Upload) error) error {
	return s.walk(ctx, "f/u/", func(b []byte) error {
		var u storage.Upload
		if err := json.Unmarshal(b, &u); err != nil {
			return err
		}
		return fn(u)
	})
}

// walk reads every value under prefix into memory first, so that fn may
// take its time without holding a read transaction open.
func (s *MediaStore) walk(ctx context.Context, prefix string, fn func([]byte) error) error {
	var vals [][]byte
	err := s.d.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefix), PrefetchValues: true, PrefetchSize: 64})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				return err
			}
			vals = append(vals, v)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, v := range vals {
		if err := fn(v); err != nil {
			if errors.Is(err, errStop) {
				return nil
			}
			return err
		}
	}
	return nil
}
