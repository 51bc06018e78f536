package webhook

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Event types.
const (
	// EventMessageCreated: a chat message was stored. Data is
	// {"message": envelope}, the stored envelope exactly as devices get it;
	// its body is passed through unread.
	EventMessageCreated = "message.created"
	// EventMessageUpdated: a message was edited, recalled or reacted to.
	// Data is {"message": envelope}, the stored event (type "edit",
	// "recall" or "reaction", with "ref" naming the original message).
	EventMessageUpdated = "message.updated"
	// EventConversationUpdated: a group or channel was created, or its
	// members, roles or name changed. Data is {"conv", "change",
	// "message"}, where message is the "system" envelope that recorded the
	// change in the conversation's log and change is its event (created,
	// added, removed, left, role, ...).
	EventConversationUpdated = "conversation.updated"
	// EventUserOnline: a user's first device connected. Data is {"user",
	// "device"}.
	EventUserOnline = "user.online"
	// EventUserOffline: a user's last device disconnected. Data is
	// {"user", "device"}.
	EventUserOffline = "user.offline"
	// EventPushFailed: a push notification failed for good. Data is the
	// push ledger entry's public fields (id, user, device, provider, conv,
	// seq, msg_id, reason, status, attempts).
	EventPushFailed = "push.failed"
	// EventTest is sent by the test route only; endpoints cannot subscribe
	// to it and always receive it.
	EventTest = "webhook.test"
)

// EventTypes lists the types endpoints may subscribe to.
var EventTypes = []string{EventMessageCreated, EventMessageUpdated, EventConversationUpdated, EventUserOnline, EventUserOffline, EventPushFailed}

// Event is what an endpoint receives: the request body is its JSON.
type Event struct {
	// ID identifies the event; every delivery of it, to any endpoint and
	// on any retry, carries the same ID, so receivers dedupe on it.
	ID   string `json:"id"`
	Type string `json:"type"`
	App  string `json:"app"`
	// Created is when the event happened, in unix milliseconds.
	Created int64           `json:"created"`
	Data    json.RawMessage `json:"data"`
}

// MaxFilters bounds the entries of an endpoint's event filter.
const MaxFilters = 32

// ParseEvents validates an endpoint's event filter and returns it sorted
// and without duplicates. Each entry is an event type, "*" (every type,
// also types added later) or a family such as "message.*" or "user.*". An
// empty filter is an error: an endpoint that wants nothing should be
// disabled instead.
func ParseEvents(in []string) ([]string, error) {
	if len(in) == 0 {
		return nil, fmt.Errorf("events: give at least one of %s, a family such as \"user.*\", or \"*\"", strings.Join(EventTypes, ", "))
	}
	if len(in) > MaxFilters {
		return nil, fmt.Errorf("events: at most %d entries", MaxFilters)
	}
	out := make([]string, 0, len(in))
	for _, f := range in {
		if !validFilter(f) {
			if len(f) > 64 {
				f = f[:64] + "..."
			}
			return nil, fmt.Errorf("events: %q is not one of %s, a family such as \"user.*\", or \"*\"", f, strings.Join(EventTypes, ", "))
		}
		if !slices.Contains(out, f) {
			out = append(out, f)
		}
	}
	slices.Sort(out)
	return out, nil
}

func validFilter(f string) bool {
	if f == "*" || slices.Contains(EventTypes, f) {
		return true
	}
	fam, ok := strings.CutSuffix(f, ".*")
	if !ok || fam == "" || strings.ContainsAny(fam, ".*") {
		return false
	}
	for _, t := range EventTypes {
		if strings.HasPrefix(t, fam+".") {
			return true
		}
	}
	return false
}

// Matches reports whether a filter returned by ParseEvents selects typ.
func Matches(filter []string, typ string) bool {
	for _, f := range filter {
		switch {
		case f == "*", f == typ:
			return true
		case strings.HasSuffix(f, ".*") && strings.HasPrefix(typ, f[:len(f)-1]):
			return true
		}
	}
	return false
}

// newID returns prefix followed by 32 hex digits: 48 bits of unix
// milliseconds, then 80 random bits, so IDs sort by creation time.
func newID(prefix string, now time.Time) string {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], uint64(now.UnixMilli())<<16)
	_, _ = rand.Read(b[6:])
	return prefix + hex.EncodeToString(b[:])
}
