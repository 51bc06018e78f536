package chat

// Typing notices. A member who may write to a conversation says "typing"
// (op "typing"); the server forwards it, as kind "typing", to the downlinks
// of the other members (every device of theirs, none of the sender's).
// Nothing is stored and nothing is retried: a notice that is lost is
// simply not seen.
//
// Rate limit: at most one notice per user per conversation is forwarded
// every Options.TypingInterval (default 3 s); the others are dropped
// without an error (a typing client sends a notice every few seconds while
// the user types, so a dropped one is covered by the next). A caller that
// asked for an answer (rid or response topic) learns from "forwarded":
// false. Who may not write may not type: a muted member gets code "muted",
// a blocked user in a direct conversation "blocked", a channel member who
// is not an admin "forbidden".

import (
	"context"
	"encoding/json"
	"sync"
	"time"

	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage"
)

const defaultTypingInterval = 3 * time.Second

// typingLimiter remembers when each user's last forwarded notice per
// conversation left; entries older than the interval are pruned, so it
// holds only the users typing now.
type typingLimiter struct {
	mu        sync.Mutex
	last      map[typingKey]time.Time
	lastPrune time.Time
}

type typingKey struct{ app, conv, user string }

func (l *typingLimiter) allow(k typingKey, now time.Time, every time.Duration) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.last == nil {
		l.last = map[typingKey]time.Time{}
	}
	if now.Sub(l.lastPrune) > every {
		for k, t := range l.last {
			if now.Sub(t) >= every {
				delete(l.last, k)
			}
		}
		l.lastPrune = now
	}
	if t, ok := l.last[k]; ok && now.Sub(t) < every {
		return false
	}
	l.last[k] = now
	return true
}

// Typing forwards a typing notice of the caller to the other members of
// conv (or of the direct conversation with to).
func (s *Service) Typing(ctx context.Context, from Sender, conv, to string) (protocol.TypingResult, error) {
	if from.Service {
		return protocol.TypingResult{}, protocol.Errorf(protocol.CodeBadRequest, "services do not type")
	}
	if to != "" {
		conv = protocol.DirectConvID(from.User, to)
	}
	v, r, err := s.viewMember(ctx, from, conv)
	if err != nil {
		return protocol.TypingResult{}, err
	}
	if v.conv.Kind == storage.KindChannel && rank(r) < rank(storage.RoleAdmin) {
		return protocol.TypingResult{}, protocol.Errorf(protocol.CodeForbidden, "only admins may write to channel %s", conv)
	}
	if err := s.checkWrite(ctx, from, v, r); err != nil {
		return protocol.TypingResult{}, err
	}
	every := s.o.TypingInterval
	if every <= 0 {
		every = defaultTypingInterval
	}
	now := s.now()
	if !s.typing.allow(typingKey{from.App, conv, from.User}, now, every) {
		return protocol.TypingResult{Conv: conv}, nil
	}
	others := make([]string, 0, len(v.users))
	for _, u := range v.users {
		if u != from.User {
			others = append(others, u)
		}
	}
	if len(others) > 0 {
		payload, _ := json.Marshal(protocol.Typing{Kind: protocol.KindTyping, Conv: conv, User: from.User, Device: from.Device, TS: now.UnixMilli()})
		s.out.Deliver(from.App, others, payload)
	}
	return protocol.TypingResult{Conv: conv, Forwarded: true}, nil
}

// checkWrite applies what restricts a member's writes beyond their role:
// blocks in direct conversations and mutes in groups. r is from's role.
func (s *Service) checkWrite(ctx context.Context, from Sender, v *convView, r storage.Role) error {
	if err := s.checkBlocked(ctx, from, v); err != nil {
		return err
	}
	return s.checkMuted(ctx, from, v, r)
}
