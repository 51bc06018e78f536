package search

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"math"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage"
)

// Access says what a user may read; the chat service implements it.
type Access interface {
	// Readable returns the conversations user is a member of now, each
	// with the first seq the user may read (0 or 1 for all of it: a group
	// whose history is visible from the join gives the join's seq).
	Readable(ctx context.Context, app, user string) (map[string]uint64, error)
}

// Conversations lists every conversation, for the catch-up at start.
type Conversations interface {
	WalkConversations(ctx context.Context, fn func(app, conv string) error) error
}

// Options configure a Service. Index, Log, Convs and Access are required.
type Options struct {
	Index  storage.SearchIndex
	Log    storage.MessageLog
	Convs  Conversations
	Access Access
	Logger *slog.Logger
	// Queue is how many stored messages may wait for the indexer (4096);
	// past it they are picked up from the log a moment later.
	Queue int
	// MaxPostings bounds the postings read per term and conversation of a
	// query, newest first (2000): older matches of very common terms are
	// not considered.
	MaxPostings int
	// HalfLife is the age at which a message's recency bonus has halved
	// (30 days).
	HalfLife time.Duration
	// MaxReplyBytes bounds the messages of one answer (256 KiB, like a
	// history page), so that it fits an MQTT packet; an answer always
	// holds at least one hit.
	MaxReplyBytes int
	Now           func() time.Time
}

// Service indexes the chat log and answers searches. It is safe for
// concurrent use.
type Service struct {
	o   Options
	log *slog.Logger
	ch  chan item

	dirtyMu sync.Mutex
	dirty   map[appConv]bool // conversations whose live messages were dropped

	cursors map[appConv]uint64 // the indexer goroutine's own cache

	indexed, dropped atomic.Uint64
}

type appConv struct{ app, conv string }

type item struct {
	app string
	msg protocol.Message
}

// New returns a Service; Start runs its indexer.
func New(o Options) (*Service, error) {
	if o.Index == nil || o.Log == nil || o.Convs == nil || o.Access == nil {
		return nil, errors.New("search: Options.Index, Log, Convs and Access are required")
	}
	if o.Queue <= 0 {
		o.Queue = 4096
	}
	if o.MaxPostings <= 0 {
		o.MaxPostings = 2000
	}
	if o.HalfLife <= 0 {
		o.HalfLife = 30 * 24 * time.Hour
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.MaxReplyBytes <= 0 {
		o.MaxReplyBytes = 256 << 10
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Service{o: o, log: o.Logger, ch: make(chan item, o.Queue), dirty: map[appConv]bool{}, cursors: map[appConv]uint64{}}, nil
}

// Stats are the Service's counters.
type Stats struct {
	Indexed uint64 // log entries the indexer has read
	Dropped uint64 // live hand-offs dropped at a full queue (read from the log instead)
}

// Stats returns the Service's counters.
func (s *Service) Stats() Stats { return Stats{Indexed: s.indexed.Load(), Dropped: s.dropped.Load()} }

// Stored hands the indexer a message (or event) that is now in the log;
// the chat service calls it for every one, in seq order per conversation.
// It never blocks: when the queue is full the conversation is marked and
// read from the log shortly after.
func (s *Service) Stored(app string, msg protocol.Message) {
	select {
	case s.ch <- item{app, msg}:
	default:
		s.dropped.Add(1)
		s.dirtyMu.Lock()
		s.dirty[appConv{app, msg.Conv}] = true
		s.dirtyMu.Unlock()
	}
}

// Start runs the indexer until stop is called: first it catches up with
// every conversation's log from the index's cursor (messages stored while
// the server was down, or before search existed), then it indexes what
// Stored hands it. stop waits for it to finish.
func (s *Service) Start() (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := s.catchUpAll(ctx); err != nil && ctx.Err() == nil {
			s.log.Error("search: catching up with the log failed", "err", err)
		}
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case it := <-s.ch:
				if err := s.apply(ctx, it.app, it.msg); err != nil && ctx.Err() == nil {
					s.log.Warn("search: indexing failed; will retry from the log", "conv", it.msg.Conv, "seq", it.msg.Seq, "err", err)
					s.markDirty(it.app, it.msg.Conv)
				}
			case <-t.C:
				s.catchUpDirty(ctx)
			}
		}
	}()
	return func() { cancel(); <-done }
}

func (s *Service) markDirty(app, conv string) {
	s.dirtyMu.Lock()
	s.dirty[appConv{app, conv}] = true
	s.dirtyMu.Unlock()
}

func (s *Service) catchUpDirty(ctx context.Context) {
	s.dirtyMu.Lock()
	d := s.dirty
	s.dirty = map[appConv]bool{}
	s.dirtyMu.Unlock()
	for k := range d {
		if err := s.catchUp(ctx, k.app, k.conv, 0); err != nil {
			if ctx.Err() != nil {
				return
			}
			s.log.Warn("search: catch-up failed; will retry", "conv", k.conv, "err", err)
			s.markDirty(k.app, k.conv)
		}
	}
}

func (s *Service) catchUpAll(ctx context.Context) error {
	var all []appConv
	if err := s.o.Convs.WalkConversations(ctx, func(app, conv string) error {
		all = append(all, appConv{app, conv})
		return nil
	}); err != nil {
		return err
	}
	for _, k := range all {
		if err := s.catchUp(ctx, k.app, k.conv, 0); err != nil {
			return err
		}
	}
	return nil
}

func (s *Service) cursor(ctx context.Context, app, conv string) (uint64, error) {
	k := appConv{app, conv}
	if c, ok := s.cursors[k]; ok {
		return c, nil
	}
	c, err := s.o.Index.Cursor(ctx, app, conv)
	if err != nil {
		return 0, err
	}
	if len(s.cursors) > 100_000 {
		clear(s.cursors)
	}
	s.cursors[k] = c
	return c, nil
}

// catchUp reads conv's log from the cursor up to upTo (0: its end).
func (s *Service) catchUp(ctx context.Context, app, conv string, upTo uint64) error {
	cur, err := s.cursor(ctx, app, conv)
	if err != nil {
		return err
	}
	if upTo == 0 {
		if upTo, err = s.o.Log.LastSeq(ctx, app, conv); err != nil {
			return err
		}
	}
	for cur < upTo {
		es, err := s.o.Log.Range(ctx, app, conv, cur+1, true, 200)
		if err != nil {
			return err
		}
		if len(es) == 0 {
			// Trimmed by retention up to the head: nothing to read.
			return s.setCursor(ctx, app, conv, upTo)
		}
		for _, e := range es {
			if e.Seq > upTo {
				return nil
			}
			var m protocol.Message
			if err := json.Unmarshal(e.Data, &m); err != nil {
				s.log.Warn("search: unreadable log entry skipped", "conv", conv, "seq", e.Seq, "err", err)
				if err := s.setCursor(ctx, app, conv, e.Seq); err != nil {
					return err
				}
				cur = e.Seq
				continue
			}
			if err := s.indexOne(ctx, app, m); err != nil {
				return err
			}
			cur = e.Seq
		}
	}
	return nil
}

func (s *Service) setCursor(ctx context.Context, app, conv string, seq uint64) error {
	if err := s.o.Index.PutDoc(ctx, app, nil, conv, seq); err != nil {
		return err
	}
	s.cursors[appConv{app, conv}] = seq
	return nil
}

// apply indexes a live message, first reading any entries before it that
// the index has not seen (dropped hand-offs, events).
func (s *Service) apply(ctx context.Context, app string, m protocol.Message) error {
	cur, err := s.cursor(ctx, app, m.Conv)
	if err != nil {
		return err
	}
	if m.Seq <= cur {
		return nil
	}
	if m.Seq > cur+1 {
		return s.catchUp(ctx, app, m.Conv, m.Seq)
	}
	return s.indexOne(ctx, app, m)
}

// indexOne applies one log entry to the index and moves the cursor to it:
// a message is indexed, an edit re-indexes the message it edits (whose
// stored copy already has the new body), a recall removes the message;
// everything else only moves the cursor.
func (s *Service) indexOne(ctx context.Context, app string, m protocol.Message) error {
	defer s.indexed.Add(1)
	if deletedEvent(m) {
		// The conversation is being deleted (its log goes next): drop its
		// index and cursor, so that a conversation re-created with the
		// same ID is indexed from its seq 1.
		if err := s.o.Index.DropConv(ctx, app, m.Conv); err != nil {
			return err
		}
		delete(s.cursors, appConv{app, m.Conv})
		return nil
	}
	var doc *storage.IndexDoc
	switch {
	case m.Type == protocol.TypeEdit && m.Ref != nil:
		es, err := s.o.Log.Range(ctx, app, m.Conv, m.Ref.Seq, true, 1)
		if err != nil {
			return err
		}
		doc = &storage.IndexDoc{Conv: m.Conv, Seq: m.Ref.Seq} // removed unless it is still there
		if len(es) == 1 && es[0].Seq == m.Ref.Seq {
			var target protocol.Message
			if json.Unmarshal(es[0].Data, &target) == nil {
				doc = Document(target)
			}
		}
	case m.Type == protocol.TypeRecall && m.Ref != nil:
		doc = &storage.IndexDoc{Conv: m.Conv, Seq: m.Ref.Seq}
	case protocol.ReservedType(m.Type):
	default:
		if d := Document(m); len(d.Terms) > 0 {
			doc = d
		}
	}
	if err := s.o.Index.PutDoc(ctx, app, doc, m.Conv, m.Seq); err != nil {
		return err
	}
	s.cursors[appConv{app, m.Conv}] = m.Seq
	return nil
}

// deletedEvent reports whether m is the system event that announces the
// deletion of its conversation (chat.Service.DeleteConversation).
func deletedEvent(m protocol.Message) bool {
	if m.Type != protocol.TypeSystem {
		return false
	}
	var ev struct{ Event string }
	return json.Unmarshal(m.Body, &ev) == nil && ev.Event == "deleted"
}

// Text is the searchable text of a message: the "text" field of a body
// that is a JSON object (a text message, or an attachment's caption), a
// body that is a JSON string in a "text" message, and an attachment's
// file name. Recalled messages and the server's own events have none.
// Bodies are otherwise opaque: an end-to-end encrypted body carries no
// readable "text" and is not indexed.
func Text(m protocol.Message) string {
	if m.Recalled || protocol.ReservedType(m.Type) {
		return ""
	}
	var text string
	var obj struct {
		Text string `json:"text"`
	}
	if json.Unmarshal(m.Body, &obj) == nil {
		text = obj.Text
	} else if m.Type == "text" {
		_ = json.Unmarshal(m.Body, &text)
	}
	if m.Attachment != nil && m.Attachment.Name != "" {
		text += "\n" + m.Attachment.Name
	}
	return text
}

// Document is what the index keeps of a message.
func Document(m protocol.Message) *storage.IndexDoc {
	terms, n := Terms(Text(m))
	return &storage.IndexDoc{Conv: m.Conv, Seq: m.Seq, TS: m.TS, From: m.From.User, Len: n, Terms: terms}
}

// Index indexes (or re-indexes) one message now, outside the log order;
// Replace is the same for a message whose text changed; Remove takes a
// message out. The indexer does all three itself from the log (sends,
// edit and recall events); these are for callers that change messages
// some other way.
func (s *Service) Index(ctx context.Context, app string, m protocol.Message) error {
	return s.o.Index.PutDoc(ctx, app, Document(m), m.Conv, 0)
}

// Replace re-indexes a message whose text changed.
func (s *Service) Replace(ctx context.Context, app string, m protocol.Message) error {
	return s.Index(ctx, app, m)
}

// Remove takes a message out of the index.
func (s *Service) Remove(ctx context.Context, app, conv string, seq uint64) error {
	return s.o.Index.RemoveDoc(ctx, app, conv, seq)
}

// Ranking constants (BM25).
const (
	bm25K1 = 1.2
	bm25B  = 0.75
)

type candidate struct {
	conv  string
	seq   uint64
	ts    int64
	len   int
	tf    []int
	score float64
}

// Search finds the messages user can read that contain every term of the
// query q (see ParseQuery), best first, at most limit (default 20, at
// most 100) and at most MaxReplyBytes of messages (More tells). conv, if set, narrows it to one conversation. Membership and
// history visibility are checked now, at query time, so a user who left
// a conversation no longer finds its messages.
//
// Relevance is BM25 over the postings read (term frequency, the rarity of
// the term among the searched messages, message length); it is multiplied
// by 1 + 2^(-age/HalfLife), so that of two equally relevant messages the
// newer ranks higher and a new message counts up to twice as much as an
// old one.
func (s *Service) Search(ctx context.Context, app, user, raw, conv string, limit int) (protocol.SearchResult, error) {
	q, err := ParseQuery(raw)
	if err != nil {
		return protocol.SearchResult{}, err
	}
	if conv != "" {
		if q.In != "" && q.In != conv {
			return protocol.SearchResult{}, protocol.Errorf(protocol.CodeBadRequest, "conv and in: name different conversations")
		}
		q.In = conv
	}
	if limit <= 0 {
		limit = 20
	}
	limit = min(limit, 100)
	scope, err := s.o.Access.Readable(ctx, app, user)
	if err != nil {
		return protocol.SearchResult{}, err
	}
	if q.In != "" {
		floor, ok := scope[q.In]
		if !ok {
			return protocol.SearchResult{}, protocol.Errorf(protocol.CodeNotMember, "conversation %s does not exist or you are not a member", q.In)
		}
		scope = map[string]uint64{q.In: floor}
	}
	convs := make([]string, 0, len(scope))
	for c := range scope {
		convs = append(convs, c)
	}
	sort.Strings(convs)

	df := make([]int, len(q.Terms))
	total := 0
	var cands []*candidate
	for _, c := range convs {
		floor := max(scope[c], 1)
		var found map[uint64]*candidate
		for i, t := range q.Terms {
			ps, err := s.o.Index.Postings(ctx, app, c, t, floor, s.o.MaxPostings)
			if err != nil {
				return protocol.SearchResult{}, err
			}
			df[i] += len(ps)
			if i == 0 {
				found = make(map[uint64]*candidate, len(ps))
				for _, p := range ps {
					if q.From != "" && p.From != q.From {
						continue
					}
					cd := &candidate{conv: c, seq: p.Seq, ts: p.TS, len: p.Len, tf: make([]int, len(q.Terms))}
					cd.tf[0] = p.TF
					found[p.Seq] = cd
				}
				continue
			}
			next := make(map[uint64]*candidate, min(len(found), len(ps)))
			for _, p := range ps {
				if cd, ok := found[p.Seq]; ok {
					cd.tf[i] = p.TF
					next[p.Seq] = cd
				}
			}
			found = next
			if len(found) == 0 && i+1 < len(q.Terms) {
				// No match here; the remaining terms' frequencies still
				// count for their rarity.
				for j := i + 1; j < len(q.Terms); j++ {
					ps, err := s.o.Index.Postings(ctx, app, c, q.Terms[j], floor, s.o.MaxPostings)
					if err != nil {
						return protocol.SearchResult{}, err
					}
					df[j] += len(ps)
				}
				break
			}
		}
		cur, err := s.o.Index.Cursor(ctx, app, c)
		if err != nil {
			return protocol.SearchResult{}, err
		}
		total += int(cur - min(cur, floor-1))
		for _, cd := range found {
			cands = append(cands, cd)
		}
	}
	res := protocol.SearchResult{Query: raw, Terms: q.Terms, Hits: []protocol.SearchHit{}}
	if len(cands) == 0 {
		return res, nil
	}
	s.rank(cands, df, total)
	size := 0
	for _, cd := range cands {
		if len(res.Hits) >= limit {
			break
		}
		es, err := s.o.Log.Range(ctx, app, cd.conv, cd.seq, true, 1)
		if err != nil {
			return protocol.SearchResult{}, err
		}
		if len(es) != 1 || es[0].Seq != cd.seq {
			continue // trimmed by retention
		}
		var m protocol.Message
		if json.Unmarshal(es[0].Data, &m) != nil || m.Recalled {
			continue
		}
		if size += len(es[0].Data); size > s.o.MaxReplyBytes && len(res.Hits) > 0 {
			res.More = true
			break
		}
		res.Hits = append(res.Hits, protocol.SearchHit{Conv: cd.conv, Seq: cd.seq, Score: math.Round(cd.score*1000) / 1000, Message: es[0].Data})
	}
	return res, nil
}

// rank scores the candidates and sorts them best first (newer first on a
// tie).
func (s *Service) rank(cands []*candidate, df []int, total int) {
	n := float64(max(total, len(cands)))
	idf := make([]float64, len(df))
	for i, d := range df {
		idf[i] = math.Log(1 + (n-float64(d)+0.5)/(float64(d)+0.5))
	}
	avg := 0.0
	for _, c := range cands {
		avg += float64(max(c.len, 1))
	}
	avg /= float64(len(cands))
	now := s.o.Now().UnixMilli()
	half := float64(s.o.HalfLife.Milliseconds())
	for _, c := range cands {
		l := float64(max(c.len, 1))
		sc := 0.0
		for i, tf := range c.tf {
			f := float64(tf)
			sc += idf[i] * f * (bm25K1 + 1) / (f + bm25K1*(1-bm25B+bm25B*l/avg))
		}
		age := float64(max(now-c.ts, 0))
		c.score = sc * (1 + math.Exp2(-age/half))
	}
	slices.SortFunc(cands, func(a, b *candidate) int {
		switch {
		case a.score > b.score:
			return -1
		case a.score < b.score:
			return 1
		case a.ts > b.ts:
			return -1
		case a.ts < b.ts:
			return 1
		}
		return 0
	})
}
