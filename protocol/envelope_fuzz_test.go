package protocol

import (
	"encoding/json"
	"errors"
	"testing"
)

// FuzzParseEnvelope feeds arbitrary bytes to ParseRequest. It must never
// panic; every refusal must be an *Error with a known code; and anything it
// accepts must survive a marshal/parse round trip unchanged in meaning.
func FuzzParseEnvelope(f *testing.F) {
	seeds := []string{
		`{"conv":"g1","cmid":"c1","type":"text","body":{"text":"hi"}}`,
		`{"to":"bob","cmid":"c2","type":"image","body":{"url":"x"},"rid":"7"}`,
		`{"op":"create","kind":"group","name":"T","members":["a","b"]}`,
		`{"op":"sync","cursors":{"g":1,"h":2},"limit":3}`,
		`{"op":"history","conv":"g","before":10}`,
		`{"op":"read","conv":"g","seq":1}`,
		`{"op":"role","conv":"g","user":"u","role":"owner"}`,
		`{"conv":"g","cmid":"c","type":"text","body":"\ud800"}`,
		`{"conv":"g","cmid":"c","type":"text","body":1e999}`,
		`{"conv":"g","conv":"h","cmid":"c","type":"text","body":[]}`,
		`{"op":"sync","cursors":{"g":18446744073709551615}}`,
		`{"op":"sync","cursors":{"g":18446744073709551616}}`,
		`{"op":"edit","conv":"g","id":"01J","seq":2,"body":{"text":"x"}}`,
		`{"op":"recall","conv":"g","id":"01J","seq":2}`,
		`{"op":"react","conv":"g","id":"01J","seq":2,"emoji":"\ud83d\udc4d"}`,
		`{"op":"unreact","conv":"g","id":"01J","seq":2,"emoji":"a b"}`,
		`{"conv":"g","cmid":"c","type":"text","body":1,"reply_to":{"id":"x","seq":1},"mentions":["a","a"],"mention_all":true}`,
		`{"op":"forward","to":"b","cmid":"f","src":{"conv":"g","id":"x","seq":3}}`,
		`{"op":"call","to":"b","call":{"id":"c1","action":"ring","media":"video"}}`,
		`{"op":"call","conv":"d.x","call":{"id":"c1","action":"ice","candidate":{"candidate":"c","sdpMid":"0"}}}`,
		`{"op":"call","conv":"d.x","call":{"id":"c1","action":"offer","sdp":"v=0"}}`,
		`{"op":"call","conv":"d.x","call":{"id":"c1","action":"ice","candidate":null}}`,
		"\x00", `{`, `null`, `[]`, `""`, `{"body":}`,
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	known := map[string]bool{CodeBadRequest: true, CodeTooLarge: true}
	f.Fuzz(func(t *testing.T, in []byte) {
		lim := Limits{MaxBody: 1024, MaxMembers: 16, MaxPage: 50}
		r, err := ParseRequest(in, lim)
		if err != nil {
			var pe *Error
			if !errors.As(err, &pe) || !known[pe.Code] || pe.Message == "" {
				t.Fatalf("bad error %#v", err)
			}
			return
		}
		out, err := json.Marshal(r)
		if err != nil {
			t.Fatalf("accepted but cannot marshal: %v", err)
		}
		r2, err := ParseRequest(out, lim)
		if err != nil {
			t.Fatalf("round trip refused %s: %v", out, err)
		}
		if r2.Op != r.Op || r2.Conv != r.Conv || r2.To != r.To || r2.CMID != r.CMID || r2.Seq != r.Seq || len(r2.Members) != len(r.Members) ||
			r2.ID != r.ID || r2.Emoji != r.Emoji || len(r2.Mentions) != len(r.Mentions) || r2.MentionAll != r.MentionAll ||
			(r2.ReplyTo == nil) != (r.ReplyTo == nil) || (r2.Src == nil) != (r.Src == nil) || (r2.Call == nil) != (r.Call == nil) ||
			r.Call != nil && (r2.Call.Action != r.Call.Action || r2.Call.SDP != r.Call.SDP) {
			t.Fatalf("round trip changed %+v -> %+v", r, r2)
		}
	})
}
