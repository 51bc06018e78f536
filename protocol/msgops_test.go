package protocol

import (
	"strings"
	"testing"
)

// The message operations' fields are checked by the parser: each bad
// request names the field at fault.
func TestParseMsgOps(t *testing.T) {
	ok := []string{
		`{"op":"edit","conv":"g","id":"01J","seq":2,"body":{"text":"x"}}`,
		`{"op":"recall","conv":"g","id":"01J","seq":2}`,
		`{"op":"react","conv":"g","id":"01J","seq":2,"emoji":"👍"}`,
		`{"op":"unreact","conv":"g","id":"01J","seq":2,"emoji":"👨‍👩‍👧‍👦"}`,
		`{"conv":"g","cmid":"c","type":"text","body":1,"reply_to":{"id":"x","seq":1},"mentions":["a"],"mention_all":true}`,
		`{"op":"forward","to":"b","cmid":"f","src":{"conv":"g","id":"x","seq":3}}`,
		`{"op":"call","to":"b","call":{"id":"c1","action":"ring","media":"video"}}`,
		`{"op":"call","conv":"d.x","call":{"id":"c1","action":"accept"}}`,
		`{"op":"call","conv":"d.x","call":{"id":"c1","action":"ice","candidate":{"candidate":"c"}}}`,
		`{"op":"call","conv":"d.x","call":{"id":"c1","action":"answer","sdp":"v=0"}}`,
	}
	for _, s := range ok {
		if _, err := ParseRequest([]byte(s), Limits{}); err != nil {
			t.Errorf("%s: %v", s, err)
		}
	}
	bad := map[string]string{
		`{"op":"edit","conv":"g","id":"01J","seq":2}`:                                                                    "body",
		`{"op":"edit","conv":"g","id":"01J","body":1}`:                                                                   "seq",
		`{"op":"recall","conv":"g","seq":2}`:                                                                             "id",
		`{"op":"recall","id":"x","seq":2}`:                                                                               "conv",
		`{"op":"react","conv":"g","id":"01J","seq":2}`:                                                                   "emoji",
		`{"op":"react","conv":"g","id":"01J","seq":2,"emoji":"` + strings.Repeat("x", 65) + `"}`:                         "emoji",
		`{"op":"react","conv":"g","id":"01J","seq":2,"emoji":"a\u0000"}`:                                                 "emoji",
		`{"conv":"g","cmid":"c","type":"text","body":1,"reply_to":{"id":"x"}}`:                                           "reply_to.seq",
		`{"conv":"g","cmid":"c","type":"text","body":1,"reply_to":{"id":"x","seq":1,"conv":"h"}}`:                        "reply_to.conv",
		`{"conv":"g","cmid":"c","type":"text","body":1,"reply_to":{"id":"x","seq":1,"from":"me"}}`:                       "reply_to.from",
		`{"conv":"g","cmid":"c","type":"text","body":1,"mentions":["a/b"]}`:                                              "mentions",
		`{"op":"forward","to":"b","cmid":"f","src":{"id":"x","seq":3}}`:                                                  "src.conv",
		`{"op":"forward","to":"b","src":{"conv":"g","id":"x","seq":3}}`:                                                  "cmid",
		`{"op":"forward","cmid":"f","src":{"conv":"g","id":"x","seq":3}}`:                                                "conv or to",
		`{"op":"call","to":"b"}`:                                                                                         "call",
		`{"op":"call","to":"b","call":{"id":"c1","action":"dance"}}`:                                                     "call.action",
		`{"op":"call","to":"b","call":{"id":"c1","action":"ring","media":"smell"}}`:                                      "call.media",
		`{"op":"call","to":"b","call":{"id":"c1","action":"offer"}}`:                                                     "call.sdp",
		`{"op":"call","to":"b","call":{"id":"c1","action":"ice","candidate":"x"}}`:                                       "call.candidate",
		`{"op":"call","to":"b","call":{"id":"c1","action":"accept","sdp":"v=0"}}`:                                        "call.sdp",
		`{"op":"call","to":"b","call":{"action":"ring"}}`:                                                                "call.id",
		`{"op":"call","to":"b","call":{"id":"c1","action":"ice","candidate":{"x":"` + strings.Repeat("y", 5000) + `"}}}`: "call.candidate",
	}
	for s, field := range bad {
		_, err := ParseRequest([]byte(s), Limits{})
		pe, _ := err.(*Error)
		if pe == nil || pe.Code != CodeBadRequest && pe.Code != CodeTooLarge || !strings.Contains(pe.Message, field) {
			t.Errorf("%s: want an error naming %q, got %v", s, field, err)
		}
	}
	mentions := `{"conv":"g","cmid":"c","type":"text","body":1,"mentions":[` + strings.Repeat(`"a",`, MaxMentions) + `"b"]}`
	if _, err := ParseRequest([]byte(mentions), Limits{}); err == nil || err.(*Error).Code != CodeTooLarge {
		t.Errorf("too many mentions: %v", err)
	}
}
