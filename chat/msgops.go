package chat

// Operations on messages already sent: edit, recall and reactions; and the
// send-time references: replies, forwards and mentions.
//
// An operation on a message is two writes in one durable batch, made under
// the conversation's lock:
//
//   - an event appended to the log with a seq of its own, of type "edit",
//     "recall" or "reaction", whose "ref" names the message ({id, seq});
//     it is delivered live like any message, and sync returns it to
//     devices that were offline, in order;
//   - the stored copy of the message, rewritten to its new state (new body
//     and "edited", or no body and "recalled", or its "reactions"), which
//     is what history and sync return from then on.
//
// So a device that had the message applies the events it receives, and a
// device that gets the message later gets its final state directly; the
// events are then no-ops for it. Events carry enough to be applied on their
// own (an edit the new body, a reaction the emoji's new count), so applying
// them in seq order always ends in the stored state.
//
// The lock is held until the batch is durable and delivered, so the next
// operation on the same conversation reads the new state; operations are
// therefore slower than sends (one group commit each), which they can
// afford. Events do not count towards unread (see unread.go), and an
// operation marks the conversation read up to its event for its author, as
// sending does.

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"time"

	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage"
)

// DefaultRecallWindow is how long after sending a message its sender may
// recall it, unless the app sets otherwise.
const DefaultRecallWindow = 2 * time.Minute

// Bounds of the per-message state.
const (
	// MaxEdits is how often one message may be edited.
	MaxEdits = 100
	// MaxReactionKinds is how many distinct emoji one message may carry.
	MaxReactionKinds = 20
	// MaxReactions is how many reactions (user, emoji) one message may
	// carry in all.
	MaxReactions = 1000
)

// SendRequestOf is the SendRequest of a parsed "send" envelope.
func SendRequestOf(r *protocol.Request) SendRequest {
	return SendRequest{Conv: r.Conv, To: r.To, CMID: r.CMID, Type: r.Type, Body: r.Body,
		ReplyTo: r.ReplyTo, Mentions: r.Mentions, MentionAll: r.MentionAll, Attachment: r.Attachment}
}

// enqOpt adjusts a message enqueueLocked is about to queue.
type enqOpt func(*enqueueing)

type enqueueing struct {
	msg *protocol.Message // fields beyond type and body may be set
	// updates, if set, returns the log entries the append rewrites; it is
	// called once the event has its seq, id and ts.
	updates func(ev *protocol.Message) ([]storage.LogEntry, error)
	noPush  bool // not for Options.OnStored
}

// handleMsgOp runs the requests of this file and calls.go; ok is false for
// any other op.
func (s *Service) handleMsgOp(ctx context.Context, from Sender, r *protocol.Request) (any, bool, error) {
	switch r.Op {
	case protocol.OpEdit:
		res, err := s.Edit(ctx, from, r.Conv, r.ID, r.Seq, r.Body)
		return res, true, err
	case protocol.OpRecall:
		res, err := s.Recall(ctx, from, r.Conv, r.ID, r.Seq)
		return res, true, err
	case protocol.OpReact, protocol.OpUnreact:
		res, err := s.React(ctx, from, r.Conv, r.ID, r.Seq, r.Emoji, r.Op == protocol.OpReact)
		return res, true, err
	case protocol.OpForward:
		if r.Src == nil {
			return nil, true, protocol.Errorf(protocol.CodeBadRequest, "src: required")
		}
		res, err := s.Forward(ctx, from, SendRequest{Conv: r.Conv, To: r.To, CMID: r.CMID}, *r.Src)
		return res, true, err
	case protocol.OpCall:
		if r.Call == nil {
			return nil, true, protocol.Errorf(protocol.CodeBadRequest, "call: required")
		}
		res, err := s.Call(ctx, from, r.Conv, r.To, *r.Call)
		return res, true, err
	}
	return nil, false, nil
}

// allowWrite applies the send quota to an operation that appends to the
// log (edits, recalls, reactions, call state changes): they cost what a
// send costs.
func (s *Service) allowWrite(from Sender) error {
	if from.Service || s.quota == nil || s.quota.allow(from.App+"/"+from.User, s.now()) {
		return nil
	}
	s.denied.Add(1)
	return protocol.Errorf(protocol.CodeQuota, "send quota of %g messages/s (burst %d) exceeded; retry later", s.o.SendRate, s.o.SendBurst)
}

func errNoMessage(conv string, seq uint64) error {
	return protocol.Errorf(protocol.CodeNotFound, "message %d of %s does not exist (or retention removed it)", seq, conv)
}

// target reads message seq of conv from the log for from and checks that
// its ID is id. It refuses events (system, edit, ...), which are not
// messages one can act on, and messages the group's history visibility
// hides from the caller (as not_found, like missing ones).
func (s *Service) target(ctx context.Context, from Sender, conv, id string, seq uint64) (storage.LogEntry, protocol.Message, error) {
	var m protocol.Message
	app := from.App
	if !from.Service {
		floor, err := s.visibleFrom(ctx, app, conv, from.User)
		if err != nil {
			return storage.LogEntry{}, m, err
		}
		if seq < floor {
			return storage.LogEntry{}, m, errNoMessage(conv, seq)
		}
	}
	es, err := s.store.Range(ctx, app, conv, seq, true, 1)
	if err != nil {
		return storage.LogEntry{}, m, s.internal("read log", err)
	}
	if len(es) == 0 || es[0].Seq != seq {
		return storage.LogEntry{}, m, errNoMessage(conv, seq)
	}
	if err := json.Unmarshal(es[0].Data, &m); err != nil {
		return storage.LogEntry{}, m, s.internal("decode message", err)
	}
	if id != "" && m.ID != id {
		return storage.LogEntry{}, m, protocol.Errorf(protocol.CodeNotFound, "message %d of %s has id %s, not %s", seq, conv, m.ID, id)
	}
	if protocol.ReservedType(m.Type) {
		return storage.LogEntry{}, m, protocol.Errorf(protocol.CodeBadRequest, "message %d of %s is a %s event, not a message", seq, conv, m.Type)
	}
	return es[0], m, nil
}

// change is what an operation does to a message: the event to append
// (type, body and, for edits, the previous body), how the stored message
// changes once the event has its seq, and other entries to rewrite.
// unchanged means there is nothing to do.
type change struct {
	typ        string
	body, prev json.RawMessage
	apply      func(m *protocol.Message, ev *protocol.Message)
	more       []storage.LogEntry
	unchanged  bool
}

// mutate runs one operation on message (conv, id, seq): decide looks at the
// caller's role and the message and says what changes. See the file
// comment.
func (s *Service) mutate(ctx context.Context, from Sender, conv, id string, seq uint64, decide func(v *convView, role storage.Role, m *protocol.Message) (*change, error)) (protocol.OpResult, error) {
	res := protocol.OpResult{Conv: conv, Ref: protocol.Ref{ID: id, Seq: seq}}
	if err := s.allowWrite(from); err != nil {
		return res, err
	}
	cs := s.lockConv(from.App, conv)
	defer cs.mu.Unlock()
	type outcome struct {
		ack protocol.Ack
		err error
	}
	ch := make(chan outcome, 1)
	var changed protocol.Message // the message's new state
	for attempt := 0; ; attempt++ {
		v, role, err := s.viewMember(ctx, from, conv)
		if err != nil {
			return res, err
		}
		entry, orig, err := s.target(ctx, from, conv, id, seq)
		if err != nil {
			return res, err
		}
		c, err := decide(v, role, &orig)
		if err != nil {
			return res, err
		}
		if c.unchanged {
			res.Unchanged, res.Reactions = true, orig.Reactions
			return res, nil
		}
		err = s.enqueueLocked(ctx, cs, from.App, v, protocol.Sender{User: from.User, Device: from.Device}, "", c.typ, c.body, nil,
			func(a protocol.Ack, err error) { ch <- outcome{a, err} },
			func(q *enqueueing) {
				q.noPush = true
				q.msg.Ref = &protocol.Ref{ID: orig.ID, Seq: orig.Seq}
				q.msg.Prev = c.prev
				q.updates = func(ev *protocol.Message) ([]storage.LogEntry, error) {
					m := orig
					c.apply(&m, ev)
					changed = m
					res.Reactions = m.Reactions
					data, err := json.Marshal(m)
					if err != nil {
						return nil, s.internal("encode message", err)
					}
					return append([]storage.LogEntry{{Conv: conv, Seq: entry.Seq, TS: entry.TS, Sender: entry.Sender, Data: data}}, c.more...), nil
				}
			})
		var o outcome
		if err == nil {
			o = <-ch
			err = o.err
		}
		if errors.Is(err, storage.ErrConflict) && attempt+1 < maxAppendAttempts {
			s.conflicts.Add(1)
			continue
		}
		if errors.Is(err, storage.ErrNotFound) {
			return res, errNoMessage(conv, seq) // trimmed meanwhile
		}
		if err != nil {
			return res, s.internal("store "+c.typ, err)
		}
		res.ID, res.Seq, res.TS = o.ack.ID, o.ack.Seq, o.ack.TS
		if s.o.OnChanged != nil && c.typ != protocol.TypeReaction {
			s.o.OnChanged(from.App, changed)
		}
		return res, nil
	}
}

// Edit replaces the body of a message the caller sent (not a forwarded
// copy, and in a channel only while the caller is an admin). The message keeps
// its id and seq and gets "edited": true, the time of the edit and the seqs
// of its edit events ("edits"); each edit event carries the new body and
// the one it replaced ("prev"), so the log holds the message's versions.
func (s *Service) Edit(ctx context.Context, from Sender, conv, id string, seq uint64, body json.RawMessage) (protocol.OpResult, error) {
	if len(body) == 0 || !json.Valid(body) {
		return protocol.OpResult{}, protocol.Errorf(protocol.CodeBadRequest, "body: must be a JSON value")
	}
	maxBody := s.o.Limits.MaxBody
	if maxBody <= 0 {
		maxBody = protocol.DefaultMaxBody
	}
	if len(body) > maxBody {
		return protocol.OpResult{}, protocol.Errorf(protocol.CodeTooLarge, "body of %d bytes exceeds %d", len(body), maxBody)
	}
	return s.mutate(ctx, from, conv, id, seq, func(v *convView, role storage.Role, m *protocol.Message) (*change, error) {
		if err := s.checkWrite(ctx, from, v, role); err != nil {
			return nil, err // blocked or muted: editing is writing
		}
		switch {
		case m.From.User != from.User:
			return nil, protocol.Errorf(protocol.CodeForbidden, "only the sender may edit a message")
		case v.conv.Kind == storage.KindChannel && !from.Service && rank(role) < rank(storage.RoleAdmin):
			// Editing is writing: an admin who was demoted no longer may.
			return nil, protocol.Errorf(protocol.CodeForbidden, "only admins may write to channel %s", conv)
		case m.Forwarded != nil:
			// The copy speaks for its original author ("forwarded" names
			// them): a new body would put words in their mouth.
			return nil, protocol.Errorf(protocol.CodeBadState, "message %d of %s is forwarded: it cannot be edited", seq, conv)
		case m.Recalled:
			return nil, protocol.Errorf(protocol.CodeBadState, "message %d of %s was recalled", seq, conv)
		case len(m.Edits) >= MaxEdits:
			return nil, protocol.Errorf(protocol.CodeFull, "a message may be edited at most %d times", MaxEdits)
		}
		return &change{typ: protocol.TypeEdit, body: body, prev: m.Body, apply: func(m *protocol.Message, ev *protocol.Message) {
			m.Body, m.Edited, m.EditedTS = body, true, ev.TS
			m.Edits = append(slices.Clip(m.Edits), ev.Seq)
		}}, nil
	})
}

// Recall withdraws a message: its stored copy (and its edit events) lose
// their body, attachment, reactions and mentions and get "recalled":
// true. The sender may recall within the app's recall window; admins and
// owners of groups and channels, and services, any time. Recalling a
// recalled message changes nothing.
func (s *Service) Recall(ctx context.Context, from Sender, conv, id string, seq uint64) (protocol.OpResult, error) {
	return s.mutate(ctx, from, conv, id, seq, func(v *convView, role storage.Role, m *protocol.Message) (*change, error) {
		if m.Recalled {
			return &change{unchanged: true}, nil
		}
		admin := from.Service || v.conv.Kind != storage.KindDirect && rank(role) >= rank(storage.RoleAdmin)
		if !admin {
			if m.From.User != from.User {
				return nil, protocol.Errorf(protocol.CodeForbidden, "only the sender, or an admin of a group, may recall a message")
			}
			window := s.recallWindow(from.App)
			if window < 0 {
				return nil, protocol.Errorf(protocol.CodeForbidden, "senders may not recall messages in this app")
			}
			if age := s.now().Sub(time.UnixMilli(m.TS)); age > window {
				return nil, protocol.Errorf(protocol.CodeTooLate, "messages may be recalled within %v of sending; this one is %v old", window, age.Round(time.Second))
			}
		}
		// The versions in the edit events go too.
		var more []storage.LogEntry
		for _, es := range m.Edits {
			e, em, err := s.rawEntry(ctx, from.App, conv, es)
			if err != nil {
				return nil, err
			}
			if e.Data == nil {
				continue // trimmed
			}
			em.Body, em.Prev, em.Recalled = nil, nil, true
			if e.Data, err = json.Marshal(em); err != nil {
				return nil, s.internal("encode message", err)
			}
			more = append(more, e)
		}
		return &change{typ: protocol.TypeRecall, more: more, apply: func(m *protocol.Message, ev *protocol.Message) {
			m.Body, m.Reactions, m.Mentions, m.MentionAll = nil, nil, nil, false
			m.Attachment = nil // the file's description (name, size, thumbnail) goes too
			m.Recalled, m.RecalledBy, m.RecalledTS = true, from.User, ev.TS
		}}, nil
	})
}

// rawEntry reads any entry of the log (an event too); a missing one is
// returned with nil Data.
func (s *Service) rawEntry(ctx context.Context, app, conv string, seq uint64) (storage.LogEntry, protocol.Message, error) {
	var m protocol.Message
	es, err := s.store.Range(ctx, app, conv, seq, true, 1)
	if err != nil {
		return storage.LogEntry{}, m, s.internal("read log", err)
	}
	if len(es) == 0 || es[0].Seq != seq {
		return storage.LogEntry{}, m, nil
	}
	if err := json.Unmarshal(es[0].Data, &m); err != nil {
		return storage.LogEntry{}, m, s.internal("decode message", err)
	}
	return es[0], m, nil
}

// Recalled reports whether message seq of conv has been recalled (false
// for one that does not exist). The push bridge asks it before it sends a
// notification that waited. It checks no membership.
func (s *Service) Recalled(ctx context.Context, app, conv string, seq uint64) (bool, error) {
	e, m, err := s.rawEntry(ctx, app, conv, seq)
	if err != nil || e.Data == nil {
		return false, err
	}
	return m.Recalled, nil
}

func (s *Service) recallWindow(app string) time.Duration {
	var w time.Duration
	if s.o.RecallWindow != nil {
		w = s.o.RecallWindow(app)
	}
	if w == 0 {
		w = DefaultRecallWindow
	}
	return w
}

// React adds (add true) or removes the caller's reaction emoji on a
// message. Any member may react, in channels too. Adding a reaction that
// is there, or removing one that is not, changes nothing. The "reaction"
// event carries the emoji, the action and the emoji's new count.
func (s *Service) React(ctx context.Context, from Sender, conv, id string, seq uint64, emoji string, add bool) (protocol.OpResult, error) {
	if !protocol.ValidEmoji(emoji) {
		return protocol.OpResult{}, protocol.Errorf(protocol.CodeBadRequest, "emoji: 1-%d bytes of UTF-8 without spaces or control characters", protocol.MaxEmojiBytes)
	}
	return s.mutate(ctx, from, conv, id, seq, func(v *convView, role storage.Role, m *protocol.Message) (*change, error) {
		if add {
			if err := s.checkWrite(ctx, from, v, role); err != nil {
				return nil, err // blocked or muted; taking one back is always allowed
			}
		}
		if m.Recalled {
			return nil, protocol.Errorf(protocol.CodeBadState, "message %d of %s was recalled", seq, conv)
		}
		i := slices.IndexFunc(m.Reactions, func(r protocol.Reaction) bool { return r.Emoji == emoji })
		has := i >= 0 && slices.Contains(m.Reactions[i].Users, from.User)
		if has == add {
			return &change{unchanged: true}, nil
		}
		if add {
			total := 0
			for _, r := range m.Reactions {
				total += len(r.Users)
			}
			if i < 0 && len(m.Reactions) >= MaxReactionKinds {
				return nil, protocol.Errorf(protocol.CodeFull, "a message may carry at most %d different reactions", MaxReactionKinds)
			}
			if total >= MaxReactions {
				return nil, protocol.Errorf(protocol.CodeFull, "a message may carry at most %d reactions", MaxReactions)
			}
		}
		// Work on copies: m is the message as read, reused on a retry.
		rs := slices.Clone(m.Reactions)
		if add {
			if i < 0 {
				rs = append(rs, protocol.Reaction{Emoji: emoji})
				i = len(rs) - 1
			}
			rs[i].Users = append(slices.Clone(rs[i].Users), from.User)
		} else {
			rs[i].Users = slices.DeleteFunc(slices.Clone(rs[i].Users), func(u string) bool { return u == from.User })
		}
		rs[i].Count = len(rs[i].Users)
		ev := protocol.ReactionEvent{Emoji: emoji, Action: "add", Count: rs[i].Count}
		if !add {
			ev.Action = "remove"
		}
		if rs[i].Count == 0 {
			rs = slices.Delete(rs, i, i+1)
		}
		body, _ := json.Marshal(ev)
		return &change{typ: protocol.TypeReaction, body: body, apply: func(m *protocol.Message, _ *protocol.Message) {
			m.Reactions = rs
		}}, nil
	})
}

// Forward copies a message the caller can read (src, in any conversation
// the caller is a member of) into the conversation of in (Conv or To),
// with the same type and body, marked "forwarded" with the original
// author and time (a forward of a forward keeps the first author). It is a
// send in every other way: cmid, quota, the right to write.
func (s *Service) Forward(ctx context.Context, from Sender, in SendRequest, src protocol.Ref) (protocol.Ack, error) {
	if !protocol.ValidID(src.Conv) {
		return protocol.Ack{}, protocol.Errorf(protocol.CodeBadRequest, "src.conv: %s", protocol.ErrBadID)
	}
	if _, _, err := s.viewMember(ctx, from, src.Conv); err != nil {
		return protocol.Ack{}, err
	}
	_, m, err := s.target(ctx, from, src.Conv, src.ID, src.Seq)
	if err != nil {
		return protocol.Ack{}, err
	}
	if m.Recalled {
		return protocol.Ack{}, protocol.Errorf(protocol.CodeBadState, "message %d of %s was recalled", src.Seq, src.Conv)
	}
	in.Type, in.Body = m.Type, m.Body
	if m.Attachment != nil {
		// The forwarder reads the file through the source conversation;
		// sending links it to the destination too (see attach.go).
		in.Attachment = m.Attachment.ID
	}
	in.forwarded = m.Forwarded
	if in.forwarded == nil {
		in.forwarded = &protocol.Forwarded{From: m.From.User, TS: m.TS}
	}
	return s.Send(ctx, from, in)
}

// sendExtras checks the references and mentions of a send against the
// conversation (the caller holds its lock) and returns the options that
// set them on the message.
func (s *Service) sendExtras(ctx context.Context, from Sender, v *convView, in SendRequest) ([]enqOpt, error) {
	if in.ReplyTo == nil && len(in.Mentions) == 0 && !in.MentionAll && in.forwarded == nil {
		return nil, nil
	}
	var reply *protocol.Ref
	if r := in.ReplyTo; r != nil {
		if r.Conv != "" && r.Conv != v.conv.ID {
			return nil, protocol.Errorf(protocol.CodeBadRequest, "reply_to: a reply is to a message of the same conversation")
		}
		_, m, err := s.target(ctx, from, v.conv.ID, r.ID, r.Seq)
		if err != nil {
			return nil, err
		}
		reply = &protocol.Ref{ID: m.ID, Seq: m.Seq, From: m.From.User}
	}
	if len(in.Mentions) > protocol.MaxMentions {
		return nil, protocol.Errorf(protocol.CodeTooLarge, "mentions: at most %d users", protocol.MaxMentions)
	}
	var mentions []string
	for _, u := range in.Mentions {
		if slices.Contains(mentions, u) {
			continue
		}
		if v.role(u) == "" {
			return nil, protocol.Errorf(protocol.CodeNotFound, "mentions: %s is not a member of %s", u, v.conv.ID)
		}
		mentions = append(mentions, u)
	}
	if in.MentionAll {
		if v.conv.Kind == storage.KindDirect {
			return nil, protocol.Errorf(protocol.CodeBadRequest, "mention_all: only in groups and channels")
		}
		if !from.Service && rank(v.role(from.User)) < rank(storage.RoleAdmin) {
			return nil, protocol.Errorf(protocol.CodeForbidden, "only admins and the owner may mention everyone in %s", v.conv.ID)
		}
	}
	fwd := in.forwarded
	return []enqOpt{func(q *enqueueing) {
		q.msg.ReplyTo, q.msg.Mentions, q.msg.MentionAll, q.msg.Forwarded = reply, mentions, in.MentionAll, fwd
	}}, nil
}
