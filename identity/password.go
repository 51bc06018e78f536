package identity

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"unicode/utf8"

	"golang.org/x/crypto/argon2"
)

// Password hashing uses argon2id with the OWASP minimum parameters, stated
// here rather than taken from a library default: 19 MiB of memory, two
// passes, one lane. Hashes are stored in the PHC string format
//
//	$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>
//
// so that the parameters can be raised later without breaking old hashes.
const (
	argonMemory  = 19 * 1024 // KiB
	argonTime    = 2
	argonThreads = 1
	argonKeyLen  = 32
	argonSaltLen = 16

	// MinPasswordLen and MaxPasswordLen bound passwords in bytes. The upper
	// bound keeps hashing cost independent of what a caller sends.
	MinPasswordLen = 8
	MaxPasswordLen = 1024
)

// hasher runs argon2id with at most cap(sem) hashes at a time, so a burst
// of logins queues instead of allocating 19 MiB per request.
type hasher struct {
	sem     chan struct{}
	running atomic.Int32 // hashes in progress
	peak    atomic.Int32 // most hashes ever in progress at once
}

func newHasher(n int) *hasher { return &hasher{sem: make(chan struct{}, n)} }

func (h *hasher) key(pw string, salt []byte, m, t uint32, p uint8, keyLen uint32) []byte {
	h.sem <- struct{}{}
	defer func() { <-h.sem }()
	n := h.running.Add(1)
	defer h.running.Add(-1)
	for {
		old := h.peak.Load()
		if n <= old || h.peak.CompareAndSwap(old, n) {
			break
		}
	}
	return argon2.IDKey([]byte(pw), salt, t, m, p, keyLen)
}

func checkPassword(pw string) error {
	if len(pw) < MinPasswordLen || len(pw) > MaxPasswordLen {
		return invalid("password", "must be %d to %d bytes", MinPasswordLen, MaxPasswordLen)
	}
	if !utf8.ValidString(pw) {
		return invalid("password", "must be valid UTF-8")
	}
	return nil
}

// hash returns the PHC string of pw with a fresh random salt.
func (h *hasher) hash(pw string) string {
	salt := make([]byte, argonSaltLen)
	_, _ = rand.Read(salt)
	k := h.key(pw, salt, argonMemory, argonTime, argonThreads, argonKeyLen)
	enc := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s",
		argon2.Version, argonMemory, argonTime, argonThreads, enc.EncodeToString(salt), enc.EncodeToString(k))
}

var errBadHash = errors.New("identity: malformed password hash")

// verify reports whether pw matches the PHC string phc, comparing in
// constant time.
func (h *hasher) verify(pw, phc string) (bool, error) {
	parts := strings.Split(phc, "$")
	if len(parts) != 6 || parts[0] != "" || parts[1] != "argon2id" || parts[2] != fmt.Sprintf("v=%d", argon2.Version) {
		return false, errBadHash
	}
	var m, t uint32
	var p uint8
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &m, &t, &p); err != nil {
		return false, errBadHash
	}
	// Hashes come from our own store, but bound the cost anyway.
	if m < 8 || m > 1<<20 || t < 1 || t > 16 || p < 1 || p > 16 {
		return false, errBadHash
	}
	enc := base64.RawStdEncoding
	salt, err1 := enc.DecodeString(parts[4])
	want, err2 := enc.DecodeString(parts[5])
	if err1 != nil || err2 != nil || len(salt) < 8 || len(want) < 16 || len(want) > 64 {
		return false, errBadHash
	}
	got := h.key(pw, salt, m, t, p, uint32(len(want)))
	return subtle.ConstantTimeCompare(got, want) == 1, nil
}

// dummyHash is checked against when a user does not exist or has no
// password, so that such a login takes as long as a real one.
var dummyHash = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$" +
	"4Tdb7DMxd9z0kXy0QOWEYUTvbtUqCxX+prUCY2n9DQw"
