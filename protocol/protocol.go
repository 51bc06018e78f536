// Package protocol is Warbler's chat-over-MQTT profile in code: the identifier
// rules, the topic namespace every client and hook agrees on, and the wire
// envelope of chat messages. It has no state and no dependencies beyond the
// standard library, so every function here is a pure mapping that can be
// fuzzed. docs/PROTOCOL.md is the prose version of this package.
//
// # Identifiers
//
// App, user, device and conversation IDs are short URL-safe strings:
// 1 to 64 of the bytes [A-Za-z0-9_-] and '.', not starting with '.' ('alice',
// 'ccsend1', 'd1'). Everything that is substituted into a topic is checked by
// ValidID first, so no identifier can carry '/', '+', '#', '$' or NUL into a
// topic and widen what it names.
//
// # Topics
//
// Every topic of an app lives under "w/{app}/":
//
//	w/{app}/u/{user}              downlink: every device of the user subscribes
//	w/{app}/d/{user}/{device}     device topic: replies to this device's requests
//	w/{app}/up/{user}/{device}    uplink: the device publishes here to send
//	w/{app}/b/{channel}           broadcast and channel topics, written by services
//	w/{app}/iot/...               plain MQTT area, governed by the app's pattern rules
//
// The MQTT client ID of a user's device is "{app}:{user}:{device}"; the broker
// refuses any other client ID for that token, so no one can inherit another
// user's or another app's session.
package protocol

import (
	"errors"
	"strings"
)

// MaxIDLen is the longest identifier accepted anywhere in the protocol.
const MaxIDLen = 64

// ErrBadID is returned for an identifier that breaks the identifier rules.
var ErrBadID = errors.New("identifier must be 1-64 characters of A-Z a-z 0-9 _ - . and not start with '.'")

// ValidID reports whether s is a well-formed identifier.
func ValidID(s string) bool {
	if len(s) == 0 || len(s) > MaxIDLen || s[0] == '.' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '-', c == '.':
		default:
			return false
		}
	}
	return true
}

// CheckID returns ErrBadID (wrapped with the field name) if s is not valid.
func CheckID(field, s string) error {
	if !ValidID(s) {
		return &IDError{Field: field, Value: s}
	}
	return nil
}

// IDError names the field whose identifier was refused.
type IDError struct {
	Field string
	Value string
}

func (e *IDError) Error() string { return e.Field + ": " + ErrBadID.Error() }
func (e *IDError) Unwrap() error { return ErrBadID }

// ClientID is the MQTT client ID a user's device must connect with.
func ClientID(app, user, device string) string { return app + ":" + user + ":" + device }

// ParseClientID splits a client ID made by ClientID. ok is false unless all
// three parts are valid identifiers.
func ParseClientID(cid string) (app, user, device string, ok bool) {
	parts := strings.Split(cid, ":")
	if len(parts) != 3 || !ValidID(parts[0]) || !ValidID(parts[1]) || !ValidID(parts[2]) {
		return "", "", "", false
	}
	return parts[0], parts[1], parts[2], true
}

// Root is the topic prefix of an app, with a trailing slash.
func Root(app string) string { return "w/" + app + "/" }

// Downlink is the topic that all devices of a user subscribe to.
func Downlink(app, user string) string { return "w/" + app + "/u/" + user }

// DeviceTopic is the per-device topic that carries replies to requests.
func DeviceTopic(app, user, device string) string {
	return "w/" + app + "/d/" + user + "/" + device
}

// Uplink is the topic a device publishes to in order to send.
func Uplink(app, user, device string) string {
	return "w/" + app + "/up/" + user + "/" + device
}

// Broadcast is the topic of a broadcast channel of an app.
func Broadcast(app, channel string) string { return "w/" + app + "/b/" + channel }

// IoTPrefix is the root of an app's plain MQTT area.
func IoTPrefix(app string) string { return "w/" + app + "/iot/" }

// Kind classifies a concrete topic (no wildcards) of the namespace.
type Kind int

// The kinds of topic in the namespace.
const (
	KindInvalid   Kind = iota // not in the namespace, or malformed
	KindDownlink              // w/{app}/u/{user}
	KindDevice                // w/{app}/d/{user}/{device}
	KindUplink                // w/{app}/up/{user}/{device}
	KindBroadcast             // w/{app}/b/{channel}
	KindIoT                   // w/{app}/iot/...
)

// Topic is a parsed topic of the namespace.
type Topic struct {
	Kind    Kind
	App     string
	User    string // downlink, device, uplink
	Device  string // device, uplink
	Channel string // broadcast
	Rest    string // iot: the part after "w/{app}/iot/"
}

// ParseTopic classifies a concrete topic name. Wildcards are not accepted
// here: a filter is matched with ParseFilter.
func ParseTopic(t string) Topic {
	if strings.ContainsAny(t, "+#\x00") {
		return Topic{}
	}
	rest, ok := strings.CutPrefix(t, "w/")
	if !ok {
		return Topic{}
	}
	app, rest, ok := strings.Cut(rest, "/")
	if !ok || !ValidID(app) {
		return Topic{}
	}
	kind, rest, ok := strings.Cut(rest, "/")
	if !ok {
		return Topic{}
	}
	parts := strings.Split(rest, "/")
	switch kind {
	case "u":
		if len(parts) == 1 && ValidID(parts[0]) {
			return Topic{Kind: KindDownlink, App: app, User: parts[0]}
		}
	case "d", "up":
		if len(parts) == 2 && ValidID(parts[0]) && ValidID(parts[1]) {
			k := KindDevice
			if kind == "up" {
				k = KindUplink
			}
			return Topic{Kind: k, App: app, User: parts[0], Device: parts[1]}
		}
	case "b":
		if len(parts) == 1 && ValidID(parts[0]) {
			return Topic{Kind: KindBroadcast, App: app, Channel: parts[0]}
		}
	case "iot":
		if rest != "" {
			return Topic{Kind: KindIoT, App: app, Rest: rest}
		}
	}
	return Topic{}
}

// FilterIsExact reports whether an MQTT topic filter has no wildcards.
func FilterIsExact(f string) bool { return !strings.ContainsAny(f, "+#") }

// SplitShared strips a "$share/{group}/" prefix from a subscription filter.
// ok is false for a malformed shared filter ("$share/g", "$share//t", a
// wildcard in the group name), which must be refused.
func SplitShared(f string) (group, filter string, shared, ok bool) {
	if len(f) < 7 || !strings.EqualFold(f[:7], "$share/") {
		return "", f, false, true
	}
	group, filter, found := strings.Cut(f[7:], "/")
	if !found || group == "" || filter == "" || strings.ContainsAny(group, "+#") {
		return group, filter, true, false
	}
	return group, filter, true, true
}

// ValidFilter reports whether f is a well-formed MQTT topic filter: '#' only
// as the last level on its own, '+' only as a whole level, no NUL, and at most
// maxLevels levels.
func ValidFilter(f string, maxLevels int) bool {
	if f == "" || strings.ContainsRune(f, 0) {
		return false
	}
	levels := strings.Split(f, "/")
	if maxLevels > 0 && len(levels) > maxLevels {
		return false
	}
	for i, l := range levels {
		if strings.Contains(l, "#") && (l != "#" || i != len(levels)-1) {
			return false
		}
		if strings.Contains(l, "+") && l != "+" {
			return false
		}
	}
	return true
}

// MatchFilter reports whether topic t matches filter f under MQTT rules
// (without the $-topic exception, which callers apply).
func MatchFilter(f, t string) bool {
	for {
		fl, frest, fmore := strings.Cut(f, "/")
		if fl == "#" {
			return true
		}
		tl, trest, tmore := strings.Cut(t, "/")
		if fl != "+" && fl != tl {
			return false
		}
		if !fmore && !tmore {
			return true
		}
		if !fmore {
			return false
		}
		if !tmore {
			// "a/#" matches "a"
			return frest == "#"
		}
		f, t = frest, trest
	}
}
