package identity

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/warblerim/warbler/protocol"
)

// MaxTokenLen bounds the size of a token accepted by the parser. A 4096-bit
// RSA signature alone is 683 characters, so this leaves ample room for the
// claims while keeping parsing cost fixed.
const MaxTokenLen = 4096

// Token types, in the typ claim.
const (
	TypeAccess  = "access"
	TypeRefresh = "refresh"
)

// Signing algorithms. Each key type accepts exactly one: the app secret
// only HS256, an Ed25519 key only EdDSA, an RSA key only RS256. "none" and
// every other value are refused.
const (
	AlgHS256 = "HS256"
	AlgEdDSA = "EdDSA"
	AlgRS256 = "RS256"
)

// errSecretRotated is the ErrTokenRevoked of a token signed under a secret
// that was rotated out; its signature could not be checked.
var errSecretRotated = fmt.Errorf("%w: app secret rotated", ErrTokenRevoked)

// Claims are the verified claims of a token.
type Claims struct {
	App    string `json:"app"`
	User   string `json:"sub"`
	Device string `json:"dev,omitempty"`
	Expiry int64  `json:"exp"`
	Issued int64  `json:"iat"`
	NotBef int64  `json:"nbf,omitempty"`
	ID     string `json:"jti"`
	Type   string `json:"typ"`
	// Session is the sign-in session ID shared by the access and refresh
	// tokens of one login; empty in app-minted tokens.
	Session string `json:"sid,omitempty"`
	// Alg is the algorithm the token was signed with (not a claim).
	Alg string `json:"-"`
}

// ExpiresAt returns the expiry as a time.
func (c *Claims) ExpiresAt() time.Time { return time.Unix(c.Expiry, 0) }

type jwsHeader struct {
	Alg string `json:"alg"`
	Typ string `json:"typ,omitempty"`
	Kid string `json:"kid,omitempty"`
}

// parsedToken is a token that passed the syntax checks, not yet verified.
type parsedToken struct {
	header       jwsHeader
	claims       Claims
	signingInput string
	sig          []byte
}

// parseToken checks the syntax of a compact JWS: at most MaxTokenLen bytes,
// three segments of unpadded base64url (no '=', no whitespace, no other
// bytes, canonical trailing bits), a header with exactly the known fields
// and an allowed alg, and claims that decode as Claims. It verifies
// nothing.
func parseToken(tok string) (*parsedToken, error) {
	if len(tok) == 0 || len(tok) > MaxTokenLen {
		return nil, ErrInvalidToken
	}
	for i := 0; i < len(tok); i++ {
		c := tok[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return nil, ErrInvalidToken
		}
	}
	h64, rest, ok1 := strings.Cut(tok, ".")
	c64, s64, ok2 := strings.Cut(rest, ".")
	if !ok1 || !ok2 || strings.Contains(s64, ".") || h64 == "" || c64 == "" || s64 == "" {
		return nil, ErrInvalidToken
	}
	enc := base64.RawURLEncoding.Strict()
	hb, err := enc.DecodeString(h64)
	if err != nil {
		return nil, ErrInvalidToken
	}
	cb, err := enc.DecodeString(c64)
	if err != nil {
		return nil, ErrInvalidToken
	}
	sig, err := enc.DecodeString(s64)
	if err != nil {
		return nil, ErrInvalidToken
	}
	p := &parsedToken{signingInput: tok[:len(h64)+1+len(c64)], sig: sig}
	dec := json.NewDecoder(bytes.NewReader(hb))
	dec.DisallowUnknownFields() // no "crit", "jku", "jwk", "x5u": nothing we would have to honour
	if err := dec.Decode(&p.header); err != nil || dec.More() {
		return nil, ErrInvalidToken
	}
	switch p.header.Alg {
	case AlgHS256, AlgEdDSA, AlgRS256:
	default:
		return nil, ErrInvalidToken
	}
	if p.header.Typ != "" && p.header.Typ != "JWT" {
		return nil, ErrInvalidToken
	}
	if err := json.Unmarshal(cb, &p.claims); err != nil {
		return nil, ErrInvalidToken
	}
	p.claims.Alg = p.header.Alg
	return p, nil
}

var b64 = base64.RawURLEncoding

// signHS256 builds a token over claims with the app's secret.
func signHS256(secret []byte, version uint32, c *Claims) string {
	h, _ := json.Marshal(jwsHeader{Alg: AlgHS256, Typ: "JWT", Kid: strconv.FormatUint(uint64(version), 10)})
	b, _ := json.Marshal(c)
	in := b64.EncodeToString(h) + "." + b64.EncodeToString(b)
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(in))
	return in + "." + b64.EncodeToString(m.Sum(nil))
}

// verifySignature checks the signature of p with the key of app e. The
// alg in the header selects the key, and each key accepts only its own
// alg, so an RS256 public key can never be used as an HMAC secret.
func (e *appEntry) verifySignature(p *parsedToken) error {
	switch p.header.Alg {
	case AlgHS256:
		if p.header.Kid != strconv.FormatUint(uint64(e.app.SecretVersion), 10) {
			if v, err := strconv.ParseUint(p.header.Kid, 10, 32); err == nil && v < uint64(e.app.SecretVersion) {
				return errSecretRotated
			}
			return ErrInvalidToken
		}
		m := hmac.New(sha256.New, e.secret)
		m.Write([]byte(p.signingInput))
		if !hmac.Equal(m.Sum(nil), p.sig) {
			return ErrInvalidToken
		}
	case AlgEdDSA:
		pub, ok := e.pub.(ed25519.PublicKey)
		if !ok || len(p.sig) != ed25519.SignatureSize || !ed25519.Verify(pub, []byte(p.signingInput), p.sig) {
			return ErrInvalidToken
		}
	case AlgRS256:
		pub, ok := e.pub.(*rsa.PublicKey)
		if !ok {
			return ErrInvalidToken
		}
		d := sha256.Sum256([]byte(p.signingInput))
		if rsa.VerifyPKCS1v15(pub, crypto.SHA256, d[:], p.sig) != nil {
			return ErrInvalidToken
		}
	default:
		return ErrInvalidToken
	}
	return nil
}

// VerifyAccess verifies an access token and returns its claims. It does no
// I/O and is safe to call on every MQTT CONNECT. Errors are ErrInvalidToken,
// ErrTokenExpired, ErrTokenRevoked, ErrAppDisabled or ErrUserDisabled.
func (s *Service) VerifyAccess(tok string) (*Claims, error) {
	return s.verify(tok, TypeAccess)
}

func (s *Service) verify(tok, typ string) (*Claims, error) {
	p, err := parseToken(tok)
	if err != nil {
		return nil, err
	}
	c := &p.claims
	if !protocol.ValidID(c.App) || !validUserID(c.User) || (c.Device != "" && !protocol.ValidID(c.Device)) ||
		c.ID == "" || len(c.ID) > 128 || c.Type != typ || c.Expiry == 0 || c.Issued == 0 {
		return nil, ErrInvalidToken
	}
	now := s.now()
	nowU := now.Unix()

	s.mu.RLock()
	e := s.apps[c.App]
	ur := s.users[userKey{c.App, c.User}]
	_, jtiDenied := s.denied[revKey{c.App, c.ID}]
	sidDenied := false
	if c.Session != "" {
		_, sidDenied = s.denied[revKey{c.App, "s." + c.Session}]
	}
	s.mu.RUnlock()

	if e == nil {
		return nil, ErrInvalidToken
	}
	if err := e.verifySignature(p); err != nil {
		return nil, err
	}
	if p.header.Alg != AlgHS256 {
		// Minted by the app's backend: only access tokens, with a bounded
		// lifetime and a sane issue time.
		if typ != TypeAccess || c.Session != "" {
			return nil, ErrInvalidToken
		}
	} else if c.Device == "" || c.Session == "" {
		return nil, ErrInvalidToken // the server always sets both
	}
	leeway := int64(s.opts.Leeway / time.Second)
	if c.Issued > nowU+leeway || (c.NotBef != 0 && c.NotBef > nowU+leeway) {
		return nil, ErrInvalidToken
	}
	maxTTL := s.opts.MaxTokenTTL
	if typ == TypeRefresh {
		maxTTL = s.opts.RefreshTTL
	}
	if c.Expiry-c.Issued > int64(maxTTL/time.Second) {
		return nil, ErrInvalidToken
	}
	if nowU >= c.Expiry {
		return nil, ErrTokenExpired
	}
	if e.app.Disabled {
		return nil, ErrAppDisabled
	}
	if ur.disabled {
		return nil, ErrUserDisabled
	}
	if jtiDenied || sidDenied || c.Issued < ur.nb {
		return nil, ErrTokenRevoked
	}
	return c, nil
}

// mint signs a server token of type typ for app e.
func (s *Service) mint(e *appEntry, user, device, sid, typ string, iat time.Time, ttl time.Duration) (string, *Claims) {
	c := &Claims{
		App: e.app.ID, User: user, Device: device, Session: sid, Type: typ,
		Issued: iat.Unix(), Expiry: iat.Add(ttl).Unix(), ID: randomString(16), Alg: AlgHS256,
	}
	return signHS256(e.secret, e.app.SecretVersion, c), c
}

// Token is a signed access token with what a client needs to connect.
type Token struct {
	Value     string
	ExpiresAt time.Time
	Claims    *Claims
}

// IssueToken issues an access token for a user's device; it is what a
// backend service calls on behalf of its users. device may be empty, in
// which case a new device ID is generated and registered. ttl is capped by
// MaxTokenTTL; 0 means AccessTTL.
func (s *Service) IssueToken(ctx context.Context, app, user, device string, ttl time.Duration) (*Token, error) {
	if ttl == 0 {
		ttl = s.opts.AccessTTL
	}
	if ttl < time.Minute || ttl > s.opts.MaxTokenTTL {
		return nil, invalid("ttl", "must be between 1m and %s", s.opts.MaxTokenTTL)
	}
	e, err := s.activeApp(app)
	if err != nil {
		return nil, err
	}
	u, err := s.GetUser(ctx, app, user)
	if err != nil {
		return nil, err
	}
	if u.Disabled {
		return nil, ErrUserDisabled
	}
	device, err = s.ensureDevice(ctx, app, user, device)
	if err != nil {
		return nil, err
	}
	tok, c := s.mint(e, user, device, "t."+randomString(10), TypeAccess, s.now(), ttl)
	return &Token{Value: tok, ExpiresAt: c.ExpiresAt(), Claims: c}, nil
}
