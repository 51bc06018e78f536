package audience

import (
	"strings"
	"testing"
	"time"
)

func TestParseTags(t *testing.T) {
	cases := map[string]string{
		"vip":                       "vip",
		"vip AND NOT churned":       "vip AND NOT churned",
		"vip and not churned":       "vip AND NOT churned",
		"a OR b AND c":              "a OR (b AND c)",
		"(a OR b) AND c":            "(a OR b) AND c",
		`"region:eu west" OR beta`:  `"region:eu west" OR beta`,
		"NOT NOT a":                 "NOT NOT a",
		"NOT (a OR b)":              "NOT (a OR b)",
		`"say \"hi\""`:              `"say \"hi\""`,
		"all":                       `"all"`, // a plain tag, quoted so that a rule reads it as one
		"lang:de AND plan.pro":      "lang:de AND plan.pro",
		"  a\tAND\n(b OR c OR d)  ": "a AND (b OR c OR d)",
		"event(x, 7d)":              "", // an error: rule syntax in a tag expression
		"a AND":                     "",
		"":                          "",
		"(a":                        "",
		"a)":                        "",
		"a b":                       "",
		"AND":                       "",
		`"unterminated`:             "",
		"a & b":                     "",
		`""`:                        "",
		strings.Repeat("(", 40) + "a" + strings.Repeat(")", 40): "",
	}
	for in, want := range cases {
		n, err := ParseTags(in)
		if want == "" {
			if err == nil {
				t.Errorf("ParseTags(%q) = %v, want an error", in, n)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseTags(%q): %v", in, err)
			continue
		}
		if got := n.String(); got != want {
			t.Errorf("ParseTags(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseErrorsAreClear(t *testing.T) {
	for in, want := range map[string]string{
		"vip AND":                 "at offset 7: expected a tag or '(', found end of input",
		"(vip":                    "at offset 4: expected ')', found end of input",
		"vip churned":             "at offset 4: unexpected 'churned'",
		"vip $":                   "at offset 4: unexpected character '$'",
		"event(login)":            "at offset 11: expected ',' and a window like 7d after the event name, found ')'",
		"event(login, 7w)":        "at offset 13: a window ends in m, h or d, like 7d",
		"event(login, 7d, min=0)": "at offset 17: min must be a number from 1 to 1000000",
		"attr(country) = ":        "at offset 16: expected a value after =, found end of input",
	} {
		_, err := ParseRule(in)
		if err == nil || err.Error() != want {
			t.Errorf("ParseRule(%q) error = %v, want %q", in, err, want)
		}
	}
}

func TestParseRule(t *testing.T) {
	n, err := ParseRule(`vip AND attr(country) = DE AND event(viewed_product, 7d, product="X 1") AND NOT event(login, 30d) AND event(purchase, 12h, min=3) OR all`)
	if err != nil {
		t.Fatal(err)
	}
	want := `(vip AND attr(country) = DE AND event(viewed_product, 7d, product="X 1") AND NOT event(login, 30d) AND event(purchase, 12h, min=3)) OR all`
	if got := n.String(); got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
	and := n.Kids[0]
	if ev := and.Kids[2].Event; ev.Name != "viewed_product" || ev.Within != 7*24*time.Hour || ev.Props["product"] != "X 1" || ev.Min != 1 {
		t.Fatalf("event = %+v", ev)
	}
	if ev := and.Kids[4].Event; ev.Min != 3 || ev.Within != 12*time.Hour {
		t.Fatalf("event = %+v", ev)
	}
	// "tag" not followed by "(" is just a tag.
	if n, err := ParseRule("tag AND tag(x)"); err != nil || n.String() != `"tag" AND x` {
		t.Fatalf("tag words: %v %v", n, err)
	}
}

// roundTrip checks that a parsed expression prints as text that parses to
// the same expression.
func roundTrip(t *testing.T, parse func(string) (*Node, error), src string) {
	n, err := parse(src)
	if err != nil {
		var se *SyntaxError
		if !asSyntax(err, &se) || se.Pos < 0 || se.Pos > len(src) {
			t.Fatalf("%q: error %v is not a SyntaxError with an offset in the input", src, err)
		}
		return
	}
	s1 := n.String()
	n2, err := parse(s1)
	if err != nil {
		t.Fatalf("%q printed as %q, which does not parse: %v", src, s1, err)
	}
	if s2 := n2.String(); s2 != s1 {
		t.Fatalf("%q printed as %q, reparsed and printed as %q", src, s1, s2)
	}
}

func asSyntax(err error, se **SyntaxError) bool {
	e, ok := err.(*SyntaxError)
	*se = e
	return ok
}

func FuzzParseTags(f *testing.F) {
	for _, s := range []string{"vip AND NOT churned", `(a OR "b c") AND NOT (d)`, "NOT", `"x\"y"`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) { roundTrip(t, ParseTags, s) })
}

func FuzzParseRule(f *testing.F) {
	for _, s := range []string{
		`vip AND attr(country) != "DE"`,
		`event(viewed_product, 7d, product=X) AND NOT event(login, 30d)`,
		`all AND NOT tag(x) OR attr(plan) OR event(buy, 1h, min=2)`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) { roundTrip(t, ParseRule, s) })
}
