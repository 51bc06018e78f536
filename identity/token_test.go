package identity

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/warblerim/warbler/storage"
)

// rawToken builds a compact JWS from arbitrary header and claims, signed by
// sign over the signing input.
func rawToken(header, claims any, sign func(in []byte) []byte) string {
	h, _ := json.Marshal(header)
	c, _ := json.Marshal(claims)
	in := b64.EncodeToString(h) + "." + b64.EncodeToString(c)
	return in + "." + b64.EncodeToString(sign([]byte(in)))
}

func edSigner(k ed25519.PrivateKey) func([]byte) []byte {
	return func(in []byte) []byte { return ed25519.Sign(k, in) }
}

func rsaSigner(k *rsa.PrivateKey) func([]byte) []byte {
	return func(in []byte) []byte {
		d := sha256.Sum256(in)
		s, err := rsa.SignPKCS1v15(rand.Reader, k, crypto.SHA256, d[:])
		if err != nil {
			panic(err)
		}
		return s
	}
}

func hmacSigner(key []byte) func([]byte) []byte {
	return func(in []byte) []byte {
		m := hmac.New(sha256.New, key)
		m.Write(in)
		return m.Sum(nil)
	}
}

func pemOf(t *testing.T, pub any) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

func (f *fixture) appClaims(user, dev string, ttl time.Duration) map[string]any {
	now := f.clock.Now().Unix()
	c := map[string]any{"app": "chat", "sub": user, "iat": now, "exp": now + int64(ttl/time.Second), "jti": randomString(8), "typ": "access"}
	if dev != "" {
		c["dev"] = dev
	}
	return c
}

func setupChat(t *testing.T, f *fixture) {
	t.Helper()
	ctx := context.Background()
	must[storage.App](t)(f.svc.CreateApp(ctx, AppSpec{ID: "chat", Name: "Chat"}))
	must[storage.User](t)(f.svc.CreateUser(ctx, "chat", UserSpec{ID: "alice", Password: "correct horse"}))
	must[storage.User](t)(f.svc.CreateUser(ctx, "chat", UserSpec{ID: "bob"}))
}

func TestTokenLifecycle(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	setupChat(t, f)

	tok := must[*Token](t)(f.svc.IssueToken(ctx, "chat", "alice", "d1", 0))
	c, err := f.svc.VerifyAccess(tok.Value)
	if err != nil {
		t.Fatal(err)
	}
	if c.App != "chat" || c.User != "alice" || c.Device != "d1" || c.Type != TypeAccess || c.Alg != AlgHS256 {
		t.Fatalf("claims %+v", c)
	}
	if got := tok.ExpiresAt.Sub(f.clock.Now()); got != DefaultAccessTTL {
		t.Fatalf("ttl %s", got)
	}
	if _, err := f.svc.GetDevice(ctx, "chat", "alice", "d1"); err != nil {
		t.Fatalf("device not registered: %v", err)
	}

	t.Run("expiry", func(t *testing.T) {
		f.clock.Advance(DefaultAccessTTL - time.Second)
		if _, err := f.svc.VerifyAccess(tok.Value); err != nil {
			t.Fatalf("one second before expiry: %v", err)
		}
		f.clock.Advance(time.Second)
		if _, err := f.svc.VerifyAccess(tok.Value); !errors.Is(err, ErrTokenExpired) {
			t.Fatalf("at expiry: %v", err)
		}
		f.clock.Advance(-DefaultAccessTTL)
	})

	t.Run("tamper", func(t *testing.T) {
		parts := strings.Split(tok.Value, ".")
		var cl map[string]any
		raw, _ := b64.DecodeString(parts[1])
		_ = json.Unmarshal(raw, &cl)
		cl["sub"] = "bob"
		forged, _ := json.Marshal(cl)
		bad := parts[0] + "." + b64.EncodeToString(forged) + "." + parts[2]
		if _, err := f.svc.VerifyAccess(bad); !errors.Is(err, ErrInvalidToken) {
			t.Fatalf("claims swapped: %v", err)
		}
		sig := []byte(parts[2])
		sig[3] ^= 1
		if _, err := f.svc.VerifyAccess(parts[0] + "." + parts[1] + "." + string(sig)); !errors.Is(err, ErrInvalidToken) {
			t.Fatalf("signature flipped: %v", err)
		}
		if _, err := f.svc.VerifyAccess(parts[0] + "." + parts[1] + "."); !errors.Is(err, ErrInvalidToken) {
			t.Fatalf("signature stripped: %v", err)
		}
	})

	t.Run("alg none", func(t *testing.T) {
		c := f.appClaims("alice", "d1", time.Hour)
		none := rawToken(map[string]string{"alg": "none", "typ": "JWT"}, c, func([]byte) []byte { return nil })
		if _, err := f.svc.VerifyAccess(none); !errors.Is(err, ErrInvalidToken) {
			t.Fatalf("alg none: %v", err)
		}
		for _, alg := range []string{"hs256", "HS384", "HS512", "ES256", "PS256", "RS512", "Ed25519", ""} {
			bad := rawToken(map[string]string{"alg": alg, "kid": "1"}, c, hmacSigner([]byte("x")))
			if _, err := f.svc.VerifyAccess(bad); !errors.Is(err, ErrInvalidToken) {
				t.Fatalf("alg %q: %v", alg, err)
			}
		}
	})

	t.Run("refresh type is not access", func(t *testing.T) {
		s := must[*Session](t)(f.svc.Login(ctx, LoginRequest{App: "chat", Username: "alice", Password: "correct horse", Device: "d1"}))
		if _, err := f.svc.VerifyAccess(s.RefreshToken); !errors.Is(err, ErrInvalidToken) {
			t.Fatalf("refresh token accepted as access: %v", err)
		}
	})
}

func TestTokenRevocation(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	setupChat(t, f)
	login := func() *Session {
		t.Helper()
		return must[*Session](t)(f.svc.Login(ctx, LoginRequest{App: "chat", Username: "alice", Password: "correct horse", Device: "d1"}))
	}

	t.Run("logout", func(t *testing.T) {
		s := login()
		other := login()
		c := must[*Claims](t)(f.svc.Logout(ctx, s.AccessToken))
		f.expectEvent(t, RevokeEvent{App: "chat", User: "alice", Reason: "logout"})
		if c.Session == "" {
			t.Fatal("no session")
		}
		if _, err := f.svc.VerifyAccess(s.AccessToken); !errors.Is(err, ErrTokenRevoked) {
			t.Fatalf("after logout: %v", err)
		}
		if _, err := f.svc.Refresh(ctx, "chat", s.RefreshToken); !errors.Is(err, ErrTokenRevoked) {
			t.Fatalf("refresh after logout: %v", err)
		}
		if _, err := f.svc.VerifyAccess(other.AccessToken); err != nil {
			t.Fatalf("another session was revoked too: %v", err)
		}
		// The denylist survives a restart.
		if _, err := f.open(t).VerifyAccess(s.AccessToken); !errors.Is(err, ErrTokenRevoked) {
			t.Fatalf("after restart: %v", err)
		}
	})

	t.Run("refresh rotation and reuse", func(t *testing.T) {
		s := login()
		f.clock.Advance(10 * time.Second)
		s2, err := f.svc.Refresh(ctx, "chat", s.RefreshToken)
		if err != nil {
			t.Fatal(err)
		}
		if s2.Device != "d1" || s2.RefreshToken == s.RefreshToken {
			t.Fatalf("refreshed %+v", s2)
		}
		if _, err := f.svc.Refresh(ctx, "other", s2.RefreshToken); !errors.Is(err, ErrNotFound) {
			t.Fatalf("refresh under an unknown app: %v", err)
		}
		must[storage.App](t)(f.svc.CreateApp(ctx, AppSpec{ID: "other"}))
		if _, err := f.svc.Refresh(ctx, "other", s2.RefreshToken); !errors.Is(err, ErrInvalidToken) {
			t.Fatalf("refresh under another app: %v", err)
		}
		// Spending the old one again revokes the whole session.
		if _, err := f.svc.Refresh(ctx, "chat", s.RefreshToken); !errors.Is(err, ErrTokenRevoked) {
			t.Fatalf("reuse: %v", err)
		}
		f.expectEvent(t, RevokeEvent{App: "chat", User: "alice", Reason: "refresh_reuse"})
		if _, err := f.svc.VerifyAccess(s2.AccessToken); !errors.Is(err, ErrTokenRevoked) {
			t.Fatalf("session not revoked after reuse: %v", err)
		}
		if _, err := f.svc.Refresh(ctx, "chat", s2.RefreshToken); !errors.Is(err, ErrTokenRevoked) {
			t.Fatalf("new refresh token survived reuse: %v", err)
		}
	})

	t.Run("disable user", func(t *testing.T) {
		s := login()
		must[storage.User](t)(f.svc.DisableUser(ctx, "chat", "alice"))
		f.expectEvent(t, RevokeEvent{App: "chat", User: "alice", Reason: "user_disabled"})
		if _, err := f.svc.VerifyAccess(s.AccessToken); !errors.Is(err, ErrUserDisabled) {
			t.Fatalf("disabled user: %v", err)
		}
		if _, err := f.svc.Login(ctx, LoginRequest{App: "chat", Username: "alice", Password: "correct horse"}); !errors.Is(err, ErrUserDisabled) {
			t.Fatalf("login of disabled user: %v", err)
		}
		if _, err := f.open(t).VerifyAccess(s.AccessToken); !errors.Is(err, ErrUserDisabled) {
			t.Fatalf("after restart: %v", err)
		}
		no := false
		must[storage.User](t)(f.svc.UpdateUser(ctx, "chat", "alice", UserPatch{Disabled: &no}))
		if _, err := f.svc.VerifyAccess(s.AccessToken); err != nil {
			t.Fatalf("re-enabled user: %v", err)
		}
	})

	t.Run("not before", func(t *testing.T) {
		s := login()
		if err := f.svc.RevokeSessions(ctx, "chat", "alice"); err != nil {
			t.Fatal(err)
		}
		f.expectEvent(t, RevokeEvent{App: "chat", User: "alice", Reason: "sessions_revoked"})
		if _, err := f.svc.VerifyAccess(s.AccessToken); !errors.Is(err, ErrTokenRevoked) {
			t.Fatalf("old token: %v", err)
		}
		f.clock.Advance(time.Second)
		if _, err := f.svc.VerifyAccess(login().AccessToken); err != nil {
			t.Fatalf("new token: %v", err)
		}
	})

	t.Run("rotate secret", func(t *testing.T) {
		s := login()
		a := must[storage.App](t)(f.svc.RotateSecret(ctx, "chat"))
		f.expectEvent(t, RevokeEvent{App: "chat", Reason: "secret_rotated"})
		if a.SecretVersion != 2 {
			t.Fatalf("version %d", a.SecretVersion)
		}
		if _, err := f.svc.VerifyAccess(s.AccessToken); !errors.Is(err, ErrTokenRevoked) {
			t.Fatalf("old-secret token: %v", err)
		}
		if _, err := f.svc.Refresh(ctx, "chat", s.RefreshToken); !errors.Is(err, ErrTokenRevoked) {
			t.Fatalf("old-secret refresh: %v", err)
		}
		if _, err := f.svc.VerifyAccess(login().AccessToken); err != nil {
			t.Fatalf("new-secret token: %v", err)
		}
		// A kid from the future is not "revoked", just invalid.
		parts := strings.Split(s.AccessToken, ".")
		h := b64.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT","kid":"9"}`))
		if _, err := f.svc.VerifyAccess(h + "." + parts[1] + "." + parts[2]); !errors.Is(err, ErrInvalidToken) {
			t.Fatalf("unknown kid: %v", err)
		}
	})

	t.Run("disable app", func(t *testing.T) {
		s := login()
		must[storage.App](t)(f.svc.DisableApp(ctx, "chat"))
		f.expectEvent(t, RevokeEvent{App: "chat", Reason: "app_disabled"})
		if _, err := f.svc.VerifyAccess(s.AccessToken); !errors.Is(err, ErrAppDisabled) {
			t.Fatalf("disabled app: %v", err)
		}
		if _, err := f.svc.Login(ctx, LoginRequest{App: "chat", Username: "alice", Password: "correct horse"}); !errors.Is(err, ErrAppDisabled) {
			t.Fatalf("login to disabled app: %v", err)
		}
	})
}

func TestAppMintedTokens(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	setupChat(t, f)
	edPub, edPriv, _ := ed25519.GenerateKey(rand.Reader)
	rsaPriv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	otherEd, _, _ := ed25519.GenerateKey(rand.Reader)
	_ = otherEd
	_, otherPriv, _ := ed25519.GenerateKey(rand.Reader)

	t.Run("EdDSA", func(t *testing.T) {
		must[storage.App](t)(f.svc.SetPublicKey(ctx, "chat", pemOf(t, edPub)))
		h := map[string]string{"alg": "EdDSA", "typ": "JWT"}
		tok := rawToken(h, f.appClaims("alice", "", 10*time.Minute), edSigner(edPriv))
		c, err := f.svc.VerifyAccess(tok)
		if err != nil {
			t.Fatal(err)
		}
		if c.User != "alice" || c.Device != "" || c.Alg != AlgEdDSA {
			t.Fatalf("claims %+v", c)
		}
		withDev := rawToken(h, f.appClaims("alice", "phone", 10*time.Minute), edSigner(edPriv))
		if c, err := f.svc.VerifyAccess(withDev); err != nil || c.Device != "phone" {
			t.Fatalf("with dev: %+v %v", c, err)
		}
		cases := map[string]string{
			"other key":      rawToken(h, f.appClaims("alice", "", time.Minute), edSigner(otherPriv)),
			"as RS256":       rawToken(map[string]string{"alg": "RS256"}, f.appClaims("alice", "", time.Minute), edSigner(edPriv)),
			"reserved sub":   rawToken(h, f.appClaims("_svc", "", time.Minute), edSigner(edPriv)),
			"too long-lived": rawToken(h, f.appClaims("alice", "", 25*time.Hour), edSigner(edPriv)),
			"refresh typ": func() string {
				c := f.appClaims("alice", "", time.Minute)
				c["typ"] = "refresh"
				return rawToken(h, c, edSigner(edPriv))
			}(),
			"with sid": func() string {
				c := f.appClaims("alice", "", time.Minute)
				c["sid"] = "s1"
				return rawToken(h, c, edSigner(edPriv))
			}(),
			"iat in the future": func() string {
				c := f.appClaims("alice", "", time.Minute)
				c["iat"] = f.clock.Now().Unix() + 120
				c["exp"] = f.clock.Now().Unix() + 180
				return rawToken(h, c, edSigner(edPriv))
			}(),
			"no jti": func() string {
				c := f.appClaims("alice", "", time.Minute)
				delete(c, "jti")
				return rawToken(h, c, edSigner(edPriv))
			}(),
			"other app": func() string {
				c := f.appClaims("alice", "", time.Minute)
				c["app"] = "nope"
				return rawToken(h, c, edSigner(edPriv))
			}(),
			// Alg confusion: HMAC keyed with the public key's PEM or raw bytes.
			"HS256 keyed with public PEM": rawToken(map[string]string{"alg": "HS256", "kid": "1"}, f.appClaims("alice", "d1", time.Minute), hmacSigner([]byte(pemOf(t, edPub)))),
			"HS256 keyed with raw public": rawToken(map[string]string{"alg": "HS256", "kid": "1"}, f.appClaims("alice", "d1", time.Minute), hmacSigner(edPub)),
		}
		for name, tok := range cases {
			if _, err := f.svc.VerifyAccess(tok); !errors.Is(err, ErrInvalidToken) {
				t.Errorf("%s: %v, want ErrInvalidToken", name, err)
			}
		}
		expired := rawToken(h, f.appClaims("alice", "", time.Minute), edSigner(edPriv))
		f.clock.Advance(2 * time.Minute)
		if _, err := f.svc.VerifyAccess(expired); !errors.Is(err, ErrTokenExpired) {
			t.Fatalf("expired: %v", err)
		}
		// Logout of an app-minted token denies its jti.
		tok2 := rawToken(h, f.appClaims("alice", "", 10*time.Minute), edSigner(edPriv))
		must[*Claims](t)(f.svc.Logout(ctx, tok2))
		<-f.events
		if _, err := f.svc.VerifyAccess(tok2); !errors.Is(err, ErrTokenRevoked) {
			t.Fatalf("after logout: %v", err)
		}
		// Disabling the user also kills app-minted tokens, which never
		// passed through our issuer.
		tok3 := rawToken(h, f.appClaims("bob", "", 10*time.Minute), edSigner(edPriv))
		must[storage.User](t)(f.svc.DisableUser(ctx, "chat", "bob"))
		<-f.events
		if _, err := f.svc.VerifyAccess(tok3); !errors.Is(err, ErrUserDisabled) {
			t.Fatalf("disabled user, app token: %v", err)
		}
	})

	t.Run("RS256", func(t *testing.T) {
		must[storage.App](t)(f.svc.SetPublicKey(ctx, "chat", pemOf(t, &rsaPriv.PublicKey)))
		h := map[string]string{"alg": "RS256", "typ": "JWT"}
		tok := rawToken(h, f.appClaims("alice", "tab", 10*time.Minute), rsaSigner(rsaPriv))
		if c, err := f.svc.VerifyAccess(tok); err != nil || c.Alg != AlgRS256 || c.Device != "tab" {
			t.Fatalf("%+v %v", c, err)
		}
		// The Ed25519 token of before no longer verifies.
		if _, err := f.svc.VerifyAccess(rawToken(map[string]string{"alg": "EdDSA"}, f.appClaims("alice", "", time.Minute), edSigner(edPriv))); !errors.Is(err, ErrInvalidToken) {
			t.Fatalf("old key: %v", err)
		}
		pkcs1 := string(pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: x509.MarshalPKCS1PublicKey(&rsaPriv.PublicKey)}))
		must[storage.App](t)(f.svc.SetPublicKey(ctx, "chat", pkcs1))
		if _, err := f.svc.VerifyAccess(tok); err != nil {
			t.Fatalf("PKCS#1 key: %v", err)
		}
		confused := rawToken(map[string]string{"alg": "HS256", "kid": "1"}, f.appClaims("alice", "d1", time.Minute), hmacSigner([]byte(pkcs1)))
		if _, err := f.svc.VerifyAccess(confused); !errors.Is(err, ErrInvalidToken) {
			t.Fatalf("alg confusion: %v", err)
		}
		small, _ := rsa.GenerateKey(rand.Reader, 1024)
		if _, err := f.svc.SetPublicKey(ctx, "chat", pemOf(t, &small.PublicKey)); err == nil {
			t.Fatal("1024-bit RSA key accepted")
		}
		if _, err := f.svc.SetPublicKey(ctx, "chat", "not pem"); err == nil {
			t.Fatal("garbage accepted")
		}
	})
}

func TestParseTokenStrict(t *testing.T) {
	f := newFixture(t)
	setupChat(t, f)
	good := must[*Token](t)(f.svc.IssueToken(context.Background(), "chat", "alice", "d1", 0)).Value
	parts := strings.Split(good, ".")
	hdr := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	bad := map[string]string{
		"empty":           "",
		"two segments":    parts[0] + "." + parts[1],
		"four segments":   good + ".x",
		"padding":         parts[0] + "=." + parts[1] + "." + parts[2],
		"std alphabet":    parts[0] + "." + parts[1] + ".+" + parts[2][1:],
		"newline":         parts[0] + "\n." + parts[1] + "." + parts[2],
		"space":           " " + good,
		"too long":        good + strings.Repeat("A", MaxTokenLen),
		"crit header":     hdr(`{"alg":"HS256","kid":"1","crit":["exp"]}`) + "." + parts[1] + "." + parts[2],
		"jwk header":      hdr(`{"alg":"HS256","kid":"1","jwk":{}}`) + "." + parts[1] + "." + parts[2],
		"typ header":      hdr(`{"alg":"HS256","kid":"1","typ":"JOSE+JSON"}`) + "." + parts[1] + "." + parts[2],
		"header not json": hdr(`alg`) + "." + parts[1] + "." + parts[2],
		"two headers":     hdr(`{"alg":"HS256"}{"alg":"none"}`) + "." + parts[1] + "." + parts[2],
		"claims array":    parts[0] + "." + hdr(`[1]`) + "." + parts[2],
		"float exp":       parts[0] + "." + hdr(`{"app":"chat","sub":"alice","exp":1.5,"iat":1,"jti":"x","typ":"access"}`) + "." + parts[2],
	}
	// Non-canonical trailing bits: the last character of an unpadded
	// segment of length 4n+2 carries 4 unused bits.
	sig := []byte(parts[2])
	if len(sig)%4 == 3 { // 32-byte HMAC: 43 chars, 2 unused bits
		c := sig[len(sig)-1]
		idx := strings.IndexByte("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", c)
		sig[len(sig)-1] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[idx|1]
		if sig[len(sig)-1] != c {
			bad["non-canonical base64"] = parts[0] + "." + parts[1] + "." + string(sig)
		}
	}
	for name, tok := range bad {
		if _, err := f.svc.VerifyAccess(tok); !errors.Is(err, ErrInvalidToken) {
			t.Errorf("%s: %v, want ErrInvalidToken", name, err)
		}
	}
	if _, err := f.svc.VerifyAccess(good); err != nil {
		t.Fatalf("good token refused: %v", err)
	}
}
