package broker

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"
)

// apiEnv is a running server with two apps (acme, rival), keys of every
// scope and a few users, driven over real HTTP.
type apiEnv struct {
	t     testing.TB
	s     *Server
	base  string
	hc    *http.Client
	admin string
	keys  map[string]string // acme:admin, acme:users, acme:publish, acme:push, rival:admin
	vars  map[string]string // values later cases use: IDs, tokens, secrets
}

type apiResp struct {
	status int
	header http.Header
	raw    []byte
	body   map[string]any
}

func (r apiResp) errCode() string {
	e, _ := r.body["error"].(map[string]any)
	c, _ := e["code"].(string)
	return c
}

func (r apiResp) errMessage() string {
	e, _ := r.body["error"].(map[string]any)
	m, _ := e["message"].(string)
	return m
}

func newAPIEnv(t testing.TB) *apiEnv { return newAPIEnvWith(t, nil) }

func newAPIEnvWith(t testing.TB, mod func(*Config)) *apiEnv {
	t.Helper()
	s := startServer(t, func(c *Config) {
		c.Limits.HTTP.RatePerKey, c.Limits.HTTP.BurstPerKey = 1e6, 1e6
		c.Webhooks.AllowPrivate = true // the webhook receiver is on loopback
		if mod != nil {
			mod(c)
		}
	})
	key, err := os.ReadFile(filepath.Join(s.Config().Data, "admin.key"))
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	e := &apiEnv{t: t, s: s, base: "http://" + s.Addrs().HTTP, hc: &http.Client{Transport: tr, Timeout: 30 * time.Second},
		admin: strings.TrimSpace(string(key)), keys: map[string]string{}, vars: map[string]string{}}
	for _, app := range []string{"acme", "rival"} {
		e.must(e.do("POST", "/v1/apps", e.admin, map[string]any{"id": app, "name": app}), 201)
	}
	for _, k := range []string{"acme:admin", "acme:users", "acme:publish", "acme:push", "rival:admin"} {
		app, scope, _ := strings.Cut(k, ":")
		r := e.must(e.do("POST", "/v1/apps/"+app+"/keys", e.admin, map[string]any{"name": scope, "scopes": []string{scope}}), 201)
		e.keys[k] = r.body["key"].(string)
	}
	r := e.must(e.do("POST", "/v1/apps/acme/keys", e.admin, map[string]any{"name": "spare", "scopes": []string{"users"}}), 201)
	e.vars["spare_key"] = r.body["id"].(string)
	for _, u := range []string{"alice", "bob", "cal", "dan"} {
		e.must(e.do("POST", "/v1/apps/acme/users", e.admin, map[string]any{"id": u, "password": "correct horse " + u}), 201)
	}
	e.must(e.do("POST", "/v1/apps/rival/users", e.admin, map[string]any{"id": "alice"}), 201)
	r = e.must(e.do("POST", "/v1/apps/acme/login", "", map[string]any{"username": "alice", "password": "correct horse alice", "device": "laptop"}), 200)
	e.vars["alice_token"], e.vars["alice_refresh"] = r.body["access_token"].(string), r.body["refresh_token"].(string)
	tok := "0a1b2c3d4e5f60718293"
	e.must(e.do("PUT", "/v1/apps/acme/users/bob/devices/iphone", e.admin, map[string]any{"platform": "ios", "push_token": tok}), 200)
	e.must(e.do("PUT", "/v1/apps/acme/users/alice/devices/phone", e.admin, map[string]any{"platform": "android"}), 200)
	return e
}

// do sends a request. body is nil (none), a string or []byte (sent as
// is), or anything else (sent as JSON).
func (e *apiEnv) do(method, path, key string, body any, header ...string) apiResp {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			e.t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, e.base+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := e.hc.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatalf("%s %s: read: %v", method, path, err)
	}
	r := apiResp{status: resp.StatusCode, header: resp.Header, raw: raw}
	if resp.Header.Get("Content-Encoding") == "" && len(bytes.TrimSpace(raw)) > 0 {
		if err := json.Unmarshal(raw, &r.body); err != nil && raw[0] == '{' {
			e.t.Fatalf("%s %s: answer is not JSON: %q", method, path, raw)
		}
	}
	return r
}

func (e *apiEnv) must(r apiResp, status int) apiResp {
	e.t.Helper()
	if r.status != status {
		e.t.Fatalf("status %d, want %d: %s", r.status, status, r.raw)
	}
	return r
}

// rawRequest writes head (and body, from another goroutine, so that a
// server that answers early cannot block it) on a fresh connection and
// reads the answer.
func (e *apiEnv) rawRequest(head string, body []byte) apiResp {
	e.t.Helper()
	c, err := net.Dial("tcp", e.s.Addrs().HTTP)
	if err != nil {
		e.t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	go func() {
		_, _ = io.WriteString(c, head)
		_, _ = c.Write(body)
	}()
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		e.t.Fatalf("raw request: %v", err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	r := apiResp{status: resp.StatusCode, header: resp.Header, raw: raw}
	_ = json.Unmarshal(raw, &r.body)
	return r
}

// routeCase is one route of the API: how to call it successfully and who
// may. Cases run in order and may depend on earlier ones.
type routeCase struct {
	route string // the registered pattern: "METHOD /v1/..."
	path  func(e *apiEnv) string
	// auth: "public"; "admin" (the admin key only; app keys get 403);
	// "keyapp:SCOPE" (a key with SCOPE on a route that takes the app from
	// the key, so no other app's key can reach acme's objects);
	// "app-admin" (the admin key only, on an app's route: the app's own key
	// gets 403, another app's 404); "key:SCOPE" (a key of the app with
	// SCOPE, or "key:" for any key of the app); "user" (a user's access
	// token).
	auth string
	// lacking names a key of acme without the needed scope (403), if any.
	lacking string
	body    func(e *apiEnv) any // nil: the route takes no body
	// header adds request headers (name, value, ...).
	header func(e *apiEnv) []string
	// stream marks a route registered with HandleStream: its body is
	// content, not JSON, bounded by the route itself, and its answer is
	// never compressed; the body and gzip checks do not apply.
	stream bool
	want   int
	after  func(e *apiEnv, r apiResp) // checks the success answer, saves values
}

func p(s string) func(*apiEnv) string { return func(*apiEnv) string { return s } }
func b(v any) func(*apiEnv) any       { return func(*apiEnv) any { return v } }

// totpCode is a code of secret for the time step at offset steps from
// now: confirm, recovery codes and disable use increasing steps, since a
// step is accepted once only.
func totpCode(t *testing.T, secret string, offset int) string {
	c, err := totp.GenerateCodeCustom(secret, time.Now().Add(time.Duration(offset)*30*time.Second),
		totp.ValidateOpts{Period: 30, Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// apnsStub is a local HTTP/2 TLS server that accepts every notification,
// so that push routes never reach out of the machine.
func apnsStub(t *testing.T) (url, caPEM string) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("apns-id", "00000000-0000-0000-0000-000000000001")
		w.WriteHeader(http.StatusOK)
	}))
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv.URL, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}))
}

func routeCases(t *testing.T) []routeCase {
	apnsURL, apnsCA := apnsStub(t)
	hookURL := newHookReceiver(t, nil).URL
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(k)
	keyPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	str := func(r apiResp, f string) string { s, _ := r.body[f].(string); return s }
	return []routeCase{
		{route: "GET /v1/openapi.json", path: p("/v1/openapi.json"), auth: "public", want: 200},

		// Apps and keys.
		{route: "POST /v1/apps", path: p("/v1/apps"), auth: "admin", body: b(map[string]any{"id": "tmp", "name": "Tmp"}), want: 201},
		{route: "GET /v1/apps", path: p("/v1/apps"), auth: "admin", want: 200},
		{route: "GET /v1/apps/{app}", path: p("/v1/apps/acme"), auth: "key:", want: 200},
		{route: "PATCH /v1/apps/{app}", path: p("/v1/apps/acme"), auth: "app-admin", body: b(map[string]any{"name": "Acme Inc"}), want: 200},
		{route: "PUT /v1/apps/{app}/public-key", path: p("/v1/apps/acme/public-key"), auth: "key:admin", lacking: "acme:users", body: b(map[string]any{"public_key": ""}), want: 200},
		{route: "POST /v1/apps/{app}/keys", path: p("/v1/apps/acme/keys"), auth: "key:admin", lacking: "acme:users", body: b(map[string]any{"name": "ci", "scopes": []string{"push"}}), want: 201,
			after: func(e *apiEnv, r apiResp) {
				if !strings.HasPrefix(str(r, "key"), "wk_") {
					t.Errorf("create key: no plaintext in %s", r.raw)
				}
			}},
		{route: "GET /v1/apps/{app}/keys", path: p("/v1/apps/acme/keys"), auth: "key:admin", lacking: "acme:users", want: 200},
		{route: "POST /v1/apps/{app}/keys/{id}/rotate", path: func(e *apiEnv) string { return "/v1/apps/acme/keys/" + e.vars["spare_key"] + "/rotate" }, auth: "key:admin", lacking: "acme:users", want: 200},

		// Users and devices.
		{route: "POST /v1/apps/{app}/users", path: p("/v1/apps/acme/users"), auth: "key:users", lacking: "acme:push", body: b(map[string]any{"id": "erin", "tags": []string{"vip"}}), want: 201},
		{route: "GET /v1/apps/{app}/users", path: p("/v1/apps/acme/users"), auth: "key:users", lacking: "acme:push", want: 200},
		{route: "GET /v1/apps/{app}/users/{user}", path: p("/v1/apps/acme/users/alice"), auth: "key:users", lacking: "acme:push", want: 200},
		{route: "PATCH /v1/apps/{app}/users/{user}", path: p("/v1/apps/acme/users/alice"), auth: "key:users", lacking: "acme:push", body: b(map[string]any{"display_name": "Alice"}), want: 200},
		{route: "PUT /v1/apps/{app}/users/{user}/devices/{device}", path: p("/v1/apps/acme/users/erin/devices/tab"), auth: "key:users", lacking: "acme:publish", body: b(map[string]any{"platform": "web"}), want: 200},
		{route: "GET /v1/apps/{app}/users/{user}/devices", path: p("/v1/apps/acme/users/erin/devices"), auth: "key:push", lacking: "acme:publish", want: 200},
		{route: "GET /v1/apps/{app}/users/{user}/devices/{device}", path: p("/v1/apps/acme/users/erin/devices/tab"), auth: "key:push", lacking: "acme:publish", want: 200,
			after: func(e *apiEnv, r apiResp) {
				if str(r, "platform") != "web" {
					t.Errorf("get device: %s", r.raw)
				}
			}},
		{route: "DELETE /v1/apps/{app}/users/{user}/devices/{device}", path: p("/v1/apps/acme/users/erin/devices/tab"), auth: "key:users", lacking: "acme:publish", want: 204,
			after: func(e *apiEnv, r apiResp) {
				e.must(e.do("GET", "/v1/apps/acme/users/erin/devices/tab", e.admin, nil), 404)
			}},
		{route: "POST /v1/apps/{app}/tokens", path: p("/v1/apps/acme/tokens"), auth: "key:users", lacking: "acme:push", body: b(map[string]any{"user": "dan", "device": "d1"}), want: 200},
		{route: "POST /v1/apps/{app}/login", path: p("/v1/apps/acme/login"), auth: "public", body: b(map[string]any{"username": "bob", "password": "correct horse bob"}), want: 200},
		{route: "POST /v1/apps/{app}/refresh", path: p("/v1/apps/acme/refresh"), auth: "public", body: func(e *apiEnv) any { return map[string]any{"refresh_token": e.vars["alice_refresh"]} }, want: 200,
			after: func(e *apiEnv, r apiResp) { e.vars["alice_token"] = str(r, "access_token") }},

		// Conversations, members and messages.
		{route: "POST /v1/apps/{app}/conversations", path: p("/v1/apps/acme/conversations"), auth: "key:users", lacking: "acme:publish",
			body: b(map[string]any{"id": "team", "kind": "group", "name": "Team", "members": []string{"alice", "bob"}}), want: 201},
		{route: "GET /v1/apps/{app}/conversations/{conv}", path: p("/v1/apps/acme/conversations/team"), auth: "key:users", lacking: "acme:publish", want: 200},
		{route: "PATCH /v1/apps/{app}/conversations/{conv}", path: p("/v1/apps/acme/conversations/team"), auth: "key:users", lacking: "acme:publish", body: b(map[string]any{"name": "The Team"}), want: 200},
		{route: "POST /v1/apps/{app}/conversations/{conv}/members", path: p("/v1/apps/acme/conversations/team/members"), auth: "key:users", lacking: "acme:publish", body: b(map[string]any{"users": []string{"cal", "dan"}}), want: 200},
		{route: "GET /v1/apps/{app}/conversations/{conv}/members", path: p("/v1/apps/acme/conversations/team/members?limit=2"), auth: "key:users", lacking: "acme:publish", want: 200,
			after: func(e *apiEnv, r apiResp) {
				if ms, _ := r.body["members"].([]any); len(ms) != 2 || r.body["more"] != true || r.body["next"] != "bob" {
					t.Errorf("members page: %s", r.raw)
				}
			}},
		{route: "PATCH /v1/apps/{app}/conversations/{conv}/members/{user}", path: p("/v1/apps/acme/conversations/team/members/cal"), auth: "key:users", lacking: "acme:publish", body: b(map[string]any{"role": "admin"}), want: 200},
		{route: "DELETE /v1/apps/{app}/conversations/{conv}/members/{user}", path: p("/v1/apps/acme/conversations/team/members/dan"), auth: "key:users", lacking: "acme:publish", want: 204},
		{route: "GET /v1/apps/{app}/users/{user}/conversations", path: p("/v1/apps/acme/users/alice/conversations"), auth: "key:users", lacking: "acme:publish", want: 200},
		{route: "DELETE /v1/apps/{app}/conversations/{conv}", auth: "key:admin", lacking: "acme:users", want: 204,
			path: func(e *apiEnv) string {
				// A channel of its own to delete (made once; the path is
				// asked for every request of the case).
				if r := e.do("POST", "/v1/apps/acme/conversations", e.admin, map[string]any{"id": "doomed", "kind": "channel", "members": []string{"alice"}}); r.status != 201 && r.status != 409 {
					t.Fatalf("create doomed: %d %s", r.status, r.raw)
				}
				return "/v1/apps/acme/conversations/doomed"
			},
			after: func(e *apiEnv, r apiResp) {
				e.must(e.do("GET", "/v1/apps/acme/conversations/doomed", e.admin, nil), 404)
				if l := e.must(e.do("GET", "/v1/apps/acme/users/alice/conversations", e.admin, nil), 200); strings.Contains(string(l.raw), "doomed") {
					t.Errorf("deleted conversation still listed: %s", l.raw)
				}
			}},
		{route: "POST /v1/apps/{app}/conversations/{conv}/messages", path: p("/v1/apps/acme/conversations/team/messages"), auth: "key:publish", lacking: "acme:push",
			body: b(map[string]any{"body": map[string]string{"text": "from the service"}, "cmid": "svc-1"}), want: 201,
			after: func(e *apiEnv, r apiResp) { e.vars["svc_seq"] = fmt.Sprint(r.body["seq"]) }},
		{route: "POST /v1/apps/{app}/users/{user}/direct/{peer}/messages", path: p("/v1/apps/acme/users/alice/direct/bob/messages"), auth: "key:users", lacking: "acme:publish",
			body: b(map[string]any{"body": "hi bob"}), want: 201},
		{route: "GET /v1/apps/{app}/conversations/{conv}/messages", path: p("/v1/apps/acme/conversations/team/messages"), auth: "key:admin", lacking: "acme:users", want: 200},
		{route: "GET /v1/apps/{app}/users/{user}/direct/{peer}/messages", path: p("/v1/apps/acme/users/bob/direct/alice/messages"), auth: "key:admin", lacking: "acme:users", want: 200,
			after: func(e *apiEnv, r apiResp) {
				if ms, _ := r.body["messages"].([]any); len(ms) != 1 {
					t.Errorf("direct history: %s", r.raw)
				}
			}},
		{route: "PATCH /v1/apps/{app}/conversations/{conv}/messages/{seq}", path: func(e *apiEnv) string { return "/v1/apps/acme/conversations/team/messages/" + e.vars["svc_seq"] },
			auth: "key:publish", lacking: "acme:push", body: b(map[string]any{"body": map[string]string{"text": "edited by the service"}}), want: 200,
			after: func(e *apiEnv, r apiResp) {
				if ref, _ := r.body["ref"].(map[string]any); fmt.Sprint(ref["seq"]) != e.vars["svc_seq"] || r.body["seq"] == nil {
					t.Errorf("edit: %s", r.raw)
				}
			}},
		{route: "POST /v1/apps/{app}/conversations/{conv}/messages/{seq}/recall", path: func(e *apiEnv) string {
			return "/v1/apps/acme/conversations/team/messages/" + e.vars["svc_seq"] + "/recall"
		},
			auth: "key:publish", lacking: "acme:push", body: b(map[string]any{}), want: 200,
			after: func(e *apiEnv, r apiResp) {
				if r.body["seq"] == nil || r.body["unchanged"] != nil {
					t.Errorf("recall: %s", r.raw)
				}
			}},

		// Push.
		{route: "PUT /v1/apps/{app}/push/credentials/{provider}", path: p("/v1/apps/acme/push/credentials/apns"), auth: "key:push", lacking: "acme:users",
			body: b(map[string]any{"auth_key": keyPEM, "key_id": "K1", "team_id": "T1", "topic": "com.acme.chat", "endpoint": apnsURL, "root_cas": apnsCA}), want: 200},
		{route: "GET /v1/apps/{app}/push/credentials/{provider}", path: p("/v1/apps/acme/push/credentials/apns"), auth: "key:push", lacking: "acme:users", want: 200},
		{route: "POST /v1/apps/{app}/push/credentials/{provider}/resume", path: p("/v1/apps/acme/push/credentials/apns/resume"), auth: "key:push", lacking: "acme:users", want: 200},
		{route: "GET /v1/apps/{app}/push/settings", path: p("/v1/apps/acme/push/settings"), auth: "key:push", lacking: "acme:users", want: 200},
		{route: "PUT /v1/apps/{app}/push/settings", path: p("/v1/apps/acme/push/settings"), auth: "key:push", lacking: "acme:users", body: b(map[string]any{"preview": "sender"}), want: 200},
		{route: "GET /v1/apps/{app}/push/users/{user}/prefs", path: p("/v1/apps/acme/push/users/bob/prefs"), auth: "key:push", lacking: "acme:users", want: 200},
		{route: "PUT /v1/apps/{app}/push/users/{user}/prefs", path: p("/v1/apps/acme/push/users/bob/prefs"), auth: "key:push", lacking: "acme:users", body: b(map[string]any{"disabled": false}), want: 200},
		{route: "POST /v1/apps/{app}/push/test", path: p("/v1/apps/acme/push/test"), auth: "key:push", lacking: "acme:users", body: b(map[string]any{"user": "bob", "title": "t", "body": "b"}), want: 202,
			after: func(e *apiEnv, r apiResp) {
				ids, _ := r.body["ids"].([]any)
				if len(ids) != 1 {
					t.Fatalf("test push: %s", r.raw)
				}
				e.vars["push_id"] = ids[0].(string)
			}},
		{route: "GET /v1/apps/{app}/push/ledger", path: p("/v1/apps/acme/push/ledger"), auth: "key:push", lacking: "acme:users", want: 200},
		{route: "GET /v1/apps/{app}/push/ledger/{id}", path: func(e *apiEnv) string { return "/v1/apps/acme/push/ledger/" + e.vars["push_id"] }, auth: "key:push", lacking: "acme:users", want: 200},
		{route: "DELETE /v1/apps/{app}/push/credentials/{provider}", path: p("/v1/apps/acme/push/credentials/apns"), auth: "key:push", lacking: "acme:users", want: 204},

		// Webhooks.
		{route: "POST /v1/apps/{app}/webhooks", path: p("/v1/apps/acme/webhooks"), auth: "key:admin", lacking: "acme:users",
			body: b(map[string]any{"url": hookURL, "events": []string{"message.created", "user.*"}}), want: 201,
			after: func(e *apiEnv, r apiResp) {
				if !strings.HasPrefix(str(r, "secret"), "whsec_") {
					t.Errorf("create webhook: no secret in %s", r.raw)
				}
				e.vars["webhook"] = str(r, "id")
			}},
		{route: "GET /v1/apps/{app}/webhooks", path: p("/v1/apps/acme/webhooks"), auth: "key:admin", lacking: "acme:users", want: 200},
		{route: "GET /v1/apps/{app}/webhooks/{id}", path: func(e *apiEnv) string { return "/v1/apps/acme/webhooks/" + e.vars["webhook"] }, auth: "key:admin", lacking: "acme:users", want: 200},
		{route: "PATCH /v1/apps/{app}/webhooks/{id}", path: func(e *apiEnv) string { return "/v1/apps/acme/webhooks/" + e.vars["webhook"] }, auth: "key:admin", lacking: "acme:users",
			body: b(map[string]any{"description": "crm"}), want: 200},
		{route: "POST /v1/apps/{app}/webhooks/{id}/rotate-secret", path: func(e *apiEnv) string { return "/v1/apps/acme/webhooks/" + e.vars["webhook"] + "/rotate-secret" }, auth: "key:admin", lacking: "acme:users",
			body: b(map[string]any{"grace_seconds": 60}), want: 200},
		{route: "POST /v1/apps/{app}/webhooks/{id}/test", path: func(e *apiEnv) string { return "/v1/apps/acme/webhooks/" + e.vars["webhook"] + "/test" }, auth: "key:admin", lacking: "acme:users", want: 202,
			after: func(e *apiEnv, r apiResp) { e.vars["webhook_delivery"] = str(r, "id") }},
		{route: "GET /v1/apps/{app}/webhooks/{id}/deliveries", path: func(e *apiEnv) string { return "/v1/apps/acme/webhooks/" + e.vars["webhook"] + "/deliveries" }, auth: "key:admin", lacking: "acme:users", want: 200},
		{route: "GET /v1/apps/{app}/webhooks/{id}/deliveries/{delivery}", path: func(e *apiEnv) string {
			return "/v1/apps/acme/webhooks/" + e.vars["webhook"] + "/deliveries/" + e.vars["webhook_delivery"]
		}, auth: "key:admin", lacking: "acme:users", want: 200},
		{route: "POST /v1/apps/{app}/webhooks/{id}/deliveries/{delivery}/redeliver", path: func(e *apiEnv) string {
			// The test delivery has been sent by now (or the answer is 409).
			waitDelivered(t, e, e.vars["webhook"], e.vars["webhook_delivery"])
			return "/v1/apps/acme/webhooks/" + e.vars["webhook"] + "/deliveries/" + e.vars["webhook_delivery"] + "/redeliver"
		}, auth: "key:admin", lacking: "acme:users", want: 202},
		{route: "DELETE /v1/apps/{app}/webhooks/{id}", path: func(e *apiEnv) string { return "/v1/apps/acme/webhooks/" + e.vars["webhook"] }, auth: "key:admin", lacking: "acme:users", want: 204},

		// Audience: labels, bulk users, events, segments; targeted push.
		{route: "PUT /v1/apps/{app}/users/{user}/tags", path: p("/v1/apps/acme/users/cal/tags"), auth: "key:users", lacking: "acme:push", body: b(map[string]any{"tags": []string{"vip", "beta", "vip"}}), want: 200,
			after: func(e *apiEnv, r apiResp) {
				if fmt.Sprint(r.body["tags"]) != "[vip beta]" {
					t.Fatalf("tags: %s", r.raw)
				}
			}},
		{route: "PATCH /v1/apps/{app}/users/{user}/tags", path: p("/v1/apps/acme/users/cal/tags"), auth: "key:users", lacking: "acme:push", body: b(map[string]any{"add": []string{"churned"}, "remove": []string{"beta"}}), want: 200,
			after: func(e *apiEnv, r apiResp) {
				if fmt.Sprint(r.body["tags"]) != "[vip churned]" {
					t.Fatalf("tags: %s", r.raw)
				}
			}},
		{route: "GET /v1/apps/{app}/users/{user}/tags", path: p("/v1/apps/acme/users/cal/tags"), auth: "key:users", lacking: "acme:push", want: 200},
		{route: "PUT /v1/apps/{app}/users/{user}/attributes", path: p("/v1/apps/acme/users/cal/attributes"), auth: "key:users", lacking: "acme:push", body: b(map[string]any{"attributes": map[string]string{"country": "DE", "plan": "pro"}}), want: 200},
		{route: "PATCH /v1/apps/{app}/users/{user}/attributes", path: p("/v1/apps/acme/users/cal/attributes"), auth: "key:users", lacking: "acme:push", body: b(map[string]any{"attributes": map[string]any{"plan": nil, "timezone": "Europe/Berlin"}}), want: 200,
			after: func(e *apiEnv, r apiResp) {
				if fmt.Sprint(r.body["attributes"]) != "map[country:DE timezone:Europe/Berlin]" {
					t.Fatalf("attributes: %s", r.raw)
				}
			}},
		{route: "GET /v1/apps/{app}/users/{user}/attributes", path: p("/v1/apps/acme/users/cal/attributes"), auth: "key:users", lacking: "acme:push", want: 200},
		{route: "POST /v1/apps/{app}/users/bulk", path: p("/v1/apps/acme/users/bulk"), auth: "key:users", lacking: "acme:push",
			body: b(map[string]any{"users": []map[string]any{{"id": "blk1", "tags": []string{"vip"}}, {"id": "blk2", "attributes": map[string]string{"country": "DE"}}}}), want: 201,
			after: func(e *apiEnv, r apiResp) {
				// The same IDs again: all or nothing.
				e.must(e.do("POST", "/v1/apps/acme/users/bulk", e.admin, map[string]any{"users": []map[string]any{{"id": "blk3"}, {"id": "blk1"}}}), 409)
				e.must(e.do("GET", "/v1/apps/acme/users/blk3", e.admin, nil), 404)
			}},
		{route: "POST /v1/apps/{app}/events", path: p("/v1/apps/acme/events"), auth: "key:push", lacking: "acme:publish",
			body: b(map[string]any{"events": []map[string]any{{"user": "cal", "name": "login"}, {"user": "blk1", "name": "viewed_product", "properties": map[string]string{"product": "X"}}}}), want: 202},
		{route: "POST /v1/events", path: p("/v1/events"), auth: "keyapp:push", lacking: "acme:publish",
			body: b(map[string]any{"events": []map[string]any{{"user": "blk2", "name": "viewed_product", "properties": map[string]string{"product": "Y"}}}}), want: 202},
		{route: "GET /v1/apps/{app}/events", path: p("/v1/apps/acme/events?name=viewed_product"), auth: "key:push", lacking: "acme:publish", want: 200,
			after: func(e *apiEnv, r apiResp) {
				if evs, _ := r.body["events"].([]any); len(evs) != 2 {
					t.Fatalf("events: %s", r.raw)
				}
			}},
		{route: "POST /v1/apps/{app}/audience", path: p("/v1/apps/acme/audience"), auth: "key:push", lacking: "acme:users", body: b(map[string]any{"tags": "vip AND NOT churned"}), want: 200,
			after: func(e *apiEnv, r apiResp) {
				if fmt.Sprint(r.body["users"]) != "[blk1 erin]" {
					t.Fatalf("audience: %s", r.raw)
				}
				bad := e.do("POST", "/v1/apps/acme/audience", e.admin, map[string]any{"tags": "vip AND"})
				if bad.status != 400 || !strings.Contains(bad.errMessage(), "at offset 7") {
					t.Fatalf("bad expression: %s", bad.raw)
				}
			}},
		{route: "POST /v1/apps/{app}/segments", path: p("/v1/apps/acme/segments"), auth: "key:push", lacking: "acme:users",
			body: b(map[string]any{"id": "viewers", "name": "Viewed X", "rule": "event(viewed_product, 7d, product=X) OR attr(country) = DE"}), want: 201},
		{route: "GET /v1/apps/{app}/segments", path: p("/v1/apps/acme/segments"), auth: "key:push", lacking: "acme:users", want: 200},
		{route: "PUT /v1/apps/{app}/segments/{id}", path: p("/v1/apps/acme/segments/viewers"), auth: "key:push", lacking: "acme:users",
			body: b(map[string]any{"name": "Viewed X", "rule": "event(viewed_product, 7d, product=X) OR (attr(country) = DE AND NOT vip)"}), want: 200},
		{route: "GET /v1/apps/{app}/segments/{id}", path: p("/v1/apps/acme/segments/viewers"), auth: "key:push", lacking: "acme:users", want: 200},
		{route: "GET /v1/apps/{app}/segments/{id}/users", path: p("/v1/apps/acme/segments/viewers/users"), auth: "key:push", lacking: "acme:users", want: 200,
			after: func(e *apiEnv, r apiResp) {
				if fmt.Sprint(r.body["users"]) != "[blk1 blk2]" {
					t.Fatalf("segment users: %s", r.raw)
				}
			}},
		{route: "POST /v1/apps/{app}/campaigns", path: p("/v1/apps/acme/campaigns"), auth: "key:push", lacking: "acme:users",
			body: b(map[string]any{"audience": map[string]any{"segment": "viewers"}, "notification": map[string]any{"body": "X is back"}}), want: 202,
			after: func(e *apiEnv, r apiResp) { e.vars["campaign"] = str(r, "id") }},
		{route: "POST /v1/push", path: p("/v1/push"), auth: "keyapp:push", lacking: "acme:users",
			body: b(map[string]any{"audience": map[string]any{"users": []string{"bob"}}, "notification": map[string]any{"body": "later"}, "schedule_at": time.Now().Add(time.Hour)}), want: 202,
			after: func(e *apiEnv, r apiResp) { e.vars["campaign2"] = str(r, "id") }},
		{route: "GET /v1/apps/{app}/campaigns", path: p("/v1/apps/acme/campaigns"), auth: "key:push", lacking: "acme:users", want: 200},
		{route: "GET /v1/apps/{app}/campaigns/{id}", path: func(e *apiEnv) string { return "/v1/apps/acme/campaigns/" + e.vars["campaign"] }, auth: "key:push", lacking: "acme:users", want: 200},
		{route: "POST /v1/apps/{app}/campaigns/{id}/cancel", path: func(e *apiEnv) string { return "/v1/apps/acme/campaigns/" + e.vars["campaign2"] + "/cancel" }, auth: "key:push", lacking: "acme:users", want: 200,
			after: func(e *apiEnv, r apiResp) {
				if str(r, "state") != "canceled" {
					t.Fatalf("cancel: %s", r.raw)
				}
			}},
		{route: "POST /v1/apps/{app}/campaigns/{id}/opened", path: func(e *apiEnv) string { return "/v1/apps/acme/campaigns/" + e.vars["campaign"] + "/opened" }, auth: "key:push", lacking: "acme:users",
			body: b(map[string]any{"user": "blk1"}), want: 200},
		{route: "DELETE /v1/apps/{app}/segments/{id}", path: p("/v1/apps/acme/segments/viewers"), auth: "key:push", lacking: "acme:users", want: 204},

		// Bans.
		{route: "POST /v1/bans", path: p("/v1/bans"), auth: "admin", body: b(map[string]any{"kind": "ip", "value": "203.0.113.7", "ttl": 60}), want: 201},
		{route: "GET /v1/bans", path: p("/v1/bans"), auth: "admin", want: 200},
		{route: "DELETE /v1/bans/{kind}/{value...}", path: p("/v1/bans/ip/203.0.113.7"), auth: "admin", want: 204},

		// Attachments (a user's access token).
		{route: "POST /v1/files", path: p("/v1/files?name=dot.png"), auth: "user", stream: true, body: func(e *apiEnv) any { return testPNG(t, 64, 48) },
			header: func(*apiEnv) []string { return []string{"Content-Type", "image/png"} }, want: 201,
			after: func(e *apiEnv, r apiResp) { e.vars["file"] = str(r, "id") }},
		{route: "GET /v1/files/{id}/info", path: func(e *apiEnv) string { return "/v1/files/" + e.vars["file"] + "/info" }, auth: "user", want: 200},
		{route: "GET /v1/files/{id}", path: func(e *apiEnv) string { return "/v1/files/" + e.vars["file"] }, auth: "user", stream: true, want: 200},
		{route: "GET /v1/files/{id}/thumb", path: func(e *apiEnv) string { return "/v1/files/" + e.vars["file"] + "/thumb" }, auth: "user", stream: true, want: 200},
		{route: "POST /v1/uploads", path: p("/v1/uploads"), auth: "user", body: b(map[string]any{"size": 10, "name": "ten.txt"}), want: 201,
			after: func(e *apiEnv, r apiResp) {
				e.vars["upload"] = str(r, "id")
				r = e.must(e.do("POST", "/v1/uploads", e.vars["alice_token"], map[string]any{"size": 3}), 201)
				e.vars["upload2"] = str(r, "id")
			}},
		{route: "HEAD /v1/uploads/{id}", path: func(e *apiEnv) string { return "/v1/uploads/" + e.vars["upload"] }, auth: "user", want: 200},
		{route: "GET /v1/uploads/{id}", path: func(e *apiEnv) string { return "/v1/uploads/" + e.vars["upload"] }, auth: "user", want: 200},
		{route: "PATCH /v1/uploads/{id}", path: func(e *apiEnv) string { return "/v1/uploads/" + e.vars["upload"] }, auth: "user", stream: true,
			body: b([]byte("01234")), header: func(*apiEnv) []string {
				return []string{"Upload-Offset", "0", "Content-Type", "application/offset+octet-stream"}
			}, want: 204},
		{route: "PUT /v1/uploads/{id}", path: func(e *apiEnv) string { return "/v1/uploads/" + e.vars["upload"] }, auth: "user", stream: true,
			body: b([]byte("56789")), header: func(*apiEnv) []string {
				return []string{"Content-Range", "bytes 5-9/10", "Content-Type", "application/octet-stream"}
			}, want: 201},
		{route: "DELETE /v1/uploads/{id}", path: func(e *apiEnv) string { return "/v1/uploads/" + e.vars["upload2"] }, auth: "user", want: 204},

		// Search (a user's access token).
		{route: "GET /v1/me/search", path: p("/v1/me/search?q=hello"), auth: "user", want: 200},

		// A user's own routes.
		{route: "POST /v1/me/totp/enroll", path: p("/v1/me/totp/enroll"), auth: "user", want: 200,
			after: func(e *apiEnv, r apiResp) { e.vars["totp"] = str(r, "secret") }},
		{route: "POST /v1/me/totp/confirm", path: p("/v1/me/totp/confirm"), auth: "user", body: func(e *apiEnv) any { return map[string]any{"code": totpCode(t, e.vars["totp"], -1)} }, want: 200},
		{route: "POST /v1/me/recovery-codes", path: p("/v1/me/recovery-codes"), auth: "user", body: func(e *apiEnv) any { return map[string]any{"code": totpCode(t, e.vars["totp"], 0)} }, want: 200},
		{route: "POST /v1/me/totp/disable", path: p("/v1/me/totp/disable"), auth: "user",
			body: func(e *apiEnv) any {
				return map[string]any{"code": totpCode(t, e.vars["totp"], 1), "password": "correct horse alice"}
			}, want: 204},
		{route: "POST /v1/logout", path: p("/v1/logout"), auth: "user", want: 204},

		// Destructive ones last.
		{route: "DELETE /v1/apps/{app}/users/{user}", path: p("/v1/apps/acme/users/erin"), auth: "key:users", lacking: "acme:push", want: 204},
		{route: "DELETE /v1/apps/{app}/keys/{id}", path: func(e *apiEnv) string { return "/v1/apps/acme/keys/" + e.vars["spare_key"] }, auth: "key:admin", lacking: "acme:users", want: 204},
		{route: "POST /v1/apps/{app}/rotate-secret", path: p("/v1/apps/acme/rotate-secret"), auth: "key:admin", lacking: "acme:users", want: 200},
		{route: "POST /v1/apps/{app}/disable", path: p("/v1/apps/tmp/disable"), auth: "app-admin", want: 200},
	}
}

// TestAPIRoutes calls every /v1 route of a running server over HTTP:
// without credentials (401), with a bogus key (401), with another app's
// key (404), with a key lacking the scope (403), with an oversized body
// (413, both declared and streamed), with bad JSON (400 and a message),
// and successfully, with and without gzip. Every registered route must
// have a case.
func TestAPIRoutes(t *testing.T) {
	e := newAPIEnv(t)
	cases := routeCases(t)
	seen := map[string]bool{}
	for _, c := range cases {
		seen[c.route] = true
	}
	for _, r := range e.s.Mux().Routes() {
		if strings.HasPrefix(r.Path, "/v1/") && !seen[r.String()] {
			t.Errorf("route %s has no case in routeCases (broker/api_routes_test.go)", r)
		}
	}
	for _, c := range cases {
		method, _, _ := strings.Cut(c.route, " ")
		path := c.path(e)
		name := method + " " + path
		body := func() any {
			if c.body == nil {
				return nil
			}
			return c.body(e)
		}
		wantErr := func(r apiResp, status int, code, what string) {
			t.Helper()
			if method == "HEAD" { // no body to carry the error
				if r.status != status {
					t.Errorf("%s %s: %d, want %d", name, what, r.status, status)
				}
				return
			}
			if code == "bad_json" && r.errCode() == "bad_request" {
				code = "bad_request" // a route that parses its body itself (media)
			}
			if r.status != status || r.errMessage() == "" || (code != "" && r.errCode() != code) {
				t.Errorf("%s %s: %d %s, want %d %s with a message", name, what, r.status, r.raw, status, code)
			}
		}
		// The right credential for the success call.
		var good string
		switch {
		case c.auth == "public":
		case c.auth == "admin" || c.auth == "app-admin":
			good = e.admin
		case c.auth == "user":
			good = e.vars["alice_token"]
		case strings.HasPrefix(c.auth, "key:"), strings.HasPrefix(c.auth, "keyapp:"):
			_, scope, _ := strings.Cut(c.auth, ":")
			if scope == "" {
				scope = "users"
			}
			good = e.keys["acme:"+scope]
		default:
			t.Fatalf("%s: unknown auth %q", name, c.auth)
		}

		if c.auth != "public" {
			wantErr(e.do(method, path, "", body()), 401, "unauthorized", "without credentials")
			wantErr(e.do(method, path, "wk_nope_0123456789abcdef0123456789abcdef", body()), 401, "", "with a bogus key")
		}
		switch {
		case c.auth == "admin":
			wantErr(e.do(method, path, e.keys["acme:admin"], body()), 403, "forbidden", "with an app's key")
		case c.auth == "app-admin" || strings.HasPrefix(c.auth, "key:"):
			wantErr(e.do(method, path, e.keys["rival:admin"], body()), 404, "not_found", "with another app's key")
		case c.auth == "user":
			wantErr(e.do(method, path, e.keys["acme:admin"], body()), 401, "", "with an API key instead of a user token")
		}
		if c.lacking != "" {
			wantErr(e.do(method, path, e.keys[c.lacking], body()), 403, "forbidden", "with a key lacking the scope")
		}
		if c.body != nil && !c.stream {
			auth := ""
			if good != "" {
				auth = "Authorization: Bearer " + good + "\r\n"
			}
			// Declared larger than http.max_body: refused unread.
			head := fmt.Sprintf("%s %s HTTP/1.1\r\nHost: x\r\n%sContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", method, path, auth, 2<<20)
			wantErr(e.rawRequest(head, nil), 413, "too_large", "with a declared oversized body")
			// Streamed past the route's own limit (every route's is below
			// 520 KiB, the server's 1 MiB).
			big := append([]byte(`{"x":"`), bytes.Repeat([]byte("a"), 520<<10)...)
			chunked := fmt.Appendf(nil, "%x\r\n%s\r\n0\r\n\r\n", len(big), big)
			head = fmt.Sprintf("%s %s HTTP/1.1\r\nHost: x\r\n%sContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n", method, path, auth)
			wantErr(e.rawRequest(head, chunked), 413, "too_large", "with a streamed oversized body")
			wantErr(e.do(method, path, good, `{"name": "x",`), 400, "bad_json", "with bad JSON")
			wantErr(e.do(method, path, good, `[1,2]`), 400, "bad_json", "with a JSON array")
		}

		hdr := []string{}
		if c.header != nil {
			hdr = c.header(e)
		}
		if method == "GET" {
			hdr = append(hdr, "Accept-Encoding", "gzip")
		}
		r := e.do(method, path, good, body(), hdr...)
		if r.status != c.want {
			t.Errorf("%s: %d %s, want %d", name, r.status, r.raw, c.want)
			continue
		}
		if c.stream {
			if r.header.Get("Content-Encoding") != "" {
				t.Errorf("%s: a stream was compressed", name)
			}
		} else if !strings.Contains(r.header.Get("Vary"), "Accept-Encoding") {
			t.Errorf("%s: no Vary: Accept-Encoding", name)
		}
		if c.stream {
			// Content, not JSON.
		} else if r.header.Get("Content-Encoding") == "gzip" {
			zr, err := gzip.NewReader(bytes.NewReader(r.raw))
			if err != nil {
				t.Fatalf("%s: gzip: %v", name, err)
			}
			if r.raw, err = io.ReadAll(zr); err != nil {
				t.Fatalf("%s: gunzip: %v", name, err)
			}
			if err := json.Unmarshal(r.raw, &r.body); err != nil {
				t.Fatalf("%s: gunzipped answer is not JSON: %v", name, err)
			}
		} else if len(r.raw) >= 1024 && method == "GET" {
			t.Errorf("%s: %d-byte answer not compressed for a client that accepts gzip", name, len(r.raw))
		}
		if c.after != nil {
			c.after(e, r)
		}
	}
}

// TestAPIGzipOnAndOff checks one large answer both ways: compressed for a
// client that accepts gzip, identical once decompressed, and plain for one
// that does not (or refuses it with q=0).
func TestAPIGzipOnAndOff(t *testing.T) {
	e := newAPIEnv(t)
	for i := range 40 {
		e.must(e.do("POST", "/v1/apps/acme/users", e.admin, map[string]any{"id": fmt.Sprintf("user%02d", i), "display_name": "A user with a long display name"}), 201)
	}
	plain := e.must(e.do("GET", "/v1/apps/acme/users?limit=100", e.admin, nil), 200)
	if plain.header.Get("Content-Encoding") != "" || len(plain.raw) < 4096 {
		t.Fatalf("plain: encoding %q, %d bytes", plain.header.Get("Content-Encoding"), len(plain.raw))
	}
	z := e.must(e.do("GET", "/v1/apps/acme/users?limit=100", e.admin, nil, "Accept-Encoding", "gzip"), 200)
	if z.header.Get("Content-Encoding") != "gzip" || len(z.raw) > len(plain.raw)/3 {
		t.Fatalf("gzip: encoding %q, %d of %d bytes", z.header.Get("Content-Encoding"), len(z.raw), len(plain.raw))
	}
	zr, err := gzip.NewReader(bytes.NewReader(z.raw))
	if err != nil {
		t.Fatal(err)
	}
	unz, _ := io.ReadAll(zr)
	if !bytes.Equal(unz, plain.raw) {
		t.Fatalf("decompressed answer differs from the plain one")
	}
	if r := e.do("GET", "/v1/apps/acme/users?limit=100", e.admin, nil, "Accept-Encoding", "gzip;q=0"); r.header.Get("Content-Encoding") != "" {
		t.Fatalf("gzip;q=0 got %q", r.header.Get("Content-Encoding"))
	}
	// An error is tiny: never compressed.
	if r := e.do("GET", "/v1/apps/acme/users/nobody", e.admin, nil, "Accept-Encoding", "gzip"); r.header.Get("Content-Encoding") != "" || r.status != 404 {
		t.Fatalf("error answer: %d %q", r.status, r.header.Get("Content-Encoding"))
	}
}

// TestAPIUnknownRoutes checks that unknown paths and wrong methods answer
// with JSON errors.
func TestAPIUnknownRoutes(t *testing.T) {
	e := newAPIEnv(t)
	r := e.do("GET", "/v1/nothing/here", e.admin, nil)
	if r.status != 404 || r.errCode() != "not_found" {
		t.Fatalf("unknown path: %d %s", r.status, r.raw)
	}
	r = e.do("DELETE", "/v1/apps", e.admin, nil)
	if r.status != 405 || r.errCode() != "method_not_allowed" || !strings.Contains(r.header.Get("Allow"), "POST") {
		t.Fatalf("wrong method: %d %s (Allow %q)", r.status, r.raw, r.header.Get("Allow"))
	}
	if r := e.do("GET", "/healthz", "", nil); r.status != 200 {
		t.Fatalf("healthz: %d", r.status)
	}
}

// TestAPIReadTimeout has a client send half a body and stall: with
// http.read_timeout at 300ms the server answers 408 with a JSON error
// (not the text of the network error) instead of waiting for it.
func TestAPIReadTimeout(t *testing.T) {
	e := newAPIEnvWith(t, func(c *Config) { c.HTTP.ReadTimeout = Duration(300 * time.Millisecond) })
	c, err := net.Dial("tcp", e.s.Addrs().HTTP)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprintf(c, "POST /v1/apps/acme/users HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"id\":", e.admin)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer to a stalled body: %v", err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var r apiResp
	_ = json.Unmarshal(raw, &r.body)
	if resp.StatusCode != http.StatusRequestTimeout || r.errCode() != "timeout" || strings.Contains(string(raw), "127.0.0.1") {
		t.Fatalf("stalled body: %d %s", resp.StatusCode, raw)
	}
	// The server still serves others.
	e.must(e.do("GET", "/v1/apps/acme", e.admin, nil), 200)
}

// TestHTTPSlowHeadersAndIdle checks the listener's own timeouts: a client
// that sends its headers too slowly, and a keep-alive connection left
// idle, are both closed by the server.
func TestHTTPSlowHeadersAndIdle(t *testing.T) {
	e := newAPIEnvWith(t, func(c *Config) {
		c.HTTP.ReadHeaderTimeout = Duration(300 * time.Millisecond)
		c.HTTP.IdleTimeout = Duration(300 * time.Millisecond)
	})
	closed := func(c net.Conn, br *bufio.Reader) {
		t.Helper()
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := br.ReadByte(); err == nil {
			t.Fatal("the server sent more instead of closing")
		} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatal("the server kept the connection open")
		}
	}
	// Half the headers, then nothing.
	slow, err := net.Dial("tcp", e.s.Addrs().HTTP)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	_, _ = io.WriteString(slow, "GET /v1/openapi.json HTTP/1.1\r\nHost: x\r\n")
	closed(slow, bufio.NewReader(slow))

	// A full request, then an idle keep-alive connection.
	idle, err := net.Dial("tcp", e.s.Addrs().HTTP)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	_, _ = io.WriteString(idle, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(idle)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Close {
		t.Fatalf("healthz: %d close=%v", resp.StatusCode, resp.Close)
	}
	closed(idle, br)
}
