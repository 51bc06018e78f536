package protocol

import (
	"strings"
	"testing"
)

// The fuzz targets below check the identifier and topic functions against
// their documented contracts. Run one with, for example,
//
//	go test -run '^$' -fuzz FuzzParseTopic -fuzztime 20s ./protocol

// FuzzValidID: whatever ValidID accepts can be put into a topic and a
// client ID without changing their structure.
func FuzzValidID(f *testing.F) {
	for _, s := range []string{"alice", "", ".x", "a/b", "a+b", "#", "$SYS", "a:b", "_svc", "a\x00", strings.Repeat("z", 65), "é"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ok := ValidID(s)
		if (CheckID("f", s) == nil) != ok {
			t.Fatal("CheckID disagrees with ValidID")
		}
		if !ok {
			return
		}
		if len(s) == 0 || len(s) > MaxIDLen || s[0] == '.' || strings.ContainsAny(s, "/+#$:\x00 ") {
			t.Fatalf("ValidID accepted %q", s)
		}
		if got := ParseTopic(Downlink(s, s)); got.Kind != KindDownlink || got.App != s || got.User != s {
			t.Fatalf("downlink of %q parses as %+v", s, got)
		}
		if a, u, d, ok := ParseClientID(ClientID(s, s, s)); !ok || a != s || u != s || d != s {
			t.Fatalf("client ID of %q does not round-trip", s)
		}
	})
}

// FuzzParseTopic: a topic that parses is rebuilt exactly from its parts,
// and its parts are valid identifiers.
func FuzzParseTopic(f *testing.F) {
	for _, s := range []string{
		"w/demo/u/alice", "w/demo/d/alice/d1", "w/demo/up/alice/d1", "w/demo/b/news", "w/demo/iot/a/b/c",
		"w/demo/u/+", "w/demo/u/alice/x", "w//u/a", "w/demo/iot/", "$SYS/x", "w/demo/u/a\x00", "w/a:b/u/c",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p := ParseTopic(s)
		var rebuilt string
		switch p.Kind {
		case KindInvalid:
			return
		case KindDownlink:
			rebuilt = Downlink(p.App, p.User)
		case KindDevice:
			rebuilt = DeviceTopic(p.App, p.User, p.Device)
		case KindUplink:
			rebuilt = Uplink(p.App, p.User, p.Device)
		case KindBroadcast:
			rebuilt = Broadcast(p.App, p.Channel)
		case KindIoT:
			rebuilt = IoTPrefix(p.App) + p.Rest
			if p.Rest == "" {
				t.Fatal("IoT topic with empty rest")
			}
		default:
			t.Fatalf("unknown kind %d", p.Kind)
		}
		if rebuilt != s {
			t.Fatalf("%q parsed as %+v, rebuilt as %q", s, p, rebuilt)
		}
		if !FilterIsExact(s) || strings.ContainsRune(s, 0) {
			t.Fatalf("accepted a wildcard or NUL: %q", s)
		}
		for _, id := range []string{p.App, p.User, p.Device, p.Channel} {
			if id != "" && !ValidID(id) {
				t.Fatalf("invalid identifier %q in %q", id, s)
			}
		}
		if !strings.HasPrefix(s, Root(p.App)) {
			t.Fatalf("%q is outside its app root", s)
		}
	})
}

// FuzzParseClientID: an accepted client ID is exactly ClientID of its
// parts.
func FuzzParseClientID(f *testing.F) {
	for _, s := range []string{"demo:alice:d1", "demo:alice", "a:b:c:d", "::", "demo:_svc:x", "de/mo:a:b", "a:b:c\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, u, d, ok := ParseClientID(s)
		if !ok {
			if a != "" || u != "" || d != "" {
				t.Fatal("parts returned with ok=false")
			}
			return
		}
		if ClientID(a, u, d) != s || !ValidID(a) || !ValidID(u) || !ValidID(d) {
			t.Fatalf("%q -> %q %q %q", s, a, u, d)
		}
	})
}

// FuzzSplitShared: a plain filter passes through; a well-formed shared one
// is exactly "$share/" + group + "/" + filter with a non-empty group
// without wildcards and a non-empty filter.
func FuzzSplitShared(f *testing.F) {
	for _, s := range []string{"a/b", "$share/g/a/#", "$SHARE/g/x", "$share/g", "$share//t", "$share/g+/t", "$share/", "$share/g/"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		g, flt, shared, ok := SplitShared(s)
		if !shared {
			if !ok || flt != s || g != "" {
				t.Fatalf("plain %q -> %q %q %v", s, g, flt, ok)
			}
			if len(s) >= 7 && strings.EqualFold(s[:7], "$share/") {
				t.Fatalf("%q not recognised as shared", s)
			}
			return
		}
		if !strings.EqualFold(s[:7], "$share/") {
			t.Fatalf("%q recognised as shared", s)
		}
		if !ok {
			return
		}
		if g == "" || flt == "" || strings.ContainsAny(g, "+#/") || s[7:] != g+"/"+flt {
			t.Fatalf("%q -> group %q filter %q", s, g, flt)
		}
	})
}

// refMatch is a plain level-by-level matcher to compare MatchFilter with.
func refMatch(f, t string) bool {
	fl, tl := strings.Split(f, "/"), strings.Split(t, "/")
	for i, l := range fl {
		if l == "#" {
			return true
		}
		if i >= len(tl) || (l != "+" && l != tl[i]) {
			return false
		}
	}
	return len(fl) == len(tl)
}

// FuzzFilterMatch checks ValidFilter and MatchFilter for consistency: on a
// valid filter and a valid topic MatchFilter agrees with a plain reference
// matcher; an exact filter matches only itself; '#' matches everything.
func FuzzFilterMatch(f *testing.F) {
	for _, p := range [][2]string{
		{"a/+/c", "a/b/c"}, {"a/#", "a"}, {"#", "x/y"}, {"a/b", "a/b"}, {"+", ""}, {"a//+", "a//b"},
		{"w/demo/u/+", "w/demo/u/alice"}, {"a/+", "a"}, {"+/+", "/"},
	} {
		f.Add(p[0], p[1])
	}
	f.Fuzz(func(t *testing.T, flt, topic string) {
		if !ValidFilter(flt, 0) {
			return
		}
		if FilterIsExact(flt) && !MatchFilter(flt, flt) {
			t.Fatalf("exact filter %q does not match itself", flt)
		}
		if !ValidFilter(topic, 0) || !FilterIsExact(topic) {
			return
		}
		got := MatchFilter(flt, topic)
		if want := refMatch(flt, topic); got != want {
			t.Fatalf("MatchFilter(%q, %q) = %v, reference says %v", flt, topic, got, want)
		}
		if got && FilterIsExact(flt) && flt != topic {
			t.Fatalf("exact %q matched %q", flt, topic)
		}
		if !MatchFilter("#", topic) {
			t.Fatalf("# does not match %q", topic)
		}
	})
}
