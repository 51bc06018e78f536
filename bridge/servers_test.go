package bridge_test

// Local stand-ins for the providers: an HTTP/2 TLS server that speaks the
// APNs provider API and one that speaks the FCM v1 HTTP API together with
// the OAuth 2.0 JWT-bearer token exchange of a service account. Both check
// what a real provider checks (path, headers, JWT signatures, body shape),
// record every request, and answer as a test tells them to.

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v4"
)

// reply is a scripted answer; a zero reply is 200 with a generated ID.
type reply struct {
	status int
	header map[string]string
	body   string
	// block, if set, holds the request until it is closed or the client
	// gives up (a timeout).
	block chan struct{}
}

// apnsReq is one notification as the APNs server saw it.
type apnsReq struct {
	At                                                 time.Time
	Token, ID, Topic, PushType, Collapse, Prio, Expiry string
	Payload                                            map[string]any
	Problems                                           []string // what a real APNs would have refused
}

type apnsServer struct {
	t      testing.TB
	srv    *httptest.Server
	key    *ecdsa.PrivateKey
	keyPEM string
	keyID  string
	teamID string

	mu      sync.Mutex
	jwts    map[string]bool // verified tokens
	reqs    []apnsReq
	byID    map[string]int
	respond func(r apnsReq, n int) reply // n: how many times this apns-id arrived, counting this one
	got     chan apnsReq
}

func newAPNsServer(t testing.TB) *apnsServer {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	s := &apnsServer{t: t, key: key, keyPEM: string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
		keyID: "KEY1234567", teamID: "TEAM123456", byID: map[string]int{}, jwts: map[string]bool{}, got: make(chan apnsReq, 100000)}
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(s.handle))
	s.srv.EnableHTTP2 = true
	s.srv.StartTLS()
	t.Cleanup(s.srv.Close)
	return s
}

func (s *apnsServer) rootPEM() string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.srv.Certificate().Raw}))
}

func (s *apnsServer) setRespond(f func(r apnsReq, n int) reply) {
	s.mu.Lock()
	s.respond = f
	s.mu.Unlock()
}

// checkJWT verifies the provider token. Like APNs, it verifies a token
// once and then knows it (a provider reuses one token for up to an hour).
func (s *apnsServer) checkJWT(h string) string {
	bearer, ok := strings.CutPrefix(h, "bearer ")
	if !ok {
		return "authorization is not a bearer token"
	}
	s.mu.Lock()
	known := s.jwts[bearer]
	s.mu.Unlock()
	if known {
		return ""
	}
	if p := s.verifyJWT(bearer); p != "" {
		return p
	}
	s.mu.Lock()
	s.jwts[bearer] = true
	s.mu.Unlock()
	return ""
}

func (s *apnsServer) verifyJWT(bearer string) string {
	tok, err := jwt.Parse(bearer, func(tk *jwt.Token) (any, error) {
		if tk.Method.Alg() != "ES256" {
			return nil, fmt.Errorf("alg %s", tk.Method.Alg())
		}
		if tk.Header["kid"] != s.keyID {
			return nil, fmt.Errorf("kid %v", tk.Header["kid"])
		}
		return &s.key.PublicKey, nil
	})
	if err != nil || !tok.Valid {
		return fmt.Sprintf("JWT does not verify: %v", err)
	}
	c := tok.Claims.(jwt.MapClaims)
	iat, _ := c["iat"].(float64)
	if c["iss"] != s.teamID || time.Since(time.Unix(int64(iat), 0)).Abs() > time.Hour {
		return fmt.Sprintf("JWT claims %v", c)
	}
	return ""
}

func (s *apnsServer) handle(w http.ResponseWriter, r *http.Request) {
	req := apnsReq{At: time.Now(), ID: r.Header.Get("apns-id"), Topic: r.Header.Get("apns-topic"),
		PushType: r.Header.Get("apns-push-type"), Collapse: r.Header.Get("apns-collapse-id"),
		Prio: r.Header.Get("apns-priority"), Expiry: r.Header.Get("apns-expiration")}
	problem := func(f string, a ...any) { req.Problems = append(req.Problems, fmt.Sprintf(f, a...)) }
	if r.ProtoMajor != 2 {
		problem("HTTP/%d, not HTTP/2", r.ProtoMajor)
	}
	tok, ok := strings.CutPrefix(r.URL.Path, "/3/device/")
	if r.Method != http.MethodPost || !ok || tok == "" {
		problem("%s %s", r.Method, r.URL.Path)
	}
	req.Token = tok
	if p := s.checkJWT(r.Header.Get("authorization")); p != "" {
		problem("%s", p)
	}
	if req.Topic == "" {
		problem("no apns-topic")
	}
	if req.PushType != "alert" && req.PushType != "background" {
		problem("apns-push-type %q", req.PushType)
	}
	body, _ := io.ReadAll(r.Body)
	if err := json.Unmarshal(body, &req.Payload); err != nil {
		problem("payload is not JSON: %v", err)
	} else if _, ok := req.Payload["aps"].(map[string]any); !ok {
		problem("payload has no aps dictionary")
	}
	if len(body) > 4096 {
		problem("payload of %d bytes", len(body))
	}
	s.mu.Lock()
	s.reqs = append(s.reqs, req)
	s.byID[req.ID]++
	n := s.byID[req.ID]
	respond := s.respond
	s.mu.Unlock()
	select {
	case s.got <- req:
	default: // nobody is counting
	}
	var rep reply
	if respond != nil {
		rep = respond(req, n)
	}
	if rep.block != nil {
		select {
		case <-rep.block:
		case <-r.Context().Done():
			return
		}
	}
	for k, v := range rep.header {
		w.Header().Set(k, v)
	}
	w.Header().Set("apns-id", req.ID)
	if rep.status == 0 || rep.status == 200 {
		w.WriteHeader(200)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(rep.status)
	io.WriteString(w, rep.body)
}

// requests returns a copy of what arrived so far.
func (s *apnsServer) requests() []apnsReq {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]apnsReq(nil), s.reqs...)
}

func (s *apnsServer) counts() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := make(map[string]int, len(s.byID))
	for k, v := range s.byID {
		m[k] = v
	}
	return m
}

// apnsError is an APNs error body.
func apnsError(status int, reason string, extra ...string) reply {
	b := `{"reason":"` + reason + `"`
	for _, e := range extra {
		b += "," + e
	}
	return reply{status: status, body: b + "}"}
}

// fcmReq is one message as the FCM server saw it.
type fcmReq struct {
	At       time.Time
	NID      string
	Message  map[string]any
	Problems []string
}

type fcmServer struct {
	t       testing.TB
	srv     *httptest.Server
	project string
	saKey   *rsa.PrivateKey
	email   string

	mu       sync.Mutex
	tokens   map[string]bool
	tokenErr bool // the token endpoint refuses the service account
	reqs     []fcmReq
	byNID    map[string]int
	respond  func(r fcmReq, n int) reply
	got      chan fcmReq
}

var (
	rsaOnce sync.Once
	rsaKey  *rsa.PrivateKey
)

func newFCMServer(t testing.TB) *fcmServer {
	rsaOnce.Do(func() {
		var err error
		if rsaKey, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
	})
	s := &fcmServer{t: t, project: "warbler-test", saKey: rsaKey, email: "push@warbler-test.iam.gserviceaccount.com",
		tokens: map[string]bool{}, byNID: map[string]int{}, got: make(chan fcmReq, 100000)}
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(s.handle))
	s.srv.EnableHTTP2 = true
	s.srv.StartTLS()
	t.Cleanup(s.srv.Close)
	return s
}

func (s *fcmServer) rootPEM() string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.srv.Certificate().Raw}))
}

// serviceAccount is a service account key file whose token_uri is this
// server.
func (s *fcmServer) serviceAccount() json.RawMessage {
	der, _ := x509.MarshalPKCS8PrivateKey(s.saKey)
	b, _ := json.Marshal(map[string]string{
		"type": "service_account", "project_id": s.project, "private_key_id": "k1",
		"private_key":  string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
		"client_email": s.email, "client_id": "1", "token_uri": s.srv.URL + "/token",
	})
	return b
}

func (s *fcmServer) setRespond(f func(r fcmReq, n int) reply) {
	s.mu.Lock()
	s.respond = f
	s.mu.Unlock()
}

func (s *fcmServer) handle(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/token" {
		s.token(w, r)
		return
	}
	req := fcmReq{At: time.Now()}
	problem := func(f string, a ...any) { req.Problems = append(req.Problems, fmt.Sprintf(f, a...)) }
	if r.Method != http.MethodPost || r.URL.Path != "/v1/projects/"+s.project+"/messages:send" {
		problem("%s %s", r.Method, r.URL.Path)
	}
	bearer, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	s.mu.Lock()
	okTok := s.tokens[bearer]
	s.mu.Unlock()
	if !okTok {
		problem("access token %q was not issued", bearer)
	}
	var body struct {
		Message map[string]any `json:"message"`
	}
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil || body.Message == nil {
		problem("body: %v", err)
	}
	req.Message = body.Message
	if tk, _ := body.Message["token"].(string); tk == "" {
		problem("no token")
	}
	if d, ok := body.Message["data"].(map[string]any); ok {
		req.NID, _ = d["nid"].(string)
	}
	s.mu.Lock()
	s.reqs = append(s.reqs, req)
	s.byNID[req.NID]++
	n := s.byNID[req.NID]
	respond := s.respond
	s.mu.Unlock()
	select {
	case s.got <- req:
	default: // nobody is counting
	}
	var rep reply
	if respond != nil {
		rep = respond(req, n)
	}
	if rep.block != nil {
		select {
		case <-rep.block:
		case <-r.Context().Done():
			return
		}
	}
	for k, v := range rep.header {
		w.Header().Set(k, v)
	}
	w.Header().Set("Content-Type", "application/json")
	if rep.status == 0 || rep.status == 200 {
		fmt.Fprintf(w, `{"name":"projects/%s/messages/%s"}`, s.project, req.NID)
		return
	}
	w.WriteHeader(rep.status)
	io.WriteString(w, rep.body)
}

// token is the OAuth 2.0 JWT-bearer grant: it checks the assertion's
// RS256 signature against the service account's key.
func (s *fcmServer) token(w http.ResponseWriter, r *http.Request) {
	_ = r.ParseForm()
	s.mu.Lock()
	refuse := s.tokenErr
	s.mu.Unlock()
	a := r.PostForm.Get("assertion")
	tok, err := jwt.Parse(a, func(tk *jwt.Token) (any, error) {
		if tk.Method.Alg() != "RS256" {
			return nil, fmt.Errorf("alg %s", tk.Method.Alg())
		}
		return &s.saKey.PublicKey, nil
	})
	if refuse || err != nil || !tok.Valid || r.PostForm.Get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer" {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		io.WriteString(w, `{"error":"invalid_grant","error_description":"Invalid JWT Signature."}`)
		return
	}
	c := tok.Claims.(jwt.MapClaims)
	if c["iss"] != s.email || c["aud"] != s.srv.URL+"/token" || !strings.Contains(fmt.Sprint(c["scope"]), "firebase.messaging") {
		w.WriteHeader(http.StatusBadRequest)
		io.WriteString(w, `{"error":"invalid_grant","error_description":"bad claims"}`)
		return
	}
	at := fmt.Sprintf("at-%d", time.Now().UnixNano())
	s.mu.Lock()
	s.tokens[at] = true
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"access_token":%q,"token_type":"Bearer","expires_in":3600}`, at)
}

func (s *fcmServer) requests() []fcmReq {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]fcmReq(nil), s.reqs...)
}

// fcmError is an FCM v1 error body with an FcmError detail.
func fcmError(status int, grpcStatus, fcmCode string) reply {
	return reply{status: status, body: fmt.Sprintf(`{"error":{"code":%d,"status":%q,"message":"scripted","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":%q}]}}`, status, grpcStatus, fcmCode)}
}
