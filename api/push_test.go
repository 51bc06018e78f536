package api

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/warblerim/warbler/bridge"
	"github.com/warblerim/warbler/identity"
	"github.com/warblerim/warbler/storage"
	"github.com/warblerim/warbler/storage/badgerstore"
)

// pushEnv is the identity and push routes on one real HTTP server, over a
// real identity service, push bridge and Badger store, with a local APNs
// server (HTTP/2, TLS) behind the bridge.
type pushEnv struct {
	*idEnv
	br       *bridge.Bridge
	apns     *httptest.Server
	apnsMu   sync.Mutex
	apnsPath []string
	finished chan storage.PushRecord
	keyPEM   string
	appKey   string // app a1, scope push
	userKey  string // app a1, scope users only
	otherKey string // app a2, scope push
}

func newPushEnv(t *testing.T) *pushEnv {
	t.Helper()
	ctx := context.Background()
	db, err := badgerstore.Open(t.TempDir(), badgerstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	master := bytes.Repeat([]byte{9}, 32)
	clock := &idClock{t: time.Now()}
	svc, err := identity.New(ctx, identity.Options{Store: badgerstore.NewIdentityStore(db), MasterKey: master, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	e := &pushEnv{idEnv: &idEnv{t: t, svc: svc, clock: clock, keys: map[string]string{}}, finished: make(chan storage.PushRecord, 100)}
	e.br, err = bridge.New(bridge.Options{Store: badgerstore.NewPushStore(db, badgerstore.PushOptions{}), MasterKey: master,
		Directory: bridge.IdentityDirectory{Service: svc}, OnFinish: func(r storage.PushRecord) { e.finished <- r }})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.br.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.br.Close() })

	mux := http.NewServeMux()
	NewIdentityAPI(IdentityOptions{Service: svc, MQTTAddr: func() string { return "" }}).Register(mux)
	NewPushAPI(PushOptions{Bridge: e.br, Identity: svc}).Register(mux)
	e.srv = httptest.NewServer(mux)
	t.Cleanup(e.srv.Close)

	e.apns = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor != 2 || !strings.HasPrefix(r.Header.Get("authorization"), "bearer ") {
			w.WriteHeader(http.StatusForbidden)
			io.WriteString(w, `{"reason":"MissingProviderToken"}`)
			return
		}
		e.apnsMu.Lock()
		e.apnsPath = append(e.apnsPath, r.URL.Path)
		e.apnsMu.Unlock()
	}))
	e.apns.EnableHTTP2 = true
	e.apns.StartTLS()
	t.Cleanup(e.apns.Close)

	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	e.keyPEM = string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))

	for _, a := range []string{"a1", "a2"} {
		if _, err := svc.CreateApp(ctx, identity.AppSpec{ID: a, Name: a}); err != nil {
			t.Fatal(err)
		}
	}
	mk := func(app string, scopes ...string) string {
		k, _, err := svc.CreateKey(ctx, app, "k", scopes)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	e.admin = mk(identity.AdminApp, identity.ScopeAdmin)
	e.appKey, e.userKey, e.otherKey = mk("a1", identity.ScopePush), mk("a1", identity.ScopeUsers), mk("a2", identity.ScopePush)
	if _, err := svc.CreateUser(ctx, "a1", identity.UserSpec{ID: "bob"}); err != nil {
		t.Fatal(err)
	}
	tok := "0a1b2c3d4e5f"
	if _, err := svc.PutDevice(ctx, "a1", "bob", identity.DeviceSpec{ID: "iphone", Platform: "ios", PushToken: &tok}); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *pushEnv) apnsBody() map[string]any {
	return map[string]any{"auth_key": e.keyPEM, "key_id": "K1", "team_id": "T1", "topic": "com.a1.chat",
		"endpoint": e.apns.URL, "root_cas": string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: e.apns.Certificate().Raw}))}
}

func TestPushCredentialsRoutes(t *testing.T) {
	e := newPushEnv(t)
	const path = "/v1/apps/a1/push/credentials/apns"

	e.want(e.do("PUT", path, "", e.apnsBody()), 401, "unauthorized")
	e.want(e.do("PUT", path, e.userKey, e.apnsBody()), 403, "forbidden")
	e.want(e.do("PUT", path, e.otherKey, e.apnsBody()), 404, "not_found")
	e.want(e.do("PUT", "/v1/apps/a1/push/credentials/wns", e.appKey, e.apnsBody()), 404, "not_found")
	bad := e.apnsBody()
	bad["auth_key"] = "not a key"
	e.want(e.do("PUT", path, e.appKey, bad), 400, "invalid")
	e.want(e.do("PUT", path, e.appKey, map[string]any{"auth_key": e.keyPEM, "bogus": 1}), 400, "bad_json")
	e.want(e.do("PUT", "/v1/apps/a1/push/credentials/fcm", e.appKey, map[string]any{"service_account": map[string]string{"type": "user"}}), 400, "invalid")

	r := e.do("PUT", path, e.appKey, e.apnsBody())
	e.want(r, 200, "")
	if strings.Contains(r.raw, "PRIVATE KEY") || r.body["provider"] != "apns" {
		t.Fatalf("PUT answer %s", r.raw)
	}
	r = e.do("GET", path, e.admin, nil)
	e.want(r, 200, "")
	info := r.body["info"].(map[string]any)
	if info["key_id"] != "K1" || info["team_id"] != "T1" || info["auth"] != "token" || strings.Contains(r.raw, "PRIVATE") {
		t.Fatalf("GET answer %s", r.raw)
	}
	e.want(e.do("GET", path, e.otherKey, nil), 404, "not_found")
	e.want(e.do("GET", "/v1/apps/a2/push/credentials/apns", e.otherKey, nil), 404, "not_found")
	e.want(e.do("POST", path+"/resume", e.appKey, nil), 200, "")
	e.want(e.do("DELETE", path, e.otherKey, nil), 404, "not_found")
	e.want(e.do("DELETE", path, e.appKey, nil), 204, "")
	e.want(e.do("GET", path, e.appKey, nil), 404, "not_found")
	e.want(e.do("DELETE", path, e.appKey, nil), 404, "not_found")
}

func TestPushTestAndLedgerRoutes(t *testing.T) {
	e := newPushEnv(t)
	e.want(e.do("POST", "/v1/apps/a1/push/test", e.appKey, map[string]string{"user": "bob", "title": "Hi", "body": "test"}), 409, "no_credentials")
	e.want(e.do("PUT", "/v1/apps/a1/push/credentials/apns", e.appKey, e.apnsBody()), 200, "")
	e.want(e.do("POST", "/v1/apps/a1/push/test", e.appKey, map[string]string{"user": "nobody", "body": "x"}), 404, "not_found")
	e.want(e.do("POST", "/v1/apps/a1/push/test", e.otherKey, map[string]string{"user": "bob", "body": "x"}), 404, "not_found")

	r := e.do("POST", "/v1/apps/a1/push/test", e.appKey, map[string]string{"user": "bob", "title": "Hi", "body": "test push"})
	e.want(r, 202, "")
	ids := r.body["ids"].([]any)
	if len(ids) != 1 {
		t.Fatalf("test push: %s", r.raw)
	}
	id := ids[0].(string)
	select {
	case rec := <-e.finished:
		if rec.ID != id || rec.State != storage.PushAccepted {
			t.Fatalf("record %+v", rec)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the test push was not sent")
	}
	e.apnsMu.Lock()
	paths := append([]string(nil), e.apnsPath...)
	e.apnsMu.Unlock()
	if len(paths) != 1 || paths[0] != "/3/device/0a1b2c3d4e5f" {
		t.Fatalf("APNs saw %v", paths)
	}

	r = e.do("GET", "/v1/apps/a1/push/ledger?user=bob&device=iphone&limit=10", e.appKey, nil)
	e.want(r, 200, "")
	list := r.body["notifications"].([]any)
	if len(list) != 1 || list[0].(map[string]any)["id"] != id || list[0].(map[string]any)["state"] != "accepted" {
		t.Fatalf("ledger %s", r.raw)
	}
	if strings.Contains(r.raw, "0a1b2c3d4e5f") || strings.Contains(r.raw, "test push") {
		t.Fatalf("the ledger shows a token or a text: %s", r.raw)
	}
	e.want(e.do("GET", "/v1/apps/a1/push/ledger?device=iphone", e.appKey, nil), 400, "invalid")
	e.want(e.do("GET", "/v1/apps/a1/push/ledger?limit=0", e.appKey, nil), 400, "invalid")

	r = e.do("GET", "/v1/apps/a1/push/ledger/"+id, e.appKey, nil)
	e.want(r, 200, "")
	var one ledgerView
	_ = json.Unmarshal([]byte(r.raw), &one)
	if one.State != "accepted" || len(one.Events) != 3 || one.TokenHint != "3d4e5f" {
		t.Fatalf("ledger entry %s", r.raw)
	}
	e.want(e.do("GET", "/v1/apps/a2/push/ledger/"+id, e.otherKey, nil), 404, "not_found")
	e.want(e.do("GET", "/v1/apps/a1/push/ledger/"+id, e.otherKey, nil), 404, "not_found")
}

func TestPushSettingsAndPrefsRoutes(t *testing.T) {
	e := newPushEnv(t)
	r := e.do("PUT", "/v1/apps/a1/push/settings", e.appKey, map[string]any{"preview": "sender", "concurrency": 8, "grace_ms": 2000})
	e.want(r, 200, "")
	if r.body["preview"] != "sender" || r.body["concurrency"] != 8.0 || r.body["ttl_seconds"] == nil {
		t.Fatalf("settings %s", r.raw)
	}
	e.want(e.do("PUT", "/v1/apps/a1/push/settings", e.appKey, map[string]any{"preview": "everything"}), 400, "invalid")
	e.want(e.do("GET", "/v1/apps/a1/push/settings", e.otherKey, nil), 404, "not_found")

	prefs := map[string]any{"muted": map[string]string{"g1": "0001-01-01T00:00:00Z"}, "quiet_hours": map[string]string{"start": "22:00", "end": "07:00", "timezone": "Europe/Berlin"}}
	e.want(e.do("PUT", "/v1/apps/a1/push/users/bob/prefs", e.appKey, prefs), 200, "")
	r = e.do("GET", "/v1/apps/a1/push/users/bob/prefs", e.appKey, nil)
	e.want(r, 200, "")
	if r.body["quiet_hours"].(map[string]any)["timezone"] != "Europe/Berlin" || r.body["muted"].(map[string]any)["g1"] == nil {
		t.Fatalf("prefs %s", r.raw)
	}
	prefs["quiet_hours"] = map[string]string{"start": "22:00", "end": "07:00", "timezone": "Mars/Olympus"}
	e.want(e.do("PUT", "/v1/apps/a1/push/users/bob/prefs", e.appKey, prefs), 400, "invalid")
	e.want(e.do("GET", "/v1/apps/a1/push/users/nobody/prefs", e.appKey, nil), 404, "not_found")
	e.want(e.do("GET", "/v1/apps/a1/push/users/bob/prefs", e.otherKey, nil), 404, "not_found")
}
