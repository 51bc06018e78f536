package identity

import (
	"context"
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage"
)

// FuzzParseToken feeds arbitrary strings to the token parser and to
// VerifyAccess. Neither may panic; whatever the parser accepts must be
// canonical (re-encoding each segment gives the input back) and use an
// allowed alg; and nothing but the untouched seed token may verify.
func FuzzParseToken(f *testing.F) {
	fx := newFixture(f)
	ctx := context.Background()
	if _, err := fx.svc.CreateApp(ctx, AppSpec{ID: "chat"}); err != nil {
		f.Fatal(err)
	}
	if _, err := fx.svc.CreateUser(ctx, "chat", UserSpec{ID: "alice"}); err != nil {
		f.Fatal(err)
	}
	tok, err := fx.svc.IssueToken(ctx, "chat", "alice", "d1", time.Hour)
	if err != nil {
		f.Fatal(err)
	}
	good := tok.Value
	parts := strings.Split(good, ".")
	enc := base64.RawURLEncoding
	f.Add(good)
	f.Add(parts[0] + "." + parts[1] + ".")
	f.Add(enc.EncodeToString([]byte(`{"alg":"none"}`)) + "." + parts[1] + ".")
	f.Add(enc.EncodeToString([]byte(`{"alg":"EdDSA"}`)) + "." + parts[1] + "." + parts[2])
	f.Add(enc.EncodeToString([]byte(`{"alg":"RS256","kid":"1"}`)) + "." + parts[1] + "." + parts[2])
	f.Add(enc.EncodeToString([]byte(`{"alg":"HS256","crit":["x"]}`)) + "." + parts[1] + "." + parts[2])
	f.Add(parts[0] + "=." + parts[1] + "." + parts[2])
	f.Add("..")
	f.Add("a.b.c")
	f.Add(strings.Repeat("A", MaxTokenLen+1))
	f.Fuzz(func(t *testing.T, s string) {
		p, err := parseToken(s)
		if err == nil {
			if len(s) > MaxTokenLen {
				t.Fatalf("accepted %d bytes", len(s))
			}
			switch p.header.Alg {
			case AlgHS256, AlgEdDSA, AlgRS256:
			default:
				t.Fatalf("accepted alg %q", p.header.Alg)
			}
			segs := strings.Split(s, ".")
			for _, seg := range segs {
				b, err := enc.DecodeString(seg)
				if err != nil || enc.EncodeToString(b) != seg {
					t.Fatalf("accepted non-canonical segment %q", seg)
				}
			}
		}
		c, err := fx.svc.VerifyAccess(s)
		if err == nil && s != good {
			t.Fatalf("verified a token we did not issue: %q -> %+v", s, c)
		}
	})
}

// FuzzRulesCover checks the IoT rules against protocol.MatchFilter: for a
// concrete topic, Allow must agree with matching the rule patterns after
// substitution; and a filter that Allow accepts must not match any topic
// that Allow refuses (a wildcard can never reach further than the rules).
func FuzzRulesCover(f *testing.F) {
	const user, cid = "alice", "demo:alice:d1"
	raw := []storage.TopicRule{
		{Pattern: "w/{app}/iot/%u/#", Access: "read"},
		{Pattern: "w/{app}/iot/public/+/status", Access: "read"},
		{Pattern: "w/{app}/iot/cmd/%c", Access: "read"},
		{Pattern: "w/{app}/iot/+/shared", Access: "read"},
	}
	rs, err := CompileRules("demo", raw)
	if err != nil {
		f.Fatal(err)
	}
	var subs []string
	for _, r := range raw {
		p := strings.ReplaceAll(r.Pattern, "{app}", "demo")
		p = strings.ReplaceAll(p, "%u", user)
		subs = append(subs, strings.ReplaceAll(p, "%c", cid))
	}
	for _, p := range [][2]string{
		{"w/demo/iot/alice/#", "w/demo/iot/alice/x"}, {"w/demo/iot/+/shared", "w/demo/iot/bob/shared"},
		{"w/demo/iot/public/+/status", "w/demo/iot/public/a/status"}, {"w/demo/iot/#", "w/demo/iot/bob"},
		{"w/demo/iot/cmd/" + cid, "w/demo/iot/cmd/" + cid}, {"w/demo/iot/+/+", "w/demo/iot/x/shared"},
	} {
		f.Add(p[0], p[1])
	}
	f.Fuzz(func(t *testing.T, flt, topic string) {
		if protocol.ValidFilter(topic, 0) && protocol.FilterIsExact(topic) {
			want := false
			for _, s := range subs {
				want = want || protocol.MatchFilter(s, topic)
			}
			if got := rs.Allow(topic, user, cid, false); got != want {
				t.Fatalf("Allow(%q) = %v, patterns say %v", topic, got, want)
			}
		}
		if !protocol.ValidFilter(flt, 0) || !rs.Allow(flt, user, cid, false) {
			return
		}
		if protocol.ValidFilter(topic, 0) && protocol.FilterIsExact(topic) &&
			protocol.MatchFilter(flt, topic) && !rs.Allow(topic, user, cid, false) {
			t.Fatalf("allowed filter %q reaches refused topic %q", flt, topic)
		}
	})
}
