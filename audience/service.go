package audience

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage"
)

// Limits on events and segments.
const (
	MaxEventBatch    = 1000
	MaxEventProps    = 32
	MaxPropKeyLen    = 64
	MaxPropValLen    = 1024
	DefaultRetention = 90 * 24 * time.Hour
	MaxSegments      = 1000
	// MaxFuture is how far in the future an event's time may be (clock
	// skew between the app's backend and the server).
	MaxFuture = time.Hour
)

// ErrInvalid wraps every validation error of the service.
var ErrInvalid = errors.New("invalid")

// Invalid is a validation error naming the field at fault.
type Invalid struct {
	Field string
	Msg   string
}

func (e *Invalid) Error() string { return e.Field + ": " + e.Msg }
func (e *Invalid) Unwrap() error { return ErrInvalid }

func invalid(field, format string, a ...any) error {
	return &Invalid{Field: field, Msg: fmt.Sprintf(format, a...)}
}

// Options configure a Service.
type Options struct {
	// Index answers tag questions. Required.
	Index storage.UserIndex
	// Users lists users with their attributes (for attr(...) operands).
	// Required.
	Users storage.UserStore
	// Events keeps behaviour events. Required.
	Events storage.EventStore
	// Segments keeps saved segments. Required.
	Segments storage.SegmentStore
	// Retention returns how long an app's events are kept;
	// DefaultRetention where it returns 0 or is nil.
	Retention func(app string) time.Duration
	// Now is the clock (time.Now if nil).
	Now func() time.Time
}

// Service evaluates audiences and keeps events and segments. It is safe
// for concurrent use.
type Service struct {
	o Options
}

// New returns a Service.
func New(o Options) (*Service, error) {
	if o.Index == nil || o.Users == nil || o.Events == nil || o.Segments == nil {
		return nil, errors.New("audience: Index, Users, Events and Segments are required")
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Service{o: o}, nil
}

func (s *Service) retention(app string) time.Duration {
	if s.o.Retention != nil {
		if d := s.o.Retention(app); d > 0 {
			return d
		}
	}
	return DefaultRetention
}

// Evaluate returns the users of app that n selects, in ID order. The
// result may be shared with a cache and must not be modified.
func (s *Service) Evaluate(ctx context.Context, app string, n *Node) ([]string, error) {
	e := &evaluator{s: s, app: app, now: s.o.Now()}
	set, neg, err := e.eval(ctx, n)
	if err != nil {
		return nil, err
	}
	if neg || e.unchecked {
		all, err := s.o.Index.UserIDs(ctx, app)
		if err != nil {
			return nil, err
		}
		if neg {
			return minus(all, set), nil
		}
		return intersect(all, set), nil // drop users that events named but that do not exist
	}
	return set, nil
}

type evaluator struct {
	s   *Service
	app string
	now time.Time
	// unchecked is set when a positive set may name users that do not
	// exist (events are not checked against the users when recorded).
	unchecked bool
	attrs     map[string]map[string]string // loaded once per evaluation
}

// eval returns the set n selects as (set, false), or its complement as
// (set, true), so that "a AND NOT b" costs a difference, not a walk over
// every user.
func (e *evaluator) eval(ctx context.Context, n *Node) ([]string, bool, error) {
	if err := ctx.Err(); err != nil {
		return nil, false, err
	}
	switch n.Op {
	case OpTag:
		set, err := e.s.o.Index.UsersWithTag(ctx, e.app, n.Value)
		return set, false, err
	case OpAll:
		return nil, true, nil
	case OpNot:
		set, neg, err := e.eval(ctx, n.Kids[0])
		return set, !neg, err
	case OpAttr:
		set, err := e.attr(ctx, n)
		if n.Cmp == "!=" {
			return set, true, err
		}
		return set, false, err
	case OpEvent:
		c := n.Event
		set, err := e.s.o.Events.EventUsers(ctx, e.app, storage.EventQuery{
			Name: c.Name, Since: e.now.Add(-c.Within), Props: c.Props, MinCount: c.Min,
		})
		e.unchecked = true
		return set, false, err
	case OpAnd:
		var pos, negs []string
		havePos := false
		for _, k := range n.Kids {
			set, neg, err := e.eval(ctx, k)
			if err != nil {
				return nil, false, err
			}
			switch {
			case neg:
				negs = union(negs, set)
			case !havePos:
				pos, havePos = set, true
			default:
				pos = intersect(pos, set)
			}
		}
		if !havePos {
			return negs, true, nil
		}
		return minus(pos, negs), false, nil
	case OpOr:
		// A OR NOT B OR NOT C = NOT ((B AND C) minus A).
		var pos, negs []string
		haveNeg := false
		for _, k := range n.Kids {
			set, neg, err := e.eval(ctx, k)
			if err != nil {
				return nil, false, err
			}
			switch {
			case !neg:
				pos = union(pos, set)
			case !haveNeg:
				negs, haveNeg = set, true
			default:
				negs = intersect(negs, set)
			}
		}
		if !haveNeg {
			return pos, false, nil
		}
		return minus(negs, pos), true, nil
	}
	return nil, false, fmt.Errorf("audience: unknown node %d", n.Op)
}

// attr returns the users whose attribute n.Key is set (n.Cmp "") or equal
// to n.Value ("=" and "!=", the latter complemented by the caller). There
// is no attribute index: the first attr operand of an evaluation reads
// every user of the app once.
func (e *evaluator) attr(ctx context.Context, n *Node) ([]string, error) {
	if e.attrs == nil {
		e.attrs = map[string]map[string]string{}
		after := ""
		for {
			us, err := e.s.o.Users.ListUsers(ctx, e.app, after, 1000)
			if err != nil {
				return nil, err
			}
			for _, u := range us {
				if len(u.Attrs) > 0 {
					e.attrs[u.ID] = u.Attrs
				}
			}
			if len(us) < 1000 {
				break
			}
			after = us[len(us)-1].ID
		}
	}
	var out []string
	for id, a := range e.attrs {
		v, ok := a[n.Key]
		if ok && (n.Cmp == "" || v == n.Value) {
			out = append(out, id)
		}
	}
	sortStrings(out)
	return out, nil
}

// RecordEvents validates and stores a batch of events of app. An event
// without a time happened now.
func (s *Service) RecordEvents(ctx context.Context, app string, evs []storage.Event) (int, error) {
	if len(evs) == 0 || len(evs) > MaxEventBatch {
		return 0, invalid("events", "send 1 to %d events", MaxEventBatch)
	}
	now := s.o.Now().UTC()
	ret := s.retention(app)
	keep := make([]storage.Event, 0, len(evs))
	for i, e := range evs {
		f := fmt.Sprintf("events[%d]", i)
		if !protocol.ValidID(e.User) {
			return 0, invalid(f+".user", "%v", protocol.ErrBadID)
		}
		if !ValidEventName(e.Name) {
			return 0, invalid(f+".name", "1-64 of a-z A-Z 0-9 _ - . :")
		}
		if len(e.Properties) > MaxEventProps {
			return 0, invalid(f+".properties", "at most %d properties", MaxEventProps)
		}
		for k, v := range e.Properties {
			if k == "" || len(k) > MaxPropKeyLen || len(v) > MaxPropValLen {
				return 0, invalid(f+".properties", "keys 1-%d bytes, values at most %d bytes", MaxPropKeyLen, MaxPropValLen)
			}
		}
		if e.Time.IsZero() {
			e.Time = now
		}
		if e.Time.After(now.Add(MaxFuture)) {
			return 0, invalid(f+".time", "more than %v in the future", MaxFuture)
		}
		if e.Time.Before(now.Add(-ret)) {
			continue // already past retention: accepted, not kept
		}
		keep = append(keep, e)
	}
	if len(keep) == 0 {
		return 0, nil
	}
	return len(keep), s.o.Events.AppendEvents(ctx, app, keep, ret)
}

// Events lists recent events of app (see storage.EventStore.ListEvents).
func (s *Service) Events(ctx context.Context, app, user, name string, limit int) ([]storage.Event, error) {
	return s.o.Events.ListEvents(ctx, app, user, name, limit)
}

// PutSegment creates or replaces a segment after checking its rule.
func (s *Service) PutSegment(ctx context.Context, sg storage.Segment) (storage.Segment, error) {
	if !protocol.ValidID(sg.ID) {
		return storage.Segment{}, invalid("id", "%v", protocol.ErrBadID)
	}
	if len(sg.Name) > 256 {
		return storage.Segment{}, invalid("name", "at most 256 bytes")
	}
	n, err := ParseRule(sg.Rule)
	if err != nil {
		return storage.Segment{}, invalid("rule", "%v", err)
	}
	now := s.o.Now().UTC()
	old, err := s.o.Segments.GetSegment(ctx, sg.App, sg.ID)
	switch {
	case err == nil:
		sg.CreatedAt = old.CreatedAt
	case errors.Is(err, storage.ErrNotFound):
		all, err := s.o.Segments.ListSegments(ctx, sg.App)
		if err != nil {
			return storage.Segment{}, err
		}
		if len(all) >= MaxSegments {
			return storage.Segment{}, invalid("id", "an app has at most %d segments", MaxSegments)
		}
		sg.CreatedAt = now
	default:
		return storage.Segment{}, err
	}
	sg.Rule = n.String()
	sg.UpdatedAt = now
	return sg, s.o.Segments.PutSegment(ctx, sg)
}

// Segment returns a segment; storage.ErrNotFound if there is none.
func (s *Service) Segment(ctx context.Context, app, id string) (storage.Segment, error) {
	if !protocol.ValidID(id) {
		return storage.Segment{}, storage.ErrNotFound
	}
	return s.o.Segments.GetSegment(ctx, app, id)
}

// Segments lists the segments of app.
func (s *Service) Segments(ctx context.Context, app string) ([]storage.Segment, error) {
	return s.o.Segments.ListSegments(ctx, app)
}

// DeleteSegment deletes a segment; storage.ErrNotFound if there is none.
func (s *Service) DeleteSegment(ctx context.Context, app, id string) error {
	if !protocol.ValidID(id) {
		return storage.ErrNotFound
	}
	return s.o.Segments.DeleteSegment(ctx, app, id)
}

// SegmentUsers evaluates a saved segment.
func (s *Service) SegmentUsers(ctx context.Context, app, id string) ([]string, error) {
	sg, err := s.Segment(ctx, app, id)
	if err != nil {
		return nil, err
	}
	n, err := ParseRule(sg.Rule)
	if err != nil {
		return nil, err
	}
	return s.Evaluate(ctx, app, n)
}
