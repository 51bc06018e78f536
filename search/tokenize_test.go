package search

import (
	"slices"
	"strings"
	"testing"
)

func TestTerms(t *testing.T) {
	tf, n := Terms("Hello, hello WORLD! 我们去北京 café")
	want := map[string]int{"hello": 2, "world": 1, "café": 1,
		"我": 1, "们": 1, "去": 1, "北": 1, "京": 1, "我们": 1, "们去": 1, "去北": 1, "北京": 1}
	if len(tf) != len(want) {
		t.Fatalf("terms %v", tf)
	}
	for k, v := range want {
		if tf[k] != v {
			t.Fatalf("term %q: %d, want %d (all %v)", k, tf[k], v, tf)
		}
	}
	if n != 3+5+1 {
		t.Fatalf("length %d", n)
	}
	// Japanese and Korean runs, and Latin next to Han without a space.
	tf, _ = Terms("東京タワーへ行く iPhone15で 안녕하세요")
	for _, k := range []string{"東京", "京タ", "タワ", "ワー", "ーへ", "iphone15", "で", "안녕", "하세"} {
		if tf[k] == 0 {
			t.Fatalf("missing %q in %v", k, tf)
		}
	}
	tf, _ = Terms(strings.Repeat("x", 200))
	for k := range tf {
		if len(k) != MaxTermBytes {
			t.Fatalf("long word kept as %d bytes", len(k))
		}
	}
}

func TestParseQuery(t *testing.T) {
	for _, tc := range []struct {
		in    string
		terms []string
		inC   string
		from  string
		ok    bool
	}{
		{"Hello World", []string{"hello", "world"}, "", "", true},
		{"北京", []string{"北京"}, "", "", true},
		{"去北京", []string{"去北", "北京"}, "", "", true},
		{"京", []string{"京"}, "", "", true},
		{`"hello" in:team from:bob`, []string{"hello"}, "team", "bob", true},
		{"hello hello", []string{"hello"}, "", "", true},
		{"in:team", nil, "", "", false},
		{"   ", nil, "", "", false},
		{"in:a in:b x", nil, "", "", false},
		{"from:bad/id x", nil, "", "", false},
		{strings.Repeat("a ", 17), []string{"a"}, "", "", true},
		{strings.Repeat("w", 300), nil, "", "", false},
		{"a b c d e f g h i j k l m n o p q", nil, "", "", false},
	} {
		q, err := ParseQuery(tc.in)
		if (err == nil) != tc.ok {
			t.Errorf("ParseQuery(%q): %v", tc.in, err)
			continue
		}
		if tc.ok && (!slices.Equal(q.Terms, tc.terms) || q.In != tc.inC || q.From != tc.from) {
			t.Errorf("ParseQuery(%q) = %+v", tc.in, q)
		}
	}
}

// FuzzParseQuery: whatever a user types, the parser does not panic, and an
// accepted query has 1 to MaxQueryTerms terms of valid, bounded UTF-8.
func FuzzParseQuery(f *testing.F) {
	f.Add("hello world")
	f.Add("我们去北京 in:team from:bob")
	f.Add("in:")
	f.Add("\xff\xfe")
	f.Fuzz(func(t *testing.T, s string) {
		q, err := ParseQuery(s)
		if err != nil {
			return
		}
		if len(q.Terms) == 0 || len(q.Terms) > MaxQueryTerms {
			t.Fatalf("%q: %d terms", s, len(q.Terms))
		}
		for _, term := range q.Terms {
			if term == "" || len(term) > MaxTermBytes || strings.ContainsRune(term, 0xFFFD) && !strings.ContainsRune(s, 0xFFFD) {
				t.Fatalf("%q: bad term %q", s, term)
			}
		}
	})
}
