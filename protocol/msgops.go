package protocol

// This file is the part of the chat envelope that acts on messages already
// sent (edit, recall, reactions), refers to them (replies, forwards),
// mentions members, and signals calls. docs/PROTOCOL.md ("Message
// operations" and "Calls") describes the same thing in prose.
//
// Operations on a message are appended to the conversation's log as events
// of their own (a new seq, with "ref" naming the message), and the stored
// copy of the message itself is rewritten to its new state, so that a
// device that was offline converges whether it reads the events (sync) or
// the message (history).

import (
	"encoding/json"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Operations on messages and calls.
const (
	OpEdit    = "edit"    // replace a message's body (its sender): conv, id, seq, body
	OpRecall  = "recall"  // withdraw a message: conv, id, seq
	OpReact   = "react"   // add a reaction: conv, id, seq, emoji
	OpUnreact = "unreact" // remove a reaction: conv, id, seq, emoji
	OpForward = "forward" // copy a message into a conversation: conv or to, cmid, src
	OpCall    = "call"    // call signalling: conv or to, call
)

// Message types the server writes for operations. A plain send may not use
// them (nor TypeSystem).
const (
	TypeEdit     = "edit"
	TypeRecall   = "recall"
	TypeReaction = "reaction"
	TypeCall     = "call"
)

// KindCall is the outbound kind of an ephemeral call signal (offer, answer,
// ICE candidate): delivered to one device, never stored.
const KindCall = "call"

// More error codes.
const (
	CodeTooLate  = "too_late"  // the time window for the operation has passed
	CodeBadState = "bad_state" // the operation does not fit the current state (of a call)
)

// ReservedType reports whether t is a message type only the server writes.
func ReservedType(t string) bool {
	switch t {
	case TypeSystem, TypeEdit, TypeRecall, TypeReaction, TypeCall:
		return true
	}
	return false
}

// Limits of the message operations.
const (
	// MaxEmojiBytes bounds one reaction: a single emoji, even a long ZWJ
	// sequence, fits; a sentence does not.
	MaxEmojiBytes = 64
	// MaxMentions bounds the "mentions" list of one message.
	MaxMentions = 100
	// MaxSDPBytes and MaxCandidateBytes bound call signals.
	MaxSDPBytes       = 32 << 10
	MaxCandidateBytes = 4 << 10
)

// Ref names a message: by ID and seq (the seq finds it in the log, the ID
// confirms it is the one meant). Conv is set where the message is in
// another conversation (the source of a forward). From is filled in by the
// server on outbound references (the author of the message replied to).
type Ref struct {
	Conv string `json:"conv,omitempty"`
	ID   string `json:"id"`
	Seq  uint64 `json:"seq"`
	From string `json:"from,omitempty"`
}

// Forwarded marks a forwarded message with the original's author and time.
type Forwarded struct {
	From string `json:"from"`
	TS   int64  `json:"ts"`
}

// Reaction is one emoji on a message: how many users reacted with it and
// who.
type Reaction struct {
	Emoji string   `json:"emoji"`
	Count int      `json:"count"`
	Users []string `json:"users"`
}

// ReactionEvent is the body of a "reaction" event: User (the event's
// sender) added or removed Emoji, which now has Count reactions.
type ReactionEvent struct {
	Emoji  string `json:"emoji"`
	Action string `json:"action"` // "add" or "remove"
	Count  int    `json:"count"`
}

// Call actions. Ring, accept, decline and hangup change the call's state
// and are stored in the log; offer, answer and ice are relayed to the peer
// device and not stored.
const (
	CallRing    = "ring"
	CallAccept  = "accept"
	CallDecline = "decline"
	CallHangup  = "hangup"
	CallOffer   = "offer"
	CallAnswer  = "answer"
	CallICE     = "ice"
	// CallTimeout is written by the server when nobody answers in time.
	CallTimeout = "timeout"
)

// Call states.
const (
	CallRinging = "ringing"
	CallActive  = "active"
	CallEnded   = "ended"
)

// CallSignal is the "call" object of an OpCall request.
type CallSignal struct {
	ID        string          `json:"id"`
	Action    string          `json:"action"`
	Media     string          `json:"media,omitempty"`     // ring: "audio" (default) or "video"
	SDP       string          `json:"sdp,omitempty"`       // offer, answer
	Candidate json.RawMessage `json:"candidate,omitempty"` // ice: an RTCIceCandidateInit object
}

// CallEvent is the body of a stored "call" message: a state change.
type CallEvent struct {
	Call     string `json:"call"`
	Action   string `json:"action"` // ring, accept, decline, hangup, timeout
	State    string `json:"state"`  // ringing, active, ended
	Media    string `json:"media,omitempty"`
	Reason   string `json:"reason,omitempty"`      // ended: declined, canceled, hangup, timeout
	Duration int64  `json:"duration_ms,omitempty"` // ended after being active
}

// CallMessage is an ephemeral call signal, kind "call", published to one
// device topic.
type CallMessage struct {
	Kind      string          `json:"kind"` // "call"
	Conv      string          `json:"conv"`
	Call      string          `json:"call"`
	Action    string          `json:"action"`
	From      Sender          `json:"from"`
	SDP       string          `json:"sdp,omitempty"`
	Candidate json.RawMessage `json:"candidate,omitempty"`
}

// CallResult answers OpCall: the call's state after the request.
type CallResult struct {
	Call  string `json:"call"`
	Conv  string `json:"conv"`
	State string `json:"state"`
	Seq   uint64 `json:"seq,omitempty"` // the stored event, for state changes
}

// OpResult answers edit, recall, react and unreact: the event appended
// (ID, Seq, TS), or, when the request changed nothing (a repeated recall,
// a reaction already there), Unchanged set and no event.
type OpResult struct {
	Conv      string     `json:"conv"`
	Ref       Ref        `json:"ref"`
	ID        string     `json:"id,omitempty"`
	Seq       uint64     `json:"seq,omitempty"`
	TS        int64      `json:"ts,omitempty"`
	Unchanged bool       `json:"unchanged,omitempty"`
	Reactions []Reaction `json:"reactions,omitempty"`
}

// ValidEmoji reports whether e is acceptable as a reaction: 1 to
// MaxEmojiBytes bytes of UTF-8 with no spaces or control characters.
// Whether it is one emoji is the client's business.
func ValidEmoji(e string) bool {
	if e == "" || len(e) > MaxEmojiBytes || !utf8.ValidString(e) {
		return false
	}
	for _, r := range e {
		if unicode.IsSpace(r) || unicode.IsControl(r) {
			return false
		}
	}
	return true
}

func checkRef(field string, r *Ref, needConv bool) error {
	if r == nil {
		return Errorf(CodeBadRequest, "%s: required", field)
	}
	if needConv {
		if err := CheckID(field+".conv", r.Conv); err != nil {
			return idErr(err)
		}
	} else if r.Conv != "" {
		return Errorf(CodeBadRequest, "%s.conv: a reply is to a message of the same conversation", field)
	}
	if err := CheckID(field+".id", r.ID); err != nil {
		return idErr(err)
	}
	if r.Seq == 0 {
		return Errorf(CodeBadRequest, "%s.seq: required (a positive integer)", field)
	}
	if r.From != "" {
		return Errorf(CodeBadRequest, "%s.from: set by the server", field)
	}
	return nil
}

// validateSendExtras checks the fields a send may carry besides its body:
// reply_to and mentions.
func (r *Request) validateSendExtras() error {
	if r.ReplyTo != nil {
		if err := checkRef("reply_to", r.ReplyTo, false); err != nil {
			return err
		}
	}
	if len(r.Mentions) > MaxMentions {
		return Errorf(CodeTooLarge, "mentions: at most %d users", MaxMentions)
	}
	for _, m := range r.Mentions {
		if err := CheckID("mentions", m); err != nil {
			return idErr(err)
		}
	}
	return nil
}

// validateMsgOp checks the operations of this file; ok is false for an op
// that is not one of them.
func (r *Request) validateMsgOp(lim Limits) (err error, ok bool) {
	target := func() error {
		if r.Conv == "" {
			return Errorf(CodeBadRequest, "conv: required for op %q", r.Op)
		}
		if err := CheckID("conv", r.Conv); err != nil {
			return idErr(err)
		}
		if err := CheckID("id", r.ID); err != nil {
			return idErr(err)
		}
		if r.Seq == 0 {
			return Errorf(CodeBadRequest, "seq: required (a positive integer) for op %q", r.Op)
		}
		return nil
	}
	convOrTo := func() error {
		if (r.Conv == "") == (r.To == "") {
			return Errorf(CodeBadRequest, "exactly one of conv or to is required")
		}
		if r.Conv != "" {
			return idErr(CheckID("conv", r.Conv))
		}
		return idErr(CheckID("to", r.To))
	}
	switch r.Op {
	case OpEdit:
		if err := target(); err != nil {
			return err, true
		}
		if len(r.Body) == 0 {
			return Errorf(CodeBadRequest, "body: required (the new body)"), true
		}
		if len(r.Body) > lim.MaxBody {
			return Errorf(CodeTooLarge, "body of %d bytes exceeds %d", len(r.Body), lim.MaxBody), true
		}
		return nil, true
	case OpRecall:
		return target(), true
	case OpReact, OpUnreact:
		if err := target(); err != nil {
			return err, true
		}
		if !ValidEmoji(r.Emoji) {
			return Errorf(CodeBadRequest, "emoji: 1-%d bytes of UTF-8 without spaces or control characters", MaxEmojiBytes), true
		}
		return nil, true
	case OpForward:
		if err := convOrTo(); err != nil {
			return err, true
		}
		if err := CheckID("cmid", r.CMID); err != nil {
			return idErr(err), true
		}
		return checkRef("src", r.Src, true), true
	case OpCall:
		if err := convOrTo(); err != nil {
			return err, true
		}
		return r.Call.validate(), true
	}
	return nil, false
}

func (c *CallSignal) validate() error {
	if c == nil {
		return Errorf(CodeBadRequest, "call: required")
	}
	if err := CheckID("call.id", c.ID); err != nil {
		return idErr(err)
	}
	switch c.Action {
	case CallRing:
		if c.Media != "" && c.Media != "audio" && c.Media != "video" {
			return Errorf(CodeBadRequest, "call.media: audio or video")
		}
	case CallAccept, CallDecline, CallHangup:
	case CallOffer, CallAnswer:
		if c.SDP == "" || len(c.SDP) > MaxSDPBytes || !utf8.ValidString(c.SDP) {
			return Errorf(CodeBadRequest, "call.sdp: required, at most %d bytes of UTF-8", MaxSDPBytes)
		}
	case CallICE:
		if len(c.Candidate) == 0 || len(c.Candidate) > MaxCandidateBytes || !strings.HasPrefix(strings.TrimSpace(string(c.Candidate)), "{") {
			return Errorf(CodeBadRequest, "call.candidate: required, a JSON object of at most %d bytes", MaxCandidateBytes)
		}
	default:
		return Errorf(CodeBadRequest, "call.action: one of ring, accept, decline, hangup, offer, answer, ice")
	}
	if c.Action != CallRing && c.Media != "" {
		return Errorf(CodeBadRequest, "call.media: only with ring")
	}
	if c.Action != CallOffer && c.Action != CallAnswer && c.SDP != "" {
		return Errorf(CodeBadRequest, "call.sdp: only with offer or answer")
	}
	if c.Action != CallICE && len(c.Candidate) != 0 {
		return Errorf(CodeBadRequest, "call.candidate: only with ice")
	}
	return nil
}
