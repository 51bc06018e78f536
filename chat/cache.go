package chat

import (
	"context"
	"errors"
	"sync"

	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage"
)

// The conversation cache. Every send needs the conversation record (its
// kind), the sender's role and the member list to fan out to. Reading those
// from the store on each send costs a point read plus a prefix scan of the
// members, which dominated the send path; they change rarely, so the
// Service keeps them in memory.
//
// The cache is per process. It stays correct because every change of a
// conversation or of its membership goes through this Service, which drops
// the entry (Invalidate) while it holds the conversation's lock, before it
// appends the system event announcing the change; the next reader reloads
// it. A deployment where several processes change the same conversations
// must call Invalidate on every process for every change (scaling out moves
// that onto the message bus); until then a process may fan out to, and
// accept sends from, a membership that another process has just changed.
// Operations that change membership or roles always authorize against the
// store, never the cache, so a stale entry can never grant them.
//
// Bounding. The cache holds at most Options.CacheMembers members in total
// (each conversation counts 1 plus its member count). When a new entry does
// not fit, arbitrary entries are evicted (Go's map order, which amounts to
// random replacement); a hot conversation that is evicted costs one reload
// on its next send.
//
// Races between a load and an invalidation. A reader that misses loads from
// the store and then inserts what it read. If an invalidation of anything
// happened in between, what it read may predate the change, so it is used
// once but not inserted: the cache keeps a generation counter that every
// Invalidate bumps, and an insert only succeeds if the generation is the one
// the load started at.

// convView is a cached conversation: the record and who may do what. It is
// immutable once built; readers share it without copying.
type convView struct {
	conv  storage.Conversation
	roles map[string]storage.Role // member -> role
	users []string                // members in user ID order, for fan-out
}

func (v *convView) cost() int { return 1 + len(v.users) }

// role returns user's role, or "" if user is not a member.
func (v *convView) role(user string) storage.Role { return v.roles[user] }

type convCache struct {
	mu    sync.Mutex
	max   int
	size  int
	gen   uint64
	items map[appConv]*convView
	// absent remembers names that are no conversation, for the checks
	// that run on every delivery (MayReadBroadcast): a plain broadcast
	// channel is looked up once, not once per delivery. Creating a
	// conversation drops its name like any change (Invalidate).
	absent map[appConv]struct{}
}

// absentMax bounds convCache.absent; when full, arbitrary names are
// forgotten (and looked up again on their next use).
const absentMax = 1 << 16

func newConvCache(max int) *convCache {
	return &convCache{max: max, items: map[appConv]*convView{}, absent: map[appConv]struct{}{}}
}

// isAbsent reports whether k is remembered as no conversation.
func (c *convCache) isAbsent(k appConv) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.absent[k]
	return ok
}

// putAbsent remembers that k is no conversation, if nothing was
// invalidated since generation gen.
func (c *convCache) putAbsent(k appConv, gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.gen {
		return
	}
	for ek := range c.absent {
		if len(c.absent) < absentMax {
			break
		}
		delete(c.absent, ek)
	}
	c.absent[k] = struct{}{}
}

// get returns the cached view, and the generation to pass to put after a
// miss.
func (c *convCache) get(k appConv) (*convView, uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.items[k], c.gen
}

// put inserts v if nothing was invalidated since generation gen.
func (c *convCache) put(k appConv, v *convView, gen uint64) {
	if v.cost() > c.max {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.gen {
		return
	}
	if old, ok := c.items[k]; ok {
		c.size -= old.cost()
		delete(c.items, k)
	}
	for ek, ev := range c.items {
		if c.size+v.cost() <= c.max {
			break
		}
		c.size -= ev.cost()
		delete(c.items, ek)
	}
	c.items[k] = v
	c.size += v.cost()
}

func (c *convCache) drop(k appConv) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	delete(c.absent, k)
	if old, ok := c.items[k]; ok {
		c.size -= old.cost()
		delete(c.items, k)
	}
}

// Invalidate drops what the Service caches about a conversation (its record
// and members), so that the next operation reads them from the store. The
// Service calls it itself for every change it makes; call it when a
// conversation was changed by something else, such as another process
// sharing the store.
func (s *Service) Invalidate(app, conv string) {
	s.cache.drop(appConv{app, conv})
	s.groups.drop(appConv{app, conv})
}

// view returns the conversation and its members, from the cache or the
// store; storage.ErrNotFound if it does not exist (a miss is not cached).
// Errors other than that are returned as they are.
func (s *Service) view(ctx context.Context, app, conv string) (*convView, error) {
	k := appConv{app, conv}
	v, gen := s.cache.get(k)
	if v != nil {
		return v, nil
	}
	v, err := s.loadView(ctx, app, conv)
	if err != nil {
		return nil, err
	}
	s.cache.put(k, v, gen)
	return v, nil
}

func (s *Service) loadView(ctx context.Context, app, conv string) (*convView, error) {
	c, err := s.store.GetConversation(ctx, app, conv)
	if err != nil {
		return nil, err
	}
	ms, err := s.store.ListMembers(ctx, app, conv, "", 0)
	if err != nil {
		return nil, err
	}
	v := &convView{conv: c, roles: make(map[string]storage.Role, len(ms)), users: make([]string, len(ms))}
	for i, m := range ms {
		v.roles[m.User] = m.Role
		v.users[i] = m.User
	}
	return v, nil
}

// viewMember returns the conversation and from's role in it, from the
// cache, or not_member. Services are treated as owners.
func (s *Service) viewMember(ctx context.Context, from Sender, conv string) (*convView, storage.Role, error) {
	v, err := s.view(ctx, from.App, conv)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, "", errNotMember(conv)
	}
	if err != nil {
		return nil, "", s.internal("read conversation", err)
	}
	if from.Service {
		return v, storage.RoleOwner, nil
	}
	r := v.role(from.User)
	if r == "" {
		return nil, "", errNotMember(conv)
	}
	return v, r, nil
}

// ConvKind returns the kind of a conversation of app, from the cache when
// it can: storage.ErrNotFound if there is no such conversation. Transports
// use it to route a publish (a broadcast on a channel's topic becomes a
// message of the channel).
func (s *Service) ConvKind(ctx context.Context, app, conv string) (storage.ConvKind, error) {
	if !protocol.ValidID(conv) {
		return "", storage.ErrNotFound
	}
	v, err := s.view(ctx, app, conv)
	if err != nil {
		return "", err
	}
	return v.conv.Kind, nil
}
