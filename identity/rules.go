package identity

import (
	"strconv"
	"strings"

	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage"
)

// Topic rules grant access to an app's plain MQTT area, w/{app}/iot/, in
// the style of mosquitto's ACL patterns. A rule is
//
//	{"pattern": "w/{app}/iot/%u/#", "access": "readwrite"}
//
// where:
//
//   - pattern is an MQTT topic filter that starts with "w/{app}/iot/" and
//     has at least one more level. "{app}" may be written literally (it is
//     replaced by the app's ID) or as the ID itself.
//   - "%u" stands for the connecting user's ID and "%c" for its MQTT client
//     ID ("{app}:{user}:{device}"). Each must fill a whole level: "%u" is
//     allowed, "dev-%u" is not. Substitution happens after the identifiers
//     were checked by protocol.ValidID, so a substituted value never holds
//     '/', '+', '#' or NUL and cannot widen the pattern. A rule with "%u"
//     never matches a client that has no user (an anonymous client).
//   - access is "read" (subscribe and receive), "write" (publish) or
//     "readwrite".
//
// A subscription is allowed only if its filter is covered by a rule: every
// topic the filter can match must match the rule. "w/{app}/iot/%u/#" allows
// alice to subscribe to "w/demo/iot/alice/+" but not "w/demo/iot/+/temp".
// An app has at most MaxRules rules, each at most MaxRuleLevels levels deep.

// Limits on topic rules.
const (
	MaxRules      = 32
	MaxRuleLevels = 32
)

// Access bits of a rule.
const (
	AccessRead  = 1
	AccessWrite = 2
)

const (
	subUser   = "%u"
	subClient = "%c"
)

type rule struct {
	levels []string // "%u" and "%c" kept as markers
	access uint8
}

// Rules is a compiled, immutable set of topic rules of one app.
type Rules struct {
	rules []rule
}

// CompileRules validates rs for app and compiles them. It returns an
// *InvalidError naming the first bad rule.
func CompileRules(app string, rs []storage.TopicRule) (*Rules, error) {
	if len(rs) > MaxRules {
		return nil, invalid("iot_rules", "at most %d rules", MaxRules)
	}
	root := protocol.IoTPrefix(app)
	out := &Rules{}
	for i, r := range rs {
		field := "iot_rules[" + strconv.Itoa(i) + "]"
		var acc uint8
		switch r.Access {
		case "read":
			acc = AccessRead
		case "write":
			acc = AccessWrite
		case "readwrite":
			acc = AccessRead | AccessWrite
		default:
			return nil, invalid(field, `access must be "read", "write" or "readwrite"`)
		}
		pat := strings.ReplaceAll(r.Pattern, "{app}", app)
		if !strings.HasPrefix(pat, root) || len(pat) == len(root) {
			return nil, invalid(field, "pattern must start with %q and name at least one level below it", "w/{app}/iot/")
		}
		if !protocol.ValidFilter(pat, MaxRuleLevels) {
			return nil, invalid(field, "pattern is not a valid MQTT filter of at most %d levels", MaxRuleLevels)
		}
		levels := strings.Split(pat, "/")
		for _, l := range levels {
			if strings.Contains(l, "%") && l != subUser && l != subClient {
				return nil, invalid(field, `%%u and %%c must each fill a whole level, and no other %% is allowed`)
			}
			if strings.ContainsAny(l, "${}") {
				return nil, invalid(field, "pattern levels may not contain '$', '{' or '}'")
			}
		}
		out.rules = append(out.rules, rule{levels: levels, access: acc})
	}
	return out, nil
}

// Allow reports whether a client with the given user ID (empty for an
// anonymous client) and client ID may publish to (write) or subscribe to
// and receive (read) the topic or filter f. It does not allocate.
func (r *Rules) Allow(f, user, clientID string, write bool) bool {
	if r == nil {
		return false
	}
	need := uint8(AccessRead)
	if write {
		need = AccessWrite
	}
	for i := range r.rules {
		if r.rules[i].access&need != 0 && r.rules[i].covers(f, user, clientID) {
			return true
		}
	}
	return false
}

// Len is the number of rules.
func (r *Rules) Len() int {
	if r == nil {
		return 0
	}
	return len(r.rules)
}

// covers reports whether every topic matched by filter f is matched by
// the rule, with %u and %c replaced by user and cid.
func (r *rule) covers(f, user, cid string) bool {
	n := len(r.levels)
	for i, pl := range r.levels {
		if pl == "#" {
			return true // '#' is the last level, by validation
		}
		fl, rest, more := strings.Cut(f, "/")
		switch pl {
		case "+":
			if fl == "#" {
				return false
			}
		case subUser:
			if user == "" || fl != user {
				return false
			}
		case subClient:
			if cid == "" || fl != cid {
				return false
			}
		default:
			if fl != pl {
				return false
			}
		}
		if i == n-1 {
			return !more // the filter must not be deeper than the rule
		}
		if !more {
			// The filter stops here; "a/#" also matches "a".
			return i == n-2 && r.levels[n-1] == "#"
		}
		f = rest
	}
	return false
}
