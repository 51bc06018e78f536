package hooks

import (
	"strings"
	"sync"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/warblerim/warbler/identity"
	"github.com/warblerim/warbler/protocol"
)

// PrincipalKind says what authenticated an MQTT client.
type PrincipalKind uint8

// The kinds of principal.
const (
	KindUser      PrincipalKind = iota + 1 // a user's device, by access token
	KindService                            // an app's backend, by API key with the "publish" scope
	KindAnonymous                          // a client of an anonymous listener
	KindAdmin                              // the operator, by the admin key
)

func (k PrincipalKind) String() string {
	switch k {
	case KindUser:
		return "user"
	case KindService:
		return "service"
	case KindAnonymous:
		return "anonymous"
	case KindAdmin:
		return "admin"
	}
	return "unknown"
}

// Principal is who an MQTT client authenticated as. The Auth hook creates
// it at CONNECT; the ACL hook reads it on every check. Its fields do not
// change after creation, except for the revoked flag.
type Principal struct {
	Kind     PrincipalKind
	App      string // the app whose topics the client may use ("_admin" for the admin)
	User     string // user ID; "_svc" for services; "" for anonymous clients
	Device   string // device ID; the service name for services
	ClientID string
	KeyID    string // services and admin: the API key used
	Session  string // users: the sign-in session (sid) of the token
	TokenID  string // users: the token's jti

	client  *mqtt.Client
	rules   *identity.Rules // IoT rules (users), sandbox rules (anonymous)
	revoked atomic.Bool

	// Topic names, computed once so that a check only compares strings.
	root, downlink, device, uplink string
}

func newPrincipal(kind PrincipalKind, cl *mqtt.Client, app, user, device string) *Principal {
	p := &Principal{Kind: kind, App: app, User: user, Device: device, ClientID: cl.ID, client: cl}
	if kind != KindAdmin {
		p.root = protocol.Root(app)
	}
	if kind == KindUser {
		p.downlink = protocol.Downlink(app, user)
		p.device = protocol.DeviceTopic(app, user, device)
		p.uplink = protocol.Uplink(app, user, device)
	}
	return p
}

// Revoked reports whether the principal was revoked after it connected.
func (p *Principal) Revoked() bool { return p.revoked.Load() }

// Principals is the in-memory registry of authenticated clients, keyed by
// client ID, shared by the Auth hook (which writes it) and the ACL hook
// (which reads it on every check, without locking).
//
// An entry lives as long as the session of the exact *mqtt.Client that
// authenticated: it is removed when that client disconnects with a session
// that expires at once, or when the broker later expires the session. A
// persistent session keeps its entry while offline, so messages queued
// for it pass the read ACL. A new connection with the same client ID
// replaces the entry, and the stale client's disconnect leaves the new
// entry alone. Sessions restored from storage at start have no entry, and
// receive nothing until their owner connects again, unless the Auth hook
// runs with AuthOptions.RestoreSessions.
type Principals struct {
	m sync.Map // client ID -> *Principal
}

// NewPrincipals returns an empty registry.
func NewPrincipals() *Principals { return &Principals{} }

// Get returns the principal of cl, or nil if cl is not the client that
// authenticated under its ID.
func (r *Principals) Get(cl *mqtt.Client) *Principal {
	v, ok := r.m.Load(cl.ID)
	if !ok {
		return nil
	}
	p := v.(*Principal)
	if p.client != cl {
		return nil
	}
	return p
}

// Lookup returns the principal registered for a client ID.
func (r *Principals) Lookup(clientID string) (*Principal, bool) {
	v, ok := r.m.Load(clientID)
	if !ok {
		return nil, false
	}
	return v.(*Principal), true
}

// Len returns the number of registered principals.
func (r *Principals) Len() int {
	n := 0
	r.m.Range(func(any, any) bool { n++; return true })
	return n
}

func (r *Principals) set(p *Principal) { r.m.Store(p.ClientID, p) }

// remove deletes the entry of cl if it is still cl's.
func (r *Principals) remove(cl *mqtt.Client) {
	if v, ok := r.m.Load(cl.ID); ok && v.(*Principal).client == cl {
		r.m.CompareAndDelete(cl.ID, v)
	}
}

// revoke marks every principal that ev covers as revoked, and returns them.
// It walks the whole registry, which is fine for an event as rare as a
// revocation.
func (r *Principals) revoke(ev identity.RevokeEvent) []*Principal {
	var out []*Principal
	r.m.Range(func(_, v any) bool {
		p := v.(*Principal)
		if matchRevoke(p, ev) {
			p.revoked.Store(true)
			out = append(out, p)
		}
		return true
	})
	return out
}

func matchRevoke(p *Principal, ev identity.RevokeEvent) bool {
	if p.App != ev.App || p.Kind == KindAnonymous {
		return false
	}
	switch {
	case ev.KeyID != "":
		return p.KeyID == ev.KeyID
	case ev.User == "":
		return true // the whole app
	case p.Kind != KindUser || p.User != ev.User:
		return false
	case ev.SessionID != "":
		return p.Session == ev.SessionID
	case ev.TokenID != "":
		return p.TokenID == ev.TokenID
	}
	return true // every session of the user
}

// ChannelFunc decides whether a user may subscribe to, and receive, the
// broadcast channel w/{app}/b/{channel} of their app. It runs on every
// delivery, so it must answer from memory in constant time.
type ChannelFunc func(p *Principal, channel string) bool

// Why a check was refused; the index of a denial counter.
type denyReason uint8

const (
	allowOK denyReason = iota
	denyNoPrincipal
	denyRevoked
	denyBadShared
	denySys
	denyRootWildcard
	denyOtherApp
	denyNotPermitted
	numDenyReasons
)

var denyNames = [numDenyReasons]string{
	allowOK:          "ok",
	denyNoPrincipal:  "no_principal",
	denyRevoked:      "revoked",
	denyBadShared:    "bad_shared_filter",
	denySys:          "sys_topic",
	denyRootWildcard: "root_wildcard",
	denyOtherApp:     "outside_app",
	denyNotPermitted: "not_permitted",
}

// check is the whole access policy, as a pure function of the principal,
// the topic (a topic name, or a filter when subscribing) and the direction.
// It does no I/O and does not allocate. See docs/PROTOCOL.md for the rules
// in prose.
func check(p *Principal, topic string, write bool, channelOK ChannelFunc) denyReason {
	if p.revoked.Load() {
		return denyRevoked
	}
	f := topic
	if !write {
		_, inner, shared, ok := protocol.SplitShared(topic)
		if !ok {
			return denyBadShared
		}
		if shared {
			f = inner // "$share/g/x" is checked as "x"
		}
	}
	if f == "" {
		return denyNotPermitted
	}
	switch f[0] {
	case '$':
		if p.Kind == KindAdmin && !write && (f == "$SYS" || strings.HasPrefix(f, "$SYS/")) {
			return allowOK
		}
		return denySys
	case '#', '+':
		return denyRootWildcard
	}
	if p.Kind == KindAdmin || !strings.HasPrefix(f, p.root) {
		return denyOtherApp
	}
	rest := f[len(p.root):]
	switch p.Kind {
	case KindUser:
		if write {
			if f == p.uplink {
				return allowOK
			}
		} else {
			if f == p.downlink || f == p.device {
				return allowOK
			}
			if ch, ok := strings.CutPrefix(rest, "b/"); ok && protocol.ValidID(ch) &&
				(channelOK == nil || channelOK(p, ch)) {
				return allowOK
			}
		}
		if strings.HasPrefix(rest, "iot/") && p.rules.Allow(f, p.User, p.ClientID, write) {
			return allowOK
		}
	case KindService:
		if (strings.HasPrefix(rest, "b/") && len(rest) > 2) || (strings.HasPrefix(rest, "iot/") && len(rest) > 4) {
			return allowOK
		}
	case KindAnonymous:
		if strings.HasPrefix(rest, "iot/") && p.rules.Allow(f, "", p.ClientID, write) {
			return allowOK
		}
	}
	return denyNotPermitted
}
