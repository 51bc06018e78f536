package storage

// Chat persistence contracts: the per-conversation message log, the
// conversations and their members, per-user and per-device positions, and
// the dedupe entries that make sends idempotent. The chat package is the
// only caller; message data is opaque bytes here.
//
// Positions are sequence numbers: every conversation numbers its messages
// 1, 2, 3, ... with no gaps. A reader's position is "everything up to and
// including seq". Positions only move forward.

import (
	"context"
	"errors"
	"time"
)

// ErrLimit is returned when a write would exceed a limit the caller set,
// such as the maximum size of a group.
var ErrLimit = errors.New("storage: limit exceeded")

// ConvKind is the kind of a conversation.
type ConvKind string

// Conversation kinds.
const (
	KindDirect  ConvKind = "direct"  // two users, created on first send
	KindGroup   ConvKind = "group"   // every member may write
	KindChannel ConvKind = "channel" // admins and services write, members read
)

// Role is a member's role in a conversation.
type Role string

// Member roles, from most to least powerful.
const (
	RoleOwner  Role = "owner"
	RoleAdmin  Role = "admin"
	RoleMember Role = "member"
)

// Conversation is the record of one conversation.
type Conversation struct {
	ID        string
	Kind      ConvKind
	Name      string
	CreatedBy string
	Created   int64 // unix ms
	Members   int   // current member count, kept by the store
}

// Member is one user's membership of a conversation, with how far they have
// read it.
type Member struct {
	User   string
	Role   Role
	Joined int64  // unix ms
	Read   uint64 // read up to and including this seq
}

// LogEntry is one message in a conversation's log. Data is the encoded
// message exactly as it is delivered; the log never looks inside it.
type LogEntry struct {
	Conv   string
	Seq    uint64
	TS     int64  // unix ms; retention by age uses it
	Sender string // author's user ID; receipts are routed by it
	Data   []byte
}

// DedupeKey names one client message: the sending device's own ID for it.
type DedupeKey struct {
	User, Device, CMID string
}

// DedupeRecord is where a client message landed.
type DedupeRecord struct {
	Conv string
	ID   string
	Seq  uint64
	TS   int64
}

// Dedupe is a dedupe entry to write with an append; it expires after TTL.
type Dedupe struct {
	Key    DedupeKey
	Record DedupeRecord
	TTL    time.Duration
}

// ReadMark advances a member's read position as part of an append (the
// author has read their own message).
type ReadMark struct {
	Conv, User string
	Seq        uint64
}

// AppendBatch is one atomic, durable write: messages plus the entries that
// must become visible with them, or not at all.
type AppendBatch struct {
	Entries []LogEntry
	Dedupe  []Dedupe
	Reads   []ReadMark
	// Updates rewrite entries already in the log (same conversation, same
	// seq, new Data): the message an edit, recall or reaction appended in
	// Entries acts on. They become durable with the rest of the batch or
	// not at all. An update of an entry that is not in the log (trimmed by
	// retention) fails the batch with ErrNotFound.
	Updates []LogEntry
}

// MessageLog is the per-conversation message log.
type MessageLog interface {
	// Append writes b atomically and durably: when it returns nil every
	// entry is on stable storage. Within each conversation the entries must
	// continue the log without a gap: the first has seq LastSeq+1 and each
	// next one seq+1. Otherwise nothing is written and the error is
	// ErrConflict, meaning another writer moved the conversation: re-read
	// LastSeq and try again. Any other error means nothing was stored.
	Append(ctx context.Context, app string, b AppendBatch) error
	// AppendAsync is Append without the wait, for callers that pipeline
	// their writes. If it returns an error, nothing was queued and done is
	// never called. Otherwise b is queued and done is called exactly once,
	// with what Append would have returned, after b is durable or has
	// failed. Queued appends are carried out in the order they were
	// queued, so an append queued behind a failed one of the same
	// conversation finds the log without it and fails with ErrConflict:
	// a failure never leaves a gap. The done calls happen in queue order,
	// one at a time, on the store's own goroutine, so done must be quick
	// and must not wait for the store. ctx bounds only the wait for room
	// in the queue.
	AppendAsync(ctx context.Context, app string, b AppendBatch, done func(error)) error
	// Range returns up to limit entries of conv, starting at seq from and
	// moving forward (ascending) or backward (descending). Missing seqs
	// (trimmed by retention) are skipped. Only durable entries are returned.
	Range(ctx context.Context, app, conv string, from uint64, forward bool, limit int) ([]LogEntry, error)
	// LastSeq is the highest durable seq of conv, 0 for an empty log. It
	// does not go down when retention trims the log.
	LastSeq(ctx context.Context, app, conv string) (uint64, error)
	// Trim deletes the entries of conv whose TS is before olderThan (unix
	// ms; 0 for no age limit) and all but the newest keep entries (0 for no
	// count limit). It returns how many it deleted.
	Trim(ctx context.Context, app, conv string, olderThan int64, keep int) (int, error)
}

// Deduper finds the message a device already sent with a given cmid.
type Deduper interface {
	// LookupDedupe returns the record written with an earlier append, or
	// ErrNotFound if there is none or it has expired.
	LookupDedupe(ctx context.Context, app string, k DedupeKey) (DedupeRecord, error)
}

// Conversations stores conversations and their members.
type Conversations interface {
	// CreateConversation writes c with its first members, or returns
	// ErrExists if the ID is taken.
	CreateConversation(ctx context.Context, app string, c Conversation, members []Member) error
	// GetConversation returns ErrNotFound if there is no such conversation.
	GetConversation(ctx context.Context, app, conv string) (Conversation, error)
	// GetMember returns ErrNotFound if user is not a member of conv.
	GetMember(ctx context.Context, app, conv, user string) (Member, error)
	// ListMembers returns members in user ID order, starting at user start
	// (inclusive; "" for the beginning), at most limit (0 for all).
	ListMembers(ctx context.Context, app, conv, start string, limit int) ([]Member, error)
	// AddMembers adds the users that are not members yet and returns them.
	// It fails with ErrLimit, adding no one, if the conversation would then
	// have more than max members (0 for no limit), and with ErrNotFound if
	// the conversation does not exist.
	AddMembers(ctx context.Context, app, conv string, members []Member, max int) ([]string, error)
	// RemoveMembers removes the users that are members and returns them.
	RemoveMembers(ctx context.Context, app, conv string, users []string) ([]string, error)
	// SetRole changes a member's role; ErrNotFound if not a member.
	SetRole(ctx context.Context, app, conv, user string, role Role) error
	// RenameConversation sets a conversation's name; ErrNotFound if there
	// is no such conversation.
	RenameConversation(ctx context.Context, app, conv, name string) error
	// DeleteConversation deletes a conversation: its log first (in
	// chunks), then in one transaction its record, head, members, the
	// members' index entries and their devices' delivered positions. It
	// returns the users who were members; ErrNotFound if there is no such
	// conversation. If it fails part way, what is left is a conversation
	// with part of its log, and calling it again finishes the job.
	DeleteConversation(ctx context.Context, app, conv string) ([]string, error)
	// UserConversations lists the IDs of the conversations user belongs
	// to, in ID order from start (inclusive), at most limit (0 for all).
	UserConversations(ctx context.Context, app, user, start string, limit int) ([]string, error)
	// WalkConversations calls fn for every conversation of every app, in
	// key order, until fn returns an error. fn must not call the store.
	WalkConversations(ctx context.Context, fn func(app, conv string) error) error
}

// ChatState stores read and delivery positions.
type ChatState interface {
	// MarkRead moves user's read position in conv forward to seq and
	// returns the previous position. A seq at or below it changes nothing.
	// ErrNotFound if user is not a member.
	MarkRead(ctx context.Context, app, conv, user string, seq uint64) (prev uint64, err error)
	// SetCursor moves a device's delivered position in conv forward to seq
	// and returns the previous one (0 if none).
	SetCursor(ctx context.Context, app, user, device, conv string, seq uint64) (prev uint64, err error)
	// Cursors returns every delivered position of one device.
	Cursors(ctx context.Context, app, user, device string) (map[string]uint64, error)
}

// ChatStore is everything the chat service needs from storage.
type ChatStore interface {
	MessageLog
	Deduper
	Conversations
	ChatState
}
