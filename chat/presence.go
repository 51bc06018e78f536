package chat

// Presence: whether a user is online (any device connected), else since
// when they are offline (last seen), shown only to users allowed to see it.
//
// The transport reports connections with Connected and Disconnected (the
// MQTT hook does, for every session that ends: a DISCONNECT, a dropped TCP
// connection, a keep-alive timeout — the same moments mochi publishes a
// will). A user is online while at least one connection of theirs is open.
// The last-seen time is written to the records store on connect and on
// disconnect, so after a crash it is at worst the time of the last connect.
//
// Who sees it. A user's presence is visible to a viewer who is not blocked
// by the user and, depending on the user's privacy setting (op "privacy"):
//
//	shared    (default) the viewer is a contact of the user (the user added
//	          them) or shares a direct conversation or a group with them
//	          (channels do not count: they can be huge and their members
//	          need not know each other)
//	contacts  the viewer is a contact of the user
//	nobody    no one; viewers who would otherwise see it get "hidden"
//
// Anyone else gets "unknown", which is also the answer for a user who does
// not exist, so the op reveals nothing about who exists or who blocked whom.
//
// Live updates are on demand, which bounds their cost: a device names the
// users it wants to watch (op "presence", at most MaxPresenceUsers; each
// request replaces the list) and gets their current state in the reply,
// then an event (kind "presence") on its device topic each time one of the
// visible ones comes online or goes offline, until it disconnects or sends
// a new list. Visibility is checked when the list is set; privacy and
// blocks again at each event (a user who hides or blocks stops the events
// at once); and the watches between users who stop sharing a group (a
// removal, a leave) or a contact (removed) are checked again at that
// moment (recheckWatches). An event costs one publish per watching device.
//
// The state is per process: behind a load balancer each node knows only
// its own connections (a shared presence bus comes with scale-out).

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage"
)

type appUser struct{ app, user string }

// defaultBackgroundTimeout bounds the store work done for events that no
// request waits for (last seen, presence fan-out).
const defaultBackgroundTimeout = 5 * time.Second

type devKey struct{ app, user, device string }

// presenceHub is the live state: open connections per user, and who
// watches whom.
type presenceHub struct {
	mu       sync.Mutex
	conns    map[appUser]map[any]string      // user -> connection -> device
	watchers map[appUser]map[devKey]struct{} // watched user -> watching devices
	watching map[devKey][]string             // device -> the users it watches
}

func (h *presenceHub) init() {
	h.conns = map[appUser]map[any]string{}
	h.watchers = map[appUser]map[devKey]struct{}{}
	h.watching = map[devKey][]string{}
}

// online reports whether user has an open connection.
func (h *presenceHub) online(app, user string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.conns[appUser{app, user}]) > 0
}

// Connected records that conn (any comparable value naming one connection,
// such as the transport's client) of a user's device is open. When it is
// the user's first, the user comes online for the devices watching them.
func (s *Service) Connected(app, user, device string, conn any) {
	k := appUser{app, user}
	h := &s.presence
	h.mu.Lock()
	cs := h.conns[k]
	if cs == nil {
		cs = map[any]string{}
		h.conns[k] = cs
	}
	first := len(cs) == 0
	cs[conn] = device
	h.mu.Unlock()
	if s.records != nil {
		// Off the connect path: it only matters after a crash.
		go s.touchLastSeen(app, user, s.now().UnixMilli())
	}
	if first {
		if s.o.OnPresence != nil {
			s.o.OnPresence(app, user, device, true, s.now().UnixMilli())
		}
		s.presenceChanged(app, user, protocol.PresenceInfo{User: user, State: protocol.PresenceOnline})
	}
}

// Disconnected records that conn is closed (a no-op for a connection
// Connected never saw). When it was the user's last, the user goes offline
// for the devices watching them. The device's presence watch list is
// dropped when it has no connection left.
func (s *Service) Disconnected(app, user, device string, conn any) {
	k := appUser{app, user}
	h := &s.presence
	h.mu.Lock()
	cs := h.conns[k]
	if _, ok := cs[conn]; !ok {
		h.mu.Unlock()
		return
	}
	delete(cs, conn)
	last := len(cs) == 0
	if last {
		delete(h.conns, k)
	}
	devLeft := false
	for _, d := range cs {
		if d == device {
			devLeft = true
			break
		}
	}
	if !devLeft {
		h.unwatchLocked(devKey{app, user, device})
	}
	h.mu.Unlock()
	if !devLeft {
		s.callDeviceGone(app, user, device) // calls.go
	}
	now := s.now().UnixMilli()
	if s.records != nil {
		s.touchLastSeen(app, user, now)
	}
	if last {
		if s.o.OnPresence != nil {
			s.o.OnPresence(app, user, device, false, now)
		}
		s.presenceChanged(app, user, protocol.PresenceInfo{User: user, State: protocol.PresenceOffline, LastSeen: now})
	}
}

// touchLastSeen stores user's last-seen time. It never moves it back (a
// connect's write, made in the background, may land after a disconnect's).
func (s *Service) touchLastSeen(app, user string, ms int64) {
	ctx, cancel := context.WithTimeout(context.Background(), defaultBackgroundTimeout)
	defer cancel()
	err := s.records.UpdateRecord(ctx, app, "ls/"+user, func(old []byte, found bool) ([]byte, error) {
		if found {
			if v, err := strconv.ParseInt(string(old), 10, 64); err == nil && v >= ms {
				return old, nil
			}
		}
		return strconv.AppendInt(nil, ms, 10), nil
	})
	if err != nil {
		s.log.Warn("presence: could not store last seen", "app", app, "user", user, "err", err)
	}
}

// unwatchLocked drops a device's watch list. The caller holds h.mu.
func (h *presenceHub) unwatchLocked(d devKey) {
	for _, u := range h.watching[d] {
		k := appUser{d.app, u}
		delete(h.watchers[k], d)
		if len(h.watchers[k]) == 0 {
			delete(h.watchers, k)
		}
	}
	delete(h.watching, d)
}

// presenceChanged sends user's new state to the devices watching them that
// may still see it.
func (s *Service) presenceChanged(app, user string, state protocol.PresenceInfo) {
	h := &s.presence
	h.mu.Lock()
	ws := make([]devKey, 0, len(h.watchers[appUser{app, user}]))
	for d := range h.watchers[appUser{app, user}] {
		ws = append(ws, d)
	}
	h.mu.Unlock()
	if len(ws) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), defaultBackgroundTimeout)
	defer cancel()
	priv := s.privacyOf(ctx, app, user)
	state.Kind = protocol.KindPresence
	if priv == protocol.VisibleNobody {
		state = protocol.PresenceInfo{Kind: protocol.KindPresence, User: user, State: protocol.PresenceHidden}
	}
	payload, _ := json.Marshal(state)
	hidden, _ := json.Marshal(protocol.PresenceInfo{Kind: protocol.KindPresence, User: user, State: protocol.PresenceHidden})
	for _, d := range ws {
		if blocked, err := s.blocks(ctx, app, user, d.user); err != nil || blocked {
			continue
		}
		p := payload
		if priv == protocol.VisibleContacts {
			if ok, err := s.hasRecord(ctx, app, "ct/"+user+"/"+d.user); err != nil || !ok {
				p = hidden
			}
		}
		s.deliverDevice(app, d.user, d.device, p)
	}
}

func (s *Service) deliverDevice(app, user, device string, payload []byte) {
	if dd, ok := s.out.(DeviceDeliverer); ok {
		dd.DeliverDevice(app, user, device, payload)
		return
	}
	s.out.Deliver(app, []string{user}, payload)
}

// rawPresence is user's state, ignoring who asks.
func (s *Service) rawPresence(ctx context.Context, app, user string) protocol.PresenceInfo {
	if s.presence.online(app, user) {
		return protocol.PresenceInfo{User: user, State: protocol.PresenceOnline}
	}
	p := protocol.PresenceInfo{User: user, State: protocol.PresenceOffline}
	if s.records != nil {
		if ls, ok, err := s.getInt(ctx, app, "ls/"+user); err == nil && ok {
			p.LastSeen = ls
		}
	}
	return p
}

// WatchPresence answers the current presence of users as the caller may
// see it and, for a device, makes those it may see its watch list
// (replacing the previous one; an empty list stops watching).
func (s *Service) WatchPresence(ctx context.Context, from Sender, users []string) (protocol.PresenceResult, error) {
	if err := s.needRecords(); err != nil {
		return protocol.PresenceResult{}, err
	}
	if len(users) > protocol.MaxPresenceUsers {
		return protocol.PresenceResult{}, protocol.Errorf(protocol.CodeTooLarge, "users: at most %d", protocol.MaxPresenceUsers)
	}
	res := protocol.PresenceResult{Users: make([]protocol.PresenceInfo, 0, len(users))}
	var mine map[string]bool // the caller's direct and group conversations, loaded once
	var visible []string
	for _, u := range users {
		state, err := s.presenceFor(ctx, from, u, &mine)
		if err != nil {
			return protocol.PresenceResult{}, err
		}
		res.Users = append(res.Users, state)
		if state.State != protocol.PresenceUnknown && !slices.Contains(visible, u) {
			visible = append(visible, u)
		}
	}
	if from.Device != "" {
		d := devKey{from.App, from.User, from.Device}
		h := &s.presence
		h.mu.Lock()
		h.unwatchLocked(d)
		connected := false
		for _, dev := range h.conns[appUser{from.App, from.User}] {
			connected = connected || dev == from.Device
		}
		// Only a connected device can be told of changes, and only its
		// disconnect ends the watch.
		if connected && len(visible) > 0 {
			h.watching[d] = visible
			for _, u := range visible {
				k := appUser{from.App, u}
				if h.watchers[k] == nil {
					h.watchers[k] = map[devKey]struct{}{}
				}
				h.watchers[k][d] = struct{}{}
			}
		}
		h.mu.Unlock()
	}
	return res, nil
}

// presenceFor is target's presence as from may see it. mine caches from's
// conversations across the targets of one request.
func (s *Service) presenceFor(ctx context.Context, from Sender, target string, mine *map[string]bool) (protocol.PresenceInfo, error) {
	unknown := protocol.PresenceInfo{User: target, State: protocol.PresenceUnknown}
	if target != from.User && !from.Service {
		vis, err := s.mayWatch(ctx, from.App, from.User, target, mine)
		if err != nil {
			return unknown, err
		}
		if !vis {
			return unknown, nil
		}
		if s.privacyOf(ctx, from.App, target) == protocol.VisibleNobody {
			return protocol.PresenceInfo{User: target, State: protocol.PresenceHidden}, nil
		}
	}
	return s.rawPresence(ctx, from.App, target), nil
}

// mayWatch reports whether viewer may see target's presence under target's
// privacy setting ("nobody" counts as "shared" here: the viewer then sees
// "hidden" rather than "unknown").
func (s *Service) mayWatch(ctx context.Context, app, viewer, target string, mine *map[string]bool) (bool, error) {
	if blocked, err := s.blocks(ctx, app, target, viewer); err != nil || blocked {
		return false, err
	}
	contact, err := s.hasRecord(ctx, app, "ct/"+target+"/"+viewer)
	if err != nil {
		return false, s.internal("read contacts", err)
	}
	if contact {
		return true, nil
	}
	if s.privacyOf(ctx, app, target) == protocol.VisibleContacts {
		return false, nil
	}
	// A direct conversation between them?
	if _, err := s.store.GetMember(ctx, app, protocol.DirectConvID(viewer, target), target); err == nil {
		return true, nil
	} else if !errors.Is(err, storage.ErrNotFound) {
		return false, s.internal("read membership", err)
	}
	// A group they are both in?
	if *mine == nil {
		ids, err := s.store.UserConversations(ctx, app, viewer, "", maxUserConvs)
		if err != nil {
			return false, s.internal("list conversations", err)
		}
		*mine = make(map[string]bool, len(ids))
		for _, id := range ids {
			if !protocol.IsDirectConv(id) {
				(*mine)[id] = true
			}
		}
	}
	if len(*mine) == 0 {
		return false, nil
	}
	theirs, err := s.store.UserConversations(ctx, app, target, "", maxUserConvs)
	if err != nil {
		return false, s.internal("list conversations", err)
	}
	for _, id := range theirs {
		if !(*mine)[id] {
			continue
		}
		v, err := s.view(ctx, app, id)
		if errors.Is(err, storage.ErrNotFound) {
			continue
		}
		if err != nil {
			return false, s.internal("read conversation", err)
		}
		if v.conv.Kind == storage.KindGroup {
			return true, nil
		}
	}
	return false, nil
}

// recheckWatches runs after a change that can only take visibility away
// between user and others (user left or was removed from a group they
// shared, or removed them from their contacts): each watch between them,
// either way, that the viewer may no longer have ends now rather than when
// the watching device next sets its list. Only pairs with a watch cost a
// check, so the work is bounded by the watch lists, not the group.
func (s *Service) recheckWatches(ctx context.Context, app, user string, other func(string) bool) {
	if s.records == nil {
		return
	}
	type watch struct {
		d      devKey
		target string
	}
	var ws []watch
	h := &s.presence
	h.mu.Lock()
	seen := map[devKey]bool{}
	for _, dev := range h.conns[appUser{app, user}] { // user's devices watching others
		d := devKey{app, user, dev}
		if seen[d] {
			continue
		}
		seen[d] = true
		for _, t := range h.watching[d] {
			if other(t) {
				ws = append(ws, watch{d, t})
			}
		}
	}
	for d := range h.watchers[appUser{app, user}] { // others' devices watching user
		if other(d.user) {
			ws = append(ws, watch{d, user})
		}
	}
	h.mu.Unlock()
	mine := map[string]*map[string]bool{} // per viewer, for mayWatch
	for _, w := range ws {
		if mine[w.d.user] == nil {
			mine[w.d.user] = new(map[string]bool)
		}
		if ok, err := s.mayWatch(ctx, app, w.d.user, w.target, mine[w.d.user]); err == nil && ok {
			continue
		}
		s.dropWatch(w.d, w.target) // not allowed, or not known to be: fail closed
	}
}

// recheckAfterLeaving rechecks the watches between users who just left
// conv (or were removed) and its remaining members.
func (s *Service) recheckAfterLeaving(ctx context.Context, app, conv string, gone []string) {
	v, err := s.view(ctx, app, conv)
	if err != nil {
		return
	}
	for _, u := range gone {
		s.recheckWatches(ctx, app, u, func(o string) bool { return v.role(o) != "" })
	}
}

// dropWatch ends device d's watch of target.
func (s *Service) dropWatch(d devKey, target string) {
	h := &s.presence
	h.mu.Lock()
	defer h.mu.Unlock()
	k := appUser{d.app, target}
	delete(h.watchers[k], d)
	if len(h.watchers[k]) == 0 {
		delete(h.watchers, k)
	}
	list := h.watching[d]
	for i, u := range list {
		if u == target {
			h.watching[d] = append(list[:i:i], list[i+1:]...)
			break
		}
	}
	if len(h.watching[d]) == 0 {
		delete(h.watching, d)
	}
}

// privacyCache holds users' presence privacy settings (per process; every
// change goes through Privacy, which updates it).
type privacyCache struct {
	mu sync.Mutex
	m  map[appUser]string
}

func (c *privacyCache) init() { c.m = map[appUser]string{} }

const privacyCacheMax = 1 << 16

// privacyOf returns user's presence privacy setting (VisibleShared when
// unset or unreadable).
func (s *Service) privacyOf(ctx context.Context, app, user string) string {
	c := &s.privacy
	k := appUser{app, user}
	c.mu.Lock()
	v, ok := c.m[k]
	c.mu.Unlock()
	if ok {
		return v
	}
	v = protocol.VisibleShared
	if s.records != nil {
		b, err := s.records.GetRecord(ctx, app, "pv/"+user)
		switch {
		case err == nil:
			v = string(b)
		case !errors.Is(err, storage.ErrNotFound):
			s.log.Warn("presence: could not read privacy", "app", app, "user", user, "err", err)
			return protocol.VisibleNobody // fail closed, uncached
		}
	}
	c.mu.Lock()
	if len(c.m) >= privacyCacheMax {
		for k := range c.m {
			delete(c.m, k)
			if len(c.m) < privacyCacheMax/2 {
				break
			}
		}
	}
	c.m[k] = v
	c.mu.Unlock()
	return v
}

// Privacy returns the caller's presence privacy, after setting it to
// presence if that is not empty. Watchers learn of the change at once.
func (s *Service) Privacy(ctx context.Context, from Sender, presence string) (protocol.PrivacyResult, error) {
	if err := s.needRecords(); err != nil {
		return protocol.PrivacyResult{}, err
	}
	if presence == "" {
		return protocol.PrivacyResult{Presence: s.privacyOf(ctx, from.App, from.User)}, nil
	}
	switch presence {
	case protocol.VisibleShared, protocol.VisibleContacts, protocol.VisibleNobody:
	default:
		return protocol.PrivacyResult{}, protocol.Errorf(protocol.CodeBadRequest, "presence: one of shared, contacts, nobody")
	}
	if err := s.records.PutRecord(ctx, from.App, "pv/"+from.User, []byte(presence)); err != nil {
		return protocol.PrivacyResult{}, s.internal("store privacy", err)
	}
	s.privacy.mu.Lock()
	s.privacy.m[appUser{from.App, from.User}] = presence
	s.privacy.mu.Unlock()
	s.presenceChanged(from.App, from.User, s.rawPresence(ctx, from.App, from.User))
	return protocol.PrivacyResult{Presence: presence}, nil
}
