package badgerstore

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"slices"
	"sort"
	"sync"
	"time"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/warblerim/warbler/storage"
)

// The tag index: one empty-valued key per (user, tag), written in the same
// transaction as the user record, so "users with tag X" is a key-only
// prefix scan instead of a walk over every user. Tags are text without
// control characters (identity checks them), so NUL separates the tag
// from the user ID unambiguously.
const (
	pfxTag       = "i/g/"
	keyTagMarker = "i/gv"
)

var _ storage.UserIndex = (*IdentityStore)(nil)

func tagKey(app, tag, user string) []byte {
	return []byte(pfxTag + app + "/" + tag + "\x00" + user)
}

// indexTags moves a user's index entries from the tags old to nu.
func indexTags(txn *badger.Txn, app, user string, old, nu []string) error {
	for _, t := range old {
		if !slices.Contains(nu, t) {
			if err := txn.Delete(tagKey(app, t, user)); err != nil {
				return err
			}
		}
	}
	for _, t := range nu {
		if !slices.Contains(old, t) {
			if err := txn.Set(tagKey(app, t, user), nil); err != nil {
				return err
			}
		}
	}
	return nil
}

// buildTagIndex indexes the tags of users stored before the index existed.
// It runs once per store, when the store is opened.
func (s *IdentityStore) buildTagIndex() error {
	db := s.db.db
	err := db.View(func(txn *badger.Txn) error {
		_, err := txn.Get([]byte(keyTagMarker))
		return err
	})
	if err == nil {
		return nil
	}
	if !errors.Is(err, badger.ErrKeyNotFound) {
		return err
	}
	wb := db.NewWriteBatch()
	defer wb.Cancel()
	err = db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(pfxUser), PrefetchValues: true, PrefetchSize: 64})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			var u storage.User
			if err := it.Item().Value(func(b []byte) error { return json.Unmarshal(b, &u) }); err != nil {
				return err
			}
			for _, t := range u.Tags {
				if err := wb.Set(tagKey(u.App, t, u.ID), nil); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := wb.Set([]byte(keyTagMarker), []byte("1")); err != nil {
		return err
	}
	if err := wb.Flush(); err != nil {
		return err
	}
	return s.db.Sync()
}

// tagCache keeps the answers of UsersWithTag and UserIDs per app until the
// next user write of that app. A generation number per app keeps an answer
// computed before a write from being cached after it.
type tagCache struct {
	mu   sync.Mutex
	gen  map[string]uint64
	sets map[string]map[string][]string // app -> tag ("\x00all" for every user) -> IDs
	size int                            // IDs held, bounded by maxTagCache
}

const (
	maxTagCache = 2_000_000
	allUsersTag = "\x00all"
)

func (c *tagCache) invalidate(app string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen == nil {
		c.gen = map[string]uint64{}
	}
	c.gen[app]++
	for _, ids := range c.sets[app] {
		c.size -= len(ids)
	}
	delete(c.sets, app)
}

func (c *tagCache) get(app, tag string) ([]string, uint64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ids, ok := c.sets[app][tag]
	return ids, c.gen[app], ok
}

func (c *tagCache) put(app, tag string, gen uint64, ids []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen[app] != gen || len(ids) > maxTagCache {
		return
	}
	if c.size+len(ids) > maxTagCache { // full: start over rather than track recency
		c.sets, c.size = nil, 0
	}
	if c.sets == nil {
		c.sets = map[string]map[string][]string{}
	}
	if c.sets[app] == nil {
		c.sets[app] = map[string][]string{}
	}
	c.sets[app][tag] = ids
	c.size += len(ids)
}

// keysAfter lists the key suffixes after prefix p, in key order.
func (s *IdentityStore) keysAfter(ctx context.Context, p []byte) ([]string, error) {
	var out []string
	err := s.db.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: p})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			if len(out)%4096 == 4095 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			out = append(out, string(it.Item().Key()[len(p):]))
		}
		return nil
	})
	return out, err
}

// UsersWithTag implements storage.UserIndex. The result is shared with the
// cache: callers must not modify it.
func (s *IdentityStore) UsersWithTag(ctx context.Context, app, tag string) ([]string, error) {
	if s.idxErr != nil {
		return nil, s.idxErr
	}
	if ids, gen, ok := s.tags.get(app, tag); ok {
		return ids, nil
	} else {
		ids, err := s.keysAfter(ctx, []byte(pfxTag+app+"/"+tag+"\x00"))
		if err != nil {
			return nil, err
		}
		s.tags.put(app, tag, gen, ids)
		return ids, nil
	}
}

// UserIDs implements storage.UserIndex. The result is shared with the
// cache: callers must not modify it.
func (s *IdentityStore) UserIDs(ctx context.Context, app string) ([]string, error) {
	if ids, gen, ok := s.tags.get(app, allUsersTag); ok {
		return ids, nil
	} else {
		ids, err := s.keysAfter(ctx, key(pfxUser, app, ""))
		if err != nil {
			return nil, err
		}
		s.tags.put(app, allUsersTag, gen, ids)
		return ids, nil
	}
}

// CreateUsers implements storage.UserIndex in one synced transaction (a
// few thousand users fit; the HTTP API sends at most 1000 at once).
func (s *IdentityStore) CreateUsers(ctx context.Context, users []storage.User) error {
	if len(users) == 0 {
		return nil
	}
	seen := make(map[string]bool, len(users))
	for _, u := range users {
		if seen[u.App+"/"+u.ID] {
			return storage.ErrExists
		}
		seen[u.App+"/"+u.ID] = true
	}
	defer func() {
		for _, u := range users {
			s.tags.invalidate(u.App)
		}
	}()
	return s.write(ctx, func(txn *badger.Txn) error {
		for _, u := range users {
			uk := key(pfxUser, u.App, u.ID)
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
			if err := txn.Delete(key(pfxCred, u.App, u.ID)); err != nil {
				return err
			}
		}
		return nil
	})
}

// AudienceStore keeps behaviour events and segments under the "v/" and
// "sg/" prefixes.
//
//	v/{app}/{name}\x00{ms:8}{user}\x00{rand:4}   event; value: properties JSON (empty if none)
//	sg/{app}/{id}                                 Segment (JSON)
//
// An event's key carries its name, time and user, so the question segment
// rules ask ("who did X between T1 and T2") is one range scan of keys,
// reading values only when properties are filtered. Events expire through
// Badger's TTL at their time plus the retention given when stored.
type AudienceStore struct {
	db *DB
}

var (
	_ storage.EventStore   = (*AudienceStore)(nil)
	_ storage.SegmentStore = (*AudienceStore)(nil)
)

// NewAudienceStore returns the audience store of db.
func NewAudienceStore(db *DB) *AudienceStore { return &AudienceStore{db: db} }

const (
	pfxEvent   = "v/"
	pfxSegment = "sg/"
)

func eventPrefix(app, name string) []byte { return []byte(pfxEvent + app + "/" + name + "\x00") }

func eventKey(app string, e storage.Event) []byte {
	k := eventPrefix(app, e.Name)
	k = binary.BigEndian.AppendUint64(k, uint64(e.Time.UnixMilli()))
	k = append(k, e.User...)
	k = append(k, 0)
	var r [4]byte
	_, _ = rand.Read(r[:])
	return append(k, r[:]...)
}

// parseEventKey splits the part of an event key after its prefix.
func parseEventKey(rest []byte) (ms int64, user string, ok bool) {
	if len(rest) < 8+1+1+4 {
		return 0, "", false
	}
	ms = int64(binary.BigEndian.Uint64(rest[:8]))
	u := rest[8 : len(rest)-5]
	if rest[len(rest)-5] != 0 {
		return 0, "", false
	}
	return ms, string(u), true
}

// AppendEvents implements storage.EventStore. Events already past their
// retention are not stored.
func (s *AudienceStore) AppendEvents(ctx context.Context, app string, evs []storage.Event, retention time.Duration) error {
	now := time.Now()
	return s.db.update(ctx, true, func(txn *badger.Txn) error {
		for _, e := range evs {
			ttl := e.Time.Add(retention).Sub(now)
			if retention > 0 && ttl <= 0 {
				continue
			}
			var val []byte
			if len(e.Properties) > 0 {
				b, err := json.Marshal(e.Properties)
				if err != nil {
					return err
				}
				val = b
			}
			ent := badger.NewEntry(eventKey(app, e), val)
			if retention > 0 {
				ent = ent.WithTTL(ttl)
			}
			if err := txn.SetEntry(ent); err != nil {
				return err
			}
		}
		return nil
	})
}

// EventUsers implements storage.EventStore.
func (s *AudienceStore) EventUsers(ctx context.Context, app string, q storage.EventQuery) ([]string, error) {
	p := eventPrefix(app, q.Name)
	start := p
	if !q.Since.IsZero() {
		start = binary.BigEndian.AppendUint64(append([]byte{}, p...), uint64(max(q.Since.UnixMilli(), 0)))
	}
	until := int64(-1)
	if !q.Until.IsZero() {
		until = q.Until.UnixMilli()
	}
	need := max(q.MinCount, 1)
	counts := map[string]int{}
	err := s.db.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: p, PrefetchValues: len(q.Props) > 0, PrefetchSize: 64})
		defer it.Close()
		n := 0
		for it.Seek(start); it.Valid(); it.Next() {
			if n++; n%4096 == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			item := it.Item()
			ms, user, ok := parseEventKey(item.Key()[len(p):])
			if !ok {
				continue
			}
			if until >= 0 && ms >= until {
				break
			}
			if counts[user] >= need {
				continue
			}
			if len(q.Props) > 0 {
				match := false
				err := item.Value(func(b []byte) error {
					var props map[string]string
					if len(b) > 0 {
						if err := json.Unmarshal(b, &props); err != nil {
							return nil // an unreadable value matches nothing
						}
					}
					match = true
					for k, v := range q.Props {
						if pv, ok := props[k]; !ok || pv != v {
							match = false
						}
					}
					return nil
				})
				if err != nil {
					return err
				}
				if !match {
					continue
				}
			}
			counts[user]++
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(counts))
	for u, n := range counts {
		if n >= need {
			out = append(out, u)
		}
	}
	sort.Strings(out)
	return out, nil
}

// ListEvents implements storage.EventStore. With an empty name it walks
// every event of the app; with a user it filters while walking, so it is
// meant for inspection, not for bulk reads.
func (s *AudienceStore) ListEvents(ctx context.Context, app, user, name string, limit int) ([]storage.Event, error) {
	p := []byte(pfxEvent + app + "/")
	if name != "" {
		p = eventPrefix(app, name)
	}
	var out []storage.Event
	err := s.db.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: p, PrefetchValues: true, PrefetchSize: 64})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			item := it.Item()
			rest := item.Key()[len(pfxEvent)+len(app)+1:]
			i := bytes.IndexByte(rest, 0)
			if i < 0 {
				continue
			}
			ms, u, ok := parseEventKey(rest[i+1:])
			if !ok || (user != "" && u != user) {
				continue
			}
			e := storage.Event{User: u, Name: string(rest[:i]), Time: time.UnixMilli(ms).UTC()}
			if err := item.Value(func(b []byte) error {
				if len(b) == 0 {
					return nil
				}
				return json.Unmarshal(b, &e.Properties)
			}); err != nil {
				return err
			}
			out = append(out, e)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Time.After(out[j].Time) })
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

// PutSegment implements storage.SegmentStore.
func (s *AudienceStore) PutSegment(ctx context.Context, sg storage.Segment) error {
	return s.db.update(ctx, true, func(txn *badger.Txn) error {
		return set(txn, []byte(pfxSegment+sg.App+"/"+sg.ID), sg)
	})
}

// GetSegment implements storage.SegmentStore.
func (s *AudienceStore) GetSegment(ctx context.Context, app, id string) (storage.Segment, error) {
	var sg storage.Segment
	err := s.db.db.View(func(txn *badger.Txn) error { return get(txn, []byte(pfxSegment+app+"/"+id), &sg) })
	return sg, err
}

// ListSegments implements storage.SegmentStore.
func (s *AudienceStore) ListSegments(ctx context.Context, app string) ([]storage.Segment, error) {
	var out []storage.Segment
	err := s.db.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(pfxSegment + app + "/"), PrefetchValues: true})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			var sg storage.Segment
			if err := it.Item().Value(func(b []byte) error { return json.Unmarshal(b, &sg) }); err != nil {
				return err
			}
			out = append(out, sg)
		}
		return nil
	})
	return out, err
}

// DeleteSegment implements storage.SegmentStore.
func (s *AudienceStore) DeleteSegment(ctx context.Context, app, id string) error {
	k := []byte(pfxSegment + app + "/" + id)
	return s.db.update(ctx, true, func(txn *badger.Txn) error {
		if _, err := txn.Get(k); errors.Is(err, badger.ErrKeyNotFound) {
			return storage.ErrNotFound
		} else if err != nil {
			return err
		}
		return txn.Delete(k)
	})
}
