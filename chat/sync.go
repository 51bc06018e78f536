package chat

import (
	"context"
	"encoding/json"
	"errors"
	"slices"

	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage"
)

// maxUserConvs bounds how many conversations one sync considers.
const maxUserConvs = 10000

// receiptScan bounds how many messages a receipt looks at to find their
// authors; authors of older messages in a huge jump get no receipt (they
// still see the position through "reads" and "info").
const receiptScan = 500

func (s *Service) convInfo(ctx context.Context, app string, c storage.Conversation, m storage.Member) (protocol.ConvInfo, error) {
	last, err := s.store.LastSeq(ctx, app, c.ID)
	if err != nil {
		return protocol.ConvInfo{}, s.internal("read head", err)
	}
	ci := protocol.ConvInfo{Conv: c.ID, Kind: string(c.Kind), Name: c.Name, Role: string(m.Role), Members: c.Members, LastSeq: last, Read: m.Read}
	ci.Unread, ci.UnreadMore, err = s.unread(ctx, app, c.ID, m.User, m.Read, last)
	if err != nil {
		return protocol.ConvInfo{}, s.internal("count unread", err)
	}
	return ci, nil
}

// Convs lists the caller's conversations in ID order with their last seq
// and unread count, from start, at most limit (default 100).
func (s *Service) Convs(ctx context.Context, from Sender, start string, limit int) (protocol.ConvsResult, error) {
	if limit <= 0 {
		limit = 100
	}
	ids, err := s.store.UserConversations(ctx, from.App, from.User, start, limit+1)
	if err != nil {
		return protocol.ConvsResult{}, s.internal("list conversations", err)
	}
	res := protocol.ConvsResult{Convs: []protocol.ConvInfo{}}
	if len(ids) > limit {
		res.More, res.Next = true, ids[limit]
		ids = ids[:limit]
	}
	for _, id := range ids {
		ci, err := s.userConv(ctx, from, id)
		if err != nil {
			if errors.Is(err, storage.ErrNotFound) {
				continue // left meanwhile
			}
			return res, err
		}
		res.Convs = append(res.Convs, ci)
	}
	return res, nil
}

func (s *Service) userConv(ctx context.Context, from Sender, id string) (protocol.ConvInfo, error) {
	c, err := s.store.GetConversation(ctx, from.App, id)
	if err != nil {
		if errors.Is(err, storage.ErrNotFound) {
			return protocol.ConvInfo{}, err
		}
		return protocol.ConvInfo{}, s.internal("read conversation", err)
	}
	m, err := s.store.GetMember(ctx, from.App, id, from.User)
	if err != nil {
		if errors.Is(err, storage.ErrNotFound) {
			return protocol.ConvInfo{}, err
		}
		return protocol.ConvInfo{}, s.internal("read membership", err)
	}
	return s.convInfo(ctx, from.App, c, m)
}

// Sync returns, for the calling device, the messages of all its user's
// conversations after its positions, in order (by conversation ID, then
// seq), at most limit (default 100) and MaxReplyBytes per page. Positions
// are the cursors given (the previous page's result) or, for conversations
// not in them, the device's stored delivered cursors. The first page (no
// cursors given) also lists the conversations.
func (s *Service) Sync(ctx context.Context, from Sender, cursors map[string]uint64, limit int) (protocol.SyncResult, error) {
	if limit <= 0 {
		limit = 100
	}
	ids, err := s.store.UserConversations(ctx, from.App, from.User, "", maxUserConvs)
	if err != nil {
		return protocol.SyncResult{}, s.internal("list conversations", err)
	}
	stored, err := s.store.Cursors(ctx, from.App, from.User, from.Device)
	if err != nil {
		return protocol.SyncResult{}, s.internal("read cursors", err)
	}
	res := protocol.SyncResult{Messages: []json.RawMessage{}, Cursors: make(map[string]uint64, len(ids))}
	first := cursors == nil
	bytes := 0
	full := false
	for _, id := range ids {
		pos := stored[id]
		if c, ok := cursors[id]; ok {
			pos = c
		}
		// History visibility (groupadmin.go): skip what came before the
		// user joined.
		if floor, err := s.visibleFrom(ctx, from.App, id, from.User); err != nil {
			return res, err
		} else if floor > 0 && pos < floor-1 {
			pos = floor - 1
		}
		res.Cursors[id] = pos
		var last uint64
		if first {
			ci, err := s.userConv(ctx, from, id)
			if errors.Is(err, storage.ErrNotFound) {
				continue
			}
			if err != nil {
				return res, err
			}
			res.Convs = append(res.Convs, ci)
			last = ci.LastSeq
		} else if last, err = s.store.LastSeq(ctx, from.App, id); err != nil {
			return res, s.internal("read head", err)
		}
		if last <= pos {
			continue
		}
		if full {
			res.More = true
			continue
		}
		for pos < last && !full {
			want := limit - len(res.Messages)
			es, err := s.store.Range(ctx, from.App, id, pos+1, true, min(want, 100))
			if err != nil {
				return res, s.internal("read log", err)
			}
			if len(es) == 0 {
				pos = last // the rest was trimmed by retention
				break
			}
			for _, e := range es {
				if len(res.Messages) > 0 && (len(res.Messages) >= limit || bytes+len(e.Data) > s.o.MaxReplyBytes) {
					full = true
					break
				}
				res.Messages = append(res.Messages, e.Data)
				bytes += len(e.Data)
				pos = e.Seq
			}
			if len(res.Messages) >= limit {
				full = true
			}
		}
		res.Cursors[id] = pos
		if pos < last {
			res.More = true
		}
	}
	return res, nil
}

// History returns a page of one conversation in ascending seq order: the
// messages before seq before, or after seq after, or (neither) the newest.
func (s *Service) History(ctx context.Context, from Sender, conv string, before, after uint64, limit int) (protocol.HistoryResult, error) {
	if _, _, err := s.viewMember(ctx, from, conv); err != nil {
		return protocol.HistoryResult{}, err
	}
	// History visibility (groupadmin.go): nothing before floor.
	floor, err := s.visibleFrom(ctx, from.App, conv, from.User)
	if err != nil {
		return protocol.HistoryResult{}, err
	}
	if floor > 1 && after > 0 && after < floor-1 {
		after = floor - 1
	}
	if floor > 0 && before > 0 && before <= floor {
		return protocol.HistoryResult{Conv: conv, Messages: []json.RawMessage{}}, nil
	}
	if limit <= 0 {
		limit = 50
	}
	forward := after > 0
	var start uint64
	switch {
	case forward:
		start = after + 1
	case before > 0:
		if before == 1 {
			return protocol.HistoryResult{Conv: conv, Messages: []json.RawMessage{}}, nil
		}
		start = before - 1
	default:
		last, err := s.store.LastSeq(ctx, from.App, conv)
		if err != nil {
			return protocol.HistoryResult{}, s.internal("read head", err)
		}
		start = last
	}
	es, err := s.store.Range(ctx, from.App, conv, start, forward, limit+1)
	if err != nil {
		return protocol.HistoryResult{}, s.internal("read log", err)
	}
	res := protocol.HistoryResult{Conv: conv, Messages: []json.RawMessage{}}
	if len(es) > limit {
		es, res.More = es[:limit], true
	}
	bytes := 0
	for i, e := range es {
		if i > 0 && bytes+len(e.Data) > s.o.MaxReplyBytes {
			es, res.More = es[:i], true
			break
		}
		bytes += len(e.Data)
	}
	if floor > 0 {
		kept := es[:0]
		for _, e := range es {
			if e.Seq >= floor {
				kept = append(kept, e)
			}
		}
		if len(kept) < len(es) && !forward {
			res.More = false
		}
		es = kept
	}
	if !forward {
		slices.Reverse(es)
	}
	for _, e := range es {
		res.Messages = append(res.Messages, e.Data)
	}
	return res, nil
}

// MarkRead moves the caller's read position (and this device's delivered
// cursor) up to seq, clipped to the last message. When it moves, a read
// receipt goes to the authors of the newly read messages and to the
// caller's other devices (so they clear their unread badge); in a direct
// conversation to both users; in a channel only to the caller.
func (s *Service) MarkRead(ctx context.Context, from Sender, conv string, seq uint64) (protocol.MarkResult, error) {
	v, _, err := s.viewMember(ctx, from, conv)
	if err != nil {
		return protocol.MarkResult{}, err
	}
	if from.Service {
		return protocol.MarkResult{}, protocol.Errorf(protocol.CodeBadRequest, "services have no read position")
	}
	last, err := s.store.LastSeq(ctx, from.App, conv)
	if err != nil {
		return protocol.MarkResult{}, s.internal("read head", err)
	}
	seq = min(seq, last)
	prev, err := s.store.MarkRead(ctx, from.App, conv, from.User, seq)
	if err != nil {
		if errors.Is(err, storage.ErrNotFound) {
			return protocol.MarkResult{}, errNotMember(conv)
		}
		return protocol.MarkResult{}, s.internal("mark read", err)
	}
	if from.Device != "" {
		if _, err := s.store.SetCursor(ctx, from.App, from.User, from.Device, conv, seq); err != nil {
			return protocol.MarkResult{}, s.internal("set cursor", err)
		}
	}
	if seq <= prev {
		return protocol.MarkResult{Conv: conv, Seq: prev}, nil
	}
	s.receipt(ctx, from, v, "read", prev, seq)
	return protocol.MarkResult{Conv: conv, Seq: seq}, nil
}

// MarkDelivered moves this device's delivered cursor up to seq. When it
// moves, a delivered receipt goes to the authors of the newly delivered
// messages (other than the caller); channels send none.
func (s *Service) MarkDelivered(ctx context.Context, from Sender, conv string, seq uint64) (protocol.MarkResult, error) {
	v, _, err := s.viewMember(ctx, from, conv)
	if err != nil {
		return protocol.MarkResult{}, err
	}
	if from.Device == "" {
		return protocol.MarkResult{}, protocol.Errorf(protocol.CodeBadRequest, "delivered is per device")
	}
	last, err := s.store.LastSeq(ctx, from.App, conv)
	if err != nil {
		return protocol.MarkResult{}, s.internal("read head", err)
	}
	seq = min(seq, last)
	prev, err := s.store.SetCursor(ctx, from.App, from.User, from.Device, conv, seq)
	if err != nil {
		return protocol.MarkResult{}, s.internal("set cursor", err)
	}
	if seq <= prev {
		return protocol.MarkResult{Conv: conv, Seq: prev}, nil
	}
	s.receipt(ctx, from, v, "delivered", prev, seq)
	return protocol.MarkResult{Conv: conv, Seq: seq}, nil
}

// receipt delivers a receipt for the range (prev, seq].
func (s *Service) receipt(ctx context.Context, from Sender, v *convView, typ string, prev, seq uint64) {
	c := v.conv
	var to []string
	switch {
	case c.Kind == storage.KindChannel:
		if typ == "read" {
			to = []string{from.User}
		}
	case c.Kind == storage.KindDirect:
		for _, u := range v.users {
			if typ == "read" || u != from.User {
				to = append(to, u)
			}
		}
	default:
		if typ == "read" {
			to = append(to, from.User)
		}
		from1 := prev + 1
		if seq-prev > receiptScan {
			from1 = seq - receiptScan + 1
		}
		es, err := s.store.Range(ctx, from.App, c.ID, from1, true, int(seq-from1+1))
		if err != nil {
			s.log.Error("chat receipt: read log", "conv", c.ID, "err", err)
			return
		}
		for _, e := range es {
			if e.Seq <= seq && e.Sender != from.User && !slices.Contains(to, e.Sender) {
				to = append(to, e.Sender)
			}
		}
	}
	if len(to) == 0 {
		return
	}
	payload, _ := json.Marshal(protocol.Receipt{Kind: protocol.KindReceipt, Type: typ, Conv: c.ID, User: from.User, Device: from.Device, Seq: seq, TS: s.now().UnixMilli()})
	s.out.Deliver(from.App, to, payload)
}

// Reads answers how many members have read conv up to seq (group read
// counts); for up to 100 members it names them.
func (s *Service) Reads(ctx context.Context, from Sender, conv string, seq uint64) (protocol.ReadsResult, error) {
	if _, _, err := s.viewMember(ctx, from, conv); err != nil {
		return protocol.ReadsResult{}, err
	}
	ms, err := s.store.ListMembers(ctx, from.App, conv, "", 0)
	if err != nil {
		return protocol.ReadsResult{}, s.internal("list members", err)
	}
	res := protocol.ReadsResult{Conv: conv, Seq: seq, Members: len(ms)}
	for _, m := range ms {
		if m.Read >= seq {
			res.Read++
			if len(ms) <= 100 {
				res.Users = append(res.Users, m.User)
			}
		}
	}
	return res, nil
}
