package bridge_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/warblerim/warbler/bridge"
	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage"
	"github.com/warblerim/warbler/storage/badgerstore"
)

const app = "acme"

var masterKey = bytes.Repeat([]byte{7}, 32)

// directory is the caller's device registry: devices per user, plus a
// generator for users not listed (for large tests).
type directory struct {
	mu     sync.Mutex
	devs   map[string][]bridge.Device
	gen    func(user string) []bridge.Device
	pruned []string // user/device/token
}

func (d *directory) Devices(_ context.Context, app, user string) ([]bridge.Device, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if v, ok := d.devs[user]; ok {
		return append([]bridge.Device(nil), v...), nil
	}
	if d.gen != nil {
		return d.gen(user), nil
	}
	return nil, nil
}

func (d *directory) PruneToken(_ context.Context, app, user, device, token string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.pruned = append(d.pruned, user+"/"+device+"/"+token)
	for i, dv := range d.devs[user] {
		if dv.ID == device && dv.Token == token {
			d.devs[user][i].Token = ""
		}
	}
	return nil
}

func (d *directory) prunedList() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.pruned...)
}

type presence struct {
	mu     sync.Mutex
	online map[string]bool
}

func (p *presence) Online(app, user, device string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.online[user+"/"+device]
}

func (p *presence) set(user, device string, on bool) {
	p.mu.Lock()
	p.online[user+"/"+device] = on
	p.mu.Unlock()
}

type positions struct {
	mu        sync.Mutex
	read      map[string]uint64
	delivered map[string]uint64
	unread    map[string]int
}

func (p *positions) ReadSeq(_ context.Context, app, user, conv string) (uint64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.read[user+"/"+conv], nil
}

func (p *positions) DeliveredSeq(_ context.Context, app, user, device, conv string) (uint64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.delivered[user+"/"+device+"/"+conv], nil
}

func (p *positions) Unread(_ context.Context, app, user string) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.unread[user], nil
}

func (p *positions) markRead(user, conv string, seq uint64) {
	p.mu.Lock()
	p.read[user+"/"+conv] = seq
	p.mu.Unlock()
}

// ledger follows the records' states through Options.OnFinish.
type ledger struct {
	mu      sync.Mutex
	state   map[string]storage.PushRecord
	changed chan struct{}
}

func newLedger() *ledger {
	return &ledger{state: map[string]storage.PushRecord{}, changed: make(chan struct{}, 1)}
}

func (l *ledger) onFinish(r storage.PushRecord) {
	l.mu.Lock()
	l.state[r.ID] = r
	l.mu.Unlock()
	select {
	case l.changed <- struct{}{}:
	default:
	}
}

// wait blocks until cond holds over the records, or fails after d.
func (l *ledger) wait(t testing.TB, d time.Duration, what string, cond func(map[string]storage.PushRecord) bool) {
	t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		l.mu.Lock()
		ok := cond(l.state)
		l.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-l.changed:
		case <-deadline.C:
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
	}
}

// waitProgress blocks until cond holds over the records, or fails when the
// progress cond reports (a count of finished records, say) has not grown for
// stall: a long, slow drain passes, a stuck one fails.
func (l *ledger) waitProgress(t testing.TB, stall time.Duration, what string, cond func(map[string]storage.PushRecord) (int, bool)) {
	t.Helper()
	timer := time.NewTimer(stall)
	defer timer.Stop()
	last := -1
	for {
		l.mu.Lock()
		n, ok := cond(l.state)
		l.mu.Unlock()
		if ok {
			return
		}
		if n > last {
			last = n
			timer.Reset(stall)
		}
		select {
		case <-l.changed:
		case <-timer.C:
			t.Fatalf("waiting for %s: no progress for %v (at %d)", what, stall, last)
		}
	}
}

// get returns a record from the store.
func (e *env) get(id string) storage.PushRecord {
	e.t.Helper()
	r, err := e.store.GetPush(context.Background(), app, id)
	if err != nil {
		e.t.Fatalf("record %s: %v", id, err)
	}
	return r
}

// waitTerminal waits until every id is terminal in store (a record
// replaced by coalescing becomes terminal without a send, so the store,
// not OnFinish, is the judge; OnFinish only says when to look again).
func (l *ledger) waitTerminal(t testing.TB, store storage.PushStore, d time.Duration, ids ...string) {
	t.Helper()
	l.wait(t, d, fmt.Sprintf("%d records to finish", len(ids)), func(map[string]storage.PushRecord) bool {
		for _, id := range ids {
			if r, err := store.GetPush(context.Background(), app, id); err != nil || !r.Terminal() {
				return false
			}
		}
		return true
	})
}

type env struct {
	t     testing.TB
	dir   string
	db    *badgerstore.DB
	store *badgerstore.PushStore
	b     *bridge.Bridge
	apns  *apnsServer
	fcm   *fcmServer
	devs  *directory
	pres  *presence
	pos   *positions
	led   *ledger
	opts  bridge.Options
}

// newEnv starts a bridge on a fresh Badger store with credentials for both
// local providers, and user "bob" with one iOS and one Android device.
func newEnv(t testing.TB, tweak func(*bridge.Options)) *env {
	t.Helper()
	e := &env{t: t, dir: t.TempDir(), apns: newAPNsServer(t), fcm: newFCMServer(t),
		devs: &directory{devs: map[string][]bridge.Device{}},
		pres: &presence{online: map[string]bool{}},
		pos:  &positions{read: map[string]uint64{}, delivered: map[string]uint64{}, unread: map[string]int{}},
		led:  newLedger()}
	e.devs.devs["bob"] = []bridge.Device{
		{ID: "iphone", Platform: "ios", Token: "aaaa0001", Topic: "com.acme.chat", TokenAt: time.Now().Add(-time.Hour)},
		{ID: "pixel", Platform: "android", Token: "fcm-token-1"},
	}
	e.opts = bridge.Options{
		MasterKey: masterKey, Directory: e.devs, Presence: e.pres, Positions: e.pos,
		Retry:       bridge.Retry{Base: 20 * time.Millisecond, Max: 100 * time.Millisecond, Attempts: 5},
		SendTimeout: 5 * time.Second, OnFinish: e.led.onFinish,
		Defaults: storage.PushSettings{CoalesceMillis: -1},
	}
	if tweak != nil {
		tweak(&e.opts)
	}
	e.open()
	ctx := context.Background()
	if _, err := e.b.SetCredentials(ctx, app, e.apnsCreds()); err != nil {
		t.Fatal(err)
	}
	if _, err := e.b.SetCredentials(ctx, app, e.fcmCreds()); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *env) apnsCreds() bridge.Credentials {
	return bridge.Credentials{APNs: &bridge.APNsCredentials{AuthKey: e.apns.keyPEM, KeyID: e.apns.keyID, TeamID: e.apns.teamID,
		Topic: "com.acme.default", Endpoint: e.apns.srv.URL, RootCAs: e.apns.rootPEM()}}
}

func (e *env) fcmCreds() bridge.Credentials {
	return bridge.Credentials{FCM: &bridge.FCMCredentials{ServiceAccount: e.fcm.serviceAccount(),
		Endpoint: e.fcm.srv.URL + "/v1", RootCAs: e.fcm.rootPEM()}}
}

// open opens the store and starts a bridge on it.
func (e *env) open() {
	e.t.Helper()
	e.openStore()
	e.startBridge()
}

func (e *env) openStore() {
	e.t.Helper()
	db, err := badgerstore.Open(e.dir, badgerstore.Options{})
	if err != nil {
		e.t.Fatal(err)
	}
	e.db = db
	e.store = badgerstore.NewPushStore(db, badgerstore.PushOptions{})
}

func (e *env) startBridge() {
	e.t.Helper()
	o := e.opts
	o.Store = e.store
	b, err := bridge.New(o)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		e.t.Fatal(err)
	}
	e.b = b
	e.t.Cleanup(e.close)
}

func (e *env) close() {
	if e.b != nil {
		e.b.Close()
		e.b = nil
	}
	if e.db != nil {
		e.db.Close()
		e.db = nil
	}
}

var seq uint64

// send reports a stored message from alice to recipients and returns the
// IDs of the records it enqueued (from the ledger).
func (e *env) send(conv, text string, recipients []string, opts ...bridge.Option) (protocol.Message, []string) {
	e.t.Helper()
	seq++
	body, _ := json.Marshal(map[string]string{"text": text})
	msg := protocol.Message{Kind: protocol.KindMsg, ID: fmt.Sprintf("m%d", seq), Conv: conv, Seq: seq, TS: time.Now().UnixMilli(),
		From: protocol.Sender{User: "alice", Device: "a1"}, Type: "text", Body: body}
	before := map[string]bool{}
	recs, _ := e.b.Ledger(context.Background(), app, "", "", 1000)
	for _, r := range recs {
		before[r.ID] = true
	}
	n, err := e.b.MessageStored(context.Background(), app, msg, recipients, opts...)
	if err != nil {
		e.t.Fatal(err)
	}
	recs, _ = e.b.Ledger(context.Background(), app, "", "", 1000)
	var ids []string
	for _, r := range recs {
		if !before[r.ID] && r.MsgID == msg.ID {
			ids = append(ids, r.ID)
		}
	}
	if len(ids) != n {
		e.t.Fatalf("MessageStored enqueued %d, ledger shows %d new", n, len(ids))
	}
	return msg, ids
}

// recOf returns the ledger record of the given provider among ids.
func (e *env) recOf(ids []string, provider string) storage.PushRecord {
	e.t.Helper()
	for _, id := range ids {
		r, err := e.b.LedgerEntry(context.Background(), app, id)
		if err != nil {
			e.t.Fatal(err)
		}
		if r.Provider == provider {
			return r
		}
	}
	e.t.Fatalf("no %s record among %v", provider, ids)
	return storage.PushRecord{}
}
