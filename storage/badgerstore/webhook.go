package badgerstore

// WebhookStore: storage.WebhookStore on the shared Badger database, under
// "h/".
//
// Keys. App, endpoint and delivery IDs never contain '/'.
//
//	h/e/{app}/{endpoint}                        WebhookEndpoint (JSON)
//	h/d/{app}/{endpoint}/{id}                   WebhookDelivery (JSON); TTL once terminal
//	h/q/{due:8 bytes}/{app}/{endpoint}/{id}     queue index: queued deliveries by Due (unix ms, big-endian)
//	h/f/{app}/{endpoint}/{id}                   in-flight index: deliveries in state "sending"
//	h/m/{app}/{conv}                            mark: the conversation's events are queued up to this seq (8 bytes)
//
// Delivery IDs are time-ordered, so walking an endpoint's records backwards
// lists the newest deliveries first. There is one queue for all apps: the
// webhook service claims whatever is due, whichever app it belongs to, and
// bounds concurrency itself.
//
// Durability. Enqueues and endpoint writes are synced before they return.
// Claims and outcomes are not: they survive a process crash (the
// write-ahead log is memory-mapped) and reach the disk with the next sync.
// After a power loss a delivery may thus be found queued or sending again
// and be sent again: the queue errs towards at-least-once, never towards
// losing an event.

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
	pfxHookEndpoint = "h/e/"
	pfxHookDelivery = "h/d/"
	pfxHookQueue    = "h/q/"
	pfxHookFlight   = "h/f/"
	pfxHookMark     = "h/m/"
)

// hookMaxAttempts bounds the attempts kept in one delivery record; the
// first and the newest are kept, Tries counts them all.
const hookMaxAttempts = 20

// WebhookOptions tunes the webhook store.
type WebhookOptions struct {
	// Retention is how long a finished delivery stays in the log (default
	// 3 days).
	Retention time.Duration
}

// WebhookStore implements storage.WebhookStore. It needs no Close.
//
// Claiming scans the queue index from a cursor, not from its start, for
// the reason PushStore does: claimed entries leave tombstones until
// compaction. The cursor is a lower bound on the Due of every queued
// delivery, kept the same way.
type WebhookStore struct {
	db        *DB
	retention time.Duration

	mu       sync.Mutex
	at       int64 // every queued delivery has Due (unix ms) >= at
	claiming bool
	lowWater int64
}

var _ storage.WebhookStore = (*WebhookStore)(nil)

// NewWebhookStore returns the webhook store of db.
func NewWebhookStore(db *DB, o WebhookOptions) *WebhookStore {
	if o.Retention <= 0 {
		o.Retention = 3 * 24 * time.Hour
	}
	return &WebhookStore{db: db, retention: o.Retention}
}

func hookEndpointKey(app, id string) []byte { return []byte(pfxHookEndpoint + app + "/" + id) }

func hookDeliveryPrefix(app, endpoint string) []byte {
	return []byte(pfxHookDelivery + app + "/" + endpoint + "/")
}

func hookDeliveryKey(app, endpoint, id string) []byte {
	return append(hookDeliveryPrefix(app, endpoint), id...)
}

func hookFlightKey(app, endpoint, id string) []byte {
	return []byte(pfxHookFlight + app + "/" + endpoint + "/" + id)
}

func hookQueueKey(d *storage.WebhookDelivery) []byte {
	k := make([]byte, 0, len(pfxHookQueue)+8+len(d.App)+len(d.Endpoint)+len(d.ID)+3)
	k = append(k, pfxHookQueue...)
	k = binary.BigEndian.AppendUint64(k, uint64(max(d.Due.UnixMilli(), 0)))
	k = append(k, '/')
	k = append(k, d.App...)
	k = append(k, '/')
	k = append(k, d.Endpoint...)
	k = append(k, '/')
	return append(k, d.ID...)
}

// lowered lowers the claim cursor for deliveries just queued.
func (s *WebhookStore) lowered(ds []storage.WebhookDelivery) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range ds {
		due := max(ds[i].Due.UnixMilli(), 0)
		s.at = min(s.at, due)
		if s.claiming {
			s.lowWater = min(s.lowWater, due)
		}
	}
}

func addAttemptCap(d *storage.WebhookDelivery) {
	if n := len(d.Attempts); n > hookMaxAttempts {
		d.Attempts = append(d.Attempts[:1], d.Attempts[n-hookMaxAttempts+1:]...)
	}
}

// Endpoints.

func (s *WebhookStore) PutWebhookEndpoint(ctx context.Context, e storage.WebhookEndpoint) error {
	return s.db.update(ctx, true, func(txn *badger.Txn) error {
		return pushSet(txn, hookEndpointKey(e.App, e.ID), e, 0)
	})
}

func (s *WebhookStore) GetWebhookEndpoint(ctx context.Context, app, id string) (storage.WebhookEndpoint, error) {
	var e storage.WebhookEndpoint
	err := s.db.db.View(func(txn *badger.Txn) error { return pushGet(txn, hookEndpointKey(app, id), &e) })
	return e, err
}

func (s *WebhookStore) UpdateWebhookEndpoint(ctx context.Context, app, id string, fn func(*storage.WebhookEndpoint) error) (storage.WebhookEndpoint, error) {
	var out storage.WebhookEndpoint
	err := s.db.update(ctx, true, func(txn *badger.Txn) error {
		var e storage.WebhookEndpoint
		if err := pushGet(txn, hookEndpointKey(app, id), &e); err != nil {
			return err
		}
		if err := fn(&e); err != nil {
			return err
		}
		out = e
		return pushSet(txn, hookEndpointKey(app, id), e, 0)
	})
	return out, err
}

func (s *WebhookStore) ListWebhookEndpoints(ctx context.Context, app string) ([]storage.WebhookEndpoint, error) {
	var out []storage.WebhookEndpoint
	err := s.db.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(pfxHookEndpoint + app + "/"), PrefetchValues: true})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			var e storage.WebhookEndpoint
			if err := it.Item().Value(func(b []byte) error { return json.Unmarshal(b, &e) }); err != nil {
				return err
			}
			out = append(out, e)
		}
		return nil
	})
	return out, err
}

func (s *WebhookStore) DeleteWebhookEndpoint(ctx context.Context, app, id string) error {
	err := s.db.update(ctx, true, func(txn *badger.Txn) error {
		k := hookEndpointKey(app, id)
		if _, err := txn.Get(k); errors.Is(err, badger.ErrKeyNotFound) {
			return storage.ErrNotFound
		} else if err != nil {
			return err
		}
		return txn.Delete(k)
	})
	if err != nil {
		return err
	}
	// The endpoint is gone; its deliveries go in batches (a worker that
	// holds one finds it missing and lets it go).
	var keys [][]byte
	err = s.db.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: hookDeliveryPrefix(app, id), PrefetchValues: true})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			keys = append(keys, it.Item().KeyCopy(nil))
			var d storage.WebhookDelivery
			if err := it.Item().Value(func(b []byte) error { return json.Unmarshal(b, &d) }); err != nil {
				continue
			}
			switch d.State {
			case storage.WebhookQueued:
				keys = append(keys, hookQueueKey(&d))
			case storage.WebhookSending:
				keys = append(keys, hookFlightKey(app, id, d.ID))
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := s.db.CheckSpace(); err != nil {
		return err
	}
	wb := s.db.db.NewWriteBatch()
	defer wb.Cancel()
	for _, k := range keys {
		if err := wb.Delete(k); err != nil {
			return err
		}
	}
	return wb.Flush()
}

// The queue.

// hookEnqueueChunk is how many deliveries one enqueue transaction writes,
// well below Badger's transaction size limit for event-sized payloads.
const hookEnqueueChunk = 128

func (s *WebhookStore) EnqueueWebhooks(ctx context.Context, ds []storage.WebhookDelivery, marks []storage.WebhookMark) error {
	if len(ds) == 0 && len(marks) == 0 {
		return nil
	}
	for rest := ds; ; {
		chunk := rest[:min(len(rest), hookEnqueueChunk)]
		rest = rest[len(chunk):]
		last := len(rest) == 0
		err := s.db.update(ctx, false, func(txn *badger.Txn) error {
			if last {
				if err := setMarks(txn, marks); err != nil {
					return err
				}
			}
			for i := range chunk {
				d := chunk[i]
				d.State = storage.WebhookQueued
				if err := pushSet(txn, hookDeliveryKey(d.App, d.Endpoint, d.ID), d, 0); err != nil {
					return err
				}
				if err := txn.Set(hookQueueKey(&d), nil); err != nil {
					return err
				}
			}
			return nil
		})
		s.lowered(chunk)
		if err != nil {
			return err
		}
		if last {
			break
		}
	}
	if err := s.db.Sync(); err != nil {
		return fmt.Errorf("sync: %w", err)
	}
	return nil
}

// setMarks moves marks forward in txn.
func setMarks(txn *badger.Txn, marks []storage.WebhookMark) error {
	for _, m := range marks {
		k := []byte(pfxHookMark + m.App + "/" + m.Conv)
		it, err := txn.Get(k)
		if err == nil {
			var cur uint64
			if err := it.Value(func(v []byte) error {
				if len(v) == 8 {
					cur = binary.BigEndian.Uint64(v)
				}
				return nil
			}); err != nil {
				return err
			}
			if cur >= m.Seq {
				continue
			}
		} else if !errors.Is(err, badger.ErrKeyNotFound) {
			return err
		}
		if err := txn.Set(k, binary.BigEndian.AppendUint64(nil, m.Seq)); err != nil {
			return err
		}
	}
	return nil
}

func (s *WebhookStore) WebhookMarks(ctx context.Context, app string) (map[string]uint64, error) {
	out := map[string]uint64{}
	pfx := []byte(pfxHookMark + app + "/")
	err := s.db.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: pfx, PrefetchValues: true})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			conv := string(it.Item().Key()[len(pfx):])
			if err := it.Item().Value(func(v []byte) error {
				if len(v) == 8 {
					out[conv] = binary.BigEndian.Uint64(v)
				}
				return nil
			}); err != nil {
				return err
			}
		}
		return nil
	})
	return out, err
}

func (s *WebhookStore) ClaimWebhooks(ctx context.Context, now time.Time, limit int) ([]storage.WebhookDelivery, error) {
	if limit <= 0 {
		return nil, nil
	}
	s.mu.Lock()
	from := s.at
	s.claiming, s.lowWater = true, math.MaxInt64
	s.mu.Unlock()
	bound := from
	var err error
	defer func() {
		s.mu.Lock()
		if err == nil {
			s.at = max(bound, s.at)
		}
		s.at = min(s.at, s.lowWater)
		s.claiming = false
		s.mu.Unlock()
	}()
	var out []storage.WebhookDelivery
	pfx := []byte(pfxHookQueue)
	err = s.db.update(ctx, false, func(txn *badger.Txn) error {
		out = out[:0]
		var keys [][]byte
		keys, bound = dueKeys(txn, pfx, from, now, limit)
		for _, k := range keys {
			if err := txn.Delete(k); err != nil {
				return err
			}
			parts := strings.SplitN(string(k[len(pfx)+9:]), "/", 3)
			if len(parts) != 3 {
				continue
			}
			var d storage.WebhookDelivery
			if err := pushGet(txn, hookDeliveryKey(parts[0], parts[1], parts[2]), &d); errors.Is(err, storage.ErrNotFound) {
				continue // an index without its record: drop the index
			} else if err != nil {
				return err
			}
			if d.State != storage.WebhookQueued {
				continue
			}
			d.State, d.UpdatedAt = storage.WebhookSending, now
			if err := pushSet(txn, hookDeliveryKey(d.App, d.Endpoint, d.ID), d, 0); err != nil {
				return err
			}
			if err := txn.Set(hookFlightKey(d.App, d.Endpoint, d.ID), nil); err != nil {
				return err
			}
			out = append(out, d)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (s *WebhookStore) FinishWebhook(ctx context.Context, d storage.WebhookDelivery) error {
	addAttemptCap(&d)
	queued := false
	err := s.db.update(ctx, false, func(txn *badger.Txn) error {
		queued = false
		if err := txn.Delete(hookFlightKey(d.App, d.Endpoint, d.ID)); err != nil {
			return err
		}
		k := hookDeliveryKey(d.App, d.Endpoint, d.ID)
		if _, err := txn.Get(k); errors.Is(err, badger.ErrKeyNotFound) {
			return nil // the endpoint was deleted meanwhile
		} else if err != nil {
			return err
		}
		switch d.State {
		case storage.WebhookSucceeded, storage.WebhookFailed:
			return pushSet(txn, k, d, s.retention)
		}
		d.State = storage.WebhookQueued
		if err := pushSet(txn, k, d, 0); err != nil {
			return err
		}
		queued = true
		return txn.Set(hookQueueKey(&d), nil)
	})
	if queued {
		s.lowered([]storage.WebhookDelivery{d})
	}
	return err
}

func (s *WebhookStore) RecoverWebhooks(ctx context.Context, now time.Time) (int, error) {
	var keys [][]byte
	err := s.db.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(pfxHookFlight)})
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
		var requeued []storage.WebhookDelivery
		err := s.db.update(ctx, true, func(txn *badger.Txn) error {
			requeued = requeued[:0]
			for _, k := range batch {
				if err := txn.Delete(k); err != nil {
					return err
				}
				parts := strings.SplitN(string(k[len(pfxHookFlight):]), "/", 3)
				if len(parts) != 3 {
					continue
				}
				var d storage.WebhookDelivery
				if err := pushGet(txn, hookDeliveryKey(parts[0], parts[1], parts[2]), &d); errors.Is(err, storage.ErrNotFound) {
					continue
				} else if err != nil {
					return err
				}
				if d.State != storage.WebhookSending {
					continue
				}
				d.State, d.Due, d.UpdatedAt = storage.WebhookQueued, now, now
				if err := pushSet(txn, hookDeliveryKey(d.App, d.Endpoint, d.ID), d, 0); err != nil {
					return err
				}
				if err := txn.Set(hookQueueKey(&d), nil); err != nil {
					return err
				}
				requeued = append(requeued, d)
			}
			return nil
		})
		if err != nil {
			return n, err
		}
		s.lowered(requeued)
		n += len(requeued)
	}
	return n, nil
}

func (s *WebhookStore) ListWebhookDeliveries(ctx context.Context, app, endpoint, before string, limit int) ([]storage.WebhookDelivery, error) {
	if limit <= 0 {
		limit = 50
	}
	var out []storage.WebhookDelivery
	pfx := hookDeliveryPrefix(app, endpoint)
	err := s.db.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: pfx, Reverse: true, PrefetchValues: true, PrefetchSize: min(limit, 100)})
		defer it.Close()
		seek := append(bytes.Clone(pfx), 0xFF)
		if before != "" {
			seek = append(bytes.Clone(pfx), before...)
		}
		for it.Seek(seek); it.Valid() && len(out) < limit; it.Next() {
			if before != "" && string(it.Item().Key()[len(pfx):]) >= before {
				continue
			}
			var d storage.WebhookDelivery
			if err := it.Item().Value(func(b []byte) error { return json.Unmarshal(b, &d) }); err != nil {
				return err
			}
			out = append(out, d)
		}
		return nil
	})
	return out, err
}

func (s *WebhookStore) GetWebhookDelivery(ctx context.Context, app, endpoint, id string) (storage.WebhookDelivery, error) {
	var d storage.WebhookDelivery
	err := s.db.db.View(func(txn *badger.Txn) error { return pushGet(txn, hookDeliveryKey(app, endpoint, id), &d) })
	return d, err
}

func (s *WebhookStore) WebhookQueueDepth(ctx context.Context) (int, error) {
	n := 0
	err := s.db.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(pfxHookQueue)})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			n++
		}
		return nil
	})
	return n, err
}
