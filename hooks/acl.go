package hooks

// ACL is the mochi hook that decides, for every PUBLISH, every SUBSCRIBE
// filter and every delivery, whether a client may write or read a topic.
// mochi calls OnACLCheck with write=true for an inbound PUBLISH, and with
// write=false for each filter of a SUBSCRIBE and again for every message it
// delivers to every subscriber, so the check is an in-memory lookup of the
// client's Principal plus a few string comparisons: no I/O, no locks, no
// allocation (BenchmarkACLCheck).
//
// The rules, for a principal of app A (docs/PROTOCOL.md has them in full):
//
//   - Nothing outside w/A/: no root '#' or '+', no other app's topics, no
//     '$' topics except that the admin may read $SYS.
//   - A user U on device D may read w/A/u/U (downlink) and w/A/d/U/D
//     (device topic) exactly, may write only w/A/up/U/D (uplink), may read
//     broadcast channels w/A/b/{channel} (exact names only, subject to
//     ACLOptions.ChannelAllowed), and may use w/A/iot/... as the app's IoT
//     rules allow. No wildcard filter over u/, d/ or up/ is ever allowed,
//     so another user's topics cannot be reached.
//   - A service may read and write w/A/b/... and w/A/iot/... (wildcards
//     included) and nothing else: in particular it never reads a downlink.
//   - An anonymous client may use w/{sandbox}/iot/... as the sandbox rules
//     allow.
//   - "$share/{group}/{filter}" is checked as its filter; a malformed shared
//     filter is refused.
//   - A client without a principal (one that some other hook let in, or a
//     session restored from storage that the Auth hook did not restore)
//     and a revoked principal are refused everything.
//
// mochi ORs the answers of all hooks that provide OnACLCheck, so any other
// hook that answers true would widen these rules. Add no other ACL hook.
// The broker's inline client does not go through the write check (mochi
// skips it), so server-side publishing is unaffected.

import (
	"errors"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
)

// ACLOptions configure the ACL hook.
type ACLOptions struct {
	Principals *Principals
	// ChannelAllowed, if set, is asked whether a user may read a broadcast
	// channel of their app; it runs on every delivery, so it must answer
	// from memory. nil lets users read every channel of their app.
	ChannelAllowed ChannelFunc
}

// ACL authorizes topic access. Create it with NewACL.
type ACL struct {
	mqtt.HookBase
	reg    *Principals
	chanOK ChannelFunc
	denied [numDenyReasons]atomic.Uint64
}

// NewACL builds the hook.
func NewACL(o ACLOptions) (*ACL, error) {
	if o.Principals == nil {
		return nil, errors.New("hooks: ACLOptions.Principals is required")
	}
	return &ACL{reg: o.Principals, chanOK: o.ChannelAllowed}, nil
}

// ID implements mqtt.Hook.
func (a *ACL) ID() string { return "warbler-acl" }

// Provides implements mqtt.Hook.
func (a *ACL) Provides(b byte) bool { return b == mqtt.OnACLCheck }

// OnACLCheck implements mqtt.Hook.
func (a *ACL) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	p := a.reg.Get(cl)
	if p == nil {
		a.denied[denyNoPrincipal].Add(1)
		return false
	}
	if why := check(p, topic, write, a.chanOK); why != allowOK {
		a.denied[why].Add(1)
		return false
	}
	return true
}

// SetChannelAllowed replaces ACLOptions.ChannelAllowed, for a server that
// builds the answer (the chat service) after the ACL. Call it before the
// broker serves clients; it is not safe to call concurrently with checks.
func (a *ACL) SetChannelAllowed(f ChannelFunc) { a.chanOK = f }

// Denials returns the number of refused checks by reason (refused
// publishes, subscriptions and deliveries alike). Every reason is present.
func (a *ACL) Denials() map[string]uint64 {
	m := make(map[string]uint64, numDenyReasons-1)
	for i := denyReason(1); i < numDenyReasons; i++ {
		m[denyNames[i]] = a.denied[i].Load()
	}
	return m
}
