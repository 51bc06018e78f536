package chat

// Unread counts.
//
// A conversation's unread count is the number of messages after the user's
// read position that a person would count as new: what other users sent
// (text, attachments, any app-defined type), an announcement an admin
// posted, and a call the user missed. The log also holds events that are
// not new messages (edits, recalls and reactions, call state changes, and
// system events such as members added, a rename or new settings); they
// move last_seq but not the badge, as users of any messenger expect. A
// message the user wrote never counts, and neither does one recalled
// since (its stored copy says so).
//
// The count is exact only by reading the entries between the read position
// and the head, so it is bounded: at most unreadScan entries are looked at,
// starting after the read position, and when more lie beyond them ConvInfo
// says so with unread_more (the count is then a lower bound, which a badge
// shows as "999+" or the like). A conversation that is read to the head
// reads nothing; one that is not costs one range read of the log, and the
// entries the user wrote are skipped without decoding them.

import (
	"context"
	"encoding/json"

	"github.com/warblerim/warbler/protocol"
)

// unreadScan bounds how many log entries one unread count reads. A
// variable only so that a test can make it small.
var unreadScan = 1000

// unreadEntry is the part of a stored message the count looks at.
type unreadEntry struct {
	Type     string `json:"type"`
	Recalled bool   `json:"recalled"`
	Body     struct {
		Event  string  `json:"event"`  // system events
		Text   *string `json:"text"`   // the announcement
		State  string  `json:"state"`  // call events
		Reason string  `json:"reason"` // call events
	} `json:"body"`
}

// Countable reports whether a stored message, written by someone other
// than the reader, counts as unread: see the comment at the top of
// unread.go.
func countable(data []byte) bool {
	var e unreadEntry
	if err := json.Unmarshal(data, &e); err != nil {
		return false // unreadable: nothing to show either
	}
	switch e.Type {
	case protocol.TypeEdit, protocol.TypeRecall, protocol.TypeReaction:
		return false
	case protocol.TypeCall:
		// A missed call: the caller gave up or nobody answered in time.
		return e.Body.State == protocol.CallEnded && (e.Body.Reason == "canceled" || e.Body.Reason == "timeout")
	case protocol.TypeSystem:
		return e.Body.Event == "announcement" && e.Body.Text != nil && *e.Body.Text != ""
	}
	return !e.Recalled
}

// unread counts the countable messages of conv after read up to last for
// user; more is true when the scan stopped at unreadScan entries short of
// last.
func (s *Service) unread(ctx context.Context, app, conv, user string, read, last uint64) (n uint64, more bool, err error) {
	if last <= read || user == "" { // user "": a service that is no member
		return 0, false, nil
	}
	limit := unreadScan
	if last-read < uint64(unreadScan) {
		limit = int(last - read)
	}
	es, err := s.store.Range(ctx, app, conv, read+1, true, limit)
	if err != nil {
		return 0, false, err
	}
	for _, e := range es {
		if e.Seq > last {
			break
		}
		if e.Sender != user && countable(e.Data) {
			n++
		}
	}
	return n, len(es) == limit && es[len(es)-1].Seq < last, nil
}
