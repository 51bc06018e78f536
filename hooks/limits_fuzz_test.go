package hooks

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/warblerim/warbler/storage"
)

// FuzzNormalizeBan feeds arbitrary ban kinds, values and reasons (as an
// admin API body would carry them) to NormalizeBan. An accepted ban must
// be in canonical form: normalizing it again changes nothing, an IP ban's
// value parses as an address or a masked range, and a user ban names a
// valid app and user. A refused one must say ErrInvalidBan.
func FuzzNormalizeBan(f *testing.F) {
	for _, s := range [][3]string{
		{"ip", "10.1.2.3/8", ""}, {"ip", "::ffff:1.2.3.4", "x"}, {"ip", "1.2.3.4/32", ""},
		{"ip", "fe80::1%eth0", ""}, {"ip", "1.2.3.4/33", ""}, {"user", "demo:alice", "spam"},
		{"user", "demo:", ""}, {"client_id", "demo:alice:phone", ""}, {"client_id", "", ""},
		{"nope", "x", ""}, {"ip", "", ""}, {"ip", "::/0", ""},
	} {
		f.Add(s[0], s[1], s[2])
	}
	f.Fuzz(func(t *testing.T, kind, value, reason string) {
		b, err := NormalizeBan(storage.Ban{Kind: kind, Value: value, Reason: reason})
		if err != nil {
			if !errors.Is(err, ErrInvalidBan) {
				t.Fatalf("error %v is not ErrInvalidBan", err)
			}
			return
		}
		again, err := NormalizeBan(b)
		if err != nil || again != b {
			t.Fatalf("not canonical: %+v normalizes to %+v, %v", b, again, err)
		}
		switch kind {
		case storage.BanIP:
			if p, err := netip.ParsePrefix(b.Value); err == nil {
				if p != p.Masked() || p.IsSingleIP() {
					t.Fatalf("range %q is not masked, or is one address", b.Value)
				}
			} else if a, err := netip.ParseAddr(b.Value); err != nil || a.Is4In6() {
				t.Fatalf("IP ban value %q is not a plain address: %v", b.Value, err)
			}
		case storage.BanUser:
			if strings.Count(b.Value, ":") != 1 {
				t.Fatalf("user ban value %q is not app:user", b.Value)
			}
		}
		if len(b.Reason) > 1024 {
			t.Fatalf("reason of %d bytes accepted", len(b.Reason))
		}
	})
}

// FuzzCheckTopic checks the limits hook's topic check against its
// definition: a topic it lets through is within the length and depth
// limits, valid UTF-8 without NUL, and, for a PUBLISH, has no wildcard and
// is not under $SYS; and a topic that breaks one of those is refused.
func FuzzCheckTopic(f *testing.F) {
	l := &Limits{policy: LimitsPolicy{MaxTopicLength: 64, MaxTopicLevels: 8}}
	for _, s := range []string{
		"w/demo/up/alice/phone", "a/b/c/d/e/f/g/h/i", "$SYS/x", "$sys", "w/+/x", "#", "a\x00b",
		"\xff", strings.Repeat("/", 70), "", "w/demo/iot/alice/🙂",
	} {
		f.Add(s, true)
		f.Add(s, false)
	}
	f.Fuzz(func(t *testing.T, topic string, publish bool) {
		r, why := l.checkTopic(topic, publish)
		bad := len(topic) > 64 || strings.Count(topic, "/") >= 8 ||
			strings.IndexByte(topic, 0) >= 0 || !utf8.ValidString(topic) ||
			publish && (strings.ContainsAny(topic, "+#") || len(topic) >= 4 && strings.EqualFold(topic[:4], "$SYS"))
		if bad != (r != reasonNone) {
			t.Fatalf("checkTopic(%q, publish=%v) = %v %q; want refused=%v", topic, publish, r, why, bad)
		}
		if r != reasonNone && why == "" {
			t.Fatalf("refused %q without a reason", topic)
		}
	})
}
