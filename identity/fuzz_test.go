package identity

import (
	"context"
	"encoding/base64"
	"strings"
	"testing"
	"time"
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
