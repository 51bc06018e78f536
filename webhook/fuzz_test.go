package webhook

import (
	"encoding/hex"
	"strings"
	"testing"
	"time"
)

// FuzzParseURL: any string either fails with an error or yields an http(s)
// URL with a host, and never panics.
func FuzzParseURL(f *testing.F) {
	for _, s := range []string{"https://example.com/hook", "http://[::1]:80/", "http://a@b/", "http://x:0", "ht tp://x", "http://%41/"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := ParseURL(s)
		if err != nil {
			return
		}
		if (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" || u.User != nil {
			t.Fatalf("ParseURL(%q) = %v", s, u)
		}
	})
}

// FuzzParseEvents: an accepted filter only holds known types, families or
// "*", and matching with it never panics.
func FuzzParseEvents(f *testing.F) {
	f.Add("message.created,user.*")
	f.Add("*")
	f.Add("user.,.*,message.created.*")
	f.Fuzz(func(t *testing.T, s string) {
		evs, err := ParseEvents(strings.Split(s, ","))
		if err != nil {
			return
		}
		for _, e := range evs {
			if !validFilter(e) {
				t.Fatalf("accepted %q", e)
			}
		}
		for _, typ := range append(EventTypes, EventTest, s) {
			_ = Matches(evs, typ)
		}
	})
}

// FuzzVerify: a receiver's check of an arbitrary header never panics, and
// a header it accepts carries the MAC of its own timestamp and the body.
func FuzzVerify(f *testing.F) {
	now := time.Unix(1_700_000_000, 0)
	f.Add(Sign(now, []byte("{}"), "whsec_x"), []byte("{}"))
	f.Add(Sign(now, []byte("{}"), "whsec_fuzz"), []byte("{}"))
	f.Add("t=1,v1=zz,v1=", []byte(""))
	f.Fuzz(func(t *testing.T, header string, body []byte) {
		if Verify(header, body, "whsec_fuzz", now, 0) != nil {
			return
		}
		var ts string
		for _, part := range strings.Split(header, ",") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(part), "t="); ok {
				ts = v
			}
		}
		if want := hex.EncodeToString(mac("whsec_fuzz", ts, body)); !strings.Contains(strings.ToLower(header), want) {
			t.Fatalf("accepted %q for %q", header, body)
		}
	})
}
