package chat

// Group administration beyond roles (groups.go): mutes, settings, the
// announcement, invite tokens, join requests and history visibility.
//
// Every change is a "system" event in the conversation's log (see the
// events below), so every member's devices converge on it live or by sync.
// Invite tokens and pending join requests are not in the log: a token is a
// secret for those it is given to, and a request is not part of the
// conversation until it is approved (admins get a live "join_request"
// notice and can list pending ones).
//
// Events (the body of a system message; "by" is the actor):
//
//	{"event":"muted","by":A,"users":[...],"until":ms or -1}
//	{"event":"unmuted","by":A,"users":[...]}
//	{"event":"settings","by":A,"settings":{mute_all,history,join,max_members}}
//	{"event":"announcement","by":A,"text":"..."}      ("" cleared it)
//	{"event":"joined","by":U,"users":[U],"via":"invite"|"open"}
//	{"event":"joined","by":A,"users":[...],"via":"approval"}
//
// Mutes. An admin mutes members, the owner also admins; no one mutes the
// owner. A muted member's sends and typing notices are refused with code
// "muted" until the mute ends (a timed mute ends by itself; its event says
// until when). With settings.mute_all only admins and the owner write. A
// mute outlives leaving the group, so rejoining does not lift it.
//
// History visibility. With settings.history "join", a member who joined
// after the group was created reads only from the event that added them:
// sync skips what came before, history stops there, their read position
// starts there (so it is not all unread), and CanRead says no. The first
// seq each member may read is recorded whenever anyone joins, so switching
// the setting later applies to everyone who joined after creation.
//
// Size. settings.max_members lowers the group's limit below the server's
// (Options.MaxGroupSize, config chat.max_group_size); it never raises it.

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage"
)

// defaultInviteTTL is how long an invite token lives when the request
// does not say.
const defaultInviteTTL = 7 * 24 * time.Hour

// MaxInvites bounds the live invite tokens of one conversation (expired
// and used-up ones do not count: they are deleted when the next one is
// made or the list is read).
const MaxInvites = 100

// groupSettings is the stored record gs/{conv}.
type groupSettings struct {
	MuteAll      bool                   `json:"mute_all,omitempty"`
	History      string                 `json:"history,omitempty"`
	Join         string                 `json:"join,omitempty"`
	MaxMembers   int                    `json:"max_members,omitempty"`
	Announcement *protocol.Announcement `json:"announcement,omitempty"`
}

// muteRec is the stored record gm/{conv}/{user}.
type muteRec struct {
	Until int64  `json:"until"` // unix ms; -1: until unmuted
	By    string `json:"by"`
}

// inviteRec is the stored record inv/{token}.
type inviteRec struct {
	Conv    string `json:"conv"`
	By      string `json:"by"`
	Created int64  `json:"created"`
	Expires int64  `json:"expires"`
	Uses    int    `json:"uses,omitempty"`
	Used    int    `json:"used,omitempty"`
	// Svc marks a token a service made; any other is valid only while
	// its maker (By) is an admin or the owner of Conv.
	Svc bool `json:"svc,omitempty"`
}

// joinReq is the stored record jr/{conv}/{user}.
type joinReq struct {
	Text string `json:"text,omitempty"`
	TS   int64  `json:"ts"`
}

// adminEvent is the body of the system events of this file.
type adminEvent struct {
	Event    string              `json:"event"`
	By       string              `json:"by"`
	Users    []string            `json:"users,omitempty"`
	Until    int64               `json:"until,omitempty"`
	Via      string              `json:"via,omitempty"`
	Text     *string             `json:"text,omitempty"`
	Settings *protocol.GroupInfo `json:"settings,omitempty"`
}

// groupState is what sends check, cached per conversation.
type groupState struct {
	settings groupSettings
	mutes    map[string]muteRec
}

// groupCache caches groupState per conversation, like convCache (same
// invalidation: every change here drops the entry under the conversation's
// lock; Invalidate drops it too; a load that raced an invalidation is not
// inserted).
type groupCache struct {
	mu    sync.Mutex
	gen   uint64
	items map[appConv]*groupState
}

const groupCacheMax = 1 << 16

func (c *groupCache) init() { c.items = map[appConv]*groupState{} }

func (c *groupCache) drop(k appConv) {
	c.mu.Lock()
	c.gen++
	delete(c.items, k)
	c.mu.Unlock()
}

// group returns the conversation's settings and mutes.
func (s *Service) group(ctx context.Context, app, conv string) (*groupState, error) {
	k := appConv{app, conv}
	c := &s.groups
	c.mu.Lock()
	g, gen := c.items[k], c.gen
	c.mu.Unlock()
	if g != nil {
		return g, nil
	}
	g = &groupState{mutes: map[string]muteRec{}}
	if s.records != nil {
		b, err := s.records.GetRecord(ctx, app, "gs/"+conv)
		if err == nil {
			if err := json.Unmarshal(b, &g.settings); err != nil {
				s.log.Error("chat: unreadable group settings", "app", app, "conv", conv, "err", err)
			}
		} else if !errors.Is(err, storage.ErrNotFound) {
			return nil, s.internal("read group settings", err)
		}
		p := "gm/" + conv + "/"
		err = s.records.ScanRecords(ctx, app, p, "", 0, func(key string, val []byte) error {
			var m muteRec
			if json.Unmarshal(val, &m) == nil {
				g.mutes[strings.TrimPrefix(key, p)] = m
			}
			return nil
		})
		if err != nil {
			return nil, s.internal("read mutes", err)
		}
	}
	c.mu.Lock()
	if c.gen == gen {
		if len(c.items) >= groupCacheMax {
			for k := range c.items {
				delete(c.items, k)
				if len(c.items) < groupCacheMax/2 {
					break
				}
			}
		}
		c.items[k] = g
	}
	c.mu.Unlock()
	return g, nil
}

// mutedUntil returns until when user is muted in g (unix ms, -1 for until
// unmuted), or 0.
func (g *groupState) mutedUntil(user string, now int64) int64 {
	m, ok := g.mutes[user]
	if !ok || (m.Until >= 0 && m.Until <= now) {
		return 0
	}
	return m.Until
}

// checkMuted refuses a write of a muted member, or of a member of a group
// muted as a whole. r is from's role.
func (s *Service) checkMuted(ctx context.Context, from Sender, v *convView, r storage.Role) error {
	if v.conv.Kind != storage.KindGroup || from.Service || s.records == nil {
		return nil
	}
	g, err := s.group(ctx, from.App, v.conv.ID)
	if err != nil {
		return err
	}
	if g.settings.MuteAll && rank(r) < rank(storage.RoleAdmin) {
		return protocol.Errorf(protocol.CodeMuted, "%s is muted: only admins may write", v.conv.ID)
	}
	switch until := g.mutedUntil(from.User, s.now().UnixMilli()); {
	case until < 0:
		return protocol.Errorf(protocol.CodeMuted, "you are muted in %s", v.conv.ID)
	case until > 0:
		return protocol.Errorf(protocol.CodeMuted, "you are muted in %s until %s", v.conv.ID, time.UnixMilli(until).UTC().Format(time.RFC3339))
	}
	return nil
}

// maxMembers is the member limit of conv: its own setting, capped by the
// server's.
func (s *Service) maxMembers(ctx context.Context, app, conv string) int {
	g, err := s.group(ctx, app, conv)
	if err == nil && g.settings.MaxMembers > 0 && g.settings.MaxMembers < s.o.MaxGroupSize {
		return g.settings.MaxMembers
	}
	return s.o.MaxGroupSize
}

// groupInfo is the administration state of a group or channel for user
// (nil for direct conversations).
func (s *Service) groupInfo(ctx context.Context, app string, c storage.Conversation, user string) *protocol.GroupInfo {
	if c.Kind == storage.KindDirect {
		return nil
	}
	gi := &protocol.GroupInfo{History: protocol.HistoryAll, Join: protocol.JoinInvite, MaxMembers: s.o.MaxGroupSize}
	g, err := s.group(ctx, app, c.ID)
	if err != nil {
		return gi
	}
	st := g.settings
	gi.MuteAll, gi.Announcement = st.MuteAll, st.Announcement
	if st.History != "" {
		gi.History = st.History
	}
	if st.Join != "" {
		gi.Join = st.Join
	}
	gi.MaxMembers = s.maxMembers(ctx, app, c.ID)
	gi.MutedUntil = g.mutedUntil(user, s.now().UnixMilli())
	return gi
}

// lockedAdmin is lockedMember for the admin ops of this file: it also
// needs the records store and a group or channel.
func (s *Service) lockedAdmin(ctx context.Context, from Sender, conv string, groupsOnly bool) (*convState, storage.Conversation, storage.Member, func(), error) {
	if err := s.needRecords(); err != nil {
		return nil, storage.Conversation{}, storage.Member{}, nil, err
	}
	cs, c, m, unlock, err := s.lockedMember(ctx, from, conv, storage.RoleAdmin)
	if err != nil {
		return nil, c, m, nil, err
	}
	if groupsOnly && c.Kind != storage.KindGroup {
		unlock()
		return nil, c, m, nil, protocol.Errorf(protocol.CodeBadRequest, "%s is a %s: only groups have this", conv, c.Kind)
	}
	return cs, c, m, func() { s.groups.drop(appConv{from.App, conv}); unlock() }, nil
}

// mutable checks that the caller (role mine) may mute or unmute users.
func (s *Service) mutable(ctx context.Context, app, conv string, mine storage.Role, users []string) error {
	for _, u := range users {
		t, err := s.store.GetMember(ctx, app, conv, u)
		if errors.Is(err, storage.ErrNotFound) {
			return protocol.Errorf(protocol.CodeNotFound, "%s is not a member of %s", u, conv)
		}
		if err != nil {
			return s.internal("read membership", err)
		}
		if t.Role == storage.RoleOwner || rank(t.Role) >= rank(mine) {
			return protocol.Errorf(protocol.CodeForbidden, "cannot mute %s: their role is %s", u, t.Role)
		}
	}
	return nil
}

// Mute mutes members of a group for duration seconds (0: until unmuted).
func (s *Service) Mute(ctx context.Context, from Sender, conv string, users []string, duration int64) (protocol.MuteResult, error) {
	cs, c, m, unlock, err := s.lockedAdmin(ctx, from, conv, true)
	if err != nil {
		return protocol.MuteResult{}, err
	}
	defer unlock()
	if err := s.mutable(ctx, from.App, conv, m.Role, users); err != nil {
		return protocol.MuteResult{}, err
	}
	until := int64(-1)
	if duration > 0 {
		until = s.now().Add(time.Duration(duration) * time.Second).UnixMilli()
	}
	rec, _ := json.Marshal(muteRec{Until: until, By: from.User})
	for _, u := range users {
		if err := s.records.PutRecord(ctx, from.App, "gm/"+conv+"/"+u, rec); err != nil {
			return protocol.MuteResult{}, s.internal("store mute", err)
		}
	}
	s.groups.drop(appConv{from.App, conv})
	if err := s.system(ctx, cs, from.App, c, from.User, adminEvent{Event: "muted", By: from.User, Users: users, Until: until}, nil); err != nil {
		return protocol.MuteResult{}, err
	}
	return protocol.MuteResult{Conv: conv, Users: users, Until: until}, nil
}

// Unmute lifts the mutes of members of a group.
func (s *Service) Unmute(ctx context.Context, from Sender, conv string, users []string) (protocol.MuteResult, error) {
	cs, c, m, unlock, err := s.lockedAdmin(ctx, from, conv, true)
	if err != nil {
		return protocol.MuteResult{}, err
	}
	defer unlock()
	if err := s.mutable(ctx, from.App, conv, m.Role, users); err != nil {
		return protocol.MuteResult{}, err
	}
	g, err := s.group(ctx, from.App, conv)
	if err != nil {
		return protocol.MuteResult{}, err
	}
	var lifted []string
	for _, u := range users {
		if _, ok := g.mutes[u]; !ok || contains(lifted, u) {
			continue
		}
		if err := s.records.PutRecord(ctx, from.App, "gm/"+conv+"/"+u, nil); err != nil {
			return protocol.MuteResult{}, s.internal("store mute", err)
		}
		lifted = append(lifted, u)
	}
	s.groups.drop(appConv{from.App, conv})
	if len(lifted) > 0 {
		if err := s.system(ctx, cs, from.App, c, from.User, adminEvent{Event: "unmuted", By: from.User, Users: lifted}, nil); err != nil {
			return protocol.MuteResult{}, err
		}
	}
	return protocol.MuteResult{Conv: conv, Users: append([]string{}, lifted...)}, nil
}

// updateSettings changes the stored settings of conv with fn.
func (s *Service) updateSettings(ctx context.Context, app, conv string, fn func(*groupSettings) error) (groupSettings, error) {
	var out groupSettings
	err := s.records.UpdateRecord(ctx, app, "gs/"+conv, func(old []byte, found bool) ([]byte, error) {
		out = groupSettings{}
		if found {
			_ = json.Unmarshal(old, &out)
		}
		if err := fn(&out); err != nil {
			return nil, err
		}
		return json.Marshal(out)
	})
	s.groups.drop(appConv{app, conv})
	return out, err
}

// UpdateSettings changes a group's or channel's settings (admins).
func (s *Service) UpdateSettings(ctx context.Context, from Sender, conv string, in protocol.GroupSettings) (protocol.InfoResult, error) {
	cs, c, _, unlock, err := s.lockedAdmin(ctx, from, conv, false)
	if err != nil {
		return protocol.InfoResult{}, err
	}
	defer unlock()
	if in.MaxMembers != nil {
		switch n := *in.MaxMembers; {
		case n > s.o.MaxGroupSize:
			return protocol.InfoResult{}, protocol.Errorf(protocol.CodeBadRequest, "settings.max_members: the server allows at most %d", s.o.MaxGroupSize)
		case n > 0 && n < c.Members:
			return protocol.InfoResult{}, protocol.Errorf(protocol.CodeBadRequest, "settings.max_members: %s has %d members already", conv, c.Members)
		}
	}
	_, err = s.updateSettings(ctx, from.App, conv, func(g *groupSettings) error {
		if in.MuteAll != nil {
			g.MuteAll = *in.MuteAll
		}
		if in.History != nil {
			g.History = *in.History
		}
		if in.Join != nil {
			g.Join = *in.Join
		}
		if in.MaxMembers != nil {
			g.MaxMembers = *in.MaxMembers
		}
		return nil
	})
	if err != nil {
		return protocol.InfoResult{}, s.internal("store settings", err)
	}
	gi := s.groupInfo(ctx, from.App, c, "")
	gi.Announcement, gi.MutedUntil = nil, 0
	if err := s.system(ctx, cs, from.App, c, from.User, adminEvent{Event: "settings", By: from.User, Settings: gi}, nil); err != nil {
		return protocol.InfoResult{}, err
	}
	return s.info(ctx, from, c, "", 0)
}

// Announce sets (or, with "", clears) the announcement of a group or
// channel (admins).
func (s *Service) Announce(ctx context.Context, from Sender, conv, text string) (protocol.InfoResult, error) {
	cs, c, _, unlock, err := s.lockedAdmin(ctx, from, conv, false)
	if err != nil {
		return protocol.InfoResult{}, err
	}
	defer unlock()
	_, err = s.updateSettings(ctx, from.App, conv, func(g *groupSettings) error {
		g.Announcement = nil
		if text != "" {
			g.Announcement = &protocol.Announcement{Text: text, By: from.User, TS: s.now().UnixMilli()}
		}
		return nil
	})
	if err != nil {
		return protocol.InfoResult{}, s.internal("store announcement", err)
	}
	if err := s.system(ctx, cs, from.App, c, from.User, adminEvent{Event: "announcement", By: from.User, Text: &text}, nil); err != nil {
		return protocol.InfoResult{}, err
	}
	return s.info(ctx, from, c, "", 0)
}

// History visibility.

// nextSeqLocked is the seq the next append to conv will take. The caller
// holds cs.mu.
func (s *Service) nextSeqLocked(ctx context.Context, cs *convState, app, conv string) (uint64, error) {
	if cs.loaded && cs.failedGen.Load() >= cs.gen {
		cs.loaded = false
	}
	if !cs.loaded {
		head, err := s.store.LastSeq(ctx, app, conv)
		if err != nil {
			return 0, s.internal("read head", err)
		}
		cs.head, cs.loaded = head, true
		cs.gen++
	}
	return cs.head + 1, nil
}

// markJoined records, for users who were just added to conv, the first seq
// they may read under history "join": that of the event about to announce
// them. Under that setting it also starts their read position there. The
// caller holds cs.mu and appends the event next.
func (s *Service) markJoined(ctx context.Context, cs *convState, app, conv string, users []string) error {
	if s.records == nil || len(users) == 0 {
		return nil
	}
	from, err := s.nextSeqLocked(ctx, cs, app, conv)
	if err != nil {
		return err
	}
	g, err := s.group(ctx, app, conv)
	if err != nil {
		return err
	}
	for _, u := range users {
		if err := s.putInt(ctx, app, "gf/"+conv+"/"+u, int64(from)); err != nil {
			return s.internal("store join position", err)
		}
		if g.settings.History == protocol.HistoryJoin && from > 1 {
			if _, err := s.store.MarkRead(ctx, app, conv, u, from-1); err != nil && !errors.Is(err, storage.ErrNotFound) {
				return s.internal("mark read", err)
			}
		}
	}
	return nil
}

// visibleFrom is the first seq of conv that user may read (0: all).
func (s *Service) visibleFrom(ctx context.Context, app, conv, user string) (uint64, error) {
	if s.records == nil || protocol.IsDirectConv(conv) {
		return 0, nil
	}
	g, err := s.group(ctx, app, conv)
	if err != nil {
		return 0, err
	}
	if g.settings.History != protocol.HistoryJoin {
		return 0, nil
	}
	from, ok, err := s.getInt(ctx, app, "gf/"+conv+"/"+user)
	if err != nil {
		return 0, s.internal("read join position", err)
	}
	if !ok || from < 0 {
		return 0, nil
	}
	return uint64(from), nil
}

// CanRead reports whether user may read message seq of conv now: they are
// a member, and the group's history visibility lets them see it. Features
// that show messages outside sync and history (search, attachments) ask
// this.
func (s *Service) CanRead(ctx context.Context, app, user, conv string, seq uint64) (bool, error) {
	_, _, err := s.viewMember(ctx, Sender{App: app, User: user}, conv)
	if err != nil {
		var pe *protocol.Error
		if errors.As(err, &pe) && pe.Code == protocol.CodeNotMember {
			return false, nil
		}
		return false, err
	}
	from, err := s.visibleFrom(ctx, app, conv, user)
	if err != nil {
		return false, err
	}
	return seq >= from, nil
}

// Invites.

var tokenEnc = base32.StdEncoding.WithPadding(base32.NoPadding)

func newToken() string {
	var b [20]byte
	_, _ = rand.Read(b[:])
	return strings.ToLower(tokenEnc.EncodeToString(b[:]))
}

func (r inviteRec) wire(token string) protocol.Invite {
	return protocol.Invite{Token: token, Conv: r.Conv, By: r.By, Created: r.Created, Expires: r.Expires, Uses: r.Uses, Used: r.Used}
}

// CreateInvite makes an invite token for conv (admins) that lets anyone
// who has it join for duration seconds (0: 7 days), at most uses times (0:
// unlimited), as long as its maker stays an admin.
func (s *Service) CreateInvite(ctx context.Context, from Sender, conv string, duration int64, uses int) (protocol.Invite, error) {
	_, _, _, unlock, err := s.lockedAdmin(ctx, from, conv, false)
	if err != nil {
		return protocol.Invite{}, err
	}
	defer unlock()
	live, err := s.liveInvites(ctx, from.App, conv)
	if err != nil {
		return protocol.Invite{}, err
	}
	if len(live) >= MaxInvites {
		return protocol.Invite{}, protocol.Errorf(protocol.CodeFull, "%s has %d live invites, the most it may have: revoke one first", conv, len(live))
	}
	ttl := defaultInviteTTL
	if duration > 0 {
		ttl = time.Duration(duration) * time.Second
	}
	now := s.now()
	token := newToken()
	rec := inviteRec{Conv: conv, By: from.User, Created: now.UnixMilli(), Expires: now.Add(ttl).UnixMilli(), Uses: uses, Svc: from.Service}
	b, _ := json.Marshal(rec)
	if err := s.records.PutRecord(ctx, from.App, "inv/"+token, b); err != nil {
		return protocol.Invite{}, s.internal("store invite", err)
	}
	if err := s.records.PutRecord(ctx, from.App, "gi/"+conv+"/"+token, []byte{}); err != nil {
		return protocol.Invite{}, s.internal("store invite", err)
	}
	return rec.wire(token), nil
}

func (s *Service) invite(ctx context.Context, app, token string) (inviteRec, error) {
	var rec inviteRec
	b, err := s.records.GetRecord(ctx, app, "inv/"+token)
	if errors.Is(err, storage.ErrNotFound) {
		return rec, protocol.Errorf(protocol.CodeNotFound, "no such invite: it was revoked or never existed")
	}
	if err != nil {
		return rec, s.internal("read invite", err)
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		return rec, protocol.Errorf(protocol.CodeNotFound, "no such invite")
	}
	if !rec.Svc {
		// A token is only as good as its maker's standing: one made by
		// an admin who was demoted or removed since is void.
		m, err := s.store.GetMember(ctx, app, rec.Conv, rec.By)
		if err != nil && !errors.Is(err, storage.ErrNotFound) {
			return rec, s.internal("read membership", err)
		}
		if err != nil || rank(m.Role) < rank(storage.RoleAdmin) {
			return rec, protocol.Errorf(protocol.CodeNotFound, "no such invite: the admin who made it is no longer one")
		}
	}
	return rec, nil
}

// Invites lists the live invite tokens of conv (admins); expired and used
// up ones are deleted on the way.
func (s *Service) Invites(ctx context.Context, from Sender, conv string) (protocol.InvitesResult, error) {
	_, _, _, unlock, err := s.lockedAdmin(ctx, from, conv, false)
	if err != nil {
		return protocol.InvitesResult{}, err
	}
	defer unlock()
	live, err := s.liveInvites(ctx, from.App, conv)
	return protocol.InvitesResult{Conv: conv, Invites: live}, err
}

// liveInvites returns the live invite tokens of conv and deletes the
// expired and used-up ones. The caller holds the conversation's lock.
func (s *Service) liveInvites(ctx context.Context, app, conv string) ([]protocol.Invite, error) {
	p := "gi/" + conv + "/"
	var tokens []string
	if err := s.records.ScanRecords(ctx, app, p, "", 0, func(key string, _ []byte) error {
		tokens = append(tokens, strings.TrimPrefix(key, p))
		return nil
	}); err != nil {
		return nil, s.internal("list invites", err)
	}
	live := []protocol.Invite{}
	now := s.now().UnixMilli()
	for _, t := range tokens {
		rec, err := s.invite(ctx, app, t)
		if err == nil && now < rec.Expires && (rec.Uses == 0 || rec.Used < rec.Uses) {
			live = append(live, rec.wire(t))
			continue
		}
		var pe *protocol.Error
		if err != nil && !(errors.As(err, &pe) && pe.Code == protocol.CodeNotFound) {
			return nil, err
		}
		_ = s.records.PutRecord(ctx, app, "inv/"+t, nil)
		_ = s.records.PutRecord(ctx, app, p+t, nil)
	}
	return live, nil
}

// RevokeInvite deletes an invite token of conv (admins).
func (s *Service) RevokeInvite(ctx context.Context, from Sender, conv, token string) (protocol.InvitesResult, error) {
	_, _, _, unlock, err := s.lockedAdmin(ctx, from, conv, false)
	if err != nil {
		return protocol.InvitesResult{}, err
	}
	rec, err := s.invite(ctx, from.App, token)
	if err == nil && rec.Conv != conv {
		err = protocol.Errorf(protocol.CodeNotFound, "no such invite for %s", conv)
	}
	if err == nil {
		if err = s.records.PutRecord(ctx, from.App, "inv/"+token, nil); err == nil {
			err = s.records.PutRecord(ctx, from.App, "gi/"+conv+"/"+token, nil)
		}
		if err != nil {
			err = s.internal("revoke invite", err)
		}
	}
	unlock()
	if err != nil {
		return protocol.InvitesResult{}, err
	}
	return s.Invites(ctx, from, conv)
}

// Joining.

// Join adds the caller to a group or channel: with an invite token; or,
// without one, at once if the group is open, or as a join request for the
// admins if it takes requests.
func (s *Service) Join(ctx context.Context, from Sender, conv, token, text string) (protocol.JoinResult, error) {
	if err := s.needRecords(); err != nil {
		return protocol.JoinResult{}, err
	}
	if from.Service {
		return protocol.JoinResult{}, protocol.Errorf(protocol.CodeBadRequest, "services are not members")
	}
	if token != "" {
		rec, err := s.invite(ctx, from.App, token)
		if err != nil {
			return protocol.JoinResult{}, err
		}
		if conv != "" && conv != rec.Conv {
			return protocol.JoinResult{}, protocol.Errorf(protocol.CodeNotFound, "no such invite for %s", conv)
		}
		conv = rec.Conv
	}
	cs := s.lockConv(from.App, conv)
	defer func() { s.Invalidate(from.App, conv); cs.mu.Unlock() }()
	c, err := s.store.GetConversation(ctx, from.App, conv)
	if errors.Is(err, storage.ErrNotFound) {
		return protocol.JoinResult{}, errNotMember(conv)
	}
	if err != nil {
		return protocol.JoinResult{}, s.internal("read conversation", err)
	}
	if c.Kind == storage.KindDirect {
		// Anyone can compute a direct conversation's ID: to an outsider,
		// one that exists looks like one that does not.
		if _, err := s.store.GetMember(ctx, from.App, conv, from.User); err != nil {
			return protocol.JoinResult{}, errNotMember(conv)
		}
		return protocol.JoinResult{}, protocol.Errorf(protocol.CodeForbidden, "direct conversations cannot be joined")
	}
	joined := func() (protocol.JoinResult, error) {
		m, err := s.store.GetMember(ctx, from.App, conv, from.User)
		if err != nil {
			return protocol.JoinResult{}, s.internal("read membership", err)
		}
		c, err := s.store.GetConversation(ctx, from.App, conv)
		if err != nil {
			return protocol.JoinResult{}, s.internal("read conversation", err)
		}
		ci, err := s.convInfo(ctx, from.App, c, m)
		return protocol.JoinResult{State: "joined", Conv: &ci}, err
	}
	if _, err := s.store.GetMember(ctx, from.App, conv, from.User); err == nil {
		return joined() // already a member: nothing to do, no use spent
	} else if !errors.Is(err, storage.ErrNotFound) {
		return protocol.JoinResult{}, s.internal("read membership", err)
	}
	now := s.now().UnixMilli()
	via := "invite"
	if token != "" {
		// Checked again under the lock: joins of a conversation are one at
		// a time, so the uses cannot be overspent by racing joiners.
		rec, err := s.invite(ctx, from.App, token)
		if err != nil {
			return protocol.JoinResult{}, err
		}
		if now >= rec.Expires {
			return protocol.JoinResult{}, protocol.Errorf(protocol.CodeExpired, "the invite expired at %s", time.UnixMilli(rec.Expires).UTC().Format(time.RFC3339))
		}
		if rec.Uses > 0 && rec.Used >= rec.Uses {
			return protocol.JoinResult{}, protocol.Errorf(protocol.CodeExpired, "the invite has been used %d times, its limit", rec.Used)
		}
	} else {
		g, err := s.group(ctx, from.App, conv)
		if err != nil {
			return protocol.JoinResult{}, err
		}
		switch g.settings.Join {
		case protocol.JoinOpen:
			via = "open"
		case protocol.JoinApproval:
			return s.requestJoin(ctx, from, conv, text, now)
		default:
			return protocol.JoinResult{}, protocol.Errorf(protocol.CodeForbidden, "joining %s needs an invite", conv)
		}
	}
	added, err := s.addJoined(ctx, cs, from.App, conv, []string{from.User}, now)
	if err != nil {
		return protocol.JoinResult{}, err
	}
	if token != "" {
		err := s.records.UpdateRecord(ctx, from.App, "inv/"+token, func(old []byte, found bool) ([]byte, error) {
			var rec inviteRec
			if !found || json.Unmarshal(old, &rec) != nil {
				return nil, nil // revoked meanwhile: nothing to count
			}
			rec.Used++
			return json.Marshal(rec)
		})
		if err != nil {
			s.log.Warn("chat: could not count an invite use", "app", from.App, "conv", conv, "err", err)
		}
	}
	if len(added) > 0 {
		c.Members++
		if err := s.system(ctx, cs, from.App, c, from.User, adminEvent{Event: "joined", By: from.User, Users: added, Via: via}, nil); err != nil {
			return protocol.JoinResult{}, err
		}
	}
	return joined()
}

// addJoined adds users as members within conv's limit and records their
// join position. The caller holds cs.mu and appends the event next.
func (s *Service) addJoined(ctx context.Context, cs *convState, app, conv string, users []string, now int64) ([]string, error) {
	ms := make([]storage.Member, len(users))
	for i, u := range users {
		ms[i] = storage.Member{User: u, Role: storage.RoleMember, Joined: now}
	}
	max := s.maxMembers(ctx, app, conv)
	added, err := s.store.AddMembers(ctx, app, conv, ms, max)
	if errors.Is(err, storage.ErrLimit) {
		return nil, protocol.Errorf(protocol.CodeFull, "%s would exceed %d members", conv, max)
	}
	if err != nil {
		return nil, s.internal("add members", err)
	}
	s.Invalidate(app, conv)
	for _, u := range added {
		_ = s.records.PutRecord(ctx, app, "jr/"+conv+"/"+u, nil)
	}
	return added, s.markJoined(ctx, cs, app, conv, added)
}

// requestJoin stores a join request and tells the admins who are online.
func (s *Service) requestJoin(ctx context.Context, from Sender, conv, text string, now int64) (protocol.JoinResult, error) {
	// Asking again changes nothing: the admins were told once (the caller
	// holds the conversation's lock, so two requests cannot both be first).
	if pending, err := s.hasRecord(ctx, from.App, "jr/"+conv+"/"+from.User); err != nil {
		return protocol.JoinResult{}, s.internal("read join request", err)
	} else if pending {
		return protocol.JoinResult{State: "pending"}, nil
	}
	b, _ := json.Marshal(joinReq{Text: text, TS: now})
	if err := s.records.PutRecord(ctx, from.App, "jr/"+conv+"/"+from.User, b); err != nil {
		return protocol.JoinResult{}, s.internal("store join request", err)
	}
	if v, err := s.view(ctx, from.App, conv); err == nil {
		var admins []string
		for _, u := range v.users {
			if rank(v.role(u)) >= rank(storage.RoleAdmin) {
				admins = append(admins, u)
			}
		}
		payload, _ := json.Marshal(protocol.JoinRequest{Kind: protocol.KindJoinRequest, Conv: conv, User: from.User, Text: text, TS: now})
		s.out.Deliver(from.App, admins, payload)
	}
	return protocol.JoinResult{State: "pending"}, nil
}

// JoinRequests lists the pending join requests of conv (admins).
func (s *Service) JoinRequests(ctx context.Context, from Sender, conv string) (protocol.RequestsResult, error) {
	_, _, _, unlock, err := s.lockedAdmin(ctx, from, conv, false)
	if err != nil {
		return protocol.RequestsResult{}, err
	}
	defer unlock()
	return s.joinRequests(ctx, from.App, conv)
}

func (s *Service) joinRequests(ctx context.Context, app, conv string) (protocol.RequestsResult, error) {
	res := protocol.RequestsResult{Conv: conv, Requests: []protocol.JoinRequest{}}
	p := "jr/" + conv + "/"
	err := s.records.ScanRecords(ctx, app, p, "", 1000, func(key string, val []byte) error {
		var r joinReq
		_ = json.Unmarshal(val, &r)
		res.Requests = append(res.Requests, protocol.JoinRequest{Conv: conv, User: strings.TrimPrefix(key, p), Text: r.Text, TS: r.TS})
		return nil
	})
	if err != nil {
		return res, s.internal("list join requests", err)
	}
	return res, nil
}

// Approve adds the users whose join requests are pending (admins).
func (s *Service) Approve(ctx context.Context, from Sender, conv string, users []string) (protocol.InfoResult, error) {
	cs, c, _, unlock, err := s.lockedAdmin(ctx, from, conv, false)
	if err != nil {
		return protocol.InfoResult{}, err
	}
	defer unlock()
	var ok []string
	for _, u := range users {
		has, err := s.hasRecord(ctx, from.App, "jr/"+conv+"/"+u)
		if err != nil {
			return protocol.InfoResult{}, s.internal("read join request", err)
		}
		if has && !contains(ok, u) {
			ok = append(ok, u)
		}
	}
	if len(ok) == 0 {
		return protocol.InfoResult{}, protocol.Errorf(protocol.CodeNotFound, "no pending join request from %s", strings.Join(users, ", "))
	}
	added, err := s.addJoined(ctx, cs, from.App, conv, ok, s.now().UnixMilli())
	if err != nil {
		return protocol.InfoResult{}, err
	}
	for _, u := range ok { // also those who became members meanwhile
		_ = s.records.PutRecord(ctx, from.App, "jr/"+conv+"/"+u, nil)
	}
	c.Members += len(added)
	if len(added) > 0 {
		if err := s.system(ctx, cs, from.App, c, from.User, adminEvent{Event: "joined", By: from.User, Users: added, Via: "approval"}, nil); err != nil {
			return protocol.InfoResult{}, err
		}
	}
	return s.info(ctx, from, c, "", 0)
}

// Reject turns down pending join requests (admins); the requesters are
// told on their downlink.
func (s *Service) Reject(ctx context.Context, from Sender, conv string, users []string) (protocol.RequestsResult, error) {
	_, _, _, unlock, err := s.lockedAdmin(ctx, from, conv, false)
	if err != nil {
		return protocol.RequestsResult{}, err
	}
	defer unlock()
	now := s.now().UnixMilli()
	for _, u := range users {
		has, err := s.hasRecord(ctx, from.App, "jr/"+conv+"/"+u)
		if err != nil {
			return protocol.RequestsResult{}, s.internal("read join request", err)
		}
		if !has {
			continue
		}
		if err := s.records.PutRecord(ctx, from.App, "jr/"+conv+"/"+u, nil); err != nil {
			return protocol.RequestsResult{}, s.internal("delete join request", err)
		}
		payload, _ := json.Marshal(protocol.JoinRequest{Kind: protocol.KindJoinRequest, Conv: conv, User: u, TS: now, State: "rejected"})
		s.out.Deliver(from.App, []string{u}, payload)
	}
	return s.joinRequests(ctx, from.App, conv)
}
