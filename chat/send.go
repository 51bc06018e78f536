package chat

import (
	"context"
	"encoding/json"
	"errors"
	"sync"

	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage"
)

// SendRequest is a message to send: to a conversation (Conv) or to a user's
// direct conversation (To), with the sending device's own ID for it (CMID).
type SendRequest struct {
	Conv, To, CMID, Type string
	Body                 json.RawMessage
	// ReplyTo names a message of the same conversation this one replies
	// to; Mentions and MentionAll mention members (see msgops.go).
	ReplyTo    *protocol.Ref
	Mentions   []string
	MentionAll bool

	forwarded *protocol.Forwarded // set by Forward
	// Attachment is the ID of an upload the message refers to (see
	// Options.Attachments).
	Attachment string
}

// maxAppendAttempts bounds the retries of an append that lost a race with
// another writer of the same conversation.
const maxAppendAttempts = 3

// Send stores a message and delivers it to every member. It returns where
// the message landed; for a cmid the device already used, the original
// message's position with Duplicate set, without storing or delivering
// anything. It returns once the message is durable (or has failed).
func (s *Service) Send(ctx context.Context, from Sender, in SendRequest) (protocol.Ack, error) {
	type result struct {
		ack protocol.Ack
		err error
	}
	ch := make(chan result, 1)
	for attempt := 0; ; attempt++ {
		s.sendAsync(ctx, from, in, func(a protocol.Ack, err error) { ch <- result{a, err} })
		r := <-ch
		if errors.Is(r.err, storage.ErrConflict) && attempt+1 < maxAppendAttempts {
			s.conflicts.Add(1) // another writer moved the head; it has been re-read
			continue
		}
		if r.err != nil {
			return protocol.Ack{}, s.internal("store message", r.err)
		}
		return r.ack, nil
	}
}

// SendAsync is Send for transports that pipeline a device's messages: it
// checks the request, assigns the message its seq and queues the durable
// append, then returns without waiting for the disk. done is called exactly
// once with what Send would have returned: before SendAsync returns if the
// request is refused outright, otherwise once the message is durable and
// has been handed to the Deliverer (or has failed). Messages from one
// goroutine's consecutive SendAsync calls to one conversation take seqs in
// call order.
//
// done runs on a goroutine of the conversation's (its calls for one
// conversation happen one at a time, in seq order), so it must not block;
// ctx bounds only the work before queueing.
//
// A failed append fails every append queued after it in the same
// conversation (they would leave a gap otherwise); the conversation's head
// is then re-read from the store and later sends carry on from there. A
// send whose append failed may be retried with the same cmid.
//
// A retry of a cmid whose original is still queued is not stored again: it
// is answered, with Duplicate set, when the original is durable, with the
// original's outcome.
func (s *Service) SendAsync(ctx context.Context, from Sender, in SendRequest, done func(protocol.Ack, error)) {
	s.sendAsync(ctx, from, in, func(a protocol.Ack, err error) {
		if err != nil {
			err = s.internal("store message", err)
		}
		done(a, err)
	})
}

// claimKey names one client message for the dedupe claims.
type claimKey struct{ app, user, device, cmid string }

// claim marks a client message whose append is queued but not yet durable.
// Retries of it wait here rather than being stored again.
type claim struct {
	waiters []func(protocol.Ack, error)
}

// sendAsync is SendAsync with storage errors left raw (ErrConflict is
// retried by Send).
func (s *Service) sendAsync(ctx context.Context, from Sender, in SendRequest, done func(protocol.Ack, error)) {
	lim := s.o.Limits
	if lim.MaxBody <= 0 {
		lim.MaxBody = protocol.DefaultMaxBody
	}
	switch {
	case !protocol.ValidID(in.CMID):
		done(protocol.Ack{}, protocol.Errorf(protocol.CodeBadRequest, "cmid: %s", protocol.ErrBadID))
		return
	case !protocol.ValidType(in.Type) || protocol.ReservedType(in.Type):
		done(protocol.Ack{}, protocol.Errorf(protocol.CodeBadRequest, "type: invalid or reserved message type %q", in.Type))
		return
	case len(in.Body) == 0 || !json.Valid(in.Body):
		done(protocol.Ack{}, protocol.Errorf(protocol.CodeBadRequest, "body: must be a JSON value"))
		return
	case len(in.Body) > lim.MaxBody:
		done(protocol.Ack{}, protocol.Errorf(protocol.CodeTooLarge, "body of %d bytes exceeds %d", len(in.Body), lim.MaxBody))
		return
	}
	// Dedupe. Claim the cmid first, then look for a stored record: an
	// original that is still queued holds the claim (it is released only
	// after the original is durable, when its record is readable), so a
	// retry either finds the claim or finds the record.
	key := claimKey{from.App, from.User, from.Device, in.CMID}
	s.claimMu.Lock()
	if cl, ok := s.claims[key]; ok {
		cl.waiters = append(cl.waiters, done)
		s.claimMu.Unlock()
		return
	}
	cl := &claim{}
	s.claims[key] = cl
	s.claimMu.Unlock()
	finish := func(a protocol.Ack, err error) {
		s.claimMu.Lock()
		delete(s.claims, key)
		ws := cl.waiters
		s.claimMu.Unlock()
		done(a, err)
		if err == nil {
			a.Duplicate = true
		}
		for _, w := range ws {
			if err == nil {
				s.dups.Add(1)
			}
			w(a, err)
		}
	}
	switch rec, err := s.store.LookupDedupe(ctx, from.App, storage.DedupeKey{User: from.User, Device: from.Device, CMID: in.CMID}); {
	case err == nil:
		s.dups.Add(1)
		finish(protocol.Ack{ID: rec.ID, Conv: rec.Conv, Seq: rec.Seq, TS: rec.TS, Duplicate: true}, nil)
		return
	case !errors.Is(err, storage.ErrNotFound):
		finish(protocol.Ack{}, s.internal("dedupe lookup", err))
		return
	}
	// The quota is charged for new messages only: a retry of one already
	// stored (answered above) costs nothing, so a client over its quota
	// still learns that its earlier send went through.
	if !from.Service && s.quota != nil && !s.quota.allow(from.App+"/"+from.User, s.now()) {
		s.denied.Add(1)
		finish(protocol.Ack{}, protocol.Errorf(protocol.CodeQuota, "send quota of %g messages/s (burst %d) exceeded; retry later", s.o.SendRate, s.o.SendBurst))
		return
	}

	id := in.Conv
	if in.To != "" {
		id = protocol.DirectConvID(from.User, in.To)
	}
	cs := s.lockConv(from.App, id)
	var (
		v   *convView
		err error
	)
	r := storage.RoleMember
	if in.To != "" {
		v, err = s.direct(ctx, from, in.To)
	} else {
		v, r, err = s.viewMember(ctx, from, in.Conv)
		if err == nil && v.conv.Kind == storage.KindChannel && rank(r) < rank(storage.RoleAdmin) {
			err = protocol.Errorf(protocol.CodeForbidden, "only admins and services may write to channel %s", v.conv.ID)
		}
	}
	var opts []enqOpt
	var att *protocol.Attachment
	var attSeq uint64
	if err == nil {
		err = s.checkWrite(ctx, from, v, r) // blocks and mutes (contacts.go, groupadmin.go)
	}
	if err == nil {
		opts, err = s.sendExtras(ctx, from, v, in)
	}
	if err == nil {
		att, err = s.attach(ctx, from, v.conv.ID, in.Type, in.Attachment)
		if att != nil {
			opts = append(opts, func(q *enqueueing) { q.msg.Attachment, attSeq = att, q.msg.Seq })
		}
	}
	if err == nil {
		err = s.enqueueLocked(ctx, cs, from.App, v, protocol.Sender{User: from.User, Device: from.Device}, in.CMID, in.Type, in.Body, nil, finish, opts...)
		if err == nil && att != nil {
			s.o.Attachments.Sent(ctx, from.App, v.conv.ID, att.ID, attSeq)
		}
	}
	cs.mu.Unlock()
	if err != nil {
		finish(protocol.Ack{}, err)
	}
}

// direct returns the direct conversation between from and to, creating it
// on first use. The caller holds the conversation's lock.
func (s *Service) direct(ctx context.Context, from Sender, to string) (*convView, error) {
	id := protocol.DirectConvID(from.User, to)
	v, err := s.view(ctx, from.App, id)
	if err == nil {
		return v, nil
	}
	if !errors.Is(err, storage.ErrNotFound) {
		return nil, s.internal("read conversation", err)
	}
	if err := s.checkUsers(ctx, from.App, []string{to}); err != nil {
		return nil, err
	}
	if blocked, err := s.blocks(ctx, from.App, to, from.User); err != nil || blocked {
		if err == nil {
			err = protocol.Errorf(protocol.CodeBlocked, "%s does not accept your messages", to)
		}
		return nil, err
	}
	now := s.now().UnixMilli()
	c := storage.Conversation{ID: id, Kind: storage.KindDirect, CreatedBy: from.User, Created: now}
	ms := []storage.Member{{User: from.User, Role: storage.RoleMember, Joined: now}, {User: to, Role: storage.RoleMember, Joined: now}}
	if err := s.store.CreateConversation(ctx, from.App, c, ms); err != nil && !errors.Is(err, storage.ErrExists) {
		return nil, s.internal("create direct conversation", err)
	}
	// Created now, or by another process: read what is stored.
	s.Invalidate(from.App, id)
	if v, err = s.view(ctx, from.App, id); err != nil {
		return nil, s.internal("read conversation", err)
	}
	return v, nil
}

// pending is a message whose append is queued.
type pending struct {
	s     *Service
	cs    *convState
	gen   uint64
	app   string
	kind  storage.ConvKind
	users []string // members when the seq was assigned (cached; not to be modified)
	extra []string // users who get it too (e.g. ones it removes)
	data  []byte
	ack   protocol.Ack
	err   error
	done  func(protocol.Ack, error)
	msg   *protocol.Message // for Options.OnStored, OnSystem or OnQuiet; nil when not needed
	quiet bool              // not for push: OnQuiet gets msg
	index *protocol.Message // for Options.Indexer; nil without one
}

// enqueueLocked assigns the next seq and queues the durable append of a
// message to the members of v (plus extra users, e.g. ones just removed).
// done gets the outcome, with storage errors raw. If enqueueLocked returns
// an error, nothing was queued and done will not be called. The caller
// holds cs.mu; the seq is assigned and the append queued under it, so the
// store receives a conversation's appends in seq order.
//
// opts set the message's other fields and may add entries the append
// rewrites (see enqOpt).
func (s *Service) enqueueLocked(ctx context.Context, cs *convState, app string, v *convView, from protocol.Sender, cmid, typ string, body json.RawMessage, extra []string, done func(protocol.Ack, error), opts ...enqOpt) error {
	c := v.conv
	if cs.loaded && cs.failedGen.Load() >= cs.gen {
		// An append of this generation failed, so every one queued after
		// it fails too and the head is wherever the store says.
		cs.loaded = false
	}
	if !cs.loaded {
		head, err := s.store.LastSeq(ctx, app, c.ID)
		if err != nil {
			return s.internal("read head", err)
		}
		cs.head, cs.loaded = head, true
		cs.gen++
	}
	now := s.now()
	msg := protocol.Message{
		Kind: protocol.KindMsg,
		ID:   s.ids.next(now),
		Conv: c.ID,
		Seq:  cs.head + 1,
		TS:   now.UnixMilli(),
		From: from,
		CMID: cmid,
		Type: typ,
		Body: body,
	}
	q := enqueueing{msg: &msg}
	for _, o := range opts {
		o(&q)
	}
	data, err := json.Marshal(msg)
	if err != nil {
		return protocol.Errorf(protocol.CodeBadRequest, "body: %v", err)
	}
	b := storage.AppendBatch{
		Entries: []storage.LogEntry{{Conv: c.ID, Seq: msg.Seq, TS: msg.TS, Sender: from.User, Data: data}},
		Reads:   []storage.ReadMark{{Conv: c.ID, User: from.User, Seq: msg.Seq}},
	}
	if cmid != "" {
		b.Dedupe = []storage.Dedupe{{
			Key:    storage.DedupeKey{User: from.User, Device: from.Device, CMID: cmid},
			Record: storage.DedupeRecord{Conv: c.ID, ID: msg.ID, Seq: msg.Seq, TS: msg.TS},
			TTL:    s.o.DedupeTTL,
		}}
	}
	if q.updates != nil {
		if b.Updates, err = q.updates(&msg); err != nil {
			return err
		}
	}
	p := &pending{
		s: s, cs: cs, gen: cs.gen, app: app, kind: c.Kind, users: v.users, extra: extra, data: data,
		ack:  protocol.Ack{ID: msg.ID, Conv: c.ID, Seq: msg.Seq, TS: msg.TS},
		done: done,
	}
	switch {
	case typ == protocol.TypeSystem && s.o.OnSystem != nil,
		typ != protocol.TypeSystem && !q.noPush && s.o.OnStored != nil,
		typ != protocol.TypeSystem && q.noPush && s.o.OnQuiet != nil:
		p.msg, p.quiet = &msg, q.noPush
	}
	if s.o.Indexer != nil {
		p.index = &msg
	}
	cs.busy.Add(1)
	if err := s.store.AppendAsync(ctx, app, b, p.stored); err != nil {
		cs.busy.Add(-1)
		return err
	}
	cs.head = msg.Seq
	return nil
}

// stored runs on the store's goroutine when the append is durable or has
// failed, in queue order. It records a failure (so the next send re-reads
// the head) and hands the rest to the conversation's outbox.
func (p *pending) stored(err error) {
	if err != nil {
		p.err = err
		for {
			old := p.cs.failedGen.Load()
			if old >= p.gen || p.cs.failedGen.CompareAndSwap(old, p.gen) {
				break
			}
		}
	} else {
		p.s.sent.Add(1)
	}
	p.cs.out.push(p)
}

// finish fans a stored message out and reports the outcome; it runs on the
// conversation's outbox goroutine, in seq order.
func (p *pending) finish() {
	if p.err != nil {
		p.done(protocol.Ack{}, p.err)
		return
	}
	p.s.fanout(p.app, p.ack.Conv, p.kind, p.users, p.extra, p.data)
	// Hand the message on before reporting the outcome: whoever waits for
	// outcomes (a graceful stop) then knows every hand-off has started.
	if p.msg != nil {
		switch {
		case p.msg.Type == protocol.TypeSystem:
			p.s.o.OnSystem(p.app, *p.msg, p.users)
		case p.quiet:
			p.s.o.OnQuiet(p.app, *p.msg, p.users)
		default:
			p.s.o.OnStored(p.app, *p.msg, p.users)
		}
	}
	if p.index != nil {
		p.s.o.Indexer.Stored(p.app, *p.index)
	}
	p.done(p.ack, nil)
}

// fanout delivers a stored message to the members it was sent to and extra.
func (s *Service) fanout(app, conv string, kind storage.ConvKind, users, extra []string, data []byte) {
	if kind == storage.KindChannel && s.o.ChannelBroadcast {
		s.out.Broadcast(app, conv, data)
		if len(extra) > 0 {
			s.out.Deliver(app, extra, data)
		}
		return
	}
	if len(extra) > 0 {
		users = append(append(make([]string, 0, len(users)+len(extra)), users...), extra...)
	}
	s.out.Deliver(app, users, data)
}

// system appends a server event (type "system", body from the caller) to a
// conversation, as if sent by the actor without a device, and waits until
// it is durable and delivered. The caller holds cs.mu and has invalidated
// the cached view of the conversation if it changed it.
func (s *Service) system(ctx context.Context, cs *convState, app string, c storage.Conversation, actor string, body any, extra []string) error {
	raw, err := json.Marshal(body)
	if err != nil {
		return s.internal("encode event", err)
	}
	ch := make(chan error, 1)
	for attempt := 0; ; attempt++ {
		v, err := s.view(ctx, app, c.ID)
		if err != nil {
			return s.internal("read conversation", err)
		}
		err = s.enqueueLocked(ctx, cs, app, v, protocol.Sender{User: actor}, "", protocol.TypeSystem, raw, extra, func(_ protocol.Ack, err error) { ch <- err })
		if err == nil {
			err = <-ch
		}
		if errors.Is(err, storage.ErrConflict) && attempt+1 < maxAppendAttempts {
			s.conflicts.Add(1)
			continue
		}
		if err != nil {
			return s.internal("store event", err)
		}
		return nil
	}
}

// outbox runs a conversation's completions one at a time, in the order
// they were pushed (seq order), on a goroutine that exists only while
// there is work. Live messages of one conversation therefore leave in seq
// order, and a slow Deliverer for one conversation holds up no other.
type outbox struct {
	mu      sync.Mutex
	q       []*pending
	running bool
}

func (o *outbox) push(p *pending) {
	o.mu.Lock()
	o.q = append(o.q, p)
	if o.running {
		o.mu.Unlock()
		return
	}
	o.running = true
	o.mu.Unlock()
	go o.run()
}

func (o *outbox) run() {
	var batch []*pending
	for {
		o.mu.Lock()
		if len(o.q) == 0 {
			o.running = false
			o.mu.Unlock()
			return
		}
		batch, o.q = o.q, batch[:0]
		o.mu.Unlock()
		for i, p := range batch {
			p.finish()
			p.cs.busy.Add(-1)
			batch[i] = nil
		}
	}
}
