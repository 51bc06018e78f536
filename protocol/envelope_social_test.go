package protocol

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestParseSocialOps(t *testing.T) {
	lim := Limits{MaxMembers: 3}
	ok := []string{
		`{"op":"typing","conv":"g"}`,
		`{"op":"typing","to":"bob","rid":"1"}`,
		`{"op":"presence","users":["a","b"]}`,
		`{"op":"presence","users":[]}`,
		`{"op":"privacy"}`,
		`{"op":"privacy","presence":"nobody"}`,
		`{"op":"contacts"}`,
		`{"op":"contact_add","users":["a"]}`,
		`{"op":"block","users":["a","b","c"]}`,
		`{"op":"mute","conv":"g","users":["a"],"duration":60}`,
		`{"op":"unmute","conv":"g","users":["a"]}`,
		`{"op":"settings","conv":"g","settings":{"mute_all":true}}`,
		`{"op":"settings","conv":"g","settings":{"history":"join","join":"approval","max_members":10}}`,
		`{"op":"announce","conv":"g","text":""}`,
		`{"op":"announce","conv":"g","text":"公告"}`,
		`{"op":"transfer","conv":"g","user":"u"}`,
		`{"op":"invite","conv":"g","duration":3600,"uses":5}`,
		`{"op":"invites","conv":"g"}`,
		`{"op":"revoke","conv":"g","token":"abc"}`,
		`{"op":"join","token":"abc"}`,
		`{"op":"join","conv":"g","text":"let me in"}`,
		`{"op":"requests","conv":"g"}`,
		`{"op":"approve","conv":"g","users":["a"]}`,
		`{"op":"reject","conv":"g","users":["a"]}`,
	}
	for _, s := range ok {
		if _, err := ParseRequest([]byte(s), lim); err != nil {
			t.Errorf("%s: %v", s, err)
		}
	}
	bad := map[string]string{
		`{"op":"typing"}`:                     "exactly one",
		`{"op":"typing","conv":"g","to":"b"}`: "exactly one",
		`{"op":"presence","users":["a/b"]}`:   "users",
		`{"op":"presence","users":[` + strings.Repeat(`"a",`, MaxPresenceUsers) + `"a"]}`:      "at most",
		`{"op":"privacy","presence":"all"}`:                                                    "presence",
		`{"op":"contact_add"}`:                                                                 "users",
		`{"op":"block","users":["a","b","c","d"]}`:                                             "at most 3",
		`{"op":"mute","conv":"g","users":["a"],"duration":-1}`:                                 "duration",
		`{"op":"mute","users":["a"]}`:                                                          "conv",
		`{"op":"settings","conv":"g"}`:                                                         "settings",
		`{"op":"settings","conv":"g","settings":{}}`:                                           "settings",
		`{"op":"settings","conv":"g","settings":{"history":"some"}}`:                           "history",
		`{"op":"settings","conv":"g","settings":{"join":"x"}}`:                                 "join",
		`{"op":"settings","conv":"g","settings":{"max_members":-1}}`:                           "max_members",
		`{"op":"settings","conv":"g","settings":{"colour":"red"}}`:                             "colour",
		`{"op":"announce","conv":"g","text":"` + strings.Repeat("x", MaxAnnouncement+1) + `"}`: "text",
		`{"op":"transfer","conv":"g"}`:                                                         "user",
		`{"op":"invite","conv":"g","uses":-2}`:                                                 "uses",
		`{"op":"invite","conv":"g","duration":99999999}`:                                       "duration",
		`{"op":"revoke","conv":"g"}`:                                                           "token",
		`{"op":"revoke","conv":"g","token":""}`:                                                "token",
		`{"op":"join"}`:                                                                        "conv",
		`{"op":"join","token":"a b"}`:                                                          "token",
		`{"op":"approve","conv":"g"}`:                                                          "users",
	}
	for s, want := range bad {
		_, err := ParseRequest([]byte(s), lim)
		var pe *Error
		if !errors.As(err, &pe) || !strings.Contains(pe.Message, want) {
			t.Errorf("%.80s: got %v, want a message about %q", s, err, want)
		}
	}
}

// FuzzParseSocialRequest is FuzzParseEnvelope seeded with the ops of
// envelope_social.go, checking that what is accepted round-trips with every
// field of those ops intact.
func FuzzParseSocialRequest(f *testing.F) {
	for _, s := range []string{
		`{"op":"typing","conv":"g"}`,
		`{"op":"presence","users":["a","b"]}`,
		`{"op":"privacy","presence":"contacts"}`,
		`{"op":"block","users":["a"]}`,
		`{"op":"mute","conv":"g","users":["a"],"duration":60}`,
		`{"op":"settings","conv":"g","settings":{"mute_all":false,"history":"join","join":"open","max_members":0}}`,
		`{"op":"announce","conv":"g","text":"\u00e9"}`,
		`{"op":"invite","conv":"g","duration":1,"uses":1}`,
		`{"op":"join","token":"t","text":"hi"}`,
		`{"op":"settings","conv":"g","settings":null}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		lim := Limits{MaxBody: 1024, MaxMembers: 16, MaxPage: 50}
		r, err := ParseRequest(in, lim)
		if err != nil {
			var pe *Error
			if !errors.As(err, &pe) || (pe.Code != CodeBadRequest && pe.Code != CodeTooLarge) || pe.Message == "" {
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
		if r2.Op != r.Op || !reflect.DeepEqual(r2.Users, r.Users) && len(r.Users)+len(r2.Users) > 0 ||
			r2.Duration != r.Duration || r2.Uses != r.Uses || r2.Text != r.Text || r2.Presence != r.Presence ||
			!reflect.DeepEqual(r2.Settings, r.Settings) {
			t.Fatalf("round trip changed %+v -> %+v", r, r2)
		}
	})
}
