package hooks_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/warblerim/warbler/chat"
	"github.com/warblerim/warbler/protocol"
)

// A subscriber that stops reading must not slow the sender: mochi drops what
// does not fit its queue, the hook counts it and sends a sync hint once the
// client reads again, and sync gives the client every message, in order.
func TestChatSlowSubscriberCatchesUpBySync(t *testing.T) {
	b := startBroker(t, func(mo *mqtt.Options, _ *chat.Options) {
		mo.Capabilities.MaximumClientWritesPending = 4
	})
	slow := dialV3(t, b.tcp, "sid", "old")
	ctx := context.Background()
	if _, err := b.svc.Create(ctx, chat.Sender{App: app, User: "sam", Device: "d"}, chat.CreateRequest{Conv: "flood", Kind: "group", Members: []string{"sid"}}); err != nil {
		t.Fatal(err)
	}
	// The slow client reads nothing while ~20 MB are sent at it.
	big := json.RawMessage(`"` + strings.Repeat("z", 60<<10) + `"`)
	const n = 320
	start := time.Now()
	for i := range n {
		t0 := time.Now()
		if _, err := b.svc.Send(ctx, chat.Sender{App: app, User: "sam", Device: "d"}, chat.SendRequest{Conv: "flood", CMID: fmt.Sprint(i), Type: "file", Body: big}); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(t0); d > 5*time.Second {
			t.Fatalf("send %d was held up %v by the slow subscriber", i, d)
		}
	}
	t.Logf("%d sends in %v, %d live deliveries dropped", n, time.Since(start), b.hook.Stats().Dropped)
	if b.hook.Stats().Dropped == 0 {
		t.Fatal("nothing was dropped: the test did not overload the subscriber")
	}
	// Reading again, it is told to sync ...
	slow.next(func(m map[string]any) bool { return m["kind"] == "sync" })
	if b.hook.Stats().Hints == 0 {
		t.Fatal("hint not counted")
	}
	// ... and sync returns all n+1 messages (the "created" event is 1) in order.
	up := protocol.Uplink(app, "sid", "old")
	var seqs []int
	var cursors json.RawMessage
	for page := 0; page < 500; page++ {
		req := fmt.Sprintf(`{"op":"sync","limit":50,"rid":"p%d"`, page)
		if cursors != nil {
			req += `,"cursors":` + string(cursors)
		}
		slow.publish(up, req+"}")
		rep := slow.next(func(m map[string]any) bool { return m["rid"] == fmt.Sprint("p", page) })
		res := rep["result"].(map[string]any)
		for _, m := range res["messages"].([]any) {
			seqs = append(seqs, int(m.(map[string]any)["seq"].(float64)))
		}
		cursors, _ = json.Marshal(res["cursors"])
		if res["more"] != true {
			break
		}
	}
	if len(seqs) != n+1 {
		t.Fatalf("sync returned %d messages, want %d", len(seqs), n+1)
	}
	for i, s := range seqs {
		if s != i+1 {
			t.Fatalf("sync position %d has seq %d", i, s)
		}
	}
}
