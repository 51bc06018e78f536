package chat

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage"
)

// Deliverer hands outbound payloads to connected devices. Implementations
// must not block on a slow receiver: drop, count, and let the device catch
// up by sync. Neither the payload nor the users slice (which may be the
// Service's cached member list) may be modified, and neither may be
// retained past the call unless copied.
type Deliverer interface {
	// Deliver sends payload to every device of each user (their downlink).
	Deliver(app string, users []string, payload []byte)
	// Broadcast publishes payload once on a channel's broadcast topic; used
	// only with Options.ChannelBroadcast.
	Broadcast(app, conv string, payload []byte)
}

// Sender is the authenticated origin of a request: a user's device, or a
// backend service acting as User (Service true, Device empty). Services may
// write to channels without being admins.
type Sender struct {
	App, User, Device string
	Service           bool
}

// Retention limits how much of a conversation's log is kept. Zero fields
// mean no limit.
type Retention struct {
	MaxAge      time.Duration
	MaxMessages int
}

// Options configure a Service. Store and Deliverer are required.
type Options struct {
	Store     storage.ChatStore
	Deliverer Deliverer
	Logger    *slog.Logger // nil discards

	// Limits bound requests (body size, members per request, page size).
	Limits protocol.Limits
	// MaxGroupSize is the most members a group or channel may have
	// (default 1000).
	MaxGroupSize int
	// DedupeTTL is how long a cmid is remembered (default 24 h): a retry
	// later than that is stored as a new message.
	DedupeTTL time.Duration
	// SendRate and SendBurst are the per-user send quota, in messages per
	// second and burst size (defaults 20/s, burst 100). Negative SendRate
	// disables the quota. The quota is per process: behind a load balancer
	// a user may get it once per node.
	SendRate  float64
	SendBurst int
	// Node distinguishes the message IDs of processes that share a store
	// or a cluster; give each process its own. 0 picks a random one.
	Node uint16
	// ChannelBroadcast delivers channel messages once on the broadcast
	// topic instead of a copy per member (see the package doc).
	ChannelBroadcast bool
	// Retention returns the retention of an app; nil keeps everything.
	Retention func(app string) Retention
	// UserExists, if set, is asked before a user is added to a
	// conversation or sent a direct message.
	UserExists func(ctx context.Context, app, user string) (bool, error)
	// MaxReplyBytes bounds the messages of one sync or history page
	// (default 256 KiB); a page always holds at least one message.
	MaxReplyBytes int
	// CacheMembers bounds the conversation cache (see Invalidate): the
	// most members it holds over all cached conversations, each of which
	// also counts 1 (default 1<<18, about 25 MB).
	CacheMembers int
	// Now is the clock; nil uses time.Now.
	Now func() time.Time

	// Attachments, if set, resolves the uploads that messages refer to
	// (their "attachment"), and makes one required for messages of type
	// image, file, audio and video. Without it a message with an
	// attachment is refused.
	Attachments Attachments

	// Search, if set, answers the "search" request; Indexer, if set, is
	// told of every entry appended to a log (see search.go).
	Search  Searcher
	Indexer Indexer

	// Devices, if set, answers the "push" request: a device registering
	// its push token.
	Devices Devices
	// Opens, if set, answers the "opened" request: the user reporting that
	// they opened a targeted push.
	Opens Opens
	// OnStored, if set, is called once for every stored message (not for
	// system events) after it has been delivered live, with the members it
	// was for, in seq order per conversation. It runs on the conversation's
	// delivery goroutine, so it must hand slow work off (the push bridge
	// does its lookups and writes elsewhere).
	OnStored func(app string, msg protocol.Message, recipients []string)
	// OnSystem, if set, is called like OnStored for every stored system
	// event (a conversation created, members added or removed, a role
	// changed), with the members it was delivered to, before the change's
	// request returns.
	OnSystem func(app string, msg protocol.Message, recipients []string)
	// OnQuiet, if set, is called like OnStored for every stored message
	// that is not for push: edits, recalls, reactions, and call events
	// that do not ring.
	OnQuiet func(app string, msg protocol.Message, recipients []string)
	// OnPresence, if set, is called when a user comes online (their first
	// connection opened, with its device) and goes offline (their last one
	// closed, with its device and the time in unix milliseconds). It runs
	// on the transport's connect and disconnect path, so it must not block.
	OnPresence func(app, user, device string, online bool, at int64)

	// Records keeps group settings, invites, contacts, blocks, privacy and
	// last-seen times; nil uses Store if it implements
	// storage.ChatRecords. Without either those features answer
	// "unavailable".
	Records storage.ChatRecords
	// TypingInterval is the least time between two typing notices of one
	// user in one conversation that are forwarded (default 3 s).
	TypingInterval time.Duration

	// RecallWindow returns how long after sending a message its sender may
	// recall it, per app: 0 means DefaultRecallWindow, negative means
	// senders may not recall (admins and owners of groups and channels,
	// and services, may recall any time). nil uses the default everywhere.
	RecallWindow func(app string) time.Duration
	// CallRingTimeout is how long a call rings before it ends as missed
	// (default 45 s).
	CallRingTimeout time.Duration
	// CallDropGrace is how long a device in a call may stay disconnected
	// before the server ends its calls as "dropped" (default 30 s).
	CallDropGrace time.Duration
	// OnChanged, if set, is called after an edit or a recall is durable,
	// with the message's new stored state (a recalled message has no
	// body), so that what was derived from the message (a search index)
	// can follow. It runs with the conversation locked: hand slow work
	// off.
	OnChanged func(app string, msg protocol.Message)
}

// Devices registers push tokens for devices; the identity service
// implements it in the server.
type Devices interface {
	RegisterPush(ctx context.Context, app, user, device string, r PushRegistration) (any, error)
}

// Opens records that a user opened a targeted push (package campaign in
// the server) and reports whether it was the user's first report.
type Opens interface {
	Opened(ctx context.Context, app, user, campaign string) (bool, error)
}

// PushRegistration is a device's push registration, from the "push"
// request. An empty Token removes the registration.
type PushRegistration struct {
	Platform, Token, Topic, Locale string
}

// Stats are the Service's counters.
type Stats struct {
	Sent        uint64 // messages stored
	Duplicates  uint64 // retries answered from the dedupe record
	Conflicts   uint64 // appends retried after another writer moved the head
	QuotaDenied uint64 // sends refused by the quota
}

// Service is the chat domain. It is safe for concurrent use.
type Service struct {
	o     Options
	store storage.ChatStore
	out   Deliverer
	log   *slog.Logger
	now   func() time.Time
	ids   *idGen
	quota *limiter
	cache *convCache

	convs     sync.Map     // app/conv -> *convState
	nconvs    atomic.Int64 // entries in convs
	sweeping  atomic.Bool
	lastSweep atomic.Int64 // unix ns

	claimMu sync.Mutex
	claims  map[claimKey]*claim // cmids whose append is queued

	sent, dups, conflicts, denied atomic.Uint64

	social

	calls callTable // calls in progress (calls.go)
}

// convState sequences one conversation. mu serialises the assignment of
// seqs and the queueing of appends (so the store gets them in seq order);
// head is the last seq assigned, which runs ahead of what is durable while
// appends are queued.
//
// Failures. Every load of the head from the store starts a generation
// (gen), and each queued append remembers its generation. When an append
// fails, the store fails every later one of the conversation too, so the
// head in memory is wrong from that append on: the store's goroutine
// records the failed generation in failedGen (it must not take mu, which a
// sender may hold while it waits for the store), and the next sender, seeing
// failedGen reach gen, re-reads the head. Failures of appends from an older
// generation, which were queued before the reload, change nothing.
//
// Eviction. A state lives in Service.convs only while it is useful: one
// with no append queued or being reported (busy == 0) and not used for
// convIdle is dropped by a sweep once there are more than maxConvStates,
// so the map tracks the conversations in use, not every one ever written
// to. The sweep marks a state dead under its lock; lockConv, finding a
// dead state after locking it, looks again and gets a fresh one, which
// reads the head from the store (everything is durable by then).
type convState struct {
	mu        sync.Mutex
	head      uint64
	loaded    bool
	gen       uint64
	failedGen atomic.Uint64
	out       outbox // completions, in seq order

	busy     atomic.Int64 // appends queued and not yet reported
	lastUsed atomic.Int64 // unix ns of the last lockConv
	dead     bool         // evicted; guarded by mu
}

// Bounds of the per-conversation state (see convState).
const (
	maxConvStates = 1 << 16
	convIdle      = time.Minute
	sweepEvery    = 10 * time.Second
)

// New returns a Service. It starts no goroutines; see StartRetention.
func New(o Options) (*Service, error) {
	if o.Store == nil || o.Deliverer == nil {
		return nil, errors.New("chat: Options.Store and Options.Deliverer are required")
	}
	if o.MaxGroupSize <= 0 {
		o.MaxGroupSize = 1000
	}
	if o.DedupeTTL <= 0 {
		o.DedupeTTL = 24 * time.Hour
	}
	if o.SendRate == 0 {
		o.SendRate = 20
	}
	if o.SendBurst <= 0 {
		o.SendBurst = 100
	}
	if o.MaxReplyBytes <= 0 {
		o.MaxReplyBytes = 256 << 10
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.CacheMembers <= 0 {
		o.CacheMembers = 1 << 18
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Node == 0 {
		var b [2]byte
		_, _ = rand.Read(b[:])
		o.Node = binary.BigEndian.Uint16(b[:]) | 1
	}
	s := &Service{
		o:      o,
		store:  o.Store,
		out:    o.Deliverer,
		log:    o.Logger,
		now:    o.Now,
		ids:    newIDGen(o.Node),
		cache:  newConvCache(o.CacheMembers),
		claims: map[claimKey]*claim{},
	}
	if o.SendRate > 0 {
		s.quota = newLimiter(o.SendRate, float64(o.SendBurst))
	}
	s.initSocial()
	return s, nil
}

// Limits returns the request limits the Service was configured with, for
// the transport's parser.
func (s *Service) Limits() protocol.Limits { return s.o.Limits }

// Stats returns the Service's counters.
func (s *Service) Stats() Stats {
	return Stats{Sent: s.sent.Load(), Duplicates: s.dups.Load(), Conflicts: s.conflicts.Load(), QuotaDenied: s.denied.Load()}
}

// lockConv returns the live state of a conversation, locked.
func (s *Service) lockConv(app, conv string) *convState {
	k := app + "/" + conv
	for {
		v, ok := s.convs.Load(k)
		if !ok {
			var loaded bool
			if v, loaded = s.convs.LoadOrStore(k, &convState{}); !loaded {
				if s.nconvs.Add(1) > maxConvStates {
					s.maybeSweep()
				}
			}
		}
		cs := v.(*convState)
		cs.mu.Lock()
		if !cs.dead {
			cs.lastUsed.Store(s.now().UnixNano())
			return cs
		}
		cs.mu.Unlock()
	}
}

// maybeSweep starts a sweep of idle conversation states, unless one ran
// within sweepEvery or is running.
func (s *Service) maybeSweep() {
	now := time.Now().UnixNano()
	if now-s.lastSweep.Load() < int64(sweepEvery) || !s.sweeping.CompareAndSwap(false, true) {
		return
	}
	s.lastSweep.Store(now)
	go func() {
		defer s.sweeping.Store(false)
		s.sweepConvs(s.now().Add(-convIdle))
	}()
}

// sweepConvs drops the states with nothing in progress that were last used
// before idleSince, and returns how many it dropped. A state whose lock is
// held is in use and skipped.
func (s *Service) sweepConvs(idleSince time.Time) int {
	n := 0
	s.convs.Range(func(k, v any) bool {
		cs := v.(*convState)
		if cs.lastUsed.Load() >= idleSince.UnixNano() || cs.busy.Load() != 0 || !cs.mu.TryLock() {
			return true
		}
		if cs.busy.Load() == 0 && !cs.dead {
			cs.dead = true
			if s.convs.CompareAndDelete(k, cs) {
				s.nconvs.Add(-1)
				n++
			}
		}
		cs.mu.Unlock()
		return true
	})
	return n
}

// Handle runs one parsed request for from and returns its result (the
// "result" of a reply). Errors are *protocol.Error.
func (s *Service) Handle(ctx context.Context, from Sender, r *protocol.Request) (any, error) {
	switch r.Op {
	case protocol.OpSend:
		return s.Send(ctx, from, SendRequestOf(r))
	case protocol.OpCreate:
		return s.Create(ctx, from, CreateRequest{Conv: r.Conv, Kind: r.Kind, Name: r.Name, Members: r.Members})
	case protocol.OpAdd:
		return s.Add(ctx, from, r.Conv, r.Members, r.Role)
	case protocol.OpRemove:
		return s.Remove(ctx, from, r.Conv, r.Members)
	case protocol.OpLeave:
		return s.Leave(ctx, from, r.Conv)
	case protocol.OpRole:
		return s.SetRole(ctx, from, r.Conv, r.User, r.Role)
	case protocol.OpInfo:
		return s.Info(ctx, from, r.Conv, r.Start, r.Limit)
	case protocol.OpConvs:
		return s.Convs(ctx, from, r.Start, r.Limit)
	case protocol.OpSync:
		return s.Sync(ctx, from, r.Cursors, r.Limit)
	case protocol.OpHistory:
		return s.History(ctx, from, r.Conv, r.Before, r.After, r.Limit)
	case protocol.OpRead:
		return s.MarkRead(ctx, from, r.Conv, r.Seq)
	case protocol.OpDelivered:
		return s.MarkDelivered(ctx, from, r.Conv, r.Seq)
	case protocol.OpReads:
		return s.Reads(ctx, from, r.Conv, r.Seq)
	case protocol.OpPush:
		if s.o.Devices == nil || from.Device == "" {
			return nil, protocol.Errorf(protocol.CodeBadRequest, "op: push registration is not available here")
		}
		return s.o.Devices.RegisterPush(ctx, from.App, from.User, from.Device, PushRegistration{
			Platform: r.Platform, Token: *r.Token, Topic: r.Topic, Locale: r.Locale})
	case protocol.OpOpened:
		if s.o.Opens == nil {
			return nil, protocol.Errorf(protocol.CodeBadRequest, "op: open reports are not available here")
		}
		first, err := s.o.Opens.Opened(ctx, from.App, from.User, r.ID)
		if err != nil {
			return nil, err
		}
		return map[string]bool{"first": first}, nil
	}
	if res, ok, err := s.handleSocial(ctx, from, r); ok {
		return res, err
	}
	if res, ok, err := s.handleMsgOp(ctx, from, r); ok {
		return res, err
	}
	if r.Op == protocol.OpSearch {
		return s.search(ctx, from, r)
	}
	return nil, protocol.Errorf(protocol.CodeBadRequest, "op: unknown operation %q", r.Op)
}

// Errors.

func errNotMember(conv string) error {
	return protocol.Errorf(protocol.CodeNotMember, "conversation %s does not exist or you are not a member", conv)
}

// internal logs a storage failure and returns an error that does not leak
// it. Context errors become "unavailable" (the request may be retried).
func (s *Service) internal(what string, err error) error {
	var pe *protocol.Error
	if errors.As(err, &pe) {
		return pe
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return protocol.Errorf(protocol.CodeUnavailable, "%s: timed out; retry", what)
	}
	s.log.Error("chat storage failure", "op", what, "err", err)
	return protocol.Errorf(protocol.CodeInternal, "%s failed in storage; retry", what)
}

// member returns from's membership of conv, or not_member, read from the
// store (not the cache): operations that change a conversation authorize
// with it. Services are treated as owners of every conversation of their
// app.
func (s *Service) member(ctx context.Context, from Sender, conv string) (storage.Conversation, storage.Member, error) {
	c, err := s.store.GetConversation(ctx, from.App, conv)
	if errors.Is(err, storage.ErrNotFound) {
		return c, storage.Member{}, errNotMember(conv)
	}
	if err != nil {
		return c, storage.Member{}, s.internal("read conversation", err)
	}
	if from.Service {
		return c, storage.Member{User: from.User, Role: storage.RoleOwner}, nil
	}
	m, err := s.store.GetMember(ctx, from.App, conv, from.User)
	if errors.Is(err, storage.ErrNotFound) {
		return c, m, errNotMember(conv)
	}
	if err != nil {
		return c, m, s.internal("read membership", err)
	}
	return c, m, nil
}

func (s *Service) checkUsers(ctx context.Context, app string, users []string) error {
	if s.o.UserExists == nil {
		return nil
	}
	for _, u := range users {
		ok, err := s.o.UserExists(ctx, app, u)
		if err != nil {
			return s.internal("look up user", err)
		}
		if !ok {
			return protocol.Errorf(protocol.CodeNotFound, "user %s does not exist", u)
		}
	}
	return nil
}

func rank(r storage.Role) int {
	switch r {
	case storage.RoleOwner:
		return 3
	case storage.RoleAdmin:
		return 2
	case storage.RoleMember:
		return 1
	}
	return 0
}
