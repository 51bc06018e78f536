package webhook

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"time"
)

// Request headers of a delivery.
const (
	HeaderSignature = "Warbler-Signature"
	HeaderEventID   = "Warbler-Event-Id"
	HeaderEventType = "Warbler-Event-Type"
	HeaderDelivery  = "Warbler-Delivery-Id"
)

// SecretPrefix starts every signing secret.
const SecretPrefix = "whsec_"

// NewSecret returns a new signing secret: SecretPrefix and 32 random bytes
// in unpadded base64url.
func NewSecret() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return SecretPrefix + base64.RawURLEncoding.EncodeToString(b[:])
}

// Sign returns the Warbler-Signature header value for body sent at t,
// signed with each secret (several while a rotated secret is still
// honoured):
//
//	t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<unix seconds>." + body)>[,v1=...]
//
// The HMAC key is the whole secret string, prefix included, as bytes.
func Sign(t time.Time, body []byte, secrets ...string) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	var b strings.Builder
	b.WriteString("t=")
	b.WriteString(ts)
	for _, s := range secrets {
		b.WriteString(",v1=")
		b.WriteString(hex.EncodeToString(mac(s, ts, body)))
	}
	return b.String()
}

func mac(secret, ts string, body []byte) []byte {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(ts))
	m.Write([]byte{'.'})
	m.Write(body)
	return m.Sum(nil)
}

// Errors of Verify.
var (
	ErrBadSignatureHeader = errors.New("webhook: malformed signature header")
	ErrBadSignature       = errors.New("webhook: no signature matches")
	ErrStale              = errors.New("webhook: timestamp outside the tolerance")
)

// Verify checks a Warbler-Signature header against body as a receiver
// should: one of its v1 signatures must be the HMAC of the timestamp and
// body under secret (compared in constant time), and the timestamp must be
// within tolerance of now (0 skips that check), which stops replays of old
// deliveries.
func Verify(header string, body []byte, secret string, now time.Time, tolerance time.Duration) error {
	var ts string
	var sigs [][]byte
	for _, part := range strings.Split(header, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return ErrBadSignatureHeader
		}
		switch k {
		case "t":
			ts = v
		case "v1":
			if sig, err := hex.DecodeString(v); err == nil {
				sigs = append(sigs, sig)
			}
		}
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || len(sigs) == 0 {
		return ErrBadSignatureHeader
	}
	want := mac(secret, ts, body)
	match := false
	for _, s := range sigs {
		if hmac.Equal(s, want) {
			match = true
		}
	}
	if !match {
		return ErrBadSignature
	}
	if tolerance > 0 {
		if d := now.Sub(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
			return ErrStale
		}
	}
	return nil
}
