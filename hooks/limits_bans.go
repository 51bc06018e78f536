package hooks

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage"
)

// ErrInvalidBan is matched by the error of a ban that cannot be set (an
// unknown kind, a malformed value, an expiry in the past).
var ErrInvalidBan = errors.New("invalid ban")

func invalidBan(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidBan, fmt.Sprintf(format, a...))
}

// NormalizeBan checks a ban's kind and value and puts the value in
// canonical form: an IP address as netip prints it, a CIDR range masked to
// its prefix ("10.1.2.3/8" becomes "10.0.0.0/8"), a single-address range
// as the address.
func NormalizeBan(b storage.Ban) (storage.Ban, error) {
	switch b.Kind {
	case storage.BanClientID:
		if b.Value == "" || len(b.Value) > 65535 {
			return b, invalidBan("client ID must be 1 to 65535 bytes")
		}
	case storage.BanUser:
		app, user, ok := strings.Cut(b.Value, ":")
		if !ok || !protocol.ValidID(app) || !protocol.ValidID(user) {
			return b, invalidBan("a user ban's value is {app}:{user}")
		}
	case storage.BanIP:
		if strings.Contains(b.Value, "/") {
			p, err := netip.ParsePrefix(b.Value)
			if err != nil {
				return b, invalidBan("%q is not an address or CIDR range", b.Value)
			}
			p = p.Masked()
			if p.IsSingleIP() {
				b.Value = p.Addr().Unmap().String()
			} else {
				b.Value = p.String()
			}
		} else {
			a, err := netip.ParseAddr(b.Value)
			if err != nil {
				return b, invalidBan("%q is not an address or CIDR range", b.Value)
			}
			b.Value = a.Unmap().String()
		}
	default:
		return b, invalidBan("kind must be %s, %s or %s", storage.BanClientID, storage.BanUser, storage.BanIP)
	}
	if len(b.Reason) > 1024 {
		return b, invalidBan("reason is longer than 1024 bytes")
	}
	return b, nil
}

// banSet is the in-memory copy of every ban, checked on each accept and
// CONNECT without I/O. Exact keys are map lookups; CIDR ranges are scanned,
// which is fine for the handful an operator sets.
type banSet struct {
	mu     sync.RWMutex
	exact  map[string]storage.Ban // kind + "\x00" + value
	ranges []rangeBan
}

type rangeBan struct {
	p netip.Prefix
	b storage.Ban
}

func newBanSet() *banSet { return &banSet{exact: map[string]storage.Ban{}} }

func banID(kind, value string) string { return kind + "\x00" + value }

func (s *banSet) put(b storage.Ban) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.deleteLocked(b.Kind, b.Value)
	if b.Kind == storage.BanIP && strings.Contains(b.Value, "/") {
		s.ranges = append(s.ranges, rangeBan{netip.MustParsePrefix(b.Value), b})
		return
	}
	s.exact[banID(b.Kind, b.Value)] = b
}

func (s *banSet) delete(kind, value string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.deleteLocked(kind, value)
}

func (s *banSet) deleteLocked(kind, value string) bool {
	id := banID(kind, value)
	if _, ok := s.exact[id]; ok {
		delete(s.exact, id)
		return true
	}
	for i, r := range s.ranges {
		if r.b.Kind == kind && r.b.Value == value {
			s.ranges = append(s.ranges[:i], s.ranges[i+1:]...)
			return true
		}
	}
	return false
}

// lookup returns the ban in force for kind and value at now.
func (s *banSet) lookup(kind, value string, now time.Time) (storage.Ban, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	b, ok := s.exact[banID(kind, value)]
	if ok && !b.Expired(now) {
		return b, true
	}
	return storage.Ban{}, false
}

// ip returns the ban in force for an address, exact or by range.
func (s *banSet) ip(a netip.Addr, now time.Time) (storage.Ban, bool) {
	if b, ok := s.lookup(storage.BanIP, a.String(), now); ok {
		return b, true
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, r := range s.ranges {
		if r.p.Contains(a) && !r.b.Expired(now) {
			return r.b, true
		}
	}
	return storage.Ban{}, false
}

// all returns the bans in force at now, sorted by kind and value.
func (s *banSet) all(now time.Time) []storage.Ban {
	s.mu.RLock()
	out := make([]storage.Ban, 0, len(s.exact)+len(s.ranges))
	for _, b := range s.exact {
		if !b.Expired(now) {
			out = append(out, b)
		}
	}
	for _, r := range s.ranges {
		if !r.b.Expired(now) {
			out = append(out, r.b)
		}
	}
	s.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].Kind != out[j].Kind {
			return out[i].Kind < out[j].Kind
		}
		return out[i].Value < out[j].Value
	})
	return out
}

// expired removes and returns the bans that have lapsed at now.
func (s *banSet) expired(now time.Time) []storage.Ban {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []storage.Ban
	for id, b := range s.exact {
		if b.Expired(now) {
			out = append(out, b)
			delete(s.exact, id)
		}
	}
	kept := s.ranges[:0]
	for _, r := range s.ranges {
		if r.b.Expired(now) {
			out = append(out, r.b)
		} else {
			kept = append(kept, r)
		}
	}
	s.ranges = kept
	return out
}

// load fills the set from the store, dropping lapsed bans from both.
func (s *banSet) load(ctx context.Context, st storage.BanStore, now time.Time) (int, error) {
	bans, err := st.ListBans(ctx)
	if err != nil {
		return 0, fmt.Errorf("load bans: %w", err)
	}
	n := 0
	for _, b := range bans {
		if b.Expired(now) {
			_ = st.DeleteBan(ctx, b.Kind, b.Value)
			continue
		}
		if nb, err := NormalizeBan(b); err != nil || nb.Value != b.Value {
			continue // written by no version of this code; ignore it
		}
		s.put(b)
		n++
	}
	return n, nil
}
