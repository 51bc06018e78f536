package identity

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"errors"
)

// derivedKeys are the purpose-bound keys derived from the master key, so
// that a key never serves two purposes.
type derivedKeys struct {
	appSecret []byte // seals app HS256 secrets; AAD = app ID
	totp      []byte // seals TOTP secrets; AAD = app "|" user
	recovery  []byte // HMAC key of recovery-code digests
}

func deriveKeys(master []byte) derivedKeys {
	k := func(info string) []byte {
		b, err := hkdf.Key(sha256.New, master, nil, "warbler identity "+info, 32)
		if err != nil {
			panic(err) // only for lengths hkdf cannot produce
		}
		return b
	}
	return derivedKeys{appSecret: k("app secret v1"), totp: k("totp v1"), recovery: k("recovery code v1")}
}

// seal encrypts plaintext with AES-256-GCM under key, binding it to aad. The
// result is the 12-byte random nonce followed by the ciphertext and tag.
func seal(key, plaintext, aad []byte) ([]byte, error) {
	gcm, err := newGCM(key)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, gcm.NonceSize(), gcm.NonceSize()+len(plaintext)+gcm.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return gcm.Seal(nonce, nonce, plaintext, aad), nil
}

var errUnseal = errors.New("identity: sealed secret does not open (wrong master key or tampered record)")

// open reverses seal. It fails if the key or aad differ or the data changed.
func open(key, sealed, aad []byte) ([]byte, error) {
	gcm, err := newGCM(key)
	if err != nil {
		return nil, err
	}
	if len(sealed) < gcm.NonceSize()+gcm.Overhead() {
		return nil, errUnseal
	}
	pt, err := gcm.Open(nil, sealed[:gcm.NonceSize()], sealed[gcm.NonceSize():], aad)
	if err != nil {
		return nil, errUnseal
	}
	return pt, nil
}

func newGCM(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

// b32 is lower-case base32 without padding: URL- and topic-safe, no '_',
// so it can sit between the underscores of an API key.
var b32 = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// randomString returns n random bytes encoded with b32.
func randomString(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return b32.EncodeToString(b)
}

func hmacSHA256(key []byte, parts ...string) []byte {
	m := hmac.New(sha256.New, key)
	for _, p := range parts {
		m.Write([]byte(p))
		m.Write([]byte{0})
	}
	return m.Sum(nil)
}
