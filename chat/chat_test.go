package chat

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage/badgerstore"
)

// recorder is a Deliverer that keeps what it was given, in order.
type recorder struct {
	mu   sync.Mutex
	sent []delivery
}

type delivery struct {
	app     string
	users   []string
	topic   string
	payload []byte
}

func (r *recorder) Deliver(app string, users []string, payload []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sent = append(r.sent, delivery{app: app, users: slices.Clone(users), payload: payload})
}

func (r *recorder) Broadcast(app, conv string, payload []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sent = append(r.sent, delivery{app: app, topic: protocol.Broadcast(app, conv), payload: payload})
}

func (r *recorder) all() []delivery {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.sent)
}

// msgs decodes the deliveries that are messages of conv.
func (r *recorder) msgs(conv string) []protocol.Message {
	var out []protocol.Message
	for _, d := range r.all() {
		var m protocol.Message
		if json.Unmarshal(d.payload, &m) == nil && m.Kind == protocol.KindMsg && m.Conv == conv {
			out = append(out, m)
		}
	}
	return out
}

func (r *recorder) receipts() []protocol.Receipt {
	var out []protocol.Receipt
	for _, d := range r.all() {
		var rc protocol.Receipt
		if json.Unmarshal(d.payload, &rc) == nil && rc.Kind == protocol.KindReceipt {
			out = append(out, rc)
		}
	}
	return out
}

type env struct {
	db    *badgerstore.DB
	store *badgerstore.ChatStore
	rec   *recorder
	svc   *Service
}

func newEnv(t testing.TB, mod func(*Options)) *env {
	t.Helper()
	db, err := badgerstore.Open(t.TempDir(), badgerstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	st := badgerstore.NewChat(db, badgerstore.ChatOptions{})
	t.Cleanup(func() { st.Close(); db.Close() })
	e := &env{db: db, store: st, rec: &recorder{}}
	e.svc = e.service(t, mod)
	return e
}

func (e *env) service(t testing.TB, mod func(*Options)) *Service {
	o := Options{Store: e.store, Deliverer: e.rec, SendRate: -1}
	if mod != nil {
		mod(&o)
	}
	svc, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

var ctx = context.Background()

func dev(user, device string) Sender { return Sender{App: "app", User: user, Device: device} }

func text(s string) json.RawMessage { return json.RawMessage(fmt.Sprintf(`{"text":%q}`, s)) }

func code(err error) string {
	var pe *protocol.Error
	if errors.As(err, &pe) {
		return pe.Code
	}
	return fmt.Sprintf("not a protocol error: %v", err)
}

func mustCreate(t testing.TB, svc *Service, owner Sender, conv, kind string, members ...string) {
	t.Helper()
	if _, err := svc.Create(ctx, owner, CreateRequest{Conv: conv, Kind: kind, Members: members}); err != nil {
		t.Fatal(err)
	}
}

func TestSendDirect(t *testing.T) {
	e := newEnv(t, nil)
	ack, err := e.svc.Send(ctx, dev("alice", "phone"), SendRequest{To: "bob", CMID: "m1", Type: "text", Body: text("hi")})
	if err != nil {
		t.Fatal(err)
	}
	if ack.Conv != protocol.DirectConvID("alice", "bob") || ack.Seq != 1 || ack.ID == "" || ack.Duplicate {
		t.Fatalf("ack %+v", ack)
	}
	// Bob answers in the same conversation, by "to" or by conv.
	ack2, err := e.svc.Send(ctx, dev("bob", "web"), SendRequest{To: "alice", CMID: "m1", Type: "text", Body: text("yo")})
	if err != nil || ack2.Conv != ack.Conv || ack2.Seq != 2 {
		t.Fatalf("%+v %v", ack2, err)
	}
	ms := e.rec.msgs(ack.Conv)
	if len(ms) != 2 || ms[0].From != (protocol.Sender{User: "alice", Device: "phone"}) || string(ms[0].Body) != `{"text":"hi"}` {
		t.Fatalf("delivered %+v", ms)
	}
	d := e.rec.all()[0]
	sort.Strings(d.users)
	if !slices.Equal(d.users, []string{"alice", "bob"}) {
		t.Fatalf("delivered to %v", d.users)
	}
	// Carol is not in it.
	_, err = e.svc.Send(ctx, dev("carol", "x"), SendRequest{Conv: ack.Conv, CMID: "m", Type: "text", Body: text("?")})
	if code(err) != protocol.CodeNotMember {
		t.Fatalf("carol: %v", err)
	}
	// Sending marks the author's own message read: no unread for alice.
	res, _ := e.svc.Convs(ctx, dev("alice", "phone"), "", 0)
	if len(res.Convs) != 1 || res.Convs[0].LastSeq != 2 || res.Convs[0].Unread != 1 || res.Convs[0].Kind != "direct" {
		t.Fatalf("alice's convs %+v", res)
	}
}

func TestSendValidation(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.Limits.MaxBody = 20 })
	mustCreate(t, e.svc, dev("a", "d"), "g", "group")
	for _, tc := range []struct {
		in   SendRequest
		code string
	}{
		{SendRequest{Conv: "g", CMID: "", Type: "text", Body: text("x")}, protocol.CodeBadRequest},
		{SendRequest{Conv: "g", CMID: "c", Type: "system", Body: text("x")}, protocol.CodeBadRequest},
		{SendRequest{Conv: "g", CMID: "c", Type: "text", Body: json.RawMessage(`{`)}, protocol.CodeBadRequest},
		{SendRequest{Conv: "g", CMID: "c", Type: "text", Body: text("much too long")}, protocol.CodeTooLarge},
		{SendRequest{Conv: "nope", CMID: "c", Type: "text", Body: text("x")}, protocol.CodeNotMember},
	} {
		if _, err := e.svc.Send(ctx, dev("a", "d"), tc.in); code(err) != tc.code {
			t.Errorf("%+v: got %v, want %s", tc.in, err, tc.code)
		}
	}
}

// Property: however many senders race on a conversation, the stored and the
// delivered seqs are exactly 1..N, strictly increasing in delivery order,
// and every ack names a distinct seq. A new Service on the same store (a
// restart) carries on from the last seq.
func TestConcurrentSendersGapFree(t *testing.T) {
	e := newEnv(t, nil)
	const senders, each = 16, 40
	var members []string
	for i := range senders {
		members = append(members, fmt.Sprint("u", i))
	}
	mustCreate(t, e.svc, dev("owner", "d"), "g", "group", members...)
	mustCreate(t, e.svc, dev("owner", "d"), "h", "group", members...)
	acks := make(chan protocol.Ack, 2*senders*each)
	var wg sync.WaitGroup
	for i := range senders {
		for _, conv := range []string{"g", "h"} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := range each {
					ack, err := e.svc.Send(ctx, dev(fmt.Sprint("u", i), "d"), SendRequest{Conv: conv, CMID: fmt.Sprint(conv, j), Type: "text", Body: text("x")})
					if err != nil {
						t.Error(err)
						return
					}
					acks <- ack
				}
			}()
		}
	}
	wg.Wait()
	close(acks)
	seen := map[string]bool{}
	for a := range acks {
		k := fmt.Sprint(a.Conv, "/", a.Seq)
		if seen[k] {
			t.Fatalf("seq %s acked twice", k)
		}
		seen[k] = true
	}
	for _, conv := range []string{"g", "h"} {
		ms := e.rec.msgs(conv)
		// Message 1 is the "created" event.
		if len(ms) != senders*each+1 {
			t.Fatalf("%s: %d delivered", conv, len(ms))
		}
		for i, m := range ms {
			if m.Seq != uint64(i+1) {
				t.Fatalf("%s: delivery %d has seq %d", conv, i, m.Seq)
			}
		}
		es, _ := e.store.Range(ctx, "app", conv, 1, true, 10000)
		for i, en := range es {
			if en.Seq != uint64(i+1) {
				t.Fatalf("%s: log position %d has seq %d", conv, i, en.Seq)
			}
		}
	}
	restarted := e.service(t, nil)
	ack, err := restarted.Send(ctx, dev("u0", "d"), SendRequest{Conv: "g", CMID: "after-restart", Type: "text", Body: text("x")})
	if err != nil || ack.Seq != senders*each+2 {
		t.Fatalf("after restart: %+v %v", ack, err)
	}
}

// Two Services on one store stand for two nodes that both think they
// sequence a conversation: the compare-and-set append makes the loser
// re-read the head, so seqs stay unique and gap-free.
func TestTwoWritersNeverShareASeq(t *testing.T) {
	e := newEnv(t, nil)
	mustCreate(t, e.svc, dev("a", "d"), "g", "group", "b")
	other := e.service(t, nil)
	var wg sync.WaitGroup
	for i, svc := range []*Service{e.svc, other} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 50 {
				if _, err := svc.Send(ctx, dev("a", fmt.Sprint("d", i)), SendRequest{Conv: "g", CMID: fmt.Sprint(j), Type: "text", Body: text("x")}); err != nil && code(err) != protocol.CodeInternal {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	es, _ := e.store.Range(ctx, "app", "g", 1, true, 1000)
	for i, en := range es {
		if en.Seq != uint64(i+1) {
			t.Fatalf("log position %d has seq %d", i, en.Seq)
		}
	}
	if e.svc.Stats().Conflicts+other.Stats().Conflicts == 0 {
		t.Log("no conflict happened this run (the writers never interleaved)")
	}
}

func TestDedupe(t *testing.T) {
	e := newEnv(t, nil)
	mustCreate(t, e.svc, dev("a", "d"), "g", "group", "b")
	in := SendRequest{Conv: "g", CMID: "retry-me", Type: "text", Body: text("once")}
	first, err := e.svc.Send(ctx, dev("a", "d"), in)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			again, err := e.svc.Send(ctx, dev("a", "d"), in)
			if err != nil || again.ID != first.ID || again.Seq != first.Seq || !again.Duplicate {
				t.Errorf("retry: %+v %v (first %+v)", again, err, first)
			}
		}()
	}
	wg.Wait()
	if n := len(e.rec.msgs("g")); n != 2 { // created event + the message
		t.Fatalf("delivered %d times", n-1)
	}
	// The same cmid from another device is another message.
	other, err := e.svc.Send(ctx, dev("a", "d2"), in)
	if err != nil || other.Seq != first.Seq+1 || other.Duplicate {
		t.Fatalf("other device: %+v %v", other, err)
	}
}

func TestChannelsAndRoles(t *testing.T) {
	e := newEnv(t, nil)
	owner := dev("olga", "d")
	mustCreate(t, e.svc, owner, "news", "channel", "mia", "max")
	send := func(s Sender) error {
		_, err := e.svc.Send(ctx, s, SendRequest{Conv: "news", CMID: fmt.Sprint(time.Now().UnixNano()), Type: "text", Body: text("x")})
		return err
	}
	if err := send(dev("mia", "d")); code(err) != protocol.CodeForbidden {
		t.Fatalf("member writes to channel: %v", err)
	}
	if err := send(owner); err != nil {
		t.Fatal(err)
	}
	if err := send(Sender{App: "app", User: "bot", Service: true}); err != nil {
		t.Fatalf("service: %v", err)
	}
	if _, err := e.svc.Add(ctx, dev("mia", "d"), "news", []string{"zoe"}, ""); code(err) != protocol.CodeForbidden {
		t.Fatalf("member adds: %v", err)
	}
	if _, err := e.svc.SetRole(ctx, owner, "news", "mia", "admin"); err != nil {
		t.Fatal(err)
	}
	if err := send(dev("mia", "d")); err != nil {
		t.Fatalf("admin writes: %v", err)
	}
	if _, err := e.svc.Add(ctx, dev("mia", "d"), "news", []string{"zoe"}, "admin"); code(err) != protocol.CodeForbidden {
		t.Fatalf("admin adds admin: %v", err)
	}
	if _, err := e.svc.Add(ctx, dev("mia", "d"), "news", []string{"zoe"}, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Remove(ctx, dev("mia", "d"), "news", []string{"olga"}); code(err) != protocol.CodeForbidden {
		t.Fatalf("admin removes owner: %v", err)
	}
	res, err := e.svc.Remove(ctx, dev("mia", "d"), "news", []string{"zoe"})
	if err != nil || res.Conv.Members != 3 {
		t.Fatalf("remove: %+v %v", res.Conv, err)
	}
	// zoe got the event that removed her, then nothing more.
	last := e.rec.all()[len(e.rec.all())-1]
	if !slices.Contains(last.users, "zoe") {
		t.Fatalf("removed user not told: %v", last.users)
	}
	// The owner leaves: the admin (mia) inherits.
	if _, err := e.svc.Leave(ctx, owner, "news"); err != nil {
		t.Fatal(err)
	}
	info, err := e.svc.Info(ctx, dev("mia", "d"), "news", "", 0)
	if err != nil || info.Conv.Role != "owner" || info.Conv.Members != 2 {
		t.Fatalf("after leave: %+v %v", info.Conv, err)
	}
	if _, err := e.svc.Info(ctx, owner, "news", "", 0); code(err) != protocol.CodeNotMember {
		t.Fatalf("left user reads info: %v", err)
	}
}

func TestGroupLimits(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.MaxGroupSize = 3 })
	if _, err := e.svc.Create(ctx, dev("a", "d"), CreateRequest{Kind: "group", Members: []string{"b", "c", "d"}}); code(err) != protocol.CodeFull {
		t.Fatalf("create over max: %v", err)
	}
	res, err := e.svc.Create(ctx, dev("a", "d"), CreateRequest{Kind: "group", Members: []string{"b", "c"}})
	if err != nil || !protocol.ValidID(res.Conv.Conv) || res.Conv.Members != 3 {
		t.Fatalf("%+v %v", res, err)
	}
	if _, err := e.svc.Add(ctx, dev("a", "d"), res.Conv.Conv, []string{"d"}, ""); code(err) != protocol.CodeFull {
		t.Fatalf("add over max: %v", err)
	}
	if _, err := e.svc.Create(ctx, dev("a", "d"), CreateRequest{Conv: res.Conv.Conv, Kind: "group"}); code(err) != protocol.CodeExists {
		t.Fatalf("create existing: %v", err)
	}
	e2 := newEnv(t, func(o *Options) {
		o.UserExists = func(_ context.Context, _, u string) (bool, error) { return u != "ghost", nil }
	})
	if _, err := e2.svc.Send(ctx, dev("a", "d"), SendRequest{To: "ghost", CMID: "c", Type: "text", Body: text("x")}); code(err) != protocol.CodeNotFound {
		t.Fatalf("send to unknown user: %v", err)
	}
}

func TestSyncPaginatesInOrder(t *testing.T) {
	e := newEnv(t, nil)
	bob := dev("bob", "tablet")
	mustCreate(t, e.svc, dev("amy", "d"), "g1", "group", "bob")
	mustCreate(t, e.svc, dev("amy", "d"), "g2", "group", "bob")
	for i := range 12 {
		for _, c := range []string{"g1", "g2"} {
			if _, err := e.svc.Send(ctx, dev("amy", "d"), SendRequest{Conv: c, CMID: fmt.Sprint(c, i), Type: "text", Body: text(fmt.Sprint(i))}); err != nil {
				t.Fatal(err)
			}
		}
	}
	dm, _ := e.svc.Send(ctx, dev("amy", "d"), SendRequest{To: "bob", CMID: "dm", Type: "text", Body: text("dm")})
	// The tablet already has g1 up to 5.
	if _, err := e.svc.MarkDelivered(ctx, bob, "g1", 5); err != nil {
		t.Fatal(err)
	}
	var got []string
	var cursors map[string]uint64
	pages := 0
	for {
		res, err := e.svc.Sync(ctx, bob, cursors, 5)
		if err != nil {
			t.Fatal(err)
		}
		if pages == 0 && len(res.Convs) != 3 {
			t.Fatalf("first page lists %d convs", len(res.Convs))
		}
		if pages > 0 && len(res.Convs) != 0 {
			t.Fatal("later pages list convs")
		}
		pages++
		for _, raw := range res.Messages {
			var m protocol.Message
			json.Unmarshal(raw, &m)
			got = append(got, fmt.Sprint(m.Conv, "/", m.Seq))
		}
		cursors = res.Cursors
		if !res.More {
			break
		}
		if pages > 20 {
			t.Fatal("sync never ends")
		}
	}
	var want []string
	for s := 6; s <= 13; s++ {
		want = append(want, fmt.Sprint("g1/", s))
	}
	for s := 1; s <= 13; s++ {
		want = append(want, fmt.Sprint("g2/", s))
	}
	// Direct conversation IDs start with "d.", which sorts before "g".
	want = append([]string{dm.Conv + "/1"}, want...)
	if !slices.Equal(got, want) {
		t.Fatalf("sync order\n got %v\nwant %v", got, want)
	}
	if pages != 5 {
		t.Fatalf("%d pages for %d messages at 5 a page", pages, len(want))
	}
	// Another device of bob's starts from zero.
	res, _ := e.svc.Sync(ctx, dev("bob", "phone"), nil, 500)
	if len(res.Messages) != 1+13+13 || res.More {
		t.Fatalf("phone: %d messages, more=%v", len(res.Messages), res.More)
	}
}

func TestHistory(t *testing.T) {
	e := newEnv(t, nil)
	mustCreate(t, e.svc, dev("a", "d"), "g", "group") // seq 1: created
	for i := range 9 {
		e.svc.Send(ctx, dev("a", "d"), SendRequest{Conv: "g", CMID: fmt.Sprint(i), Type: "text", Body: text("x")})
	}
	seqsOf := func(r protocol.HistoryResult) []uint64 {
		var out []uint64
		for _, raw := range r.Messages {
			var m protocol.Message
			json.Unmarshal(raw, &m)
			out = append(out, m.Seq)
		}
		return out
	}
	r, _ := e.svc.History(ctx, dev("a", "d"), "g", 0, 0, 3)
	if !slices.Equal(seqsOf(r), []uint64{8, 9, 10}) || !r.More {
		t.Fatalf("newest: %v %v", seqsOf(r), r.More)
	}
	r, _ = e.svc.History(ctx, dev("a", "d"), "g", 8, 0, 3)
	if !slices.Equal(seqsOf(r), []uint64{5, 6, 7}) || !r.More {
		t.Fatalf("before 8: %v", seqsOf(r))
	}
	r, _ = e.svc.History(ctx, dev("a", "d"), "g", 3, 0, 3)
	if !slices.Equal(seqsOf(r), []uint64{1, 2}) || r.More {
		t.Fatalf("before 3: %v %v", seqsOf(r), r.More)
	}
	r, _ = e.svc.History(ctx, dev("a", "d"), "g", 0, 7, 10)
	if !slices.Equal(seqsOf(r), []uint64{8, 9, 10}) || r.More {
		t.Fatalf("after 7: %v", seqsOf(r))
	}
	if _, err := e.svc.History(ctx, dev("x", "d"), "g", 0, 0, 3); code(err) != protocol.CodeNotMember {
		t.Fatalf("stranger: %v", err)
	}
}

func TestReceipts(t *testing.T) {
	e := newEnv(t, nil)
	mustCreate(t, e.svc, dev("ann", "d"), "g", "group", "ben", "cid")                                  // seq 1 by ann
	e.svc.Send(ctx, dev("ben", "d"), SendRequest{Conv: "g", CMID: "1", Type: "text", Body: text("x")}) // 2
	e.svc.Send(ctx, dev("ann", "d"), SendRequest{Conv: "g", CMID: "1", Type: "text", Body: text("x")}) // 3
	n := len(e.rec.receipts())
	r, err := e.svc.MarkRead(ctx, dev("cid", "laptop"), "g", 99) // clipped to 3
	if err != nil || r.Seq != 3 {
		t.Fatalf("%+v %v", r, err)
	}
	var last delivery
	for _, d := range e.rec.all() {
		last = d
	}
	rcs := e.rec.receipts()[n:]
	if len(rcs) != 1 || rcs[0].Type != "read" || rcs[0].Seq != 3 || rcs[0].User != "cid" {
		t.Fatalf("receipts %+v", rcs)
	}
	sort.Strings(last.users)
	if !slices.Equal(last.users, []string{"ann", "ben", "cid"}) {
		t.Fatalf("read receipt went to %v", last.users)
	}
	// Reading again changes nothing and sends nothing.
	if r, _ := e.svc.MarkRead(ctx, dev("cid", "laptop"), "g", 2); r.Seq != 3 || len(e.rec.receipts()) != n+1 {
		t.Fatalf("backwards read: %+v", r)
	}
	reads, _ := e.svc.Reads(ctx, dev("ann", "d"), "g", 3)
	if reads.Read != 2 || reads.Members != 3 { // ann (author of 3) and cid
		t.Fatalf("reads %+v", reads)
	}
	// Delivered receipts go to the authors, not the device's own user.
	e.svc.MarkDelivered(ctx, dev("ben", "phone"), "g", 3)
	var lastD delivery
	for _, d := range e.rec.all() {
		lastD = d
	}
	if !slices.Equal(lastD.users, []string{"ann"}) {
		t.Fatalf("delivered receipt went to %v", lastD.users)
	}
}

func TestRetention(t *testing.T) {
	now := time.UnixMilli(1_700_000_000_000)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	e := newEnv(t, func(o *Options) {
		o.Now = clock
		o.Retention = func(app string) Retention { return Retention{MaxAge: time.Hour, MaxMessages: 5} }
	})
	mustCreate(t, e.svc, dev("a", "d"), "g", "group")
	for i := range 9 {
		e.svc.Send(ctx, dev("a", "d"), SendRequest{Conv: "g", CMID: fmt.Sprint(i), Type: "text", Body: text("x")})
	}
	n, err := e.svc.RunRetention(ctx)
	if err != nil || n != 5 {
		t.Fatalf("count pass deleted %d %v", n, err)
	}
	mu.Lock()
	now = now.Add(2 * time.Hour)
	mu.Unlock()
	if n, _ := e.svc.RunRetention(ctx); n != 5 {
		t.Fatalf("age pass deleted %d", n)
	}
	ack, err := e.svc.Send(ctx, dev("a", "d"), SendRequest{Conv: "g", CMID: "later", Type: "text", Body: text("x")})
	if err != nil || ack.Seq != 11 {
		t.Fatalf("seq after trimming everything: %+v %v", ack, err)
	}
	res, _ := e.svc.Sync(ctx, dev("a", "new"), nil, 100)
	if len(res.Messages) != 1 || res.Cursors["g"] != 11 {
		t.Fatalf("sync after retention: %d messages, cursors %v", len(res.Messages), res.Cursors)
	}
	stop := e.svc.StartRetention(time.Millisecond)
	stop()
	stop()
}

func TestQuota(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.SendRate, o.SendBurst = 0.001, 2 })
	mustCreate(t, e.svc, dev("a", "d"), "g", "group")
	var errs []string
	for i := range 3 {
		_, err := e.svc.Send(ctx, dev("a", "d"), SendRequest{Conv: "g", CMID: fmt.Sprint(i), Type: "text", Body: text("x")})
		errs = append(errs, code(err))
	}
	if errs[2] != protocol.CodeQuota || e.svc.Stats().QuotaDenied != 1 {
		t.Fatalf("%v", errs)
	}
	// A retry of a stored message is answered from the dedupe record, not
	// refused by the (exhausted) quota.
	ack, err := e.svc.Send(ctx, dev("a", "d"), SendRequest{Conv: "g", CMID: "1", Type: "text", Body: text("x")})
	if err != nil || !ack.Duplicate || ack.Seq == 0 {
		t.Fatalf("retry over quota: %+v %v", ack, err)
	}
	if e.svc.Stats().QuotaDenied != 1 {
		t.Fatal("the retry was charged to the quota")
	}
}

func TestIDsSortInCreationOrder(t *testing.T) {
	g := newIDGen(7)
	t0 := time.UnixMilli(1_700_000_000_000)
	prev := ""
	for i := range 2000 {
		// The clock stands still, steps forward, and steps back.
		now := t0.Add(time.Duration(i/3) * time.Millisecond)
		if i%50 == 0 {
			now = t0
		}
		id := g.next(now)
		if len(id) != 26 || !protocol.ValidID(id) || id <= prev {
			t.Fatalf("id %d %q after %q", i, id, prev)
		}
		prev = id
	}
}

func TestRename(t *testing.T) {
	e := newEnv(t, nil)
	owner := dev("olga", "d")
	mustCreate(t, e.svc, owner, "club", "group", "mia")
	if _, err := e.svc.Rename(ctx, dev("mia", "d"), "club", "Mine"); code(err) != protocol.CodeForbidden {
		t.Fatalf("member renames: %v", err)
	}
	if _, err := e.svc.Rename(ctx, owner, "club", strings.Repeat("x", MaxNameLen+1)); code(err) != protocol.CodeBadRequest {
		t.Fatalf("long name: %v", err)
	}
	res, err := e.svc.Rename(ctx, Sender{App: "app", User: "_svc", Service: true}, "club", "Book club")
	if err != nil || res.Conv.Name != "Book club" {
		t.Fatalf("rename: %+v %v", res.Conv, err)
	}
	// The members learn of it from the log.
	ms := e.rec.msgs("club")
	last := ms[len(ms)-1]
	if last.Type != protocol.TypeSystem || !strings.Contains(string(last.Body), `"event":"renamed"`) || !strings.Contains(string(last.Body), `"name":"Book club"`) {
		t.Fatalf("event: %s %s", last.Type, last.Body)
	}
	info, err := e.svc.Info(ctx, dev("mia", "d"), "club", "", 0)
	if err != nil || info.Conv.Name != "Book club" {
		t.Fatalf("info after rename: %+v %v", info.Conv, err)
	}
	// Renaming to the same name records nothing.
	n := len(e.rec.msgs("club"))
	if _, err := e.svc.Rename(ctx, owner, "club", "Book club"); err != nil || len(e.rec.msgs("club")) != n {
		t.Fatalf("same name: %v, %d events", err, len(e.rec.msgs("club"))-n)
	}
	if _, err := e.svc.Rename(ctx, owner, "nope", "x"); code(err) != protocol.CodeNotMember {
		t.Fatalf("unknown conversation: %v", err)
	}
}

// TestServiceHandsOwnershipOver checks that a service making a member
// owner leaves one owner: the old one becomes an admin.
func TestServiceHandsOwnershipOver(t *testing.T) {
	e := newEnv(t, nil)
	mustCreate(t, e.svc, dev("olga", "d"), "club", "group", "mia", "max")
	svc := Sender{App: "app", User: "_svc", Service: true}
	res, err := e.svc.SetRole(ctx, svc, "club", "mia", "owner")
	if err != nil {
		t.Fatal(err)
	}
	roles := map[string]string{}
	for _, m := range res.Members {
		roles[m.User] = m.Role
	}
	if roles["mia"] != "owner" || roles["olga"] != "admin" || roles["max"] != "member" {
		t.Fatalf("roles after hand-over: %v", roles)
	}
}
