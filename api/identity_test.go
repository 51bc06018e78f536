package api

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"image/png"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"

	"github.com/warblerim/warbler/identity"
	"github.com/warblerim/warbler/storage/badgerstore"
)

type idClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *idClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *idClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// idEnv is the identity API on a real HTTP server over a real service and
// Badger store.
type idEnv struct {
	t     *testing.T
	srv   *httptest.Server
	svc   *identity.Service
	clock *idClock
	admin string
	keys  map[string]string
}

func newIDEnv(t *testing.T) *idEnv {
	t.Helper()
	ctx := context.Background()
	db, err := badgerstore.Open(t.TempDir(), badgerstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	clock := &idClock{t: time.Unix(1_750_000_015, 0)}
	svc, err := identity.New(ctx, identity.Options{Store: badgerstore.NewIdentityStore(db), MasterKey: bytes.Repeat([]byte{9}, 32), Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	e := &idEnv{t: t, svc: svc, clock: clock, keys: map[string]string{}}
	e.admin, _, err = svc.CreateKey(ctx, identity.AdminApp, "admin", []string{identity.ScopeAdmin})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	NewIdentityAPI(IdentityOptions{Service: svc, MQTTAddr: func() string { return "127.0.0.1:1883" }}).Register(mux)
	e.srv = httptest.NewServer(mux)
	t.Cleanup(e.srv.Close)
	return e
}

type idResp struct {
	status int
	header http.Header
	body   map[string]any
	raw    string
}

func (r idResp) code() string {
	if e, ok := r.body["error"].(map[string]any); ok {
		s, _ := e["code"].(string)
		return s
	}
	return ""
}

func (r idResp) str(k string) string { s, _ := r.body[k].(string); return s }

// do sends a request; body may be a string (sent as is) or a value (sent
// as JSON).
func (e *idEnv) do(method, path, bearer string, body any) idResp {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		j, _ := json.Marshal(b)
		rd = bytes.NewReader(j)
	}
	req, _ := http.NewRequest(method, e.srv.URL+path, rd)
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	res, err := e.srv.Client().Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	out := idResp{status: res.StatusCode, header: res.Header, raw: string(raw)}
	_ = json.Unmarshal(raw, &out.body)
	return out
}

func (e *idEnv) want(r idResp, status int, code string) {
	e.t.Helper()
	if r.status != status || (code != "" && r.code() != code) {
		e.t.Fatalf("got %d %s, want %d %s", r.status, r.raw, status, code)
	}
}

// seed creates apps a1 and a2 over the API, with keys, users and a device.
func (e *idEnv) seed() {
	e.t.Helper()
	for _, app := range []string{"a1", "a2"} {
		e.want(e.do("POST", "/v1/apps", e.admin, map[string]any{"id": app, "name": "App " + app}), 201, "")
		for name, scopes := range map[string][]string{"admin": {"admin"}, "users": {"users"}, "push": {"push"}, "publish": {"publish"}} {
			r := e.do("POST", "/v1/apps/"+app+"/keys", e.admin, map[string]any{"name": name, "scopes": scopes})
			e.want(r, 201, "")
			e.keys[app+"-"+name] = r.str("key")
		}
	}
	e.want(e.do("POST", "/v1/apps/a1/users", e.keys["a1-users"], map[string]any{"id": "alice", "password": "correct horse", "display_name": "Alice"}), 201, "")
	e.want(e.do("POST", "/v1/apps/a1/users", e.keys["a1-users"], map[string]any{"id": "bob"}), 201, "")
	e.want(e.do("POST", "/v1/apps/a1/users", e.keys["a1-users"], map[string]any{"id": "victim"}), 201, "")
	e.want(e.do("POST", "/v1/apps/a2/users", e.keys["a2-users"], map[string]any{"id": "carol", "password": "carol's password"}), 201, "")
	e.want(e.do("PUT", "/v1/apps/a1/users/alice/devices/phone", e.keys["a1-users"], map[string]any{"platform": "ios", "push_token": "secret-apns-token"}), 200, "")
}

func (e *idEnv) login(app, user, pw string) idResp {
	e.t.Helper()
	r := e.do("POST", "/v1/apps/"+app+"/login", "", map[string]any{"username": user, "password": pw, "device": "d1"})
	e.want(r, 200, "")
	return r
}

// TestIdentityRoutes checks every route for success, 401 without or with a
// wrong credential, 404 for another app's key, 413 for an oversized body
// and 400 for bad JSON.
func TestIdentityRoutes(t *testing.T) {
	e := newIDEnv(t)
	e.seed()
	ctx := context.Background()
	_, delKey, _ := e.svc.CreateKey(ctx, "a1", "doomed", []string{"push"})
	_, rotKey, _ := e.svc.CreateKey(ctx, "a1", "rotating", []string{"push"})
	if _, err := e.svc.CreateApp(ctx, identity.AppSpec{ID: "a3"}); err != nil {
		t.Fatal(err)
	}
	access := e.login("a1", "alice", "correct horse").str("access_token")
	refresh := e.login("a1", "alice", "correct horse").str("refresh_token")
	logoutTok := e.login("a1", "alice", "correct horse").str("access_token")
	big := `{"name":"` + strings.Repeat("x", DefaultIdentityBodyLimit) + `"}`
	a1admin, a1users := e.keys["a1-admin"], e.keys["a1-users"]

	type route struct {
		method, path string
		cred         string // the credential that succeeds
		body         any    // nil: the route takes no body
		ok           int
		public       bool // no credential: 401 comes from a wrong one
		app          bool // has an {app} that another app's key must not reach
	}
	routes := []route{
		{"POST", "/v1/apps", e.admin, map[string]any{"name": "New"}, 201, false, false},
		{"GET", "/v1/apps", e.admin, nil, 200, false, false},
		{"GET", "/v1/apps/a1", a1users, nil, 200, false, true},
		{"PATCH", "/v1/apps/a1", e.admin, map[string]any{"quotas": map[string]any{"max_users": 100}}, 200, false, true},
		{"POST", "/v1/apps/a3/disable", e.admin, nil, 200, false, true},
		{"PUT", "/v1/apps/a1/public-key", a1admin, map[string]any{"public_key": ""}, 200, false, true},
		{"POST", "/v1/apps/a1/keys", a1admin, map[string]any{"name": "k", "scopes": []string{"users"}}, 201, false, true},
		{"GET", "/v1/apps/a1/keys", a1admin, nil, 200, false, true},
		{"POST", "/v1/apps/a1/keys/" + rotKey.ID + "/rotate", a1admin, nil, 200, false, true},
		{"DELETE", "/v1/apps/a1/keys/" + delKey.ID, a1admin, nil, 204, false, true},
		{"POST", "/v1/apps/a1/users", a1users, map[string]any{"id": "newbie"}, 201, false, true},
		{"GET", "/v1/apps/a1/users", a1users, nil, 200, false, true},
		{"GET", "/v1/apps/a1/users/alice", a1users, nil, 200, false, true},
		{"PATCH", "/v1/apps/a1/users/bob", a1users, map[string]any{"display_name": "Bob"}, 200, false, true},
		{"DELETE", "/v1/apps/a1/users/victim", a1users, nil, 204, false, true},
		{"PUT", "/v1/apps/a1/users/alice/devices/tab", e.keys["a1-push"], map[string]any{"platform": "android"}, 200, false, true},
		{"GET", "/v1/apps/a1/users/alice/devices", a1users, nil, 200, false, true},
		{"POST", "/v1/apps/a1/tokens", a1users, map[string]any{"user": "bob", "device": "d9"}, 200, false, true},
		{"POST", "/v1/apps/a1/login", "", map[string]any{"username": "alice", "password": "correct horse"}, 200, true, true},
		{"POST", "/v1/apps/a1/refresh", "", map[string]any{"refresh_token": refresh}, 200, true, true},
		{"POST", "/v1/logout", logoutTok, nil, 204, false, false},
		{"POST", "/v1/me/totp/enroll", access, nil, 200, false, false},
		// Success of the other /v1/me routes needs a TOTP code: see
		// TestIdentityTOTPFlow. Here they are checked for 401/413/400.
		{"POST", "/v1/me/totp/confirm", access, map[string]any{"code": "000000"}, 401, false, false},
		{"POST", "/v1/me/totp/disable", access, map[string]any{"password": "x", "code": "000000"}, 409, false, false},
		{"POST", "/v1/me/recovery-codes", access, map[string]any{"code": "000000"}, 409, false, false},
		// Last: it revokes every token issued above.
		{"POST", "/v1/apps/a1/rotate-secret", a1admin, nil, 200, false, true},
	}
	for _, rt := range routes {
		t.Run(rt.method+" "+rt.path, func(t *testing.T) {
			e.t = t
			// 401: no credential, or a wrong one.
			if rt.public {
				if strings.HasSuffix(rt.path, "/refresh") {
					e.want(e.do(rt.method, rt.path, "", map[string]any{"refresh_token": access}), 401, "unauthorized")
				} else {
					e.want(e.do(rt.method, rt.path, "", map[string]any{"username": "alice", "password": "wrong password"}), 401, "invalid_credentials")
				}
			} else {
				e.want(e.do(rt.method, rt.path, "", rt.body), 401, "unauthorized")
				e.want(e.do(rt.method, rt.path, "wk_aaaaaaaaaaaaa_"+strings.Repeat("a", 52), rt.body), 401, "unauthorized")
				e.want(e.do(rt.method, rt.path, "not-a-token", rt.body), 401, "unauthorized")
			}
			// 404: another app's most powerful key, or (for public
			// routes) an app that does not exist.
			if rt.app {
				other := strings.Replace(rt.path, "/a3/", "/a1/", 1)
				if rt.public {
					e.want(e.do(rt.method, strings.Replace(rt.path, "/a1/", "/nope/", 1), "", rt.body), 404, "not_found")
				} else {
					e.want(e.do(rt.method, other, e.keys["a2-admin"], rt.body), 404, "not_found")
				}
			}
			if rt.body != nil {
				e.want(e.do(rt.method, rt.path, rt.cred, big), 413, "too_large")
				e.want(e.do(rt.method, rt.path, rt.cred, `{"name":`), 400, "bad_json")
				e.want(e.do(rt.method, rt.path, rt.cred, `{"unknown_field":1}`), 400, "bad_json")
			}
			r := e.do(rt.method, rt.path, rt.cred, rt.body)
			if r.status != rt.ok {
				t.Fatalf("success: %d %s, want %d", r.status, r.raw, rt.ok)
			}
			// Nothing secret ever leaves, except a key at its creation
			// and the TOTP secret at enrollment.
			for _, banned := range []string{"secret_sealed", "password_hash", "hash\"", "\"push_token\"", "secret-apns-token", "correct horse", "totp_sealed"} {
				if strings.Contains(r.raw, banned) {
					t.Fatalf("response leaks %q: %s", banned, r.raw)
				}
			}
		})
	}
}

func TestIdentityAuthorization(t *testing.T) {
	e := newIDEnv(t)
	e.seed()
	// Scopes: a users key cannot manage keys; a push key cannot create
	// users; an app key cannot list or create apps.
	e.want(e.do("GET", "/v1/apps/a1/keys", e.keys["a1-users"], nil), 403, "forbidden")
	e.want(e.do("POST", "/v1/apps/a1/users", e.keys["a1-push"], map[string]any{"id": "x"}), 403, "forbidden")
	e.want(e.do("POST", "/v1/apps/a1/tokens", e.keys["a1-publish"], map[string]any{"user": "alice"}), 403, "forbidden")
	e.want(e.do("GET", "/v1/apps", e.keys["a1-admin"], nil), 403, "forbidden")
	e.want(e.do("POST", "/v1/apps/a1/disable", e.keys["a1-admin"], nil), 403, "forbidden")
	// A user token is not an API key.
	tok := e.login("a1", "alice", "correct horse").str("access_token")
	e.want(e.do("GET", "/v1/apps/a1/users", tok, nil), 401, "unauthorized")
	// Another app's user, user list, device list, key: all 404.
	e.want(e.do("GET", "/v1/apps/a2/users/carol", e.keys["a1-users"], nil), 404, "not_found")
	e.want(e.do("GET", "/v1/apps/a1/users/carol", e.keys["a1-users"], nil), 404, "not_found")
	keys := e.do("GET", "/v1/apps/a2/keys", e.keys["a2-admin"], nil)
	a2key := keys.body["keys"].([]any)[0].(map[string]any)["id"].(string)
	e.want(e.do("DELETE", "/v1/apps/a1/keys/"+a2key, e.keys["a1-admin"], nil), 404, "not_found")
	e.want(e.do("POST", "/v1/apps/a1/keys/"+a2key+"/rotate", e.keys["a1-admin"], nil), 404, "not_found")
	// The admin may act on any app; an unknown app is 404.
	e.want(e.do("GET", "/v1/apps/a2/users/carol", e.admin, nil), 200, "")
	e.want(e.do("GET", "/v1/apps/nope/users/carol", e.admin, nil), 404, "not_found")
	// Reserved and malformed IDs.
	e.want(e.do("POST", "/v1/apps/a1/users", e.keys["a1-users"], map[string]any{"id": "_svc"}), 400, "invalid")
	e.want(e.do("POST", "/v1/apps", e.admin, map[string]any{"id": "_x", "name": "x"}), 400, "invalid")
	e.want(e.do("POST", "/v1/apps", e.admin, map[string]any{"id": "a1", "name": "again"}), 409, "exists")
	// A disabled app's keys stop working.
	e.want(e.do("POST", "/v1/apps/a2/disable", e.admin, nil), 200, "")
	e.want(e.do("GET", "/v1/apps/a2", e.keys["a2-admin"], nil), 401, "unauthorized")
	e.want(e.do("POST", "/v1/apps/a2/login", "", map[string]any{"username": "carol", "password": "carol's password"}), 403, "app_disabled")
}

func TestIdentityUsersTokensDevices(t *testing.T) {
	e := newIDEnv(t)
	e.seed()
	k := e.keys["a1-users"]
	r := e.do("POST", "/v1/apps/a1/tokens", k, map[string]any{"user": "alice", "device": "d7", "ttl": 600})
	e.want(r, 200, "")
	if r.str("client_id") != "a1:alice:d7" || r.str("username") != "a1:alice" || r.str("mqtt") != "127.0.0.1:1883" {
		t.Fatalf("token response %s", r.raw)
	}
	topics := r.body["topics"].(map[string]any)
	if topics["downlink"] != "w/a1/u/alice" || topics["device"] != "w/a1/d/alice/d7" || topics["uplink"] != "w/a1/up/alice/d7" {
		t.Fatalf("topics %v", topics)
	}
	c, err := e.svc.VerifyAccess(r.str("password"))
	if err != nil || c.Device != "d7" || c.Expiry-c.Issued != 600 {
		t.Fatalf("issued token: %+v %v", c, err)
	}
	e.want(e.do("POST", "/v1/apps/a1/tokens", k, map[string]any{"user": "alice", "ttl": 7 * 86400}), 400, "invalid")
	e.want(e.do("POST", "/v1/apps/a1/tokens", k, map[string]any{"user": "ghost"}), 404, "not_found")

	// Paging.
	for _, id := range []string{"u1", "u2", "u3"} {
		e.want(e.do("POST", "/v1/apps/a1/users", k, map[string]any{"id": id}), 201, "")
	}
	p1 := e.do("GET", "/v1/apps/a1/users?limit=2", k, nil)
	if n := len(p1.body["users"].([]any)); n != 2 || p1.str("next") == "" {
		t.Fatalf("page 1: %s", p1.raw)
	}
	seen := 2
	for next := p1.str("next"); next != ""; {
		p := e.do("GET", "/v1/apps/a1/users?limit=2&after="+next, k, nil)
		seen += len(p.body["users"].([]any))
		next = p.str("next")
	}
	if seen != 6 { // alice, bob, victim, u1-u3
		t.Fatalf("paged through %d users", seen)
	}
	e.want(e.do("GET", "/v1/apps/a1/users?limit=1000", k, nil), 400, "invalid")

	// Devices: the push token is stored but never listed.
	d := e.do("GET", "/v1/apps/a1/users/alice/devices", k, nil)
	if strings.Contains(d.raw, "secret-apns-token") || !strings.Contains(d.raw, `"has_push_token":true`) {
		t.Fatalf("devices: %s", d.raw)
	}
	dev, _ := e.svc.GetDevice(context.Background(), "a1", "alice", "phone")
	if dev.PushToken != "secret-apns-token" {
		t.Fatalf("push token not stored: %+v", dev)
	}
	e.want(e.do("PUT", "/v1/apps/a1/users/alice/devices/bad%2Fid", k, map[string]any{}), 400, "invalid")

	// PATCH and DELETE.
	r = e.do("PATCH", "/v1/apps/a1/users/bob", k, map[string]any{"tags": []string{"vip"}, "attrs": map[string]string{"tier": "gold"}})
	if !strings.Contains(r.raw, `"vip"`) || !strings.Contains(r.raw, `"gold"`) {
		t.Fatalf("patch: %s", r.raw)
	}
	s := e.login("a1", "alice", "correct horse")
	e.want(e.do("DELETE", "/v1/apps/a1/users/alice", k, nil), 204, "")
	e.want(e.do("POST", "/v1/logout", s.str("access_token"), nil), 403, "user_disabled")
	e.want(e.do("POST", "/v1/apps/a1/login", "", map[string]any{"username": "alice", "password": "correct horse"}), 403, "user_disabled")
	if g := e.do("GET", "/v1/apps/a1/users/alice", k, nil); g.body["disabled"] != true {
		t.Fatalf("deleted user: %s", g.raw)
	}
}

func TestIdentitySessions(t *testing.T) {
	e := newIDEnv(t)
	e.seed()
	s := e.login("a1", "alice", "correct horse")
	if s.str("client_id") != "a1:alice:d1" || s.str("refresh_token") == "" || s.header.Get("Cache-Control") != "no-store" {
		t.Fatalf("login: %s", s.raw)
	}
	r := e.do("POST", "/v1/apps/a1/refresh", "", map[string]any{"refresh_token": s.str("refresh_token")})
	e.want(r, 200, "")
	// Spending the same refresh token twice revokes the session.
	e.want(e.do("POST", "/v1/apps/a1/refresh", "", map[string]any{"refresh_token": s.str("refresh_token")}), 401, "token_revoked")
	e.want(e.do("POST", "/v1/apps/a1/refresh", "", map[string]any{"refresh_token": r.str("refresh_token")}), 401, "token_revoked")
	// A refresh token of a1 is no good at a2.
	s2 := e.login("a1", "alice", "correct horse")
	e.want(e.do("POST", "/v1/apps/a2/refresh", "", map[string]any{"refresh_token": s2.str("refresh_token")}), 401, "unauthorized")
	// Logout kills the access and the refresh token.
	e.want(e.do("POST", "/v1/logout", s2.str("access_token"), nil), 204, "")
	e.want(e.do("POST", "/v1/logout", s2.str("access_token"), nil), 401, "token_revoked")
	e.want(e.do("POST", "/v1/apps/a1/refresh", "", map[string]any{"refresh_token": s2.str("refresh_token")}), 401, "token_revoked")
	// Rotating the app secret kills every server-issued token.
	s3 := e.login("a1", "alice", "correct horse")
	e.want(e.do("POST", "/v1/apps/a1/rotate-secret", e.keys["a1-admin"], nil), 200, "")
	e.want(e.do("POST", "/v1/me/totp/enroll", s3.str("access_token"), nil), 401, "token_revoked")
}

func TestIdentityTOTPFlow(t *testing.T) {
	e := newIDEnv(t)
	e.seed()
	opts := totp.ValidateOpts{Period: 30, Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1}
	code := func(secret string) string {
		c, err := totp.GenerateCodeCustom(secret, e.clock.Now(), opts)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	login := func(extra map[string]any) idResp {
		b := map[string]any{"username": "alice", "password": "correct horse", "device": "d1"}
		for k, v := range extra {
			b[k] = v
		}
		return e.do("POST", "/v1/apps/a1/login", "", b)
	}
	tok := login(nil).str("access_token")

	en := e.do("POST", "/v1/me/totp/enroll", tok, nil)
	e.want(en, 200, "")
	secret := en.str("secret")
	img, err := base64.StdEncoding.DecodeString(en.str("qr_png"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := png.Decode(bytes.NewReader(img)); err != nil {
		t.Fatalf("qr_png: %v", err)
	}
	if !strings.HasPrefix(en.str("uri"), "otpauth://totp/") {
		t.Fatalf("uri %s", en.str("uri"))
	}
	e.want(e.do("POST", "/v1/me/totp/confirm", tok, map[string]any{"code": "000000"}), 401, "invalid_mfa")
	cf := e.do("POST", "/v1/me/totp/confirm", tok, map[string]any{"code": code(secret)})
	e.want(cf, 200, "")
	var recovery []string
	for _, c := range cf.body["recovery_codes"].([]any) {
		recovery = append(recovery, c.(string))
	}
	if len(recovery) != 10 {
		t.Fatalf("recovery codes %v", recovery)
	}
	e.want(e.do("POST", "/v1/me/totp/enroll", tok, nil), 409, "mfa_enabled")

	// Login now needs the second factor.
	e.want(login(nil), 401, "mfa_required")
	e.clock.Advance(30 * time.Second)
	c := code(secret)
	e.want(login(map[string]any{"totp": c}), 200, "")
	e.want(login(map[string]any{"totp": c}), 401, "invalid_mfa") // replay
	// A recovery code works once.
	e.want(login(map[string]any{"recovery_code": recovery[0]}), 200, "")
	e.want(login(map[string]any{"recovery_code": recovery[0]}), 401, "invalid_mfa")
	// Regenerating needs a fresh code and voids the old set.
	e.clock.Advance(30 * time.Second)
	rg := e.do("POST", "/v1/me/recovery-codes", tok, map[string]any{"code": code(secret)})
	e.want(rg, 200, "")
	e.want(login(map[string]any{"recovery_code": recovery[1]}), 401, "invalid_mfa")
	fresh := rg.body["recovery_codes"].([]any)[0].(string)
	e.want(login(map[string]any{"recovery_code": fresh}), 200, "")
	// Disabling needs the password and a fresh code.
	e.clock.Advance(30 * time.Second)
	e.want(e.do("POST", "/v1/me/totp/disable", tok, map[string]any{"password": "nope nope", "code": code(secret)}), 401, "invalid_credentials")
	e.want(e.do("POST", "/v1/me/totp/disable", tok, map[string]any{"password": "correct horse", "code": code(secret)}), 204, "")
	e.want(login(nil), 200, "")
}

func TestIdentityLockout(t *testing.T) {
	e := newIDEnv(t)
	e.seed()
	bad := map[string]any{"username": "alice", "password": "wrong password"}
	good := map[string]any{"username": "alice", "password": "correct horse"}
	for i := range 5 {
		r := e.do("POST", "/v1/apps/a1/login", "", bad)
		if r.status != 401 || r.code() != "invalid_credentials" {
			t.Fatalf("attempt %d: %d %s", i+1, r.status, r.raw)
		}
	}
	r := e.do("POST", "/v1/apps/a1/login", "", good)
	e.want(r, 429, "locked")
	if r.header.Get("Retry-After") != "60" {
		t.Fatalf("Retry-After %q", r.header.Get("Retry-After"))
	}
	e.clock.Advance(30 * time.Second)
	if r := e.do("POST", "/v1/apps/a1/login", "", good); r.status != 429 || r.header.Get("Retry-After") != "30" {
		t.Fatalf("half-way: %d %q", r.status, r.header.Get("Retry-After"))
	}
	e.clock.Advance(30 * time.Second)
	e.want(e.do("POST", "/v1/apps/a1/login", "", good), 200, "")

	// Unknown users do not reveal themselves: same status and code.
	r = e.do("POST", "/v1/apps/a1/login", "", map[string]any{"username": "ghost", "password": "whatever1"})
	e.want(r, 401, "invalid_credentials")

	// Per client address: the test server sees every request from
	// 127.0.0.1, so 20 failures spread over accounts lock the address.
	for i := range 20 {
		e.do("POST", "/v1/apps/a1/login", "", map[string]any{"username": "ghost" + strings.Repeat("x", i), "password": "whatever1"})
	}
	e.want(e.do("POST", "/v1/apps/a1/login", "", good), 429, "locked")
}
