package chat

// Call signalling for audio and video calls between two users, in their
// direct conversation. The server only relays signalling: the media flows
// peer to peer, or through a TURN server the app chooses; Warbler neither
// sees nor relays it.
//
// A call is a small state machine per call ID (chosen by the caller, unique
// in the app while the call lasts):
//
//	ring     caller            -> ringing   stored; pushed to the callee
//	accept   callee (a device) -> active    stored
//	decline  callee            -> ended     stored (reason declined)
//	hangup   caller, ringing   -> ended     stored (reason canceled)
//	hangup   either, active    -> ended     stored (reason hangup, duration)
//	timeout  the server        -> ended     stored (reason timeout) when
//	                                        nobody accepts in time
//	hangup   the server        -> ended     stored (reason dropped) when a
//	                                        device in the call stays
//	                                        disconnected (CallDropGrace)
//	offer, answer, ice         -> (active)  relayed, not stored
//
// State changes are "call" messages in the log (body protocol.CallEvent),
// durable before the request is answered: every device of both users sees
// them live or by sync, so a callee's other devices stop ringing when one
// accepts, and history shows missed and finished calls. The WebRTC
// negotiation (offer, answer, ICE candidates) starts once a device has
// accepted and goes device to device: from the caller's ringing device to
// the accepting device and back, as ephemeral kind "call" payloads on the
// device topic. They are not stored: they are useless after the call and
// carry network addresses.
//
// The state of calls in progress lives in the memory of the process that
// handles them (a restart ends them: a request about an unknown call is
// not_found, which clients take as "ended"). A scaled-out deployment must
// route a conversation's requests to one process, as it already does for
// its sequencer.

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"time"

	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage"
)

// DefaultCallRingTimeout is how long a call rings unanswered.
const DefaultCallRingTimeout = 45 * time.Second

type callTable struct {
	mu    sync.Mutex
	m     map[string]*call // app/call ID
	users map[string]int   // app/user -> calls in progress
}

// call is one call in progress. Its fields change only under its
// conversation's lock and callTable.mu, and are read under either.
type call struct {
	app, id, conv, media string
	caller, callerDev    string
	callee, calleeDev    string // calleeDev once accepted
	state                string
	rang, answered       time.Time
	timer                *time.Timer
}

func (t *callTable) get(key string) *call {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.m[key]
}

// MaxCallsPerUser bounds the calls one user is in at once (ringing or
// active, as caller or callee).
const MaxCallsPerUser = 4

// reserve claims key for c, unless a call with that ID is in progress or
// either user is in MaxCallsPerUser calls.
func (t *callTable) reserve(key string, c *call) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = map[string]*call{}
		t.users = map[string]int{}
	}
	if _, ok := t.m[key]; ok {
		return protocol.Errorf(protocol.CodeExists, "call %s is in progress", c.id)
	}
	for _, u := range []string{c.caller, c.callee} {
		if t.users[c.app+"/"+u] >= MaxCallsPerUser {
			return protocol.Errorf(protocol.CodeFull, "%s is in %d calls already", u, MaxCallsPerUser)
		}
	}
	t.m[key] = c
	t.users[c.app+"/"+c.caller]++
	t.users[c.app+"/"+c.callee]++
	return nil
}

func (t *callTable) drop(key string, c *call) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m[key] == c {
		delete(t.m, key)
		for _, u := range []string{c.app + "/" + c.caller, c.app + "/" + c.callee} {
			if t.users[u]--; t.users[u] <= 0 {
				delete(t.users, u)
			}
		}
	}
}

// StopCalls forgets the calls in progress and stops their ring timers;
// call it before the store closes. Requests about them then get not_found,
// as after a restart.
func (s *Service) StopCalls() {
	s.calls.mu.Lock()
	defer s.calls.mu.Unlock()
	for _, c := range s.calls.m {
		if c.timer != nil {
			c.timer.Stop()
		}
	}
	s.calls.m, s.calls.users = nil, nil
}

// Calls returns how many calls are in progress (ringing or active).
func (s *Service) Calls() int {
	s.calls.mu.Lock()
	defer s.calls.mu.Unlock()
	return len(s.calls.m)
}

// Call runs one call request of a device in the direct conversation conv
// (or the one with user to). See the file comment for the actions.
func (s *Service) Call(ctx context.Context, from Sender, conv, to string, sig protocol.CallSignal) (protocol.CallResult, error) {
	if from.Service || from.Device == "" {
		return protocol.CallResult{}, protocol.Errorf(protocol.CodeBadRequest, "calls are made by devices")
	}
	if to != "" {
		if to == from.User {
			return protocol.CallResult{}, protocol.Errorf(protocol.CodeBadRequest, "to: you cannot call yourself")
		}
		conv = protocol.DirectConvID(from.User, to)
	}
	key := from.App + "/" + sig.ID
	res := protocol.CallResult{Call: sig.ID, Conv: conv}
	// Every action costs what a send costs: state changes are stored, and
	// each relayed signal is a publish to the peer's device.
	if err := s.allowWrite(from); err != nil {
		return res, err
	}
	switch sig.Action {
	case protocol.CallOffer, protocol.CallAnswer, protocol.CallICE:
		return s.callSignal(from, conv, key, sig)
	}
	cs := s.lockConv(from.App, conv)
	defer cs.mu.Unlock()
	var (
		v   *convView
		err error
	)
	if to != "" && sig.Action == protocol.CallRing {
		v, err = s.direct(ctx, from, to)
	} else {
		v, _, err = s.viewMember(ctx, from, conv)
	}
	if err != nil {
		return res, err
	}
	if v.conv.Kind != storage.KindDirect {
		return res, protocol.Errorf(protocol.CodeBadRequest, "calls are between two users: use their direct conversation")
	}
	if sig.Action == protocol.CallRing {
		if err := s.checkWrite(ctx, from, v, storage.RoleMember); err != nil {
			return res, err // a blocked user cannot ring
		}
	}
	now := s.now()

	if sig.Action == protocol.CallRing {
		var peer string
		for _, u := range v.users {
			if u != from.User {
				peer = u
			}
		}
		if peer == "" {
			return res, protocol.Errorf(protocol.CodeBadRequest, "you cannot call yourself")
		}
		media := sig.Media
		if media == "" {
			media = "audio"
		}
		c := &call{app: from.App, id: sig.ID, conv: conv, media: media, caller: from.User, callerDev: from.Device, callee: peer, state: protocol.CallRinging, rang: now}
		if err := s.calls.reserve(key, c); err != nil {
			return res, err
		}
		ack, err := s.callEvent(ctx, cs, from.App, conv, protocol.Sender{User: from.User, Device: from.Device},
			protocol.CallEvent{Call: sig.ID, Action: protocol.CallRing, State: protocol.CallRinging, Media: media}, true)
		if err != nil {
			s.calls.drop(key, c)
			return res, err
		}
		timeout := s.o.CallRingTimeout
		if timeout <= 0 {
			timeout = DefaultCallRingTimeout
		}
		s.calls.mu.Lock()
		c.timer = time.AfterFunc(timeout, func() { s.callTimeout(from.App, key, c) })
		s.calls.mu.Unlock()
		res.State, res.Seq = protocol.CallRinging, ack.Seq
		return res, nil
	}

	c := s.calls.get(key)
	if c == nil || c.conv != conv {
		return res, protocol.Errorf(protocol.CodeNotFound, "no call %s in progress in %s", sig.ID, conv)
	}
	ev := protocol.CallEvent{Call: sig.ID, Action: sig.Action, Media: c.media}
	switch sig.Action {
	case protocol.CallAccept, protocol.CallDecline:
		if from.User != c.callee {
			return res, protocol.Errorf(protocol.CodeForbidden, "only the callee may %s call %s", sig.Action, sig.ID)
		}
		if c.state != protocol.CallRinging {
			return res, protocol.Errorf(protocol.CodeBadState, "call %s is %s, not ringing", sig.ID, c.state)
		}
		ev.State = protocol.CallActive
		if sig.Action == protocol.CallDecline {
			ev.State, ev.Reason = protocol.CallEnded, "declined"
		}
	case protocol.CallHangup:
		if from.User != c.caller && from.User != c.callee {
			return res, protocol.Errorf(protocol.CodeForbidden, "you are not in call %s", sig.ID)
		}
		ev.State = protocol.CallEnded
		switch {
		case c.state == protocol.CallActive:
			ev.Reason, ev.Duration = "hangup", now.Sub(c.answered).Milliseconds()
		case from.User == c.caller:
			ev.Reason = "canceled"
		default:
			ev.Reason = "declined"
		}
	}
	ack, err := s.callEvent(ctx, cs, from.App, conv, protocol.Sender{User: from.User, Device: from.Device}, ev, false)
	if err != nil {
		return res, err
	}
	s.calls.mu.Lock()
	c.state = ev.State
	if ev.State == protocol.CallActive {
		c.calleeDev, c.answered = from.Device, now
	}
	if c.timer != nil && ev.State != protocol.CallRinging {
		c.timer.Stop()
	}
	s.calls.mu.Unlock()
	if ev.State == protocol.CallEnded {
		s.calls.drop(key, c)
	}
	res.State, res.Seq = ev.State, ack.Seq
	return res, nil
}

// callSignal relays an offer, answer or ICE candidate between the two
// devices of an active call.
func (s *Service) callSignal(from Sender, conv, key string, sig protocol.CallSignal) (protocol.CallResult, error) {
	res := protocol.CallResult{Call: sig.ID, Conv: conv}
	s.calls.mu.Lock()
	c := s.calls.m[key]
	var state, peer, peerDev string
	if c != nil {
		state = c.state
		switch {
		case from.User == c.caller && from.Device == c.callerDev:
			peer, peerDev = c.callee, c.calleeDev
		case from.User == c.callee && from.Device == c.calleeDev:
			peer, peerDev = c.caller, c.callerDev
		}
	}
	s.calls.mu.Unlock()
	switch {
	case c == nil || c.conv != conv:
		return res, protocol.Errorf(protocol.CodeNotFound, "no call %s in progress in %s", sig.ID, conv)
	case state != protocol.CallActive:
		return res, protocol.Errorf(protocol.CodeBadState, "call %s is %s: negotiate once a device has accepted", sig.ID, state)
	case peer == "":
		return res, protocol.Errorf(protocol.CodeForbidden, "only the calling and the accepting device signal in call %s", sig.ID)
	}
	payload, err := json.Marshal(protocol.CallMessage{Kind: protocol.KindCall, Conv: conv, Call: sig.ID, Action: sig.Action,
		From: protocol.Sender{User: from.User, Device: from.Device}, SDP: sig.SDP, Candidate: sig.Candidate})
	if err != nil {
		return res, protocol.Errorf(protocol.CodeBadRequest, "call: %v", err)
	}
	if dd, ok := s.out.(DeviceDeliverer); ok {
		dd.DeliverDevice(from.App, peer, peerDev, payload)
	} else {
		s.out.Deliver(from.App, []string{peer}, payload)
	}
	res.State = state
	return res, nil
}

// callTimeout ends a call nobody accepted.
func (s *Service) callTimeout(app, key string, c *call) {
	s.endCall(app, key, c, protocol.CallRinging, protocol.CallTimeout, "timeout", c.caller)
}

// DefaultCallDropGrace is how long a device in a call may stay
// disconnected before the server ends its calls.
const DefaultCallDropGrace = 30 * time.Second

// callDeviceGone is told that device has no connection left. Its calls
// (as the ringing caller, or either device of an active call) end as
// "dropped" unless it is back within the grace period: the media may well
// go on peer to peer through a short signalling outage, but a device that
// crashed must not hold its calls (and its users' call slots) forever.
func (s *Service) callDeviceGone(app, user, device string) {
	type gone struct {
		key string
		c   *call
	}
	var calls []gone
	s.calls.mu.Lock()
	if s.calls.users[app+"/"+user] == 0 {
		// In no call (every disconnect comes here): no scan of the table.
		s.calls.mu.Unlock()
		return
	}
	for key, c := range s.calls.m {
		if c.app == app && (c.caller == user && c.callerDev == device || c.callee == user && c.calleeDev == device) {
			calls = append(calls, gone{key, c})
		}
	}
	s.calls.mu.Unlock()
	if len(calls) == 0 {
		return
	}
	grace := s.o.CallDropGrace
	if grace <= 0 {
		grace = DefaultCallDropGrace
	}
	time.AfterFunc(grace, func() {
		if s.deviceConnected(app, user, device) {
			return
		}
		for _, g := range calls {
			s.endCall(app, g.key, g.c, "", protocol.CallHangup, "dropped", user)
		}
	})
}

// deviceConnected reports whether device has an open connection (as the
// transport reported it through Connected and Disconnected).
func (s *Service) deviceConnected(app, user, device string) bool {
	h := &s.presence
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, d := range h.conns[appUser{app, user}] {
		if d == device {
			return true
		}
	}
	return false
}

// endCall ends a call on the server's initiative, if it is still in
// progress (and, when state is set, in that state): a stored event with
// action and reason, by actor.
func (s *Service) endCall(app, key string, c *call, state, action, reason, actor string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cs := s.lockConv(app, c.conv)
	defer cs.mu.Unlock()
	s.calls.mu.Lock()
	live := s.calls.m[key] == c && (state == "" || c.state == state)
	active, answered := c.state == protocol.CallActive, c.answered
	s.calls.mu.Unlock()
	if !live {
		return
	}
	ev := protocol.CallEvent{Call: c.id, Action: action, State: protocol.CallEnded, Media: c.media, Reason: reason}
	if active {
		ev.Duration = s.now().Sub(answered).Milliseconds()
	}
	if _, err := s.callEvent(ctx, cs, app, c.conv, protocol.Sender{User: actor}, ev, false); err != nil {
		s.log.Error("chat: could not record the end of a call", "app", app, "call", c.id, "reason", reason, "err", err)
	}
	s.calls.mu.Lock()
	c.state = protocol.CallEnded
	if c.timer != nil {
		c.timer.Stop()
	}
	s.calls.mu.Unlock()
	s.calls.drop(key, c)
}

// callEvent appends a "call" message and waits until it is durable and
// delivered; push says whether it goes to Options.OnStored (a ring does).
// The caller holds cs.mu.
func (s *Service) callEvent(ctx context.Context, cs *convState, app, conv string, from protocol.Sender, ev protocol.CallEvent, push bool) (protocol.Ack, error) {
	body, err := json.Marshal(ev)
	if err != nil {
		return protocol.Ack{}, s.internal("encode call event", err)
	}
	type outcome struct {
		ack protocol.Ack
		err error
	}
	ch := make(chan outcome, 1)
	for attempt := 0; ; attempt++ {
		v, err := s.view(ctx, app, conv)
		if err != nil {
			return protocol.Ack{}, s.internal("read conversation", err)
		}
		err = s.enqueueLocked(ctx, cs, app, v, from, "", protocol.TypeCall, body, nil,
			func(a protocol.Ack, err error) { ch <- outcome{a, err} },
			func(q *enqueueing) { q.noPush = !push })
		var o outcome
		if err == nil {
			o = <-ch
			err = o.err
		}
		if errors.Is(err, storage.ErrConflict) && attempt+1 < maxAppendAttempts {
			s.conflicts.Add(1)
			continue
		}
		if err != nil {
			return protocol.Ack{}, s.internal("store call event", err)
		}
		return o.ack, nil
	}
}
