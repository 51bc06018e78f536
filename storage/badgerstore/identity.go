package badgerstore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"sync"
	"time"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/warblerim/warbler/storage"
)

// Identity keys. Every identifier is checked by the identity service with
// protocol.ValidID before it reaches the store, so none contains '/' and a
// prefix such as "i/u/app/" cannot match another app's keys.
//
//	i/a/{app}                 App
//	i/u/{app}/{user}          User
//	i/c/{app}/{user}          Credential
//	i/d/{app}/{user}/{device} Device
//	i/k/{keyid}               APIKey
//	i/t/{app}/{id}            TokenRevocation (expires with the token)
//	i/r/{app}/{user}          UserRevocation
//	i/g/{app}/{tag}\x00{user} tag index entry (empty value); see audience.go
//	i/gv                      marks the tag index as built
const (
	pfxApp     = "i/a/"
	pfxUser    = "i/u/"
	pfxCred    = "i/c/"
	pfxDevice  = "i/d/"
	pfxKey     = "i/k/"
	pfxTokRev  = "i/t/"
	pfxUserRev = "i/r/"
)

// IdentityStore implements storage.IdentityStore on a DB under the "i/"
// prefix. Records are JSON. Every method that writes returns only after the
// write is synced to disk, so a nil error means the change survives a crash.
//
// Read-modify-write updates of one key are serialized in this process by a
// striped lock, so concurrent updates of a hot record (the failure counter
// of an account under attack) queue instead of failing with conflicts;
// Badger's conflict detection still guards against other writers.
type IdentityStore struct {
	db    *DB
	seed  maphash.Seed
	locks [64]sync.Mutex
	tags  tagCache
	// idxErr is why the tag index could not be built at open, if it
	// could not; the index queries return it.
	idxErr error
}

var _ storage.IdentityStore = (*IdentityStore)(nil)

// NewIdentityStore returns the identity store of db.
func NewIdentityStore(db *DB) *IdentityStore {
	s := &IdentityStore{db: db, seed: maphash.MakeSeed()}
	s.idxErr = s.buildTagIndex()
	return s
}

func (s *IdentityStore) lock(k []byte) *sync.Mutex {
	return &s.locks[maphash.Bytes(s.seed, k)%uint64(len(s.locks))]
}

func key(parts ...string) []byte {
	var b bytes.Buffer
	for i, p := range parts {
		if i > 1 {
			b.WriteByte('/')
		}
		b.WriteString(p)
	}
	return b.Bytes()
}

// get reads and decodes the record at k.
func get(txn *badger.Txn, k []byte, v any) error {
	it, err := txn.Get(k)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return storage.ErrNotFound
	}
	if err != nil {
		return err
	}
	return it.Value(func(b []byte) error { return json.Unmarshal(b, v) })
}

func set(txn *badger.Txn, k []byte, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return txn.Set(k, b)
}

// write runs fn in a read-write transaction, retrying on conflict, then
// syncs the database.
func (s *IdentityStore) write(ctx context.Context, fn func(txn *badger.Txn) error) error {
	return s.db.update(ctx, true, fn)
}

func (s *IdentityStore) read(ctx context.Context, k []byte, v any) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.db.db.View(func(txn *badger.Txn) error { return get(txn, k, v) })
}

// create stores v at k unless k exists.
func (s *IdentityStore) create(ctx context.Context, k []byte, v any) error {
	return s.write(ctx, func(txn *badger.Txn) error {
		if _, err := txn.Get(k); err == nil {
			return storage.ErrExists
		} else if !errors.Is(err, badger.ErrKeyNotFound) {
			return err
		}
		return set(txn, k, v)
	})
}

// update is the read-modify-write behind the Update methods. If missing is
// non-nil it builds the record used when k does not exist; otherwise a
// missing record is ErrNotFound.
func update[T any](ctx context.Context, s *IdentityStore, k []byte, missing func() T, fn func(*T) error) (T, error) {
	mu := s.lock(k)
	mu.Lock()
	defer mu.Unlock()
	var out T
	err := s.write(ctx, func(txn *badger.Txn) error {
		var cur T
		err := get(txn, k, &cur)
		if errors.Is(err, storage.ErrNotFound) && missing != nil {
			cur = missing()
		} else if err != nil {
			return err
		}
		if err := fn(&cur); err != nil {
			return err
		}
		out = cur
		return set(txn, k, cur)
	})
	if err != nil {
		var zero T
		return zero, err
	}
	return out, nil
}

// scan decodes every record under prefix, starting after the key `after`
// if it is non-empty, stopping after limit records if limit > 0.
func scan[T any](ctx context.Context, s *IdentityStore, prefix, after []byte, limit int) ([]T, error) {
	var out []T
	err := s.db.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix, PrefetchValues: true, PrefetchSize: 64})
		defer it.Close()
		start := prefix
		if len(after) > 0 {
			start = append(append([]byte{}, after...), 0)
		}
		for it.Seek(start); it.Valid(); it.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			var v T
			if err := it.Item().Value(func(b []byte) error { return json.Unmarshal(b, &v) }); err != nil {
				return fmt.Errorf("decode %q: %w", it.Item().Key(), err)
			}
			out = append(out, v)
			if limit > 0 && len(out) >= limit {
				break
			}
		}
		return nil
	})
	return out, err
}

// Apps.

// CreateApp implements storage.AppStore.
func (s *IdentityStore) CreateApp(ctx context.Context, a storage.App) error {
	return s.create(ctx, key(pfxApp, a.ID), a)
}

// GetApp implements storage.AppStore.
func (s *IdentityStore) GetApp(ctx context.Context, id string) (storage.App, error) {
	var a storage.App
	err := s.read(ctx, key(pfxApp, id), &a)
	return a, err
}

// ListApps implements storage.AppStore.
func (s *IdentityStore) ListApps(ctx context.Context) ([]storage.App, error) {
	return scan[storage.App](ctx, s, []byte(pfxApp), nil, 0)
}

// UpdateApp implements storage.AppStore.
func (s *IdentityStore) UpdateApp(ctx context.Context, id string, fn func(*storage.App) error) (storage.App, error) {
	return update(ctx, s, key(pfxApp, id), nil, fn)
}

// Users.

// CreateUser implements storage.UserStore.
func (s *IdentityStore) CreateUser(ctx context.Context, u storage.User, c *storage.Credential) error {
	uk := key(pfxUser, u.App, u.ID)
	defer s.tags.invalidate(u.App)
	return s.write(ctx, func(txn *badger.Txn) error {
		if _, err := txn.Get(uk); err == nil {
			return storage.ErrExists
		} else if !errors.Is(err, badger.ErrKeyNotFound) {
			return err
		}
		if err := set(txn, uk, u); err != nil {
			return err
		}
		if err := indexTags(txn, u.App, u.ID, nil, u.Tags); err != nil {
			return err
		}
		if c != nil {
			return set(txn, key(pfxCred, u.App, u.ID), c)
		}
		// A user ID is never reused, but clear a credential left from an
		// interrupted earlier life of this ID all the same.
		return txn.Delete(key(pfxCred, u.App, u.ID))
	})
}

// GetUser implements storage.UserStore.
func (s *IdentityStore) GetUser(ctx context.Context, app, id string) (storage.User, error) {
	var u storage.User
	err := s.read(ctx, key(pfxUser, app, id), &u)
	return u, err
}

// ListUsers implements storage.UserStore.
func (s *IdentityStore) ListUsers(ctx context.Context, app, after string, limit int) ([]storage.User, error) {
	p := key(pfxUser, app, "")
	var a []byte
	if after != "" {
		a = key(pfxUser, app, after)
	}
	return scan[storage.User](ctx, s, p, a, limit)
}

// CountUsers implements storage.UserStore. It walks the keys only.
func (s *IdentityStore) CountUsers(ctx context.Context, app string) (int, error) {
	n := 0
	p := key(pfxUser, app, "")
	err := s.db.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: p})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			n++
			if n%4096 == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
		}
		return nil
	})
	return n, err
}

// UpdateUser implements storage.UserStore.
// It keeps the tag index in step with the user's tags in the same write.
func (s *IdentityStore) UpdateUser(ctx context.Context, app, id string, fn func(*storage.User) error) (storage.User, error) {
	k := key(pfxUser, app, id)
	mu := s.lock(k)
	mu.Lock()
	defer mu.Unlock()
	defer s.tags.invalidate(app)
	var out storage.User
	err := s.write(ctx, func(txn *badger.Txn) error {
		var cur storage.User
		if err := get(txn, k, &cur); err != nil {
			return err
		}
		old := append([]string(nil), cur.Tags...)
		if err := fn(&cur); err != nil {
			return err
		}
		if err := indexTags(txn, app, id, old, cur.Tags); err != nil {
			return err
		}
		out = cur
		return set(txn, k, cur)
	})
	if err != nil {
		return storage.User{}, err
	}
	return out, nil
}

// Devices.

// PutDevice implements storage.DeviceStore.
func (s *IdentityStore) PutDevice(ctx context.Context, d storage.Device) error {
	return s.write(ctx, func(txn *badger.Txn) error {
		return set(txn, key(pfxDevice, d.App, d.User, d.ID), d)
	})
}

// GetDevice implements storage.DeviceStore.
func (s *IdentityStore) GetDevice(ctx context.Context, app, user, id string) (storage.Device, error) {
	var d storage.Device
	err := s.read(ctx, key(pfxDevice, app, user, id), &d)
	return d, err
}

// ListDevices implements storage.DeviceStore.
func (s *IdentityStore) ListDevices(ctx context.Context, app, user string) ([]storage.Device, error) {
	return scan[storage.Device](ctx, s, key(pfxDevice, app, user, ""), nil, 0)
}

// DeleteDevice implements storage.DeviceStore.
func (s *IdentityStore) DeleteDevice(ctx context.Context, app, user, id string) error {
	k := key(pfxDevice, app, user, id)
	return s.write(ctx, func(txn *badger.Txn) error {
		if _, err := txn.Get(k); errors.Is(err, badger.ErrKeyNotFound) {
			return storage.ErrNotFound
		} else if err != nil {
			return err
		}
		return txn.Delete(k)
	})
}

// Credentials.

// GetCredential implements storage.CredentialStore.
func (s *IdentityStore) GetCredential(ctx context.Context, app, user string) (storage.Credential, error) {
	var c storage.Credential
	err := s.read(ctx, key(pfxCred, app, user), &c)
	return c, err
}

// UpdateCredential implements storage.CredentialStore.
func (s *IdentityStore) UpdateCredential(ctx context.Context, app, user string, fn func(*storage.Credential) error) (storage.Credential, error) {
	return update(ctx, s, key(pfxCred, app, user), func() storage.Credential {
		return storage.Credential{App: app, User: user}
	}, fn)
}

// API keys.

// CreateAPIKey implements storage.APIKeyStore.
func (s *IdentityStore) CreateAPIKey(ctx context.Context, k storage.APIKey) error {
	return s.create(ctx, key(pfxKey, k.ID), k)
}

// GetAPIKey implements storage.APIKeyStore.
func (s *IdentityStore) GetAPIKey(ctx context.Context, id string) (storage.APIKey, error) {
	var k storage.APIKey
	err := s.read(ctx, key(pfxKey, id), &k)
	return k, err
}

// ListAPIKeys implements storage.APIKeyStore. Keys are few, so it walks all
// of them and keeps those of app.
func (s *IdentityStore) ListAPIKeys(ctx context.Context, app string) ([]storage.APIKey, error) {
	all, err := scan[storage.APIKey](ctx, s, []byte(pfxKey), nil, 0)
	if err != nil {
		return nil, err
	}
	out := all[:0]
	for _, k := range all {
		if k.App == app {
			out = append(out, k)
		}
	}
	return out, nil
}

// UpdateAPIKey implements storage.APIKeyStore.
func (s *IdentityStore) UpdateAPIKey(ctx context.Context, id string, fn func(*storage.APIKey) error) (storage.APIKey, error) {
	return update(ctx, s, key(pfxKey, id), nil, fn)
}

// DeleteAPIKey implements storage.APIKeyStore; ErrNotFound if it does not
// exist.
func (s *IdentityStore) DeleteAPIKey(ctx context.Context, id string) error {
	k := key(pfxKey, id)
	return s.write(ctx, func(txn *badger.Txn) error {
		if _, err := txn.Get(k); errors.Is(err, badger.ErrKeyNotFound) {
			return storage.ErrNotFound
		} else if err != nil {
			return err
		}
		return txn.Delete(k)
	})
}

// Revocations.

// RevokeToken implements storage.RevocationStore. The entry carries a
// Badger TTL so that it disappears once every token it names has expired.
func (s *IdentityStore) RevokeToken(ctx context.Context, r storage.TokenRevocation) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	ttl := time.Until(r.Until) + time.Minute
	if ttl < time.Minute {
		ttl = time.Minute
	}
	e := badger.NewEntry(key(pfxTokRev, r.App, r.ID), b).WithTTL(ttl)
	return s.write(ctx, func(txn *badger.Txn) error { return txn.SetEntry(e) })
}

// PutUserRevocation implements storage.RevocationStore.
func (s *IdentityStore) PutUserRevocation(ctx context.Context, r storage.UserRevocation) error {
	return s.write(ctx, func(txn *badger.Txn) error {
		return set(txn, key(pfxUserRev, r.App, r.User), r)
	})
}

// DeleteUserRevocation implements storage.RevocationStore. Deleting a
// revocation that does not exist is not an error.
func (s *IdentityStore) DeleteUserRevocation(ctx context.Context, app, user string) error {
	return s.write(ctx, func(txn *badger.Txn) error {
		return txn.Delete(key(pfxUserRev, app, user))
	})
}

// LoadRevocations implements storage.RevocationStore.
func (s *IdentityStore) LoadRevocations(ctx context.Context, now time.Time) ([]storage.TokenRevocation, []storage.UserRevocation, error) {
	toks, err := scan[storage.TokenRevocation](ctx, s, []byte(pfxTokRev), nil, 0)
	if err != nil {
		return nil, nil, err
	}
	live := toks[:0]
	for _, t := range toks {
		if t.Until.After(now) {
			live = append(live, t)
		}
	}
	users, err := scan[storage.UserRevocation](ctx, s, []byte(pfxUserRev), nil, 0)
	if err != nil {
		return nil, nil, err
	}
	return live, users, nil
}
