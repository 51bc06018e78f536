package badgerstore

// PushStore: storage.PushStore on the shared Badger database, under "p/".
//
// Keys. App, user, device and record IDs never contain '/'; a coalesce key
// is always the last field, so it may.
//
//	p/c/{app}/{provider}                       PushCredential (JSON)
//	p/s/{app}                                  PushSettings (JSON)
//	p/u/{app}/{user}                           PushPrefs (JSON)
//	p/n/{app}/{id}                             PushRecord (JSON); TTL once terminal
//	p/q/{app}/{provider}/{due:8 bytes}/{id}    queue index: queued records by Due (unix ms, big-endian)
//	p/f/{app}/{provider}/{id}                  in-flight index: records in state "sent"
//	p/k/{app}/{coalesce}                       ID of the queued record a newer one may replace
//	p/la/{app}/{id}                            ledger index, whole app (TTL)
//	p/lu/{app}/{user}/{id}                     ledger index, one user (TTL)
//	p/ld/{app}/{user}/{device}/{id}            ledger index, one device (TTL)
//
// Record IDs are time-ordered, so walking a ledger index backwards lists
// the newest notifications first.
//
// Durability. Enqueues and configuration writes are synced before they
// return. Claims and outcomes are not: they survive a process crash (the
// write-ahead log is memory-mapped) and reach the disk with the next sync
// of the database, which every chat append performs. After a power loss a
// record may thus be found queued or sent again and be resent: the queue
// errs towards at-least-once, never towards losing a notification.

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"time"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/warblerim/warbler/storage"
)

const (
	pfxPushCred   = "p/c/"
	pfxPushSet    = "p/s/"
	pfxPushPrefs  = "p/u/"
	pfxPushRec    = "p/n/"
	pfxPushQueue  = "p/q/"
	pfxPushFlight = "p/f/"
	pfxPushCoal   = "p/k/"
	pfxPushLedA   = "p/la/"
	pfxPushLedU   = "p/lu/"
	pfxPushLedD   = "p/ld/"
)

// pushMaxEvents bounds the history kept in one record; the first event
// (queued) and the newest ones are kept.
const pushMaxEvents = 32

// PushOptions tunes the push store.
type PushOptions struct {
	// Retention is how long a finished record stays queryable in the
	// ledger (default 7 days).
	Retention time.Duration
}

// PushStore implements storage.PushStore. It needs no Close.
//
// Claiming scans a queue's index from a cursor, not from its start: a
// claimed record leaves a tombstone in the index until compaction, and a
// busy queue would otherwise wade through every tombstone of the
// notifications it has sent on every claim. The cursor is a lower bound on
// the Due of every queued record: a claim raises it to the Due it stopped
// at, every write that queues a record lowers it to that record's Due
// after the write commits, and a write that commits while a claim runs is
// remembered so that the claim cannot raise the cursor past it.
type PushStore struct {
	db        *DB
	retention time.Duration

	mu      sync.Mutex
	cursors map[storage.PushQueueID]*pushCursor
}

type pushCursor struct {
	at       int64 // every queued record has Due (unix ms) >= at
	claiming bool
	lowWater int64 // the lowest Due queued while a claim ran
}

func (s *PushStore) cursor(q storage.PushQueueID) *pushCursor {
	c := s.cursors[q]
	if c == nil {
		c = &pushCursor{}
		s.cursors[q] = c
	}
	return c
}

// queued lowers the cursors for records just queued.
func (s *PushStore) queued(recs []storage.PushRecord) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range recs {
		c := s.cursor(storage.PushQueueID{App: recs[i].App, Provider: recs[i].Provider})
		due := max(recs[i].Due.UnixMilli(), 0)
		c.at = min(c.at, due)
		if c.claiming {
			c.lowWater = min(c.lowWater, due)
		}
	}
}

var _ storage.PushStore = (*PushStore)(nil)

// NewPushStore returns the push store of db.
func NewPushStore(db *DB, o PushOptions) *PushStore {
	if o.Retention <= 0 {
		o.Retention = 7 * 24 * time.Hour
	}
	return &PushStore{db: db, retention: o.Retention, cursors: map[storage.PushQueueID]*pushCursor{}}
}

func pushKey(parts ...string) []byte { return []byte(strings.Join(parts, "/")) }

func pushQueueKey(app, provider string, due time.Time, id string) []byte {
	k := make([]byte, 0, len(pfxPushQueue)+len(app)+len(provider)+len(id)+12)
	k = append(k, pfxPushQueue...)
	k = append(k, app...)
	k = append(k, '/')
	k = append(k, provider...)
	k = append(k, '/')
	k = binary.BigEndian.AppendUint64(k, uint64(max(due.UnixMilli(), 0)))
	k = append(k, '/')
	return append(k, id...)
}

func pushQueuePrefix(q storage.PushQueueID) []byte {
	return []byte(pfxPushQueue + q.App + "/" + q.Provider + "/")
}

func pushRecKey(app, id string) []byte { return []byte(pfxPushRec + app + "/" + id) }

func pushGet(txn *badger.Txn, k []byte, v any) error {
	it, err := txn.Get(k)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return storage.ErrNotFound
	}
	if err != nil {
		return err
	}
	return it.Value(func(b []byte) error { return json.Unmarshal(b, v) })
}

func pushSet(txn *badger.Txn, k []byte, v any, ttl time.Duration) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	e := badger.NewEntry(k, b)
	if ttl > 0 {
		e = e.WithTTL(ttl)
	}
	return txn.SetEntry(e)
}

// update runs fn in a read-write transaction, retrying on conflict, and
// syncs afterwards if sync is set.
func (s *PushStore) update(ctx context.Context, sync bool, fn func(txn *badger.Txn) error) error {
	return s.db.update(ctx, sync, fn)
}

func (s *PushStore) view(fn func(txn *badger.Txn) error) error { return s.db.db.View(fn) }

// Credentials.

func (s *PushStore) PutPushCredential(ctx context.Context, c storage.PushCredential) error {
	return s.update(ctx, true, func(txn *badger.Txn) error {
		return pushSet(txn, pushKey("p/c", c.App, c.Provider), c, 0)
	})
}

func (s *PushStore) GetPushCredential(ctx context.Context, app, provider string) (storage.PushCredential, error) {
	var c storage.PushCredential
	err := s.view(func(txn *badger.Txn) error { return pushGet(txn, pushKey("p/c", app, provider), &c) })
	return c, err
}

func (s *PushStore) UpdatePushCredential(ctx context.Context, app, provider string, fn func(*storage.PushCredential) error) (storage.PushCredential, error) {
	var out storage.PushCredential
	err := s.update(ctx, true, func(txn *badger.Txn) error {
		k := pushKey("p/c", app, provider)
		var c storage.PushCredential
		if err := pushGet(txn, k, &c); err != nil {
			return err
		}
		if err := fn(&c); err != nil {
			return err
		}
		out = c
		return pushSet(txn, k, c, 0)
	})
	return out, err
}

func (s *PushStore) DeletePushCredential(ctx context.Context, app, provider string) error {
	return s.update(ctx, true, func(txn *badger.Txn) error {
		k := pushKey("p/c", app, provider)
		if _, err := txn.Get(k); errors.Is(err, badger.ErrKeyNotFound) {
			return storage.ErrNotFound
		} else if err != nil {
			return err
		}
		return txn.Delete(k)
	})
}

func (s *PushStore) ListPushCredentials(ctx context.Context) ([]storage.PushCredential, error) {
	var out []storage.PushCredential
	err := s.view(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(pfxPushCred), PrefetchValues: true})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			var c storage.PushCredential
			if err := it.Item().Value(func(b []byte) error { return json.Unmarshal(b, &c) }); err != nil {
				return err
			}
			out = append(out, c)
		}
		return nil
	})
	return out, err
}

// Settings and preferences.

func (s *PushStore) GetPushSettings(ctx context.Context, app string) (storage.PushSettings, error) {
	var v storage.PushSettings
	err := s.view(func(txn *badger.Txn) error { return pushGet(txn, pushKey("p/s", app), &v) })
	return v, err
}

func (s *PushStore) PutPushSettings(ctx context.Context, v storage.PushSettings) error {
	return s.update(ctx, true, func(txn *badger.Txn) error { return pushSet(txn, pushKey("p/s", v.App), v, 0) })
}

func (s *PushStore) GetPushPrefs(ctx context.Context, app, user string) (storage.PushPrefs, error) {
	var v storage.PushPrefs
	err := s.view(func(txn *badger.Txn) error { return pushGet(txn, pushKey("p/u", app, user), &v) })
	return v, err
}

func (s *PushStore) UpdatePushPrefs(ctx context.Context, app, user string, fn func(*storage.PushPrefs) error) (storage.PushPrefs, error) {
	var out storage.PushPrefs
	err := s.update(ctx, true, func(txn *badger.Txn) error {
		k := pushKey("p/u", app, user)
		var v storage.PushPrefs
		if err := pushGet(txn, k, &v); errors.Is(err, storage.ErrNotFound) {
			v = storage.PushPrefs{App: app, User: user}
		} else if err != nil {
			return err
		}
		if err := fn(&v); err != nil {
			return err
		}
		out = v
		return pushSet(txn, k, v, 0)
	})
	return out, err
}

// The queue.

func addEvent(r *storage.PushRecord, e storage.PushEvent) {
	r.Events = append(r.Events, e)
	if n := len(r.Events); n > pushMaxEvents {
		r.Events = append(r.Events[:1], r.Events[n-pushMaxEvents+1:]...)
	}
}

// ledgerTTL is how long the ledger indexes of a new record live: as long as
// the record may wait in the queue, plus the retention of finished records.
func (s *PushStore) ledgerTTL(r *storage.PushRecord, now time.Time) time.Duration {
	life := 30 * 24 * time.Hour
	if !r.Expires.IsZero() {
		life = max(r.Expires.Sub(now), 0)
	}
	return life + s.retention + time.Hour
}

// pushEnqueueChunk is how many records one enqueue transaction writes,
// well below Badger's transaction size limit.
const pushEnqueueChunk = 256

func (s *PushStore) EnqueuePush(ctx context.Context, recs []storage.PushRecord, merge storage.PushMerge) error {
	for len(recs) > 0 {
		chunk := recs[:min(len(recs), pushEnqueueChunk)]
		recs = recs[len(chunk):]
		err := s.update(ctx, false, func(txn *badger.Txn) error { return s.enqueue(txn, chunk, merge) })
		s.queued(chunk) // a merge only ever moves Due earlier, to a Due already queued
		if err != nil {
			return err
		}
	}
	if err := s.db.Sync(); err != nil {
		return fmt.Errorf("sync: %w", err)
	}
	return nil
}

func (s *PushStore) enqueue(txn *badger.Txn, recs []storage.PushRecord, merge storage.PushMerge) error {
	{
		now := time.Now()
		for i := range recs {
			r := recs[i] // a copy: a retried transaction starts from the caller's records
			if r.State == "" {
				r.State = storage.PushQueued
			}
			if r.Coalesce != "" {
				ck := pushKey("p/k", r.App, r.Coalesce)
				var oldID string
				if err := pushGet(txn, ck, &oldID); err == nil {
					var old storage.PushRecord
					if err := pushGet(txn, pushRecKey(r.App, oldID), &old); err == nil && old.State == storage.PushQueued {
						if merge != nil {
							merge(old, &r)
						}
						if err := txn.Delete(pushQueueKey(old.App, old.Provider, old.Due, old.ID)); err != nil {
							return err
						}
						old.State, old.Reason, old.UpdatedAt = storage.PushDropped, "coalesced into "+r.ID, now
						addEvent(&old, storage.PushEvent{At: now, State: old.State, Reason: old.Reason})
						if err := pushSet(txn, pushRecKey(old.App, old.ID), old, s.retention); err != nil {
							return err
						}
					}
				} else if !errors.Is(err, storage.ErrNotFound) {
					return err
				}
				if err := pushSet(txn, ck, r.ID, s.ledgerTTL(&r, now)); err != nil {
					return err
				}
			}
			addEvent(&r, storage.PushEvent{At: now, State: r.State})
			if err := pushSet(txn, pushRecKey(r.App, r.ID), r, 0); err != nil {
				return err
			}
			if err := txn.Set(pushQueueKey(r.App, r.Provider, r.Due, r.ID), nil); err != nil {
				return err
			}
			ttl := s.ledgerTTL(&r, now)
			for _, k := range [][]byte{pushKey("p/la", r.App, r.ID), pushKey("p/lu", r.App, r.User, r.ID), pushKey("p/ld", r.App, r.User, r.Device, r.ID)} {
				if err := txn.SetEntry(badger.NewEntry(k, nil).WithTTL(ttl)); err != nil {
					return err
				}
			}
		}
		return nil
	}
}

func (s *PushStore) ClaimPush(ctx context.Context, q storage.PushQueueID, now time.Time, limit int) ([]storage.PushRecord, error) {
	if limit <= 0 {
		return nil, nil
	}
	s.mu.Lock()
	c := s.cursor(q)
	from := c.at
	c.claiming, c.lowWater = true, math.MaxInt64
	s.mu.Unlock()
	bound := from
	var err error
	defer func() {
		s.mu.Lock()
		if err == nil {
			c.at = max(bound, c.at)
		}
		c.at = min(c.at, c.lowWater) // lowWater: records queued meanwhile
		c.claiming = false
		s.mu.Unlock()
	}()
	var out []storage.PushRecord
	err = s.update(ctx, false, func(txn *badger.Txn) error {
		out = out[:0]
		pfx := pushQueuePrefix(q)
		var keys [][]byte
		keys, bound = dueKeys(txn, pfx, from, now, limit)
		for _, k := range keys {
			id := string(k[len(pfx)+9:])
			var r storage.PushRecord
			err := pushGet(txn, pushRecKey(q.App, id), &r)
			if err := txn.Delete(k); err != nil {
				return err
			}
			if errors.Is(err, storage.ErrNotFound) {
				continue // an index without its record: drop the index
			} else if err != nil {
				return err
			}
			if r.State != storage.PushQueued {
				continue
			}
			if r.Coalesce != "" {
				ck := pushKey("p/k", r.App, r.Coalesce)
				var cur string
				if pushGet(txn, ck, &cur) == nil && cur == r.ID {
					if err := txn.Delete(ck); err != nil {
						return err
					}
				}
			}
			r.State, r.UpdatedAt = storage.PushSent, now
			r.Attempts++
			addEvent(&r, storage.PushEvent{At: now, State: r.State, Attempt: r.Attempts})
			if err := pushSet(txn, pushRecKey(r.App, r.ID), r, 0); err != nil {
				return err
			}
			if err := txn.Set(pushKey("p/f", r.App, r.Provider, r.ID), nil); err != nil {
				return err
			}
			out = append(out, r)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (s *PushStore) FinishPush(ctx context.Context, r storage.PushRecord) error {
	err := s.update(ctx, false, func(txn *badger.Txn) error {
		if err := txn.Delete(pushKey("p/f", r.App, r.Provider, r.ID)); err != nil {
			return err
		}
		addEvent(&r, storage.PushEvent{At: r.UpdatedAt, State: r.State, Attempt: r.Attempts, Status: r.Status, Reason: r.Reason})
		if r.Terminal() {
			return pushSet(txn, pushRecKey(r.App, r.ID), r, s.retention)
		}
		r.State = storage.PushQueued
		if err := pushSet(txn, pushRecKey(r.App, r.ID), r, 0); err != nil {
			return err
		}
		return txn.Set(pushQueueKey(r.App, r.Provider, r.Due, r.ID), nil)
	})
	if !r.Terminal() {
		s.queued([]storage.PushRecord{r})
	}
	return err
}

func (s *PushStore) RecoverPush(ctx context.Context, now time.Time) (int, error) {
	var keys [][]byte
	err := s.view(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(pfxPushFlight)})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			keys = append(keys, it.Item().KeyCopy(nil))
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	n := 0
	for len(keys) > 0 {
		batch := keys[:min(len(keys), 256)]
		keys = keys[len(batch):]
		err := s.update(ctx, true, func(txn *badger.Txn) error {
			for _, k := range batch {
				parts := strings.SplitN(string(k[len(pfxPushFlight):]), "/", 3)
				if len(parts) != 3 {
					continue
				}
				app, provider, id := parts[0], parts[1], parts[2]
				if err := txn.Delete(k); err != nil {
					return err
				}
				var r storage.PushRecord
				if err := pushGet(txn, pushRecKey(app, id), &r); errors.Is(err, storage.ErrNotFound) {
					continue
				} else if err != nil {
					return err
				}
				if r.State != storage.PushSent {
					continue
				}
				r.State, r.Due, r.UpdatedAt, r.Reason = storage.PushQueued, now, now, "recovered after restart"
				addEvent(&r, storage.PushEvent{At: now, State: r.State, Attempt: r.Attempts, Reason: r.Reason})
				if err := pushSet(txn, pushRecKey(app, id), r, 0); err != nil {
					return err
				}
				if err := txn.Set(pushQueueKey(app, provider, now, id), nil); err != nil {
					return err
				}
			}
			return nil
		})
		s.mu.Lock()
		for _, c := range s.cursors {
			c.at = min(c.at, now.UnixMilli())
			if c.claiming {
				c.lowWater = min(c.lowWater, now.UnixMilli())
			}
		}
		s.mu.Unlock()
		if err != nil {
			return n, err
		}
		n += len(batch)
	}
	return n, nil
}

func (s *PushStore) PushQueues(ctx context.Context) (map[storage.PushQueueID]time.Time, error) {
	out := map[storage.PushQueueID]time.Time{}
	err := s.view(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(pfxPushQueue)})
		defer it.Close()
		it.Rewind()
		for it.Valid() {
			k := it.Item().Key()
			rest := k[len(pfxPushQueue):]
			a := bytes.IndexByte(rest, '/')
			if a < 0 {
				it.Next()
				continue
			}
			p := bytes.IndexByte(rest[a+1:], '/')
			if p < 0 || len(rest) < a+1+p+1+8 {
				it.Next()
				continue
			}
			q := storage.PushQueueID{App: string(rest[:a]), Provider: string(rest[a+1 : a+1+p])}
			due := int64(binary.BigEndian.Uint64(rest[a+1+p+1:]))
			out[q] = time.UnixMilli(due)
			// Skip the rest of this queue.
			it.Seek(append(pushQueuePrefix(q), 0xFF))
		}
		return nil
	})
	return out, err
}

func (s *PushStore) NextPushDue(ctx context.Context, q storage.PushQueueID) (time.Time, bool, error) {
	var due time.Time
	var ok bool
	err := s.view(func(txn *badger.Txn) error {
		pfx := pushQueuePrefix(q)
		s.mu.Lock()
		from := s.cursor(q).at
		s.mu.Unlock()
		it := txn.NewIterator(badger.IteratorOptions{Prefix: pfx})
		defer it.Close()
		it.Seek(binary.BigEndian.AppendUint64(bytes.Clone(pfx), uint64(from)))
		if it.Valid() && len(it.Item().Key()) >= len(pfx)+8 {
			due, ok = time.UnixMilli(int64(binary.BigEndian.Uint64(it.Item().Key()[len(pfx):]))), true
		}
		return nil
	})
	return due, ok, err
}

func (s *PushStore) GetPush(ctx context.Context, app, id string) (storage.PushRecord, error) {
	var r storage.PushRecord
	err := s.view(func(txn *badger.Txn) error { return pushGet(txn, pushRecKey(app, id), &r) })
	return r, err
}

func (s *PushStore) ListPush(ctx context.Context, app, user, device string, limit int) ([]storage.PushRecord, error) {
	if limit <= 0 {
		limit = 50
	}
	var pfx []byte
	switch {
	case user == "":
		pfx = []byte(pfxPushLedA + app + "/")
	case device == "":
		pfx = []byte(pfxPushLedU + app + "/" + user + "/")
	default:
		pfx = []byte(pfxPushLedD + app + "/" + user + "/" + device + "/")
	}
	var out []storage.PushRecord
	err := s.view(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: pfx, Reverse: true})
		defer it.Close()
		for it.Seek(append(bytes.Clone(pfx), 0xFF)); it.Valid() && len(out) < limit; it.Next() {
			id := string(it.Item().Key()[len(pfx):])
			var r storage.PushRecord
			if err := pushGet(txn, pushRecKey(app, id), &r); errors.Is(err, storage.ErrNotFound) {
				continue
			} else if err != nil {
				return err
			}
			out = append(out, r)
		}
		return nil
	})
	return out, err
}

// dueKeys scans a queue whose keys are pfx + 8-byte big-endian due time (ms)
// + separator + ID, from the due time from on, and returns at most limit keys
// due by now. bound is how far the scan got: the due time of the last key it
// looked at, or now when nothing more is queued up to now; a caller resumes
// its next scan there.
func dueKeys(txn *badger.Txn, pfx []byte, from int64, now time.Time, limit int) (keys [][]byte, bound int64) {
	bound = from
	it := txn.NewIterator(badger.IteratorOptions{Prefix: pfx})
	defer it.Close()
	it.Seek(binary.BigEndian.AppendUint64(bytes.Clone(pfx), uint64(from)))
	for ; it.Valid() && len(keys) < limit; it.Next() {
		k := it.Item().KeyCopy(nil)
		if len(k) < len(pfx)+9 {
			continue
		}
		due := int64(binary.BigEndian.Uint64(k[len(pfx):]))
		bound = due
		if due > now.UnixMilli() {
			break
		}
		keys = append(keys, k)
	}
	if !it.Valid() && len(keys) < limit {
		bound = max(bound, now.UnixMilli()) // nothing queued up to now
	}
	return keys, bound
}
