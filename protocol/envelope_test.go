package protocol

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestParseRequestSend(t *testing.T) {
	r, err := ParseRequest([]byte(`{"conv":"g1","cmid":"c-1","type":"text","body":{"text":"hi"}}`), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if r.Op != OpSend || r.Conv != "g1" || r.CMID != "c-1" || string(r.Body) != `{"text":"hi"}` {
		t.Fatalf("got %+v", r)
	}
	r, err = ParseRequest([]byte(` {"op":"send","to":"bob.smith","cmid":"1","type":"custom","body":"x","rid":"r 1"} `), Limits{})
	if err != nil || r.To != "bob.smith" || r.RID != "r 1" {
		t.Fatalf("got %+v, %v", r, err)
	}
}

func TestParseRequestRejects(t *testing.T) {
	big := `{"conv":"g","cmid":"c","type":"text","body":"` + strings.Repeat("a", 100) + `"}`
	cases := []struct {
		name, in, code, want string
		lim                  Limits
	}{
		{"empty", ``, CodeBadRequest, "empty", Limits{}},
		{"not json", `hello`, CodeBadRequest, "syntax", Limits{}},
		{"array", `[1]`, CodeBadRequest, "invalid envelope", Limits{}},
		{"unknown field", `{"conv":"g","cmid":"c","type":"text","body":1,"x":1}`, CodeBadRequest, "unknown field", Limits{}},
		{"trailing", `{"conv":"g","cmid":"c","type":"text","body":1} {}`, CodeBadRequest, "after the JSON", Limits{}},
		{"no target", `{"cmid":"c","type":"text","body":1}`, CodeBadRequest, "conv or to", Limits{}},
		{"both targets", `{"conv":"g","to":"u","cmid":"c","type":"text","body":1}`, CodeBadRequest, "conv or to", Limits{}},
		{"bad conv", `{"conv":"a/b","cmid":"c","type":"text","body":1}`, CodeBadRequest, "conv:", Limits{}},
		{"wildcard to", `{"to":"#","cmid":"c","type":"text","body":1}`, CodeBadRequest, "to:", Limits{}},
		{"no cmid", `{"conv":"g","type":"text","body":1}`, CodeBadRequest, "cmid:", Limits{}},
		{"bad type", `{"conv":"g","cmid":"c","type":"Text","body":1}`, CodeBadRequest, "type:", Limits{}},
		{"no body", `{"conv":"g","cmid":"c","type":"text"}`, CodeBadRequest, "body:", Limits{}},
		{"bad body", `{"conv":"g","cmid":"c","type":"text","body":{]}`, CodeBadRequest, "syntax", Limits{}},
		{"body too large", big, CodeTooLarge, "body of", Limits{MaxBody: 50}},
		{"payload too large", `{"conv":"g","cmid":"c","type":"text","body":"` + strings.Repeat("a", 20<<10) + `"}`, CodeTooLarge, "payload", Limits{MaxBody: 10}},
		{"wrong type", `{"conv":1}`, CodeBadRequest, `"conv"`, Limits{}},
		{"unknown op", `{"op":"explode"}`, CodeBadRequest, "unknown operation", Limits{}},
		{"create kind", `{"op":"create","kind":"direct"}`, CodeBadRequest, "kind:", Limits{}},
		{"create reserved", `{"op":"create","kind":"group","conv":"d.x"}`, CodeBadRequest, "reserved", Limits{}},
		{"add none", `{"op":"add","conv":"g"}`, CodeBadRequest, "members:", Limits{}},
		{"add bad member", `{"op":"add","conv":"g","members":["ok","no/pe"]}`, CodeBadRequest, "members:", Limits{}},
		{"too many members", `{"op":"add","conv":"g","members":["a","b","c"]}`, CodeTooLarge, "members:", Limits{MaxMembers: 2}},
		{"role", `{"op":"role","conv":"g","user":"u","role":"god"}`, CodeBadRequest, "role:", Limits{}},
		{"read no seq", `{"op":"read","conv":"g"}`, CodeBadRequest, "seq:", Limits{}},
		{"negative seq", `{"op":"read","conv":"g","seq":-1}`, CodeBadRequest, `"seq"`, Limits{}},
		{"history both", `{"op":"history","conv":"g","before":5,"after":1}`, CodeBadRequest, "not both", Limits{}},
		{"limit", `{"op":"history","conv":"g","limit":100000}`, CodeBadRequest, "limit:", Limits{}},
		{"sync cursor", `{"op":"sync","cursors":{"a+b":1}}`, CodeBadRequest, "cursors:", Limits{}},
		{"rid", `{"op":"convs","rid":"\u0001"}`, CodeBadRequest, "rid:", Limits{}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseRequest([]byte(c.in), c.lim)
			var pe *Error
			if !errors.As(err, &pe) {
				t.Fatalf("want *Error, got %v", err)
			}
			if pe.Code != c.code || !strings.Contains(pe.Message, c.want) {
				t.Fatalf("got %s %q, want %s containing %q", pe.Code, pe.Message, c.code, c.want)
			}
		})
	}
}

func TestParseRequestOps(t *testing.T) {
	ok := []string{
		`{"op":"create","kind":"group","name":"Team","members":["a","b"]}`,
		`{"op":"create","kind":"channel","conv":"news"}`,
		`{"op":"add","conv":"g","members":["x"],"role":"admin"}`,
		`{"op":"remove","conv":"g","members":["x"]}`,
		`{"op":"leave","conv":"g"}`,
		`{"op":"role","conv":"g","user":"x","role":"admin"}`,
		`{"op":"info","conv":"g"}`,
		`{"op":"convs","start":"g","limit":10}`,
		`{"op":"sync","cursors":{"g":3},"limit":5}`,
		`{"op":"history","conv":"g","before":9,"limit":20}`,
		`{"op":"read","conv":"g","seq":4}`,
		`{"op":"delivered","conv":"g","seq":4}`,
		`{"op":"reads","conv":"g","seq":4}`,
	}
	for _, in := range ok {
		if _, err := ParseRequest([]byte(in), Limits{}); err != nil {
			t.Errorf("%s: %v", in, err)
		}
	}
}

func TestDirectConvID(t *testing.T) {
	a := DirectConvID("alice", "bob")
	if a != DirectConvID("bob", "alice") {
		t.Fatal("not symmetric")
	}
	if !ValidID(a) || !IsDirectConv(a) {
		t.Fatalf("%q invalid", a)
	}
	// Joining with '.' would make these two pairs collide.
	if DirectConvID("a.b", "c") == DirectConvID("a", "b.c") {
		t.Fatal("ambiguous")
	}
	long := strings.Repeat("x", 64)
	if id := DirectConvID(long, long+""); !ValidID(id) {
		t.Fatalf("%q invalid for long IDs", id)
	}
}

func TestMessageRoundTrip(t *testing.T) {
	m := Message{Kind: KindMsg, ID: "01", Conv: "g", Seq: 3, TS: 5, From: Sender{User: "u", Device: "d"}, Type: "text", Body: json.RawMessage(`{"a":1}`)}
	b, _ := json.Marshal(m)
	var back Message
	if err := json.Unmarshal(b, &back); err != nil || back.Seq != 3 || string(back.Body) != `{"a":1}` {
		t.Fatalf("%s -> %+v %v", b, back, err)
	}
}
