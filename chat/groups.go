package chat

import (
	"context"
	"errors"
	"slices"
	"unicode/utf8"

	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage"
)

// Roles. The owner (one per group) may do everything, including changing
// roles and handing ownership over. Admins add and remove members (not other
// admins or the owner) and write to channels. Members write to groups and
// read everything. Each change is recorded in the log as a "system" message,
// so every member's devices learn of it in order, live or by sync; removed
// users get the event that removed them.

// CreateRequest creates a group or a channel. Conv is optional (an ID is
// generated); the creator becomes its owner.
type CreateRequest struct {
	Conv, Kind, Name string
	Members          []string
}

// event is the body of a system message.
type event struct {
	Event string   `json:"event"` // created, added, removed, left, role, renamed, deleted
	By    string   `json:"by"`
	Users []string `json:"users,omitempty"`
	Role  string   `json:"role,omitempty"`
	Name  string   `json:"name,omitempty"`
}

// Create makes a group or channel with the caller as owner.
func (s *Service) Create(ctx context.Context, from Sender, in CreateRequest) (protocol.InfoResult, error) {
	kind := storage.ConvKind(in.Kind)
	if kind != storage.KindGroup && kind != storage.KindChannel {
		return protocol.InfoResult{}, protocol.Errorf(protocol.CodeBadRequest, "kind: must be group or channel")
	}
	id := in.Conv
	if id == "" {
		id = s.ids.next(s.now())
	} else if !protocol.ValidID(id) || protocol.IsDirectConv(id) {
		return protocol.InfoResult{}, protocol.Errorf(protocol.CodeBadRequest, "conv: invalid or reserved ID %q", id)
	}
	users := []string{}
	for _, u := range in.Members {
		if u != from.User && !slices.Contains(users, u) {
			users = append(users, u)
		}
	}
	total := len(users)
	if !from.Service {
		total++
	}
	if total > s.o.MaxGroupSize {
		return protocol.InfoResult{}, protocol.Errorf(protocol.CodeFull, "a %s may have at most %d members", kind, s.o.MaxGroupSize)
	}
	if err := s.checkUsers(ctx, from.App, users); err != nil {
		return protocol.InfoResult{}, err
	}
	now := s.now().UnixMilli()
	var ms []storage.Member
	if !from.Service {
		ms = append(ms, storage.Member{User: from.User, Role: storage.RoleOwner, Joined: now})
	}
	for _, u := range users {
		ms = append(ms, storage.Member{User: u, Role: storage.RoleMember, Joined: now})
	}
	c := storage.Conversation{ID: id, Kind: kind, Name: in.Name, CreatedBy: from.User, Created: now}
	cs := s.lockConv(from.App, id)
	defer cs.mu.Unlock()
	if err := s.store.CreateConversation(ctx, from.App, c, ms); err != nil {
		if errors.Is(err, storage.ErrExists) {
			return protocol.InfoResult{}, protocol.Errorf(protocol.CodeExists, "conversation %s already exists", id)
		}
		return protocol.InfoResult{}, s.internal("create conversation", err)
	}
	s.Invalidate(from.App, id)
	c.Members = len(ms)
	if err := s.system(ctx, cs, from.App, c, from.User, event{Event: "created", By: from.User, Users: users, Name: in.Name}, nil); err != nil {
		return protocol.InfoResult{}, err
	}
	return s.info(ctx, from, c, "", 0)
}

// lockedMember takes the conversation lock and checks the caller's role
// against the store. The returned unlock must be called; it drops the
// cached view of the conversation, which the caller may have changed (the
// callers also drop it as soon as they change it, so that the system event
// announcing a change is fanned out to the new membership).
func (s *Service) lockedMember(ctx context.Context, from Sender, conv string, need storage.Role) (*convState, storage.Conversation, storage.Member, func(), error) {
	cs := s.lockConv(from.App, conv)
	c, m, err := s.member(ctx, from, conv)
	if err == nil && c.Kind == storage.KindDirect && need != storage.RoleMember {
		err = protocol.Errorf(protocol.CodeForbidden, "direct conversations have no roles or member changes")
	}
	if err == nil && rank(m.Role) < rank(need) {
		err = protocol.Errorf(protocol.CodeForbidden, "this needs the %s role in %s", need, conv)
	}
	if err != nil {
		cs.mu.Unlock()
		return nil, c, m, nil, err
	}
	return cs, c, m, func() { s.Invalidate(from.App, conv); cs.mu.Unlock() }, nil
}

// Add adds users to a group or channel (admins and owners). role may be ""
// or "member"; only the owner may add admins.
func (s *Service) Add(ctx context.Context, from Sender, conv string, users []string, role string) (protocol.InfoResult, error) {
	cs, c, m, unlock, err := s.lockedMember(ctx, from, conv, storage.RoleAdmin)
	if err != nil {
		return protocol.InfoResult{}, err
	}
	defer unlock()
	r := storage.RoleMember
	switch role {
	case "", protocol.RoleMember:
	case protocol.RoleAdmin:
		if m.Role != storage.RoleOwner {
			return protocol.InfoResult{}, protocol.Errorf(protocol.CodeForbidden, "only the owner may add admins")
		}
		r = storage.RoleAdmin
	default:
		return protocol.InfoResult{}, protocol.Errorf(protocol.CodeBadRequest, "role: add as member or admin")
	}
	if err := s.checkUsers(ctx, from.App, users); err != nil {
		return protocol.InfoResult{}, err
	}
	now := s.now().UnixMilli()
	ms := make([]storage.Member, len(users))
	for i, u := range users {
		ms[i] = storage.Member{User: u, Role: r, Joined: now}
	}
	max := s.maxMembers(ctx, from.App, conv) // the group's own limit (groupadmin.go)
	added, err := s.store.AddMembers(ctx, from.App, conv, ms, max)
	if errors.Is(err, storage.ErrLimit) {
		return protocol.InfoResult{}, protocol.Errorf(protocol.CodeFull, "%s would exceed %d members", conv, max)
	}
	if err != nil {
		return protocol.InfoResult{}, s.internal("add members", err)
	}
	s.Invalidate(from.App, conv)
	if err := s.markJoined(ctx, cs, from.App, conv, added); err != nil {
		return protocol.InfoResult{}, err
	}
	c.Members += len(added)
	if len(added) > 0 {
		if err := s.system(ctx, cs, from.App, c, from.User, event{Event: "added", By: from.User, Users: added, Role: string(r)}, nil); err != nil {
			return protocol.InfoResult{}, err
		}
	}
	return s.info(ctx, from, c, "", 0)
}

// Remove removes members (admins remove members; the owner anyone but
// themselves). Use Leave to remove yourself.
func (s *Service) Remove(ctx context.Context, from Sender, conv string, users []string) (protocol.InfoResult, error) {
	cs, c, m, unlock, err := s.lockedMember(ctx, from, conv, storage.RoleAdmin)
	if err != nil {
		return protocol.InfoResult{}, err
	}
	defer unlock()
	for _, u := range users {
		if u == from.User && !from.Service {
			return protocol.InfoResult{}, protocol.Errorf(protocol.CodeBadRequest, "use op leave to leave %s", conv)
		}
		t, err := s.store.GetMember(ctx, from.App, conv, u)
		if errors.Is(err, storage.ErrNotFound) {
			continue
		}
		if err != nil {
			return protocol.InfoResult{}, s.internal("read membership", err)
		}
		if rank(t.Role) >= rank(m.Role) {
			return protocol.InfoResult{}, protocol.Errorf(protocol.CodeForbidden, "cannot remove %s: their role is %s", u, t.Role)
		}
	}
	removed, err := s.store.RemoveMembers(ctx, from.App, conv, users)
	if err != nil {
		return protocol.InfoResult{}, s.internal("remove members", err)
	}
	s.Invalidate(from.App, conv)
	c.Members -= len(removed)
	if len(removed) > 0 {
		if err := s.system(ctx, cs, from.App, c, from.User, event{Event: "removed", By: from.User, Users: removed}, removed); err != nil {
			return protocol.InfoResult{}, err
		}
		s.recheckAfterLeaving(ctx, from.App, conv, removed) // presence.go
	}
	return s.info(ctx, from, c, "", 0)
}

// Leave removes the caller from a group or channel. An owner who leaves
// hands ownership to the first admin (by user ID), else the first member.
func (s *Service) Leave(ctx context.Context, from Sender, conv string) (protocol.MarkResult, error) {
	cs, c, m, unlock, err := s.lockedMember(ctx, from, conv, storage.RoleMember)
	if err != nil {
		return protocol.MarkResult{}, err
	}
	defer unlock()
	if c.Kind == storage.KindDirect {
		return protocol.MarkResult{}, protocol.Errorf(protocol.CodeForbidden, "direct conversations cannot be left")
	}
	if from.Service {
		return protocol.MarkResult{}, protocol.Errorf(protocol.CodeBadRequest, "services are not members")
	}
	var heir string
	if m.Role == storage.RoleOwner {
		ms, err := s.store.ListMembers(ctx, from.App, conv, "", 0)
		if err != nil {
			return protocol.MarkResult{}, s.internal("list members", err)
		}
		for _, o := range ms { // ms is in user ID order
			if o.User == from.User {
				continue
			}
			if o.Role == storage.RoleAdmin {
				heir = o.User
				break
			}
			if heir == "" {
				heir = o.User
			}
		}
		if heir != "" {
			if err := s.store.SetRole(ctx, from.App, conv, heir, storage.RoleOwner); err != nil {
				return protocol.MarkResult{}, s.internal("hand over ownership", err)
			}
		}
	}
	_, err = s.store.RemoveMembers(ctx, from.App, conv, []string{from.User})
	s.Invalidate(from.App, conv)
	if err != nil {
		return protocol.MarkResult{}, s.internal("leave", err)
	}
	c.Members--
	if err := s.system(ctx, cs, from.App, c, from.User, event{Event: "left", By: from.User, Users: []string{from.User}}, []string{from.User}); err != nil {
		return protocol.MarkResult{}, err
	}
	if heir != "" {
		if err := s.system(ctx, cs, from.App, c, from.User, event{Event: "role", By: from.User, Users: []string{heir}, Role: protocol.RoleOwner}, nil); err != nil {
			return protocol.MarkResult{}, err
		}
	}
	s.recheckAfterLeaving(ctx, from.App, conv, []string{from.User}) // presence.go
	return protocol.MarkResult{Conv: conv, Seq: cs.head}, nil
}

// SetRole changes a member's role (owner only). Making someone owner hands
// ownership over: the previous owner becomes an admin. A service may do
// the same, but may not demote the owner without naming a new one.
func (s *Service) SetRole(ctx context.Context, from Sender, conv, user, role string) (protocol.InfoResult, error) {
	cs, c, _, unlock, err := s.lockedMember(ctx, from, conv, storage.RoleOwner)
	if err != nil {
		return protocol.InfoResult{}, err
	}
	defer unlock()
	if !protocol.ValidRole(role) {
		return protocol.InfoResult{}, protocol.Errorf(protocol.CodeBadRequest, "role: must be owner, admin or member")
	}
	if user == from.User {
		return protocol.InfoResult{}, protocol.Errorf(protocol.CodeBadRequest, "the owner changes their role by making someone else owner")
	}
	t, err := s.store.GetMember(ctx, from.App, conv, user)
	if errors.Is(err, storage.ErrNotFound) {
		return protocol.InfoResult{}, protocol.Errorf(protocol.CodeNotFound, "%s is not a member of %s", user, conv)
	} else if err != nil {
		return protocol.InfoResult{}, s.internal("read membership", err)
	}
	if t.Role == storage.RoleOwner && role != protocol.RoleOwner {
		// Only a service gets here (the owner cannot name themselves).
		return protocol.InfoResult{}, protocol.Errorf(protocol.CodeBadRequest, "the owner's role changes by making someone else owner")
	}
	// The previous owner becomes an admin: the caller, or, when a service
	// hands ownership over, whoever owns the conversation now.
	var previous []string
	if role == protocol.RoleOwner && t.Role != storage.RoleOwner {
		if !from.Service {
			previous = []string{from.User}
		} else {
			ms, err := s.store.ListMembers(ctx, from.App, conv, "", 0)
			if err != nil {
				return protocol.InfoResult{}, s.internal("list members", err)
			}
			for _, m := range ms {
				if m.Role == storage.RoleOwner {
					previous = append(previous, m.User)
				}
			}
		}
	}
	if err := s.store.SetRole(ctx, from.App, conv, user, storage.Role(role)); err != nil {
		return protocol.InfoResult{}, s.internal("set role", err)
	}
	for _, p := range previous {
		if err := s.store.SetRole(ctx, from.App, conv, p, storage.RoleAdmin); err != nil {
			return protocol.InfoResult{}, s.internal("set role", err)
		}
	}
	s.Invalidate(from.App, conv)
	if err := s.system(ctx, cs, from.App, c, from.User, event{Event: "role", By: from.User, Users: []string{user}, Role: role}, nil); err != nil {
		return protocol.InfoResult{}, err
	}
	return s.info(ctx, from, c, "", 0)
}

// MaxNameLen is the longest conversation name, in bytes.
const MaxNameLen = 256

// Rename changes a group's or channel's name (admins and owners). The
// change is recorded as a "renamed" system event carrying the new name.
func (s *Service) Rename(ctx context.Context, from Sender, conv, name string) (protocol.InfoResult, error) {
	if len(name) > MaxNameLen || !utf8.ValidString(name) {
		return protocol.InfoResult{}, protocol.Errorf(protocol.CodeBadRequest, "name: at most %d bytes of UTF-8", MaxNameLen)
	}
	cs, c, _, unlock, err := s.lockedMember(ctx, from, conv, storage.RoleAdmin)
	if err != nil {
		return protocol.InfoResult{}, err
	}
	defer unlock()
	if c.Name == name {
		return s.info(ctx, from, c, "", 0)
	}
	if err := s.store.RenameConversation(ctx, from.App, conv, name); err != nil {
		return protocol.InfoResult{}, s.internal("rename conversation", err)
	}
	s.Invalidate(from.App, conv)
	c.Name = name
	if err := s.system(ctx, cs, from.App, c, from.User, event{Event: "renamed", By: from.User, Name: name}, nil); err != nil {
		return protocol.InfoResult{}, err
	}
	return s.info(ctx, from, c, "", 0)
}

// Info returns a conversation and a page of its members (members only).
func (s *Service) Info(ctx context.Context, from Sender, conv, start string, limit int) (protocol.InfoResult, error) {
	v, _, err := s.viewMember(ctx, from, conv)
	if err != nil {
		return protocol.InfoResult{}, err
	}
	return s.info(ctx, from, v.conv, start, limit)
}

func (s *Service) info(ctx context.Context, from Sender, c storage.Conversation, start string, limit int) (protocol.InfoResult, error) {
	if limit <= 0 {
		limit = 100
	}
	ms, err := s.store.ListMembers(ctx, from.App, c.ID, start, limit+1)
	if err != nil {
		return protocol.InfoResult{}, s.internal("list members", err)
	}
	res := protocol.InfoResult{}
	if len(ms) > limit {
		ms, res.More = ms[:limit], true
	}
	var self storage.Member
	for _, m := range ms {
		res.Members = append(res.Members, protocol.MemberInfo{User: m.User, Role: string(m.Role), Joined: m.Joined, Read: m.Read})
		if m.User == from.User {
			self = m
		}
	}
	if self.User == "" && !from.Service {
		if self, err = s.store.GetMember(ctx, from.App, c.ID, from.User); err != nil && !errors.Is(err, storage.ErrNotFound) {
			return res, s.internal("read membership", err)
		}
	}
	res.Conv, err = s.convInfo(ctx, from.App, c, self)
	res.Group = s.groupInfo(ctx, from.App, c, from.User)
	return res, err
}
