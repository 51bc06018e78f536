package chat

import (
	"context"
	"encoding/json"
	"errors"

	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage"
)

// SendRequest is a message to send: to a conversation (Conv) or to a user's
// direct conversation (To), with the sending device's own ID for it (CMID).
type SendRequest struct {
	Conv, To, CMID, Type string
	Body                 json.RawMessage
}

// maxAppendAttempts bounds the retries of an append that lost a race with
// another writer of the same conversation.
const maxAppendAttempts = 3

// Send stores a message and delivers it to every member. It returns where
// the message landed; for a cmid the device already used, the original
// message's position with Duplicate set, without storing or delivering
// anything.
func (s *Service) Send(ctx context.Context, from Sender, in SendRequest) (protocol.Ack, error) {
	lim := s.o.Limits
	if lim.MaxBody <= 0 {
		lim.MaxBody = protocol.DefaultMaxBody
	}
	switch {
	case !protocol.ValidID(in.CMID):
		return protocol.Ack{}, protocol.Errorf(protocol.CodeBadRequest, "cmid: %s", protocol.ErrBadID)
	case !protocol.ValidType(in.Type) || in.Type == protocol.TypeSystem:
		return protocol.Ack{}, protocol.Errorf(protocol.CodeBadRequest, "type: invalid or reserved message type %q", in.Type)
	case len(in.Body) == 0 || !json.Valid(in.Body):
		return protocol.Ack{}, protocol.Errorf(protocol.CodeBadRequest, "body: must be a JSON value")
	case len(in.Body) > lim.MaxBody:
		return protocol.Ack{}, protocol.Errorf(protocol.CodeTooLarge, "body of %d bytes exceeds %d", len(in.Body), lim.MaxBody)
	}
	if !from.Service && s.quota != nil && !s.quota.allow(from.App+"/"+from.User, s.now()) {
		s.denied.Add(1)
		return protocol.Ack{}, protocol.Errorf(protocol.CodeQuota, "send quota of %g messages/s (burst %d) exceeded; retry later", s.o.SendRate, s.o.SendBurst)
	}

	var (
		v   *convView
		err error
	)
	if in.To != "" {
		v, err = s.direct(ctx, from, in.To)
	} else {
		var r storage.Role
		v, r, err = s.viewMember(ctx, from, in.Conv)
		if err == nil && v.conv.Kind == storage.KindChannel && rank(r) < rank(storage.RoleAdmin) {
			err = protocol.Errorf(protocol.CodeForbidden, "only admins and services may write to channel %s", v.conv.ID)
		}
	}
	if err != nil {
		return protocol.Ack{}, err
	}
	c := v.conv

	cs := s.conv(from.App, c.ID)
	cs.mu.Lock()
	defer cs.mu.Unlock()
	key := storage.DedupeKey{User: from.User, Device: from.Device, CMID: in.CMID}
	switch rec, err := s.store.LookupDedupe(ctx, from.App, key); {
	case err == nil:
		s.dups.Add(1)
		return protocol.Ack{ID: rec.ID, Conv: rec.Conv, Seq: rec.Seq, TS: rec.TS, Duplicate: true}, nil
	case !errors.Is(err, storage.ErrNotFound):
		return protocol.Ack{}, s.internal("dedupe lookup", err)
	}
	return s.appendLocked(ctx, cs, from.App, c, protocol.Sender{User: from.User, Device: from.Device}, in.CMID, in.Type, in.Body, nil)
}

// direct returns the direct conversation between from and to, creating it
// on first use.
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
	now := s.now().UnixMilli()
	c := storage.Conversation{ID: id, Kind: storage.KindDirect, CreatedBy: from.User, Created: now}
	ms := []storage.Member{{User: from.User, Role: storage.RoleMember, Joined: now}, {User: to, Role: storage.RoleMember, Joined: now}}
	if err := s.store.CreateConversation(ctx, from.App, c, ms); err != nil && !errors.Is(err, storage.ErrExists) {
		return nil, s.internal("create direct conversation", err)
	}
	// Created now, or by a concurrent first send: read what is stored.
	s.Invalidate(from.App, id)
	if v, err = s.view(ctx, from.App, id); err != nil {
		return nil, s.internal("read conversation", err)
	}
	return v, nil
}

// appendLocked assigns the next seq, stores the message durably and
// delivers it to the members (plus extra users, e.g. ones just removed).
// The caller holds cs.mu.
func (s *Service) appendLocked(ctx context.Context, cs *convState, app string, c storage.Conversation, from protocol.Sender, cmid, typ string, body json.RawMessage, extra []string) (protocol.Ack, error) {
	for attempt := 0; ; attempt++ {
		if !cs.loaded {
			head, err := s.store.LastSeq(ctx, app, c.ID)
			if err != nil {
				return protocol.Ack{}, s.internal("read head", err)
			}
			cs.head, cs.loaded = head, true
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
		data, err := json.Marshal(msg)
		if err != nil {
			return protocol.Ack{}, protocol.Errorf(protocol.CodeBadRequest, "body: %v", err)
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
		err = s.store.Append(ctx, app, b)
		if errors.Is(err, storage.ErrConflict) && attempt+1 < maxAppendAttempts {
			s.conflicts.Add(1)
			cs.loaded = false // another writer moved the head: re-read it
			continue
		}
		if err != nil {
			cs.loaded = false
			return protocol.Ack{}, s.internal("store message", err)
		}
		cs.head = msg.Seq
		s.sent.Add(1)
		s.fanout(ctx, app, c, data, extra)
		return protocol.Ack{ID: msg.ID, Conv: c.ID, Seq: msg.Seq, TS: msg.TS}, nil
	}
}

// fanout delivers a stored message to the members (as cached; see
// Invalidate) and extra. Failing to read the members does not fail the send
// (the message is stored; members get it by sync), but is logged.
func (s *Service) fanout(ctx context.Context, app string, c storage.Conversation, data []byte, extra []string) {
	if c.Kind == storage.KindChannel && s.o.ChannelBroadcast {
		s.out.Broadcast(app, c.ID, data)
		if len(extra) > 0 {
			s.out.Deliver(app, extra, data)
		}
		return
	}
	v, err := s.view(ctx, app, c.ID)
	if err != nil {
		s.log.Error("chat fan-out: list members", "app", app, "conv", c.ID, "err", err)
		return
	}
	users := v.users
	if len(extra) > 0 {
		users = append(append(make([]string, 0, len(users)+len(extra)), users...), extra...)
	}
	s.out.Deliver(app, users, data)
}

// system appends a server event (type "system", body from the caller) to a
// conversation, as if sent by the actor without a device. The caller holds
// cs.mu.
func (s *Service) system(ctx context.Context, cs *convState, app string, c storage.Conversation, actor string, body any, extra []string) error {
	raw, err := json.Marshal(body)
	if err != nil {
		return s.internal("encode event", err)
	}
	_, err = s.appendLocked(ctx, cs, app, c, protocol.Sender{User: actor}, "", protocol.TypeSystem, raw, extra)
	return err
}
