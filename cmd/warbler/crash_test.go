package main

// TestCrashKill9KeepsEveryAckedMessage is the durability acceptance test
// (docs/PROTOCOL-chat.md: "the server stores the message durably before it
// sends the PUBACK"; security notes §2 and §7 case 19): devices stream
// QoS 1 sends while the server process is killed with SIGKILL and
// restarted on the same data directory, again and again; afterwards the
// stored history must hold every PUBACKed message exactly once, with seqs
// 1..N and no gaps.
//
// Bookkeeping (the "ledger"), in the spirit of Jepsen's queue checker:
//
//   - sent: every cmid we put on the wire at least once. A cmid is entered
//     in the ledger before its first PUBLISH is written, so anything the
//     server can have stored is in sent.
//   - acked: cmids for which some PUBLISH got a PUBACK with a success reason
//     (< 0x80). The server promises these are stored (fsync before PUBACK).
//   - in doubt: sent but not acked: the connection died (the kill) before
//     the PUBACK arrived, the PUBACK carried an error reason, or it timed
//     out. The server may or may not have stored such a message, so the
//     sender retries it with the same cmid on the next connection (and
//     again after the next kill if need be). The server's dedupe on
//     (user, device, cmid) must make those retries exactly-once.
//   - replied: each send carries "rid", so the server also publishes an ack
//     envelope ({"id","seq","duplicate"}) on the device topic once the
//     message is stored. These are QoS 0 and best effort, so they only add
//     evidence: the seq the server announced, and whether a retry was
//     answered as a duplicate (the first attempt had been stored before
//     the kill).
//   - stored: what the HTTP history API returns after the last restart,
//     counted per cmid.
//
// Checks: lost = acked − stored = ∅ (and likewise for cmids with an ack
// envelope but no PUBACK); no cmid stored twice (retried in-doubt sends
// included); unexpected = stored − sent = ∅; every conversation's seqs are
// exactly 1..N in order; each stored message sits in the right
// conversation, from the right device, with the body that was sent, at the
// seq its ack envelope announced; message IDs are unique. In-doubt cmids may
// be stored or not, but at most once. At the end the senders stop starting
// new messages and retry what is in doubt on the last (healthy) server: a
// retry must be acked (with the original message if it was stored), so
// nothing may stay unacked.
//
// Everything runs on loopback against the prebuilt binary; every wait has a
// deadline, so the test stops by itself.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/warblerim/warbler/protocol"
)

const (
	crashApp = "demo"
	// crashKills is how many times the server is killed with SIGKILL; each
	// kill is followed by a restart on the same data directory.
	crashKills = 10
	// crashWindow is how many PUBLISHes each sender keeps in flight on its
	// connection, so that every kill catches several of them unacked.
	crashWindow = 4
	// A run (the life of one server process) is killed after it has acked
	// between crashRunMinAcks and crashRunMaxAcks new messages, then a
	// random delay of up to crashKillJitter: sometimes right after the
	// restart, while the senders are still retrying what the previous kill
	// left in doubt, sometimes in the middle of steady traffic.
	crashRunMinAcks = 5
	crashRunMaxAcks = 300
	crashKillJitter = 40 * time.Millisecond
	// crashFinalAcks is the traffic the last run must ack before the
	// senders stop starting new messages and drain their in-doubt ones.
	crashFinalAcks = 50
	// crashMaxPerSender bounds the new cmids of one sender. The runs above
	// ack about crashKills*crashRunMaxAcks+crashFinalAcks messages at most,
	// in all, far below 4*crashMaxPerSender even if one sender does most of
	// the work, so the bound never ends a run; it only keeps the test
	// bounded.
	crashMaxPerSender = 3000
	// crashRunDeadline is how long one run may take to ack its quota
	// (including the reconnects after a restart); crashDrainDeadline is how
	// long the senders get to settle their in-doubt messages at the end.
	crashRunDeadline   = 20 * time.Second
	crashDrainDeadline = 20 * time.Second
	crashPubTimeout    = 10 * time.Second
)

func TestCrashKill9KeepsEveryAckedMessage(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, seed^0x5eed))
	t.Logf("seed %d", seed)
	testStart := time.Now()

	data := t.TempDir()
	cfg := filepath.Join(t.TempDir(), "crash.yaml")
	// No per-user send quota: the senders go as fast as the server acks.
	if err := os.WriteFile(cfg, []byte("chat:\n  send_rate: -1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	start := func() (*proc, time.Duration) {
		t0 := time.Now()
		args := append(loopbackArgs(data), "--ws", "", "--config", cfg)
		p := startProc(t, exec.Command(warblerBin, args...)) // fails the test unless it reaches "listening"
		if p.addrs["mqtt"] == "" || p.addrs["http"] == "" {
			t.Fatalf("no mqtt or http address in the listening line: %v", p.addrs)
		}
		return p, time.Since(t0)
	}
	p, _ := start()

	// Users and device credentials, through the HTTP API with the admin key
	// the first start wrote. Tokens outlive the restarts (ttl 1 h).
	keyb, err := os.ReadFile(filepath.Join(data, "admin.key"))
	if err != nil {
		t.Fatal(err)
	}
	api := &crashAPI{key: strings.TrimSpace(string(keyb)), hc: &http.Client{Timeout: 10 * time.Second}}
	api.base = "http://" + p.addrs["http"]
	for _, u := range []string{"alice", "bob", "carol"} {
		api.do(t, "POST", "/v1/apps/"+crashApp+"/users", map[string]any{"id": u}, nil, http.StatusCreated)
	}
	// Four sender devices over two direct conversations: alice–bob gets
	// three concurrent writers from both sides, carol–bob one.
	specs := []struct{ user, device, to string }{
		{"alice", "s0", "bob"}, {"alice", "s1", "bob"}, {"bob", "s2", "alice"}, {"carol", "s3", "bob"},
	}
	senders := make([]*crashSender, len(specs))
	for k, sp := range specs {
		var cr struct {
			ClientID string `json:"client_id"`
			Username string `json:"username"`
			Password string `json:"password"`
			Topics   struct {
				Uplink string `json:"uplink"`
				Device string `json:"device"`
			} `json:"topics"`
		}
		api.do(t, "POST", "/v1/apps/"+crashApp+"/tokens",
			map[string]any{"user": sp.user, "device": sp.device, "ttl": 3600}, &cr, http.StatusOK)
		if cr.ClientID == "" || cr.Password == "" || cr.Topics.Uplink == "" || cr.Topics.Device == "" {
			t.Fatalf("incomplete credentials for %s/%s: %+v", sp.user, sp.device, cr)
		}
		senders[k] = &crashSender{k: k, user: sp.user, device: sp.device, to: sp.to,
			conv: protocol.DirectConvID(sp.user, sp.to), clientID: cr.ClientID,
			username: cr.Username, password: cr.Password, uplink: cr.Topics.Uplink, deviceTopic: cr.Topics.Device}
	}

	led := newCrashLedger()
	board := newCrashBoard()
	board.set(p.addrs["mqtt"])
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var noNew atomic.Bool
	var wg sync.WaitGroup
	for _, s := range senders {
		wg.Add(1)
		go func() { defer wg.Done(); s.run(ctx, board, led, &noNew) }()
	}
	sendersDone := make(chan struct{})
	go func() { wg.Wait(); close(sendersDone) }()
	// However the test ends, the senders stop and are waited for.
	defer func() {
		cancel()
		select {
		case <-sendersDone:
		case <-time.After(30 * time.Second):
			t.Errorf("senders did not stop within 30s after cancel")
		}
	}()

	// waitRun waits until this run has acked `want` more messages.
	waitRun := func(run int, base, want int) {
		t.Helper()
		if err := led.waitAcked(base+want, crashRunDeadline, sendersDone); err != nil {
			t.Fatalf("run %d: %v (acked %d of %d in this run, %d in all)\n%s",
				run, err, led.ackedCount()-base, want, led.ackedCount(), crashTail(p.logs.String(), 30))
		}
	}

	var startups []time.Duration
	for kill := 1; kill <= crashKills; kill++ {
		want := crashRunMinAcks + rng.IntN(crashRunMaxAcks-crashRunMinAcks+1)
		waitRun(kill, led.ackedCount(), want)
		time.Sleep(time.Duration(rng.Int64N(int64(crashKillJitter)))) // a random point inside the traffic
		board.set("")                                                 // senders wait for the next address
		if _, err := p.stop(t, syscall.SIGKILL, 10*time.Second); !killedBy(err, syscall.SIGKILL) {
			t.Fatalf("kill %d: process did not die of SIGKILL: %v", kill, err)
		}
		// The data directory must reopen after every kill.
		var took time.Duration
		p, took = start()
		startups = append(startups, took)
		api.base = "http://" + p.addrs["http"]
		board.set(p.addrs["mqtt"])
	}

	// The last run: new traffic is accepted, then the senders stop starting
	// new messages and retry what is still in doubt until it is acked.
	waitRun(crashKills+1, led.ackedCount(), crashFinalAcks)
	noNew.Store(true)
	select {
	case <-sendersDone:
	case <-time.After(crashDrainDeadline):
		// What is still in doubt is reported by the checks below (stored
		// at most once, and not acked). Stop the senders.
		t.Logf("drain incomplete after %v; stopping the senders", crashDrainDeadline)
		cancel()
		select {
		case <-sendersDone:
		case <-time.After(30 * time.Second):
			t.Fatalf("senders did not stop")
		}
	}
	sendTime := time.Since(testStart)

	// Read back every direct conversation from the running server.
	convs := map[string][2]string{} // conv -> the two users
	for _, s := range senders {
		convs[s.conv] = [2]string{s.user, s.to}
	}
	type storedMsg struct {
		conv  string
		seq   uint64
		count int
	}
	stored := map[string]*storedMsg{}
	ids := map[string]string{}
	var problems []string
	problem := func(format string, a ...any) {
		if len(problems) < 40 {
			problems = append(problems, fmt.Sprintf(format, a...))
		}
	}
	perConv := map[string]int{}
	for conv, users := range convs {
		msgs := api.history(t, users[0], users[1])
		perConv[conv] = len(msgs)
		for i, m := range msgs {
			if want := uint64(i + 1); m.Seq != want {
				problem("conv %s: message %d has seq %d, want %d (gap, reorder or duplicate seq)", conv, i, m.Seq, want)
			}
			if m.Kind != protocol.KindMsg || m.Conv != conv || m.Type != "text" {
				problem("conv %s seq %d: unexpected envelope kind=%q conv=%q type=%q", conv, m.Seq, m.Kind, m.Conv, m.Type)
			}
			if prev, dup := ids[m.ID]; dup || m.ID == "" {
				problem("conv %s seq %d: message id %q not unique (also %s)", conv, m.Seq, m.ID, prev)
			}
			ids[m.ID] = fmt.Sprintf("%s/%d", conv, m.Seq)
			var body struct{ CMID string }
			if err := json.Unmarshal(m.Body, &body); err != nil || body.CMID != m.CMID {
				problem("conv %s seq %d: body %s does not belong to cmid %q", conv, m.Seq, m.Body, m.CMID)
			}
			sm := stored[m.CMID]
			if sm == nil {
				sm = &storedMsg{conv: conv, seq: m.Seq}
				stored[m.CMID] = sm
			}
			sm.count++
			if sm.count > 1 {
				problem("duplicate: cmid %q stored %d times (seq %d in %s and seq %d in %s, sent %d times)",
					m.CMID, sm.count, sm.seq, sm.conv, m.Seq, conv, led.attempts(m.CMID))
			}
			rec := led.get(m.CMID)
			if rec == nil || rec.sender < 0 {
				continue // reported as unexpected below
			}
			s := senders[rec.sender]
			if s.conv != conv || m.From.User != s.user || m.From.Device != s.device {
				problem("cmid %q of %s/%s to %s stored in %s from %s/%s", m.CMID, s.user, s.device, s.to, conv, m.From.User, m.From.Device)
			}
		}
	}

	// The ledger against what is stored.
	var lost, lostReplied, unexpected, wrongSeq, doubtStored, doubtMissing, retriedAcked []string
	var sentN, ackedN, rejects, doubts, replied, dupReplied int
	led.mu.Lock()
	for cmid, r := range led.recs {
		if r.attempts == 0 {
			continue // a reply for a cmid we never sent: reported with conflict below
		}
		sentN++
		sm := stored[cmid]
		rejects += r.rejects
		doubts += r.doubts
		if r.replies > 0 {
			replied++
		}
		if r.dupReplies > 0 {
			dupReplied++
		}
		if r.conflict != "" {
			wrongSeq = append(wrongSeq, cmid+": "+r.conflict)
		}
		if sm != nil && r.replies > 0 && sm.seq != r.seq {
			wrongSeq = append(wrongSeq, fmt.Sprintf("%s: acked with seq %d (id %s), stored at seq %d", cmid, r.seq, r.id, sm.seq))
		}
		desc := fmt.Sprintf("%s(attempts=%d,no-puback=%d,rejects=%d,last-reason=%#x,replies=%d,seq=%d)",
			cmid, r.attempts, r.doubts, r.rejects, r.reason, r.replies, r.seq)
		switch {
		case r.acked:
			ackedN++
			if r.attempts > 1 {
				retriedAcked = append(retriedAcked, cmid)
			}
			if sm == nil {
				lost = append(lost, desc)
			}
		case r.replies > 0 && sm == nil:
			// No PUBACK, but the server's ack envelope said it was stored.
			lostReplied = append(lostReplied, desc)
		case sm != nil:
			doubtStored = append(doubtStored, desc)
		default:
			doubtMissing = append(doubtMissing, desc)
		}
	}
	for cmid, r := range led.recs {
		if r.attempts == 0 {
			wrongSeq = append(wrongSeq, cmid+": "+r.conflict)
		}
	}
	led.mu.Unlock()
	for cmid := range stored {
		if r := led.get(cmid); r == nil || r.attempts == 0 {
			unexpected = append(unexpected, cmid)
		}
	}
	storedN := 0
	for _, n := range perConv {
		storedN += n
	}
	var connects, connectFails int64
	for _, s := range senders {
		connects += s.connects.Load()
		connectFails += s.connectFails.Load()
	}
	t.Logf("kills %d (SIGKILL, then restart on the same data dir; startups %v); %.1fs of traffic",
		crashKills, startups, sendTime.Seconds())
	t.Logf("sent %d cmids (%d publishes: %d without PUBACK, %d with an error reason); acked %d; in doubt at the end %d (stored %d, not stored %d)",
		sentN, led.publishes.Load(), doubts, rejects, ackedN, sentN-ackedN, len(doubtStored), len(doubtMissing))
	t.Logf("retried in-doubt cmids later acked: %d (answered as duplicates, i.e. stored before the kill: %d); ack envelopes seen for %d cmids",
		len(retriedAcked), dupReplied, replied)
	t.Logf("stored %d messages %v; connections %d (%d failed attempts)", storedN, perConv, connects, connectFails)
	if len(retriedAcked) == 0 {
		t.Logf("note: no in-doubt send was retried in this run; the retry path went unexercised")
	}

	sort.Strings(lost)
	sort.Strings(lostReplied)
	sort.Strings(unexpected)
	sort.Strings(wrongSeq)
	if len(lost) > 0 {
		t.Errorf("LOST: %d PUBACKed messages are not in the history: %v", len(lost), crashHead(lost, 30))
	}
	if len(lostReplied) > 0 {
		t.Errorf("LOST: %d messages the server acked on the device topic (no PUBACK seen) are not in the history: %v",
			len(lostReplied), crashHead(lostReplied, 30))
	}
	// In-doubt cmids may be stored or not (at most once, checked above).
	// But the drain retried each of them on a healthy server until it was
	// acked, and a retry of a cmid must be answered with the original
	// message (docs/PROTOCOL-chat.md), so none should be left.
	if notAcked := append(doubtStored, doubtMissing...); len(notAcked) > 0 {
		sort.Strings(notAcked)
		t.Errorf("RETRY NOT ACKED: %d in-doubt sends were retried on the last, healthy server without a success PUBACK "+
			"(%d of them are stored): %v", len(notAcked), len(doubtStored), crashHead(notAcked, 30))
	}
	if len(wrongSeq) > 0 {
		t.Errorf("ACK MISMATCH: %d messages are not where the server's ack said: %v", len(wrongSeq), crashHead(wrongSeq, 30))
	}
	if len(unexpected) > 0 {
		t.Errorf("UNEXPECTED: %d stored messages were never sent: %v", len(unexpected), crashHead(unexpected, 30))
	}
	for _, pr := range problems {
		t.Error(pr)
	}
	if t.Failed() {
		t.Logf("server log of the last run (tail):\n%s", crashTail(p.logs.String(), 40))
	}
}

// crashBoard publishes the current server's MQTT address to the senders;
// "" while the server is down. changed is closed and replaced on every set.
type crashBoard struct {
	mu      sync.Mutex
	addr    string
	changed chan struct{}
}

func newCrashBoard() *crashBoard { return &crashBoard{changed: make(chan struct{})} }

func (b *crashBoard) set(addr string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.addr = addr
	close(b.changed)
	b.changed = make(chan struct{})
}

func (b *crashBoard) get() (string, <-chan struct{}) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.addr, b.changed
}

// crashRecord is the ledger's entry for one cmid.
type crashRecord struct {
	sender   int  // index of the sending device
	attempts int  // PUBLISHes written (first send and retries)
	acked    bool // some PUBLISH got a success PUBACK
	doubts   int  // attempts that ended without a PUBACK (connection lost, timeout)
	rejects  int  // attempts answered with a PUBACK reason >= 0x80
	reason   int  // the last such reason
	// From the acks on the device topic (QoS 0, so some are missing): where
	// the server said the message landed. The server publishes them only
	// after the message is durably stored, so a cmid with a reply must be
	// stored too, PUBACK or not.
	replies    int
	dupReplies int // replies with "duplicate": a retry of an already stored cmid
	id         string
	seq        uint64
	conflict   string // replies that disagree about id or seq
}

type crashLedger struct {
	mu        sync.Mutex
	recs      map[string]*crashRecord
	acked     int           // distinct acked cmids
	progress  chan struct{} // closed and replaced on every new ack
	publishes atomic.Int64
}

func newCrashLedger() *crashLedger {
	return &crashLedger{recs: map[string]*crashRecord{}, progress: make(chan struct{})}
}

// attempt records that cmid is about to be published (again).
func (l *crashLedger) attempt(cmid string, sender int) {
	l.publishes.Add(1)
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.recs[cmid]
	if r == nil {
		r = &crashRecord{sender: sender}
		l.recs[cmid] = r
	}
	r.attempts++
}

// result records the outcome of one attempt: reason is the PUBACK reason,
// or -1 for no PUBACK at all.
func (l *crashLedger) result(cmid string, reason int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.recs[cmid]
	switch {
	case reason < 0:
		r.doubts++
	case reason >= 0x80:
		r.rejects++
		r.reason = reason
	case !r.acked:
		r.acked = true
		l.acked++
		close(l.progress)
		l.progress = make(chan struct{})
	}
}

// reply records a send ack received on a device topic.
func (l *crashLedger) reply(payload []byte) {
	var r struct {
		Kind   string       `json:"kind"`
		RID    string       `json:"rid"`
		Result protocol.Ack `json:"result"`
	}
	if json.Unmarshal(payload, &r) != nil || r.Kind != protocol.KindReply {
		return // errors are seen as PUBACK reasons
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	rec := l.recs[r.RID]
	if rec == nil {
		// Cannot happen: the cmid is in the ledger before it is published.
		rec = &crashRecord{sender: -1}
		l.recs[r.RID] = rec
		rec.conflict = "reply for a cmid never sent"
	}
	rec.replies++
	if r.Result.Duplicate {
		rec.dupReplies++
	}
	if rec.id == "" {
		rec.id, rec.seq = r.Result.ID, r.Result.Seq
	} else if rec.id != r.Result.ID || rec.seq != r.Result.Seq {
		rec.conflict = fmt.Sprintf("replies say id %s seq %d and id %s seq %d", rec.id, rec.seq, r.Result.ID, r.Result.Seq)
	}
}

func (l *crashLedger) get(cmid string) *crashRecord {
	l.mu.Lock()
	defer l.mu.Unlock()
	if r := l.recs[cmid]; r != nil {
		c := *r
		return &c
	}
	return nil
}

func (l *crashLedger) attempts(cmid string) int {
	if r := l.get(cmid); r != nil {
		return r.attempts
	}
	return 0
}

func (l *crashLedger) ackedCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.acked
}

// waitAcked waits until n distinct cmids are acked, the deadline passes or
// the senders have all stopped.
func (l *crashLedger) waitAcked(n int, within time.Duration, stopped <-chan struct{}) error {
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	for {
		l.mu.Lock()
		acked, progress := l.acked, l.progress
		l.mu.Unlock()
		if acked >= n {
			return nil
		}
		select {
		case <-progress:
		case <-stopped:
			return errors.New("all senders stopped (message budget exhausted?)")
		case <-deadline.C:
			return fmt.Errorf("no progress to %d acks within %v", n, within)
		}
	}
}

// crashSender is one device streaming sends over its own MQTT connection.
type crashSender struct {
	k                            int
	user, device, to, conv       string
	clientID, username, password string
	uplink, deviceTopic          string

	mu    sync.Mutex
	retry []string // in-doubt cmids to publish again, oldest first
	next  int      // new cmids handed out: s{k}-1 .. s{k}-next
	busy  int      // cmids being published right now

	connects, connectFails atomic.Int64
}

// take hands a worker the next cmid: an in-doubt one first, else a new one
// unless new sends are over.
func (s *crashSender) take(noNew bool) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.retry) > 0 {
		c := s.retry[0]
		s.retry = s.retry[1:]
		s.busy++
		return c, true
	}
	if noNew || s.next >= crashMaxPerSender {
		return "", false
	}
	s.next++
	s.busy++
	return fmt.Sprintf("s%d-%d", s.k, s.next), true
}

// settle ends a worker's attempt; an unacked cmid goes back for a retry.
func (s *crashSender) settle(cmid string, acked bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.busy--
	if !acked {
		s.retry = append(s.retry, cmid)
	}
}

func (s *crashSender) finished(noNew bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.retry) == 0 && s.busy == 0 && (noNew || s.next >= crashMaxPerSender)
}

// run connects to whatever server is current, streams until the
// connection dies, and starts over, until it has nothing left to send or
// ctx ends. It never touches t: it runs outside the test goroutine.
func (s *crashSender) run(ctx context.Context, board *crashBoard, led *crashLedger, noNew *atomic.Bool) {
	for ctx.Err() == nil && !s.finished(noNew.Load()) {
		addr, changed := board.get()
		if addr == "" { // the server is down: wait for the next one
			select {
			case <-changed:
			case <-ctx.Done():
			}
			continue
		}
		cl, conn, err := s.connect(ctx, addr, led)
		if err != nil {
			s.connectFails.Add(1)
			select { // a new address, or a short pause before trying this one again
			case <-changed:
			case <-time.After(20 * time.Millisecond):
			case <-ctx.Done():
			}
			continue
		}
		s.connects.Add(1)
		s.stream(ctx, cl, led, noNew)
		select {
		case <-cl.Done():
		default:
			_ = cl.Disconnect(&paho.Disconnect{ReasonCode: 0})
		}
		_ = conn.Close()
	}
}

func (s *crashSender) connect(ctx context.Context, addr string, led *crashLedger) (*paho.Client, net.Conn, error) {
	d := net.Dialer{Timeout: 2 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	cl := paho.NewClient(paho.ClientConfig{
		Conn:               conn,
		PacketTimeout:      crashPubTimeout,
		OnClientError:      func(error) {},
		OnServerDisconnect: func(*paho.Disconnect) {},
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){
			func(pr paho.PublishReceived) (bool, error) { led.reply(pr.Packet.Payload); return true, nil },
		},
	})
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err = cl.Connect(cctx, &paho.Connect{
		ClientID: s.clientID, CleanStart: true, KeepAlive: 30,
		Username: s.username, UsernameFlag: true, Password: []byte(s.password), PasswordFlag: true,
	})
	if err == nil {
		// The device topic carries the send acks we ask for with "rid":
		// {"kind":"reply","rid":cmid,"result":{"id","seq","duplicate"}}.
		var sa *paho.Suback
		sa, err = cl.Subscribe(cctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: s.deviceTopic, QoS: 0}}})
		if err == nil && (len(sa.Reasons) != 1 || sa.Reasons[0] >= 0x80) {
			err = fmt.Errorf("subscribe %s refused: %v", s.deviceTopic, sa.Reasons)
		}
	}
	if err != nil {
		_ = conn.Close()
		return nil, nil, err
	}
	return cl, conn, nil
}

// stream runs crashWindow workers publishing on cl until the connection
// dies or there is nothing to send.
func (s *crashSender) stream(ctx context.Context, cl *paho.Client, led *crashLedger, noNew *atomic.Bool) {
	var wg sync.WaitGroup
	for range crashWindow {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-cl.Done():
					return
				case <-ctx.Done():
					return
				default:
				}
				cmid, ok := s.take(noNew.Load())
				if !ok {
					return
				}
				led.attempt(cmid, s.k) // in the ledger before it is on the wire
				reason := s.publish(ctx, cl, cmid)
				led.result(cmid, reason)
				s.settle(cmid, reason >= 0 && reason < 0x80)
				if reason >= 0x80 { // the server refused it ("retry later"): pause a little
					select {
					case <-time.After(10 * time.Millisecond):
					case <-cl.Done():
					case <-ctx.Done():
					}
				}
			}
		}()
	}
	wg.Wait()
}

// publish sends one envelope at QoS 1 and returns the PUBACK reason, or -1
// if no PUBACK came (connection lost, timeout).
func (s *crashSender) publish(ctx context.Context, cl *paho.Client, cmid string) int {
	payload, _ := json.Marshal(map[string]any{
		"to": s.to, "cmid": cmid, "type": "text", "rid": cmid,
		"body": map[string]any{"cmid": cmid, "text": "kill -9 test " + cmid},
	})
	pctx, cancel := context.WithTimeout(ctx, crashPubTimeout)
	defer cancel()
	go func() { // the connection dying ends the wait at once
		select {
		case <-cl.Done():
			cancel()
		case <-pctx.Done():
		}
	}()
	resp, err := cl.Publish(pctx, &paho.Publish{Topic: s.uplink, QoS: 1, Payload: payload})
	if resp == nil {
		return -1
	}
	if err != nil && resp.ReasonCode < 0x80 {
		return -1
	}
	return int(resp.ReasonCode)
}

// killedBy reports whether err is the exit of a process killed by sig.
func killedBy(err error, sig syscall.Signal) bool {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == sig
}

// crashAPI calls the HTTP API with the admin key. Test goroutine only.
type crashAPI struct {
	base, key string
	hc        *http.Client
}

func (a *crashAPI) do(t *testing.T, method, path string, in, out any, want int) {
	t.Helper()
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, a.base+path, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+a.key)
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := a.hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		t.Fatalf("%s %s: HTTP %d, want %d: %s", method, path, resp.StatusCode, want, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %v: %s", method, path, err, b)
		}
	}
}

// history reads the whole direct conversation of user and peer, oldest
// first, page by page.
func (a *crashAPI) history(t *testing.T, user, peer string) []protocol.Message {
	t.Helper()
	var all []protocol.Message
	after := uint64(0)
	for page := 0; ; page++ {
		if page > 1000 {
			t.Fatalf("history of %s–%s does not end", user, peer)
		}
		var res struct {
			Messages  []protocol.Message `json:"messages"`
			More      bool               `json:"more"`
			NextAfter uint64             `json:"next_after"`
		}
		a.do(t, "GET", fmt.Sprintf("/v1/apps/%s/users/%s/direct/%s/messages?after=%d&limit=500", crashApp, user, peer, after), nil, &res, http.StatusOK)
		all = append(all, res.Messages...)
		if !res.More {
			return all
		}
		if res.NextAfter <= after {
			t.Fatalf("history of %s–%s: next_after %d does not move past %d", user, peer, res.NextAfter, after)
		}
		after = res.NextAfter
	}
}

func crashHead(s []string, n int) []string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

func crashTail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
