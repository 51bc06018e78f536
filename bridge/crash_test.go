package bridge_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/warblerim/warbler/bridge"
	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage"
	"github.com/warblerim/warbler/storage/badgerstore"
)

const (
	crashQueue       = 10000
	crashConcurrency = 32
	// crashStall is how long TestCrashRestart waits for the next
	// notification to be sent or finished before it calls the queue stuck.
	crashStall = time.Minute
)

// genDevices gives every user u one iPhone with token "t-"+u.
func genDevices(user string) []bridge.Device {
	return []bridge.Device{{ID: "phone", Platform: "ios", Token: "t-" + user, Topic: "com.acme.chat"}}
}

// TestCrashChild is the process that TestCrashRestart kills: it opens the
// store and sends until SIGKILL. It does nothing in a normal run.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv("WARBLER_PUSH_CRASH_DIR")
	if dir == "" {
		t.Skip("helper process of TestCrashRestart")
	}
	db, err := badgerstore.Open(dir, badgerstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := bridge.New(bridge.Options{Store: badgerstore.NewPushStore(db, badgerstore.PushOptions{}), MasterKey: masterKey,
		Directory: &directory{gen: genDevices}})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	fmt.Println("child: sending")
	select {} // until killed
}

// A queue of 10 000 survives a SIGKILL in the middle: after a restart
// every notification has reached the provider, and the only ones that
// reached it twice are ones the crash left in state "sent" (the
// at-least-once window, at most one per worker), resent with the same
// apns-id.
func TestCrashRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("sends 10 000 notifications")
	}
	e := newEnv(t, func(o *bridge.Options) { o.Directory = &directory{gen: genDevices} })
	ctx := context.Background()
	if _, err := e.b.PutSettings(ctx, storage.PushSettings{App: app, Concurrency: crashConcurrency, CoalesceMillis: -1}); err != nil {
		t.Fatal(err)
	}
	// Enqueue 10 000 with the queue stopped: close the bridge at once
	// (nothing is due yet, as the app's queue has not run), then enqueue
	// through a bridge that is not started.
	e.b.Close()
	stopped, err := bridge.New(bridge.Options{Store: e.store, MasterKey: masterKey, Directory: &directory{gen: genDevices}})
	if err != nil {
		t.Fatal(err)
	}
	users := make([]string, crashQueue)
	for i := range users {
		users[i] = fmt.Sprintf("u%05d", i)
	}
	before := len(e.apns.requests())
	if n, err := stopped.MessageStored(ctx, app, msgFor("g1", 1), users); err != nil || n != crashQueue {
		t.Fatalf("enqueued %d: %v", n, err)
	}
	stopped.Close()
	if len(e.apns.requests()) != before {
		t.Fatal("a bridge that was not started sent")
	}
	e.b = nil
	e.db.Close()
	e.db = nil

	// The child sends until it is killed, a third of the way in.
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.v")
	cmd.Env = append(os.Environ(), "WARBLER_PUSH_CRASH_DIR="+e.dir)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// The deadlines here and below bound the wait for the next step of
	// progress, not the whole run: on a busy machine with slow synced
	// writes the sends are slow, but a stall still fails.
	start := time.Now()
	stall := time.NewTimer(crashStall)
	defer stall.Stop()
	for got := 0; got < crashQueue/3; got++ {
		select {
		case <-e.apns.got:
			stall.Reset(crashStall)
		case <-stall.C:
			cmd.Process.Kill()
			t.Fatalf("the child sent only %d, then nothing for %v", got, crashStall)
		}
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	atKill := len(e.apns.requests())

	// Reopen: what did the crash leave unknown?
	e.openStore()
	doubt := map[string]bool{}
	unfinished := 0
	recs, err := e.store.ListPush(ctx, app, "", "", 2*crashQueue)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if r.State == storage.PushSent {
			doubt[r.ID] = true
		}
		if !r.Terminal() {
			unfinished++
		}
	}
	t.Logf("killed after %d requests in %v; %d records unfinished, %d of them in doubt (state sent)", atKill, time.Since(start).Round(time.Millisecond), unfinished, len(doubt))
	if len(doubt) > crashConcurrency {
		t.Fatalf("%d records in doubt, more than the %d workers", len(doubt), crashConcurrency)
	}

	// Restart and drain: every unfinished record reaches a final state
	// once, in this run.
	start = time.Now()
	e.startBridge()
	e.led.waitProgress(t, crashStall, "the queue to drain", func(m map[string]storage.PushRecord) (int, bool) {
		n := 0
		for _, r := range m {
			if r.Terminal() {
				n++
			}
		}
		return n, n >= unfinished
	})
	t.Logf("drained %d in %v", unfinished, time.Since(start).Round(time.Millisecond))
	recs, err = e.store.ListPush(ctx, app, "", "", 2*crashQueue)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != crashQueue {
		t.Fatalf("%d records, want %d", len(recs), crashQueue)
	}
	counts := e.apns.counts()
	dups := 0
	for _, r := range recs {
		if r.State != storage.PushAccepted {
			t.Fatalf("record %s: %s %s", r.ID, r.State, r.Reason)
		}
		switch n := counts[r.ID]; {
		case n == 0:
			t.Fatalf("notification %s lost", r.ID)
		case n > 1 && !doubt[r.ID]:
			t.Fatalf("notification %s sent %d times though its outcome was recorded", r.ID, n)
		case n > 2:
			t.Fatalf("notification %s sent %d times", r.ID, n)
		case n == 2:
			dups++
		}
	}
	if len(counts) != crashQueue {
		t.Fatalf("the provider saw %d distinct apns-ids, want %d", len(counts), crashQueue)
	}
	t.Logf("%d notifications, each at the provider; %d resent after the crash (same apns-id), all from the in-doubt set", crashQueue, dups)
}

// msgFor is a stored message from alice.
func msgFor(conv string, seq uint64) protocol.Message {
	return protocol.Message{Kind: protocol.KindMsg, ID: fmt.Sprintf("%s-%d", conv, seq), Conv: conv, Seq: seq, TS: time.Now().UnixMilli(),
		From: protocol.Sender{User: "alice", Device: "a1"}, Type: "text", Body: []byte(`{"text":"hello"}`)}
}
