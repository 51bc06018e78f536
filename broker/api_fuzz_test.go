package broker

import (
	"bytes"
	"encoding/json"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fuzzRoutes are the admin API endpoints that parse a JSON body: apps,
// users, devices, tokens, login, bans, push credentials, conversations,
// members, messages and webhooks.
var fuzzRoutes = []string{
	"POST /v1/apps", "PATCH /v1/apps/demo", "POST /v1/apps/demo/users", "PATCH /v1/apps/demo/users/alice",
	"PUT /v1/apps/demo/users/alice/devices/phone", "POST /v1/apps/demo/tokens", "POST /v1/apps/demo/login",
	"POST /v1/apps/demo/refresh", "POST /v1/bans", "PUT /v1/apps/demo/push/credentials/apns",
	"PUT /v1/apps/demo/push/credentials/fcm", "POST /v1/apps/demo/keys",
	"POST /v1/apps/demo/conversations", "PATCH /v1/apps/demo/conversations/team",
	"POST /v1/apps/demo/conversations/team/members", "PATCH /v1/apps/demo/conversations/team/members/alice",
	"POST /v1/apps/demo/conversations/team/messages", "POST /v1/apps/demo/users/alice/direct/bob/messages",
	"POST /v1/apps/demo/webhooks",
}

// FuzzAPIBodies posts arbitrary bodies, with the admin key, to the real
// handlers of a running server (real identity, real store) and checks the
// answer: a status below 500 and, when there is a body, a JSON one. A
// panic, a 5xx or a non-JSON answer to bad input fails.
func FuzzAPIBodies(f *testing.F) {
	s := startServer(f, nil) // a 429 from the API rate limits is a fine answer
	key, err := os.ReadFile(filepath.Join(s.Config().Data, "admin.key"))
	if err != nil {
		f.Fatal(err)
	}
	auth := "Bearer " + strings.TrimSpace(string(key))
	for i, seed := range []string{
		`{"id":"app2"}`, `{"name":"x","quotas":{"max_payload":10}}`, `{"id":"alice"}`, `{"display_name":"A"}`,
		`{"public_key":"AAAA"}`, `{"user":"alice","device":"phone","ttl":3600}`, `{"user":"alice","password":"pw"}`,
		`{"refresh_token":"x"}`, `{"kind":"ip","value":"10.0.0.0/8","for":"1h"}`, `{"team_id":"T","key_id":"K","key":"-----"}`,
		`{"project_id":"p","service_account":{}}`, `{"alg":"ed25519"}`,
		`{"id":"team","kind":"group","members":["alice"]}`, `{"name":"Team"}`, `{"users":["bob"],"role":"admin"}`,
		`{"role":"owner"}`, `{"body":{"text":"hi"},"cmid":"c1"}`, `{"body":"hi","type":"text"}`,
		`{"url":"https://93.184.216.34/h","events":["user.*"]}`,
	} {
		f.Add(uint8(i), []byte(seed))
	}
	f.Add(uint8(0), []byte(`{"id":`))
	f.Add(uint8(8), []byte(`[]`))
	f.Add(uint8(5), []byte(`{"user":"alice","device":"phone","ttl":-1e309}`))
	f.Fuzz(func(t *testing.T, route uint8, body []byte) {
		method, path, _ := strings.Cut(fuzzRoutes[int(route)%len(fuzzRoutes)], " ")
		req := httptest.NewRequest(method, path, bytes.NewReader(body))
		req.RemoteAddr = "127.0.0.1:40000"
		req.Header.Set("Authorization", auth)
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		s.Mux().ServeHTTP(rec, req)
		if rec.Code >= 500 {
			t.Fatalf("%s %s %q: %d %s", method, path, body, rec.Code, rec.Body)
		}
		if b := bytes.TrimSpace(rec.Body.Bytes()); len(b) > 0 && !json.Valid(b) {
			t.Fatalf("%s %s %q: %d non-JSON answer %q", method, path, body, rec.Code, b)
		}
	})
}
