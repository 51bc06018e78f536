package badgerstore

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"time"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/warblerim/warbler/storage"
)

// CampaignStore implements storage.CampaignStore under the "t/" prefix:
//
//	t/c/{app}/{id}          Campaign (JSON); IDs are time-ordered
//	t/u/{app}/{id}/{user}   a user's outcome (kept 30 days)
//	t/f/{app}/{day}/{user}  frequency-cap counter, uint32 (kept 2 days)
//	t/d/{app}/{dedupe key}  campaign ID (kept for the dedupe window)
//	t/o/{app}/{id}/{user}   the user opened it (kept 30 days)
//
// Writes to one campaign record (progress from the runner, provider
// outcomes, opens) are serialized in this process by a lock per campaign,
// so they queue instead of failing with conflicts.
type CampaignStore struct {
	db    *DB
	mu    sync.Mutex
	locks map[string]*sync.Mutex
}

var _ storage.CampaignStore = (*CampaignStore)(nil)

// NewCampaignStore returns the campaign store of db.
func NewCampaignStore(db *DB) *CampaignStore {
	return &CampaignStore{db: db, locks: map[string]*sync.Mutex{}}
}

const (
	pfxCampaign   = "t/c/"
	pfxCampUser   = "t/u/"
	pfxCampCap    = "t/f/"
	pfxCampDedupe = "t/d/"
	pfxCampOpen   = "t/o/"
	campaignKeep  = 30 * 24 * time.Hour
	capKeep       = 48 * time.Hour
)

func (s *CampaignStore) lock(app, id string) func() {
	s.mu.Lock()
	m := s.locks[app+"/"+id]
	if m == nil {
		m = &sync.Mutex{}
		s.locks[app+"/"+id] = m
	}
	s.mu.Unlock()
	m.Lock()
	return m.Unlock
}

func campKey(app, id string) []byte { return []byte(pfxCampaign + app + "/" + id) }

// CreateCampaign implements storage.CampaignStore.
func (s *CampaignStore) CreateCampaign(ctx context.Context, c storage.Campaign, dedupeTTL time.Duration) (storage.Campaign, bool, error) {
	out, created := c, true
	err := s.db.update(ctx, true, func(txn *badger.Txn) error {
		out, created = c, true
		if c.DedupeKey != "" {
			dk := []byte(pfxCampDedupe + c.App + "/" + c.DedupeKey)
			it, err := txn.Get(dk)
			if err == nil {
				var id []byte
				if id, err = it.ValueCopy(nil); err != nil {
					return err
				}
				var old storage.Campaign
				if err := get(txn, campKey(c.App, string(id)), &old); err == nil {
					out, created = old, false
					return nil
				} else if !errors.Is(err, storage.ErrNotFound) {
					return err
				}
			} else if !errors.Is(err, badger.ErrKeyNotFound) {
				return err
			}
			if err := txn.SetEntry(badger.NewEntry(dk, []byte(c.ID)).WithTTL(dedupeTTL)); err != nil {
				return err
			}
		}
		if _, err := txn.Get(campKey(c.App, c.ID)); err == nil {
			return storage.ErrExists
		}
		return set(txn, campKey(c.App, c.ID), c)
	})
	return out, created, err
}

// GetCampaign implements storage.CampaignStore.
func (s *CampaignStore) GetCampaign(ctx context.Context, app, id string) (storage.Campaign, error) {
	var c storage.Campaign
	err := s.db.db.View(func(txn *badger.Txn) error { return get(txn, campKey(app, id), &c) })
	return c, err
}

// ListCampaigns implements storage.CampaignStore.
func (s *CampaignStore) ListCampaigns(ctx context.Context, app, before string, limit int) ([]storage.Campaign, error) {
	p := []byte(pfxCampaign + app + "/")
	var out []storage.Campaign
	err := s.db.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: p, Reverse: true, PrefetchValues: true, PrefetchSize: 16})
		defer it.Close()
		seek := append(append([]byte{}, p...), 0xff)
		if before != "" {
			seek = campKey(app, before)
		}
		for it.Seek(seek); it.Valid(); it.Next() {
			if before != "" && string(it.Item().Key()[len(p):]) >= before {
				continue
			}
			var c storage.Campaign
			if err := it.Item().Value(func(b []byte) error { return json.Unmarshal(b, &c) }); err != nil {
				return err
			}
			out = append(out, c)
			if limit > 0 && len(out) >= limit {
				break
			}
		}
		return nil
	})
	return out, err
}

// UpdateCampaign implements storage.CampaignStore.
func (s *CampaignStore) UpdateCampaign(ctx context.Context, app, id string, fn func(*storage.Campaign) error) (storage.Campaign, error) {
	defer s.lock(app, id)()
	var out storage.Campaign
	err := s.db.update(ctx, true, func(txn *badger.Txn) error {
		var c storage.Campaign
		if err := get(txn, campKey(app, id), &c); err != nil {
			return err
		}
		if err := fn(&c); err != nil {
			return err
		}
		out = c
		return set(txn, campKey(app, id), c)
	})
	return out, err
}

// PendingCampaigns implements storage.CampaignStore.
func (s *CampaignStore) PendingCampaigns(ctx context.Context) ([]storage.Campaign, error) {
	var out []storage.Campaign
	err := s.db.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(pfxCampaign), PrefetchValues: true, PrefetchSize: 16})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			var c storage.Campaign
			if err := it.Item().Value(func(b []byte) error { return json.Unmarshal(b, &c) }); err != nil {
				return err
			}
			if c.State == storage.CampaignScheduled || c.State == storage.CampaignRunning {
				out = append(out, c)
			}
		}
		return nil
	})
	return out, err
}

// CommitCampaignChunk implements storage.CampaignStore.
func (s *CampaignStore) CommitCampaignChunk(ctx context.Context, app, id string, ch storage.CampaignChunk) error {
	defer s.lock(app, id)()
	return s.db.update(ctx, true, func(txn *badger.Txn) error {
		var c storage.Campaign
		if err := get(txn, campKey(app, id), &c); err != nil {
			return err
		}
		for u, o := range ch.Outcomes {
			if err := txn.SetEntry(badger.NewEntry([]byte(pfxCampUser+app+"/"+id+"/"+u), []byte(o)).WithTTL(campaignKeep)); err != nil {
				return err
			}
		}
		for _, u := range ch.Capped {
			k := []byte(pfxCampCap + app + "/" + ch.Day + "/" + u)
			n := uint32(0)
			if it, err := txn.Get(k); err == nil {
				_ = it.Value(func(b []byte) error {
					if len(b) == 4 {
						n = binary.BigEndian.Uint32(b)
					}
					return nil
				})
			} else if !errors.Is(err, badger.ErrKeyNotFound) {
				return err
			}
			if err := txn.SetEntry(badger.NewEntry(k, binary.BigEndian.AppendUint32(nil, n+1)).WithTTL(capKeep)); err != nil {
				return err
			}
		}
		c.Stats.Add(ch.Delta)
		return set(txn, campKey(app, id), c)
	})
}

// exist reports which of keys exist, with their values.
func (s *CampaignStore) values(prefix string, users []string) (map[string][]byte, error) {
	out := map[string][]byte{}
	err := s.db.db.View(func(txn *badger.Txn) error {
		for _, u := range users {
			it, err := txn.Get([]byte(prefix + u))
			if errors.Is(err, badger.ErrKeyNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			v, err := it.ValueCopy(nil)
			if err != nil {
				return err
			}
			out[u] = v
		}
		return nil
	})
	return out, err
}

// CampaignDone implements storage.CampaignStore.
func (s *CampaignStore) CampaignDone(ctx context.Context, app, id string, users []string) (map[string]bool, error) {
	vals, err := s.values(pfxCampUser+app+"/"+id+"/", users)
	if err != nil {
		return nil, err
	}
	out := make(map[string]bool, len(vals))
	for u := range vals {
		out[u] = true
	}
	return out, nil
}

// CapCounts implements storage.CampaignStore.
func (s *CampaignStore) CapCounts(ctx context.Context, app, day string, users []string) (map[string]int, error) {
	vals, err := s.values(pfxCampCap+app+"/"+day+"/", users)
	if err != nil {
		return nil, err
	}
	out := make(map[string]int, len(vals))
	for u, v := range vals {
		if len(v) == 4 {
			out[u] = int(binary.BigEndian.Uint32(v))
		}
	}
	return out, nil
}

// MarkOpened implements storage.CampaignStore.
func (s *CampaignStore) MarkOpened(ctx context.Context, app, id, user string) (bool, error) {
	if strings.Contains(user, "/") {
		return false, storage.ErrNotFound
	}
	defer s.lock(app, id)()
	first := false
	err := s.db.update(ctx, true, func(txn *badger.Txn) error {
		first = false
		var c storage.Campaign
		if err := get(txn, campKey(app, id), &c); err != nil {
			return err
		}
		k := []byte(pfxCampOpen + app + "/" + id + "/" + user)
		if _, err := txn.Get(k); err == nil {
			return nil
		} else if !errors.Is(err, badger.ErrKeyNotFound) {
			return err
		}
		if err := txn.SetEntry(badger.NewEntry(k, nil).WithTTL(campaignKeep)); err != nil {
			return err
		}
		c.Stats.Opened++
		first = true
		return set(txn, campKey(app, id), c)
	})
	return first, err
}
