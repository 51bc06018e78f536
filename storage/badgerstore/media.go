package badgerstore

// Media records live under "f/":
//
//	f/f/{app}/{id}             file record (JSON storage.File)
//	f/h/{sha256}/{app}/{id}    blob reference: one per file record
//	f/u/{app}/{id}             upload in progress (JSON storage.Upload)
//	f/o/{app}/{id}             a file no message refers to yet: created (unix ms)

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"

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
func orphanKey(app, id string) []byte { return []byte("f/o/" + app + "/" + id) }

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
		if f.Linked {
			if err := txn.Delete(orphanKey(f.App, f.ID)); err != nil {
				return err
			}
		} else if err := txn.Set(orphanKey(f.App, f.ID), u64(uint64(f.Created))); err != nil {
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
		if err := txn.Delete(orphanKey(app, id)); err != nil {
			return err
		}
		return txn.Set(fileKey(app, id), must(json.Marshal(f)))
	})
	return f, err
}

// DeleteOrphan implements storage.MediaStore.
func (s *MediaStore) DeleteOrphan(ctx context.Context, app, id string) (bool, int, error) {
	var sha string
	err := s.d.update(ctx, true, func(txn *badger.Txn) error {
		sha = ""
		var f storage.File
		switch err := getJSON(txn, fileKey(app, id), &f); {
		case errors.Is(err, storage.ErrNotFound):
			return nil
		case err != nil:
			return err
		}
		if f.Linked {
			return nil
		}
		sha = f.SHA256
		if err := txn.Delete(fileKey(app, id)); err != nil {
			return err
		}
		if err := txn.Delete(orphanKey(app, id)); err != nil {
			return err
		}
		return txn.Delete(blobRefKey(f.SHA256, app, id))
	})
	if err != nil || sha == "" {
		return false, 0, err
	}
	n, err := s.BlobRefs(ctx, sha)
	return true, n, err
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

// WalkOrphans implements storage.MediaStore.
func (s *MediaStore) WalkOrphans(ctx context.Context, fn func(app, id string, created int64) error) error {
	type orphan struct {
		app, id string
		created int64
	}
	var all []orphan
	err := s.d.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte("f/o/"), PrefetchValues: true, PrefetchSize: 100})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			app, id, ok := strings.Cut(string(it.Item().Key()[len("f/o/"):]), "/")
			if !ok {
				continue
			}
			var created int64
			if err := it.Item().Value(func(v []byte) error { created = int64(getU64(v)); return nil }); err != nil {
				return err
			}
			all = append(all, orphan{app, id, created})
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, o := range all {
		if err := fn(o.app, o.id, o.created); err != nil {
			if errors.Is(err, errStop) {
				return nil
			}
			return err
		}
	}
	return nil
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
