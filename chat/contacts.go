package chat

// Contacts and blocks. Each user keeps their own lists (a contact is one
// way: adding someone does not add you to theirs):
//
//   - contacts decide who sees the user's presence when their privacy is
//     "contacts", and count besides shared conversations when it is
//     "shared" (the default);
//   - a blocked user cannot send to the blocker's direct conversation (the
//     send is refused with code "blocked" and nothing is stored), cannot
//     start one, their typing notices there are refused (also "blocked"),
//     and they cannot see the blocker's presence. In groups a block changes nothing on the
//     server: the group's log is one for everyone, so messages of a
//     blocked member are still stored and delivered, and the blocker's
//     devices hide them (the blocked list comes with op "contacts").

import (
	"context"
	"strings"

	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage"
)

// MaxRelations bounds a user's contacts, and separately their blocked
// users.
const MaxRelations = 5000

// blocks reports whether user has blocked other.
func (s *Service) blocks(ctx context.Context, app, user, other string) (bool, error) {
	if s.records == nil || user == other {
		return false, nil
	}
	ok, err := s.hasRecord(ctx, app, "bk/"+user+"/"+other)
	if err != nil {
		return false, s.internal("read blocks", err)
	}
	return ok, nil
}

// checkBlocked refuses from's write to a direct conversation whose other
// member has blocked from.
func (s *Service) checkBlocked(ctx context.Context, from Sender, v *convView) error {
	if v.conv.Kind != storage.KindDirect || from.Service {
		return nil
	}
	for _, u := range v.users {
		if u == from.User {
			continue
		}
		blocked, err := s.blocks(ctx, from.App, u, from.User)
		if err != nil {
			return err
		}
		if blocked {
			return protocol.Errorf(protocol.CodeBlocked, "%s does not accept your messages", u)
		}
	}
	return nil
}

// Contacts returns the caller's contacts, blocked users and presence
// privacy.
func (s *Service) Contacts(ctx context.Context, from Sender) (protocol.ContactsResult, error) {
	if err := s.needRecords(); err != nil {
		return protocol.ContactsResult{}, err
	}
	res := protocol.ContactsResult{Contacts: []string{}, Blocked: []string{}, Presence: s.privacyOf(ctx, from.App, from.User)}
	var err error
	if res.Contacts, err = s.relations(ctx, from.App, "ct/"+from.User+"/"); err != nil {
		return res, err
	}
	if res.Blocked, err = s.relations(ctx, from.App, "bk/"+from.User+"/"); err != nil {
		return res, err
	}
	return res, nil
}

func (s *Service) relations(ctx context.Context, app, prefix string) ([]string, error) {
	out := []string{}
	err := s.records.ScanRecords(ctx, app, prefix, "", MaxRelations+1, func(key string, _ []byte) error {
		out = append(out, strings.TrimPrefix(key, prefix))
		return nil
	})
	if err != nil {
		return nil, s.internal("list contacts", err)
	}
	return out, nil
}

// changeRelation adds or removes contacts or blocks (op names the change)
// and returns the lists as they are now.
func (s *Service) changeRelation(ctx context.Context, from Sender, op string, users []string) (protocol.ContactsResult, error) {
	if err := s.needRecords(); err != nil {
		return protocol.ContactsResult{}, err
	}
	if from.Service {
		return protocol.ContactsResult{}, protocol.Errorf(protocol.CodeBadRequest, "services have no contacts")
	}
	prefix, add := "ct/", true
	switch op {
	case protocol.OpContactRemove:
		add = false
	case protocol.OpBlock:
		prefix = "bk/"
	case protocol.OpUnblock:
		prefix, add = "bk/", false
	}
	prefix += from.User + "/"
	if add {
		for _, u := range users {
			if u == from.User {
				return protocol.ContactsResult{}, protocol.Errorf(protocol.CodeBadRequest, "users: you cannot add or block yourself")
			}
		}
		if err := s.checkUsers(ctx, from.App, users); err != nil {
			return protocol.ContactsResult{}, err
		}
		have, err := s.relations(ctx, from.App, prefix)
		if err != nil {
			return protocol.ContactsResult{}, err
		}
		n := len(have)
		for _, u := range users {
			if !contains(have, u) {
				n++
			}
		}
		if n > MaxRelations {
			return protocol.ContactsResult{}, protocol.Errorf(protocol.CodeFull, "at most %d entries per list", MaxRelations)
		}
	}
	now := s.now().UnixMilli()
	for _, u := range users {
		var err error
		if add {
			err = s.putInt(ctx, from.App, prefix+u, now)
		} else {
			err = s.records.PutRecord(ctx, from.App, prefix+u, nil)
		}
		if err != nil {
			return protocol.ContactsResult{}, s.internal("store contacts", err)
		}
	}
	switch op {
	case protocol.OpBlock:
		// A block hides the caller's presence from those it names at once
		// (an unblock lets them see it again when they next ask).
		s.dropWatchers(from.App, from.User, users)
	case protocol.OpContactRemove:
		// Those who saw it only as a contact stop seeing it now.
		s.recheckWatches(ctx, from.App, from.User, func(o string) bool { return contains(users, o) })
	}
	return s.Contacts(ctx, from)
}

// dropWatchers stops the devices of viewers from watching user.
func (s *Service) dropWatchers(app, user string, viewers []string) {
	h := &s.presence
	h.mu.Lock()
	defer h.mu.Unlock()
	k := appUser{app, user}
	for d := range h.watchers[k] {
		if !contains(viewers, d.user) {
			continue
		}
		delete(h.watchers[k], d)
		list := h.watching[d]
		for i, u := range list {
			if u == user {
				h.watching[d] = append(list[:i:i], list[i+1:]...)
				break
			}
		}
	}
	if len(h.watchers[k]) == 0 {
		delete(h.watchers, k)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
