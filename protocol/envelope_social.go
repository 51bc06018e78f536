package protocol

// This file is the part of the chat envelope for group administration,
// typing indicators, presence, and contacts and blocks. docs/PROTOCOL.md
// ("Group administration", "Typing and presence", "Contacts and blocks")
// describes the same in prose.

import (
	"unicode/utf8"
)

// Outbound kinds of this part of the envelope. None of them is stored.
const (
	KindTyping      = "typing"       // a member is typing (Typing)
	KindPresence    = "presence"     // a watched user came online or went offline (PresenceInfo)
	KindJoinRequest = "join_request" // a user asks to join, or was turned down (JoinRequest)
)

// Operations of this part of the envelope.
const (
	OpTyping        = "typing"         // I am typing: conv or to
	OpPresence      = "presence"       // watch users' presence: users (replaces the device's list)
	OpPrivacy       = "privacy"        // read or set who sees my presence: optional presence
	OpContacts      = "contacts"       // my contacts, blocked users and privacy
	OpContactAdd    = "contact_add"    // add contacts: users
	OpContactRemove = "contact_remove" // remove contacts: users
	OpBlock         = "block"          // block users: users
	OpUnblock       = "unblock"        // unblock users: users
	OpMute          = "mute"           // mute members (admins): conv, users, optional duration
	OpUnmute        = "unmute"         // unmute members (admins): conv, users
	OpSettings      = "settings"       // change group settings (admins): conv, settings
	OpAnnounce      = "announce"       // set or clear the announcement (admins): conv, text
	OpTransfer      = "transfer"       // hand ownership over (owner): conv, user
	OpInvite        = "invite"         // create an invite token (admins): conv, optional duration, uses
	OpInvites       = "invites"        // list a conversation's invite tokens (admins): conv
	OpRevoke        = "revoke"         // revoke an invite token (admins): conv, token
	OpJoin          = "join"           // join: token, or conv (open groups, or a join request)
	OpRequests      = "requests"       // pending join requests (admins): conv
	OpApprove       = "approve"        // approve join requests (admins): conv, users
	OpReject        = "reject"         // reject join requests (admins): conv, users
)

// Error codes of this part of the envelope (see the list in envelope.go).
const (
	CodeBlocked = "blocked" // the recipient has blocked the sender
	CodeMuted   = "muted"   // the sender is muted in the group, or the whole group is
	CodeExpired = "expired" // the invite token has expired or has no uses left
)

// Presence states, as they appear on the wire.
const (
	PresenceOnline  = "online"  // at least one device is connected
	PresenceOffline = "offline" // no device is connected; last_seen says since when
	PresenceHidden  = "hidden"  // the user hides their presence from the caller
	PresenceUnknown = "unknown" // the caller may not see this user (or there is no such user)
)

// Privacy settings for presence: who may see it.
const (
	VisibleShared   = "shared"   // contacts and users sharing a direct conversation or group (default)
	VisibleContacts = "contacts" // only users the owner has added as contacts
	VisibleNobody   = "nobody"   // no one: everyone sees "hidden"
)

// Group settings values.
const (
	HistoryAll  = "all"  // new members read the whole history (default)
	HistoryJoin = "join" // new members read from the event that added them

	JoinInvite   = "invite"   // members are added by admins or join with an invite token (default)
	JoinApproval = "approval" // anyone may ask to join; an admin approves
	JoinOpen     = "open"     // anyone who knows the conversation ID may join
)

// Limits of this part of the envelope.
const (
	MaxPresenceUsers   = 200        // users one device may watch
	MaxAnnouncement    = 4096       // bytes of an announcement
	MaxInviteDuration  = 31536000   // seconds an invite token may live (a year)
	MaxMuteDuration    = 31536000   // seconds of a timed mute (longer: mute without a duration)
	maxTokenLen        = 64         // characters of an invite token
	maxInviteUses      = 1000000    // uses of one invite token
	maxJoinRequestText = 256        // bytes of a join request's text
	maxSettingsMembers = 1000000000 // sanity bound of settings.max_members
)

// GroupSettings is the "settings" object of OpSettings; absent fields are
// left as they are.
type GroupSettings struct {
	MuteAll    *bool   `json:"mute_all,omitempty"`
	History    *string `json:"history,omitempty"`
	Join       *string `json:"join,omitempty"`
	MaxMembers *int    `json:"max_members,omitempty"`
}

// GroupInfo is a group's or channel's administration state, in "info"
// (and the results of create, add, remove, role).
type GroupInfo struct {
	MuteAll      bool          `json:"mute_all,omitempty"`
	History      string        `json:"history"`
	Join         string        `json:"join"`
	MaxMembers   int           `json:"max_members"`
	Announcement *Announcement `json:"announcement,omitempty"`
	// MutedUntil is set when the caller is muted: unix ms, or -1 for
	// until unmuted.
	MutedUntil int64 `json:"muted_until,omitempty"`
}

// Announcement is a group's announcement.
type Announcement struct {
	Text string `json:"text"`
	By   string `json:"by"`
	TS   int64  `json:"ts"`
}

// Typing is the outbound notice that a member is typing, kind "typing".
type Typing struct {
	Kind   string `json:"kind"`
	Conv   string `json:"conv"`
	User   string `json:"user"`
	Device string `json:"device,omitempty"`
	TS     int64  `json:"ts"`
}

// TypingResult answers OpTyping when the caller asked for an answer.
// Forwarded is false when the notice was dropped by the rate limit.
type TypingResult struct {
	Conv      string `json:"conv"`
	Forwarded bool   `json:"forwarded"`
}

// PresenceInfo is one user's presence: an entry of PresenceResult, and
// the outbound event (kind "presence") sent to watching devices.
type PresenceInfo struct {
	Kind     string `json:"kind,omitempty"`
	User     string `json:"user"`
	State    string `json:"state"`
	LastSeen int64  `json:"last_seen,omitempty"` // unix ms, for offline
}

// PresenceResult answers OpPresence, one entry per requested user in
// request order.
type PresenceResult struct {
	Users []PresenceInfo `json:"users"`
}

// PrivacyResult answers OpPrivacy.
type PrivacyResult struct {
	Presence string `json:"presence"`
}

// ContactsResult answers OpContacts, OpContactAdd, OpContactRemove,
// OpBlock and OpUnblock.
type ContactsResult struct {
	Contacts []string `json:"contacts"`
	Blocked  []string `json:"blocked"`
	Presence string   `json:"presence"`
}

// MuteResult answers OpMute and OpUnmute: the users whose mute changed and
// until when (unix ms; -1 for until unmuted; 0 for unmuted).
type MuteResult struct {
	Conv  string   `json:"conv"`
	Users []string `json:"users"`
	Until int64    `json:"until"`
}

// Invite is an invite token, the answer to OpInvite and an entry of
// InvitesResult.
type Invite struct {
	Token   string `json:"token"`
	Conv    string `json:"conv"`
	By      string `json:"by"`
	Created int64  `json:"created"`
	Expires int64  `json:"expires"`        // unix ms
	Uses    int    `json:"uses,omitempty"` // 0: unlimited
	Used    int    `json:"used"`
}

// InvitesResult answers OpInvites.
type InvitesResult struct {
	Conv    string   `json:"conv"`
	Invites []Invite `json:"invites"`
}

// JoinResult answers OpJoin: "joined" with the conversation, or
// "pending" when a join request awaits an admin.
type JoinResult struct {
	State string    `json:"state"`
	Conv  *ConvInfo `json:"conv,omitempty"`
}

// JoinRequest is a pending request to join: an entry of RequestsResult,
// and the outbound notice (kind "join_request") to the admins when one is
// made and to the requester when it is rejected (State "rejected").
type JoinRequest struct {
	Kind  string `json:"kind,omitempty"`
	Conv  string `json:"conv"`
	User  string `json:"user"`
	Text  string `json:"text,omitempty"`
	TS    int64  `json:"ts"`
	State string `json:"state,omitempty"`
}

// RequestsResult answers OpRequests.
type RequestsResult struct {
	Conv     string        `json:"conv"`
	Requests []JoinRequest `json:"requests"`
}

// validateSocial checks the ops of this file; handled is false for any
// other op.
func (r *Request) validateSocial(lim Limits) (handled bool, err error) {
	needConv := func() error {
		if r.Conv == "" {
			return Errorf(CodeBadRequest, "conv: required for op %q", r.Op)
		}
		return idErr(CheckID("conv", r.Conv))
	}
	needUsers := func(max int) error {
		if len(r.Users) == 0 {
			return Errorf(CodeBadRequest, "users: at least one user is required for op %q", r.Op)
		}
		if len(r.Users) > max {
			return Errorf(CodeTooLarge, "users: at most %d per request", max)
		}
		for _, u := range r.Users {
			if err := CheckID("users", u); err != nil {
				return idErr(err)
			}
		}
		return nil
	}
	both := func(err1 error, f func() error) error {
		if err1 != nil {
			return err1
		}
		return f()
	}
	switch r.Op {
	case OpTyping:
		if (r.Conv == "") == (r.To == "") {
			return true, Errorf(CodeBadRequest, "exactly one of conv or to is required")
		}
		if r.Conv != "" {
			return true, idErr(CheckID("conv", r.Conv))
		}
		return true, idErr(CheckID("to", r.To))
	case OpPresence:
		if len(r.Users) > MaxPresenceUsers {
			return true, Errorf(CodeTooLarge, "users: at most %d per request", MaxPresenceUsers)
		}
		for _, u := range r.Users {
			if err := CheckID("users", u); err != nil {
				return true, idErr(err)
			}
		}
		return true, nil
	case OpPrivacy:
		switch r.Presence {
		case "", VisibleShared, VisibleContacts, VisibleNobody:
			return true, nil
		}
		return true, Errorf(CodeBadRequest, "presence: one of %s, %s, %s", VisibleShared, VisibleContacts, VisibleNobody)
	case OpContacts:
		return true, nil
	case OpContactAdd, OpContactRemove, OpBlock, OpUnblock:
		return true, needUsers(lim.MaxMembers)
	case OpMute:
		if r.Duration < 0 || r.Duration > MaxMuteDuration {
			return true, Errorf(CodeBadRequest, "duration: seconds between 0 (until unmuted) and %d", MaxMuteDuration)
		}
		return true, both(needConv(), func() error { return needUsers(lim.MaxMembers) })
	case OpUnmute, OpApprove, OpReject:
		return true, both(needConv(), func() error { return needUsers(lim.MaxMembers) })
	case OpSettings:
		if err := needConv(); err != nil {
			return true, err
		}
		s := r.Settings
		if s == nil || s.MuteAll == nil && s.History == nil && s.Join == nil && s.MaxMembers == nil {
			return true, Errorf(CodeBadRequest, "settings: give at least one of mute_all, history, join, max_members")
		}
		if s.History != nil && *s.History != HistoryAll && *s.History != HistoryJoin {
			return true, Errorf(CodeBadRequest, "settings.history: %q or %q", HistoryAll, HistoryJoin)
		}
		if s.Join != nil && *s.Join != JoinInvite && *s.Join != JoinApproval && *s.Join != JoinOpen {
			return true, Errorf(CodeBadRequest, "settings.join: %q, %q or %q", JoinInvite, JoinApproval, JoinOpen)
		}
		if s.MaxMembers != nil && (*s.MaxMembers < 0 || *s.MaxMembers > maxSettingsMembers) {
			return true, Errorf(CodeBadRequest, "settings.max_members: 0 (the server's limit) or a positive number")
		}
		return true, nil
	case OpAnnounce:
		if len(r.Text) > MaxAnnouncement || !utf8.ValidString(r.Text) {
			return true, Errorf(CodeBadRequest, "text: at most %d bytes of UTF-8", MaxAnnouncement)
		}
		return true, needConv()
	case OpTransfer:
		return true, both(needConv(), func() error { return idErr(CheckID("user", r.User)) })
	case OpInvite:
		if r.Duration < 0 || r.Duration > MaxInviteDuration {
			return true, Errorf(CodeBadRequest, "duration: seconds between 0 (the default, 7 days) and %d", MaxInviteDuration)
		}
		if r.Uses < 0 || r.Uses > maxInviteUses {
			return true, Errorf(CodeBadRequest, "uses: between 0 (unlimited) and %d", maxInviteUses)
		}
		return true, needConv()
	case OpInvites, OpRequests:
		return true, needConv()
	case OpRevoke:
		if err := needConv(); err != nil {
			return true, err
		}
		return true, checkToken(r.Token)
	case OpJoin:
		if len(r.Text) > maxJoinRequestText || !utf8.ValidString(r.Text) {
			return true, Errorf(CodeBadRequest, "text: at most %d bytes of UTF-8", maxJoinRequestText)
		}
		if r.Token != nil {
			if err := checkToken(r.Token); err != nil {
				return true, err
			}
			if r.Conv == "" {
				return true, nil
			}
		}
		return true, needConv()
	}
	return false, nil
}

func checkToken(t *string) error {
	if t == nil || *t == "" || len(*t) > maxTokenLen || !ValidID(*t) {
		return Errorf(CodeBadRequest, "token: an invite token (1-%d of A-Z a-z 0-9 _ - .)", maxTokenLen)
	}
	return nil
}
