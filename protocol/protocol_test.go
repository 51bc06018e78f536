package protocol

import (
	"errors"
	"strings"
	"testing"
)

func TestValidID(t *testing.T) {
	good := []string{"a", "alice", "A-Z_0.9", "d1", "_svc", strings.Repeat("x", MaxIDLen)}
	bad := []string{"", ".hidden", "a/b", "a+b", "a#", "$SYS", "a:b", "a b", "a\x00", "é", "a\n", strings.Repeat("x", MaxIDLen+1)}
	for _, s := range good {
		if !ValidID(s) {
			t.Errorf("ValidID(%q) = false", s)
		}
		if err := CheckID("user", s); err != nil {
			t.Errorf("CheckID(%q) = %v", s, err)
		}
	}
	for _, s := range bad {
		if ValidID(s) {
			t.Errorf("ValidID(%q) = true", s)
		}
		err := CheckID("user", s)
		var ie *IDError
		if !errors.Is(err, ErrBadID) || !errors.As(err, &ie) || ie.Field != "user" {
			t.Errorf("CheckID(%q) = %v", s, err)
		}
	}
}

func TestClientID(t *testing.T) {
	cid := ClientID("demo", "alice", "d1")
	if cid != "demo:alice:d1" {
		t.Fatal(cid)
	}
	a, u, d, ok := ParseClientID(cid)
	if !ok || a != "demo" || u != "alice" || d != "d1" {
		t.Fatalf("%q %q %q %v", a, u, d, ok)
	}
	for _, bad := range []string{"", "demo", "demo:alice", "demo:alice:d1:x", "demo::d1", ":alice:d1", "demo:alice:", "demo:al/ice:d1", "demo:alice:d+", "demo:alice:#"} {
		if _, _, _, ok := ParseClientID(bad); ok {
			t.Errorf("ParseClientID(%q) ok", bad)
		}
	}
}

func TestTopics(t *testing.T) {
	cases := []struct {
		topic string
		want  Topic
	}{
		{Downlink("demo", "alice"), Topic{Kind: KindDownlink, App: "demo", User: "alice"}},
		{DeviceTopic("demo", "alice", "d1"), Topic{Kind: KindDevice, App: "demo", User: "alice", Device: "d1"}},
		{Uplink("demo", "alice", "d1"), Topic{Kind: KindUplink, App: "demo", User: "alice", Device: "d1"}},
		{Broadcast("demo", "news"), Topic{Kind: KindBroadcast, App: "demo", Channel: "news"}},
		{IoTPrefix("demo") + "alice/temp", Topic{Kind: KindIoT, App: "demo", Rest: "alice/temp"}},
	}
	for _, c := range cases {
		if got := ParseTopic(c.topic); got != c.want {
			t.Errorf("ParseTopic(%q) = %+v, want %+v", c.topic, got, c.want)
		}
	}
	if Root("demo") != "w/demo/" || !strings.HasPrefix(Downlink("demo", "x"), Root("demo")) {
		t.Error("Root")
	}
	for _, bad := range []string{
		"", "w", "w/", "w/demo", "w/demo/", "x/demo/u/alice", "w/de+mo/u/alice", "w/demo/u/+", "w/demo/u/#",
		"w/demo/u/alice/extra", "w/demo/u/", "w/demo/d/alice", "w/demo/d/alice/d1/x", "w/demo/up/alice",
		"w/demo/b/", "w/demo/b/a/b", "w/demo/iot/", "w/demo/q/x", "w/demo/u/al\x00ice", "w/.demo/u/alice",
		"w/demo/u/a:b",
	} {
		if got := ParseTopic(bad); got.Kind != KindInvalid {
			t.Errorf("ParseTopic(%q) = %+v", bad, got)
		}
	}
}

func TestSplitShared(t *testing.T) {
	cases := []struct {
		in            string
		group, filter string
		shared, ok    bool
	}{
		{"w/demo/u/alice", "", "w/demo/u/alice", false, true},
		{"$share/g/w/demo/#", "g", "w/demo/#", true, true},
		{"$SHARE/g/a", "g", "a", true, true},
		{"$share/g/$SYS/#", "g", "$SYS/#", true, true},
		{"$share/g", "g", "", true, false},
		{"$share/g/", "g", "", true, false},
		{"$share//t", "", "t", true, false},
		{"$share/g+/t", "g+", "t", true, false},
		{"$share/#/t", "#", "t", true, false},
		{"$shar/g/t", "", "$shar/g/t", false, true},
	}
	for _, c := range cases {
		g, f, sh, ok := SplitShared(c.in)
		if sh != c.shared || ok != c.ok || (ok && (g != c.group || f != c.filter)) {
			t.Errorf("SplitShared(%q) = %q %q %v %v", c.in, g, f, sh, ok)
		}
	}
}

func TestValidFilterAndMatch(t *testing.T) {
	for _, f := range []string{"a", "a/b", "+", "#", "a/+/c", "a/#", "+/+", "/", "a//b"} {
		if !ValidFilter(f, 0) {
			t.Errorf("ValidFilter(%q) = false", f)
		}
	}
	for _, f := range []string{"", "a#", "a/#/b", "#/a", "a+", "+a/b", "a/b+", "a\x00b"} {
		if ValidFilter(f, 0) {
			t.Errorf("ValidFilter(%q) = true", f)
		}
	}
	if ValidFilter("a/b/c", 2) || !ValidFilter("a/b", 2) {
		t.Error("level limit")
	}
	cases := []struct {
		f, t string
		want bool
	}{
		{"a/b", "a/b", true},
		{"a/b", "a/c", false},
		{"a/+", "a/b", true},
		{"a/+", "a", false},
		{"a/+", "a/b/c", false},
		{"a/#", "a", true},
		{"a/#", "a/b/c", true},
		{"a/#", "ab", false},
		{"#", "a/b", true},
		{"+/b", "a/b", true},
		{"+/b", "a/c", false},
		{"a/+/c", "a//c", true},
		{"a/b", "a/b/c", false},
		{"a/b/c", "a/b", false},
		{"w/demo/u/+", "w/demo/u/alice", true},
		{"w/demo/u/+", "w/demox/u/alice", false},
	}
	for _, c := range cases {
		if got := MatchFilter(c.f, c.t); got != c.want {
			t.Errorf("MatchFilter(%q, %q) = %v", c.f, c.t, got)
		}
	}
	if FilterIsExact("a/+") || FilterIsExact("#") || !FilterIsExact("a/b") {
		t.Error("FilterIsExact")
	}
}
