package protocol

// This file is the chat envelope: the JSON that devices publish on their
// uplink and that the server publishes on downlinks and device topics.
// docs/PROTOCOL.md ("Chat messages") describes the same thing in prose.
//
// Inbound, a device publishes one Request per MQTT PUBLISH. A request
// without "op" (or with "op":"send") sends a message; every other op asks
// for an answer. Outbound, every payload has a "kind":
//
//	msg      a message of a conversation (Message)
//	receipt  a delivered or read receipt (Receipt)
//	reply    the answer to a request, or the ack of a send (Reply)
//	error    a failed request or send (Reply with Error set)
//	sync     a hint that the device missed messages and should sync (SyncHint)
//
// Message bodies stay opaque here: Body is any JSON value, checked only for
// being well-formed and within the size limit.

import (
	"bytes"
	"crypto/sha256"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"
)

// Kinds of outbound payload.
const (
	KindMsg      = "msg"
	KindReceipt  = "receipt"
	KindReply    = "reply"
	KindError    = "error"
	KindSyncHint = "sync"
)

// Request operations. OpSend is implied when "op" is absent.
const (
	OpSend      = "send"      // send a message: conv or to, cmid, type, body
	OpCreate    = "create"    // create a group or channel: kind, name, members, optional conv
	OpAdd       = "add"       // add members (admins): conv, members, optional role
	OpRemove    = "remove"    // remove members (admins): conv, members
	OpLeave     = "leave"     // leave a conversation: conv
	OpRole      = "role"      // change a member's role (owner): conv, user, role
	OpInfo      = "info"      // a conversation and its members: conv, start, limit
	OpConvs     = "convs"     // the caller's conversations: start, limit
	OpSync      = "sync"      // everything after this device's cursors: cursors, limit
	OpHistory   = "history"   // a page of one conversation: conv, before or after, limit
	OpRead      = "read"      // mark read up to seq: conv, seq
	OpDelivered = "delivered" // mark delivered to this device up to seq: conv, seq
	OpReads     = "reads"     // how many members have read up to seq: conv, seq
	OpPush      = "push"      // register this device for push: platform, token, optional topic, locale
)

// Conversation kinds and member roles, as they appear on the wire.
const (
	ConvDirect  = "direct"
	ConvGroup   = "group"
	ConvChannel = "channel"

	RoleOwner  = "owner"
	RoleAdmin  = "admin"
	RoleMember = "member"
)

// Error codes carried in {"code","message"}. They are stable API: clients
// branch on them.
const (
	CodeBadRequest  = "bad_request"    // the envelope is malformed or a field is invalid
	CodeTooLarge    = "too_large"      // the payload or body exceeds its limit
	CodeNotMember   = "not_member"     // no such conversation, or the caller is not in it
	CodeForbidden   = "forbidden"      // a member, but the role does not allow it
	CodeNotFound    = "not_found"      // a named user or member does not exist
	CodeExists      = "exists"         // the conversation ID is taken
	CodeFull        = "full"           // the group would exceed its maximum size
	CodeQuota       = "quota_exceeded" // the sender is over its rate quota; retry later
	CodeUnavailable = "unavailable"    // the server is shutting down or overloaded; retry
	CodeInternal    = "internal"       // persisting failed; nothing was stored; retry
)

// Error is the error object of every failed request: {"code","message"}.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Errorf builds an *Error.
func Errorf(code, format string, a ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, a...)}
}

// Limits bound what ParseRequest accepts. Zero fields take the defaults.
type Limits struct {
	// MaxBody is the largest "body" of a message, in bytes of JSON.
	MaxBody int
	// MaxMembers is the longest "members" list of one request.
	MaxMembers int
	// MaxPage is the largest "limit" of a paginated request.
	MaxPage int
}

// Default limits.
const (
	DefaultMaxBody    = 64 << 10
	DefaultMaxMembers = 1000
	DefaultMaxPage    = 500
	// envelopeOverhead is what a request may carry besides its body.
	envelopeOverhead = 16 << 10
	maxNameLen       = 256
	maxRIDLen        = 64
	maxTypeLen       = 32
)

func (l Limits) withDefaults() Limits {
	if l.MaxBody <= 0 {
		l.MaxBody = DefaultMaxBody
	}
	if l.MaxMembers <= 0 {
		l.MaxMembers = DefaultMaxMembers
	}
	if l.MaxPage <= 0 {
		l.MaxPage = DefaultMaxPage
	}
	return l
}

// MaxPayload is the largest uplink payload accepted under l: the body limit
// plus room for the other fields (and the cursors map of a sync).
func (l Limits) MaxPayload() int { return l.withDefaults().MaxBody + envelopeOverhead }

// Request is an inbound envelope. One flat struct serves every op so that a
// request stays a small JSON object anyone can type; ParseRequest checks
// that the fields an op needs are present and valid.
type Request struct {
	Op  string `json:"op,omitempty"`
	RID string `json:"rid,omitempty"` // MQTT 3.1.1 correlation: echoed in the reply

	// send
	Conv string          `json:"conv,omitempty"`
	To   string          `json:"to,omitempty"` // a user: the direct conversation with them
	CMID string          `json:"cmid,omitempty"`
	Type string          `json:"type,omitempty"`
	Body json.RawMessage `json:"body,omitempty"`
	// Attachment is the ID of an upload the message refers to; required
	// for types image, file, audio and video (see Attachment).
	Attachment string `json:"attachment,omitempty"`

	// create, add, remove, role
	Kind    string   `json:"kind,omitempty"`
	Name    string   `json:"name,omitempty"`
	Members []string `json:"members,omitempty"`
	User    string   `json:"user,omitempty"`
	Role    string   `json:"role,omitempty"`

	// read, delivered, reads, history, sync, convs, info
	Seq     uint64            `json:"seq,omitempty"`
	Before  uint64            `json:"before,omitempty"`
	After   uint64            `json:"after,omitempty"`
	Limit   int               `json:"limit,omitempty"`
	Start   string            `json:"start,omitempty"`
	Cursors map[string]uint64 `json:"cursors,omitempty"`

	// push: this device's push registration. An empty token removes it.
	Platform string  `json:"platform,omitempty"`
	Token    *string `json:"token,omitempty"`
	Topic    string  `json:"topic,omitempty"`
	Locale   string  `json:"locale,omitempty"`

	// Group administration, presence, contacts (envelope_social.go). An
	// invite token travels in "token".
	Users    []string       `json:"users,omitempty"`
	Duration int64          `json:"duration,omitempty"` // seconds
	Uses     int            `json:"uses,omitempty"`
	Text     string         `json:"text,omitempty"`
	Settings *GroupSettings `json:"settings,omitempty"`
	Presence string         `json:"presence,omitempty"`

	// Message operations and calls (msgops.go). id and seq name the
	// message an edit, recall or reaction acts on.
	ID         string      `json:"id,omitempty"`
	ReplyTo    *Ref        `json:"reply_to,omitempty"`    // send: the message replied to
	Mentions   []string    `json:"mentions,omitempty"`    // send: users mentioned
	MentionAll bool        `json:"mention_all,omitempty"` // send: @all (admins and owners)
	Src        *Ref        `json:"src,omitempty"`         // forward: the message copied
	Emoji      string      `json:"emoji,omitempty"`       // react, unreact
	Call       *CallSignal `json:"call,omitempty"`        // call

	// Search (search.go).
	Query string `json:"q,omitempty"`
}

// Push registration limits.
const (
	maxPushToken  = 4096
	maxPushTopic  = 255
	maxLocaleLen  = 35
	pushPlatforms = "ios android web desktop iot"
)

// ParseRequest decodes and validates one uplink payload. It is strict:
// unknown fields, trailing data, oversized payloads or bodies, invalid
// identifiers and missing required fields are all refused with an *Error
// (code bad_request or too_large) whose message names the problem. It never
// panics, whatever the input.
func ParseRequest(payload []byte, lim Limits) (*Request, error) {
	lim = lim.withDefaults()
	if len(payload) > lim.MaxPayload() {
		return nil, Errorf(CodeTooLarge, "payload of %d bytes exceeds %d", len(payload), lim.MaxPayload())
	}
	if len(bytes.TrimSpace(payload)) == 0 {
		return nil, Errorf(CodeBadRequest, "empty payload: expected a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.DisallowUnknownFields()
	var r Request
	if err := dec.Decode(&r); err != nil {
		return nil, Errorf(CodeBadRequest, "invalid envelope: %s", jsonErr(err))
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, Errorf(CodeBadRequest, "unexpected data after the JSON object")
	}
	if err := r.validate(lim); err != nil {
		return nil, err
	}
	return &r, nil
}

func jsonErr(err error) string {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf("JSON syntax error at offset %d", se.Offset)
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Sprintf("field %q must be %s", te.Field, te.Type.String())
	}
	s := err.Error()
	s = strings.TrimPrefix(s, "json: ")
	if len(s) > 120 {
		s = s[:120]
	}
	return s
}

func (r *Request) validate(lim Limits) error {
	if r.RID != "" && (len(r.RID) > maxRIDLen || !printable(r.RID)) {
		return Errorf(CodeBadRequest, "rid: at most %d printable ASCII characters", maxRIDLen)
	}
	if r.Op == "" {
		r.Op = OpSend
	}
	if r.Limit < 0 || r.Limit > lim.MaxPage {
		return Errorf(CodeBadRequest, "limit: must be between 0 and %d", lim.MaxPage)
	}
	if len(r.Members) > lim.MaxMembers {
		return Errorf(CodeTooLarge, "members: at most %d per request", lim.MaxMembers)
	}
	for _, m := range r.Members {
		if err := CheckID("members", m); err != nil {
			return idErr(err)
		}
	}
	if r.Start != "" {
		if err := CheckID("start", r.Start); err != nil {
			return idErr(err)
		}
	}
	needConv := func() error {
		if r.Conv == "" {
			return Errorf(CodeBadRequest, "conv: required for op %q", r.Op)
		}
		return idErr(CheckID("conv", r.Conv))
	}
	needSeq := func() error {
		if r.Seq == 0 {
			return Errorf(CodeBadRequest, "seq: required (a positive integer) for op %q", r.Op)
		}
		return nil
	}
	switch r.Op {
	case OpSend:
		if (r.Conv == "") == (r.To == "") {
			return Errorf(CodeBadRequest, "exactly one of conv or to is required")
		}
		if r.Conv != "" {
			if err := CheckID("conv", r.Conv); err != nil {
				return idErr(err)
			}
		} else if err := CheckID("to", r.To); err != nil {
			return idErr(err)
		}
		if err := CheckID("cmid", r.CMID); err != nil {
			return idErr(err)
		}
		if !ValidType(r.Type) {
			return Errorf(CodeBadRequest, "type: 1-%d characters of a-z 0-9 _ . -, starting with a letter", maxTypeLen)
		}
		if len(r.Body) == 0 {
			return Errorf(CodeBadRequest, "body: required (any JSON value)")
		}
		if len(r.Body) > lim.MaxBody {
			return Errorf(CodeTooLarge, "body of %d bytes exceeds %d", len(r.Body), lim.MaxBody)
		}
		if r.Attachment != "" {
			if err := CheckID("attachment", r.Attachment); err != nil {
				return idErr(err)
			}
		}
		return r.validateSendExtras()
	case OpCreate:
		if r.Kind != ConvGroup && r.Kind != ConvChannel {
			return Errorf(CodeBadRequest, "kind: must be %q or %q", ConvGroup, ConvChannel)
		}
		if r.Conv != "" {
			if err := CheckID("conv", r.Conv); err != nil {
				return idErr(err)
			}
			if IsDirectConv(r.Conv) {
				return Errorf(CodeBadRequest, "conv: IDs starting with %q are reserved for direct conversations", directPrefix)
			}
		}
		if len(r.Name) > maxNameLen || !utf8.ValidString(r.Name) {
			return Errorf(CodeBadRequest, "name: at most %d bytes of UTF-8", maxNameLen)
		}
		return nil
	case OpAdd, OpRemove:
		if err := needConv(); err != nil {
			return err
		}
		if len(r.Members) == 0 {
			return Errorf(CodeBadRequest, "members: at least one user is required")
		}
		if r.Op == OpAdd && r.Role != "" && !ValidRole(r.Role) {
			return Errorf(CodeBadRequest, "role: must be admin or member")
		}
		return nil
	case OpLeave, OpInfo:
		return needConv()
	case OpRole:
		if err := needConv(); err != nil {
			return err
		}
		if err := CheckID("user", r.User); err != nil {
			return idErr(err)
		}
		if !ValidRole(r.Role) {
			return Errorf(CodeBadRequest, "role: must be owner, admin or member")
		}
		return nil
	case OpRead, OpDelivered, OpReads:
		if err := needConv(); err != nil {
			return err
		}
		return needSeq()
	case OpHistory:
		if err := needConv(); err != nil {
			return err
		}
		if r.Before != 0 && r.After != 0 {
			return Errorf(CodeBadRequest, "history: give before or after, not both")
		}
		return nil
	case OpSync:
		if len(r.Cursors) > lim.MaxMembers*10 {
			return Errorf(CodeTooLarge, "cursors: too many entries")
		}
		for c := range r.Cursors {
			if err := CheckID("cursors", c); err != nil {
				return idErr(err)
			}
		}
		return nil
	case OpConvs:
		return nil
	case OpPush:
		if r.Token == nil {
			return Errorf(CodeBadRequest, "token: required (\"\" removes the registration)")
		}
		if len(*r.Token) > maxPushToken || !printable(*r.Token) && *r.Token != "" {
			return Errorf(CodeBadRequest, "token: at most %d printable ASCII characters", maxPushToken)
		}
		if r.Platform != "" && !strings.Contains(" "+pushPlatforms+" ", " "+r.Platform+" ") {
			return Errorf(CodeBadRequest, "platform: one of %s", pushPlatforms)
		}
		if len(r.Topic) > maxPushTopic || (r.Topic != "" && !printable(r.Topic)) {
			return Errorf(CodeBadRequest, "topic: at most %d printable ASCII characters", maxPushTopic)
		}
		if len(r.Locale) > maxLocaleLen || (r.Locale != "" && !printable(r.Locale)) {
			return Errorf(CodeBadRequest, "locale: a BCP 47 tag of at most %d characters", maxLocaleLen)
		}
		return nil
	}
	if handled, err := r.validateSocial(lim); handled {
		return err
	}
	if err, ok := r.validateMsgOp(lim); ok {
		return err
	}
	if err, ok := r.validateSearch(); ok {
		return err
	}
	if err, ok := r.validateCampaign(); ok {
		return err
	}
	return Errorf(CodeBadRequest, "op: unknown operation %q", r.Op)
}

func idErr(err error) error {
	if err == nil {
		return nil
	}
	var ie *IDError
	if errors.As(err, &ie) {
		return Errorf(CodeBadRequest, "%s: %s", ie.Field, ErrBadID.Error())
	}
	return Errorf(CodeBadRequest, "%v", err)
}

func printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// ValidType reports whether t is a well-formed message type: 1-32 of
// [a-z0-9_.-] starting with a letter. The server does not interpret types
// ("text", "image", "file", "audio", "video", "location", "custom", or an
// app's own); "system" is reserved for server-generated events.
func ValidType(t string) bool {
	if len(t) == 0 || len(t) > maxTypeLen || t[0] < 'a' || t[0] > 'z' {
		return false
	}
	for i := 0; i < len(t); i++ {
		c := t[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
			return false
		}
	}
	return true
}

// TypeSystem is the message type of server-generated events (member added,
// removed, role changed, ...). Clients cannot send it.
const TypeSystem = "system"

// ValidRole reports whether r is one of the three member roles.
func ValidRole(r string) bool { return r == RoleOwner || r == RoleAdmin || r == RoleMember }

const directPrefix = "d."

// DirectConvID is the conversation ID of the direct conversation between two
// users. It is symmetric (DirectConvID(a,b) == DirectConvID(b,a)) and
// deterministic, so both sides and the server derive it without a lookup.
// User IDs may be 64 characters and contain '.', so joining them would be
// neither short enough nor unambiguous; instead the ID is "d." followed by
// 32 base32 characters of SHA-256(min || 0x00 || max). NUL never occurs in
// an ID, so distinct pairs hash distinct inputs; the result always passes
// ValidID.
func DirectConvID(a, b string) string {
	if b < a {
		a, b = b, a
	}
	h := sha256.New()
	h.Write([]byte(a))
	h.Write([]byte{0})
	h.Write([]byte(b))
	sum := h.Sum(nil)
	return directPrefix + strings.ToLower(b32.EncodeToString(sum[:20]))
}

var b32 = base32.StdEncoding.WithPadding(base32.NoPadding)

// IsDirectConv reports whether id is in the namespace of direct
// conversations. Groups and channels may not use it.
func IsDirectConv(id string) bool { return strings.HasPrefix(id, directPrefix) }

// Sender identifies who sent a message.
type Sender struct {
	User   string `json:"user"`
	Device string `json:"device,omitempty"` // empty for messages sent by a backend service
}

// Message is the outbound envelope of one message, kind "msg". The same
// bytes are delivered live, stored in the log, and returned by sync and
// history.
type Message struct {
	Kind string          `json:"kind"`
	ID   string          `json:"id"`
	Conv string          `json:"conv"`
	Seq  uint64          `json:"seq"`
	TS   int64           `json:"ts"`
	From Sender          `json:"from"`
	CMID string          `json:"cmid,omitempty"`
	Type string          `json:"type"`
	Body json.RawMessage `json:"body,omitempty"` // absent once recalled

	// References and mentions, set when the message is sent.
	Ref        *Ref       `json:"ref,omitempty"`      // edit, recall, reaction events: the message acted on
	ReplyTo    *Ref       `json:"reply_to,omitempty"` // a reply: the message replied to (with its author)
	Forwarded  *Forwarded `json:"forwarded,omitempty"`
	Mentions   []string   `json:"mentions,omitempty"`
	MentionAll bool       `json:"mention_all,omitempty"`
	// Prev is the body an edit event replaced (edit events only).
	Prev json.RawMessage `json:"prev,omitempty"`

	// The message's state, rewritten in the stored copy by later events
	// (see msgops.go): what history and sync return.
	Edited     bool       `json:"edited,omitempty"`
	EditedTS   int64      `json:"edited_ts,omitempty"`
	Edits      []uint64   `json:"edits,omitempty"` // seqs of the edit events, oldest first
	Recalled   bool       `json:"recalled,omitempty"`
	RecalledBy string     `json:"recalled_by,omitempty"`
	RecalledTS int64      `json:"recalled_ts,omitempty"`
	Reactions  []Reaction `json:"reactions,omitempty"`
	// Attachment describes the upload the message refers to, as the
	// server established it.
	Attachment *Attachment `json:"attachment,omitempty"`
}

// Receipt tells the author (and the reader's other devices) how far a member
// has read, or a device has received, a conversation.
type Receipt struct {
	Kind   string `json:"kind"` // "receipt"
	Type   string `json:"type"` // "read" or "delivered"
	Conv   string `json:"conv"`
	User   string `json:"user"`
	Device string `json:"device,omitempty"`
	Seq    uint64 `json:"seq"`
	TS     int64  `json:"ts"`
}

// SyncHint asks a device to run a sync: the server dropped a live message to
// it (its queue was full) or knows it is behind. Conv, when set, names the
// conversation that moved.
type SyncHint struct {
	Kind string `json:"kind"` // "sync"
	Conv string `json:"conv,omitempty"`
}

// Reply is the answer to a request: kind "reply" with Result, or kind
// "error" with Error. Op, RID and CMID echo the request so a client that
// cannot use MQTT 5 correlation data can match the answer.
type Reply struct {
	Kind   string `json:"kind"`
	Op     string `json:"op,omitempty"`
	RID    string `json:"rid,omitempty"`
	CMID   string `json:"cmid,omitempty"`
	Error  *Error `json:"error,omitempty"`
	Result any    `json:"result,omitempty"`
}

// Ack is the result of a send: where the message landed. Duplicate is true
// when the cmid had been seen and this is the original message's position.
type Ack struct {
	ID        string `json:"id"`
	Conv      string `json:"conv"`
	Seq       uint64 `json:"seq"`
	TS        int64  `json:"ts"`
	Duplicate bool   `json:"duplicate,omitempty"`
}

// ConvInfo summarises one conversation for one user.
type ConvInfo struct {
	Conv    string `json:"conv"`
	Kind    string `json:"kind"`
	Name    string `json:"name,omitempty"`
	Role    string `json:"role,omitempty"`
	Members int    `json:"members"`
	LastSeq uint64 `json:"last_seq"`
	Read    uint64 `json:"read"`
	// Unread counts the messages after Read that the user would count as
	// new (not edits, reactions, call signalling or most system events);
	// UnreadMore says the count stopped at the server's scan bound and is
	// a lower bound. See docs/PROTOCOL.md.
	Unread     uint64 `json:"unread"`
	UnreadMore bool   `json:"unread_more,omitempty"`
}

// MemberInfo is one member of a conversation.
type MemberInfo struct {
	User   string `json:"user"`
	Role   string `json:"role"`
	Joined int64  `json:"joined"`
	Read   uint64 `json:"read"`
}

// InfoResult answers OpInfo and OpCreate.
type InfoResult struct {
	Conv    ConvInfo     `json:"conv"`
	Members []MemberInfo `json:"members,omitempty"`
	More    bool         `json:"more,omitempty"`
	// Group is the administration state of a group or channel.
	Group *GroupInfo `json:"group,omitempty"`
}

// ConvsResult answers OpConvs. Pass Next as "start" for the next page.
type ConvsResult struct {
	Convs []ConvInfo `json:"convs"`
	More  bool       `json:"more,omitempty"`
	Next  string     `json:"next,omitempty"`
}

// SyncResult answers OpSync. Messages are in order: by conversation ID, then
// by seq. Cursors is where this page ended for every conversation of the
// user; send it back as "cursors" for the next page while More is true.
// Convs is filled on the first page only (a request without cursors).
type SyncResult struct {
	Convs    []ConvInfo        `json:"convs,omitempty"`
	Messages []json.RawMessage `json:"messages"`
	Cursors  map[string]uint64 `json:"cursors"`
	More     bool              `json:"more"`
}

// HistoryResult answers OpHistory: messages in ascending seq order. More
// says whether the page was cut short by the limit.
type HistoryResult struct {
	Conv     string            `json:"conv"`
	Messages []json.RawMessage `json:"messages"`
	More     bool              `json:"more"`
}

// ReadsResult answers OpReads: how many members have read up to Seq.
type ReadsResult struct {
	Conv    string   `json:"conv"`
	Seq     uint64   `json:"seq"`
	Read    int      `json:"read"`
	Members int      `json:"members"`
	Users   []string `json:"users,omitempty"` // listed for groups of at most 100 members
}

// MarkResult answers OpRead and OpDelivered with the position now stored
// (never lower than before: marks only move forward).
type MarkResult struct {
	Conv string `json:"conv"`
	Seq  uint64 `json:"seq"`
}
