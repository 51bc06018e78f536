package adversarial

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/warblerim/warbler/internal/bench"
	"github.com/warblerim/warbler/internal/mqtttest"
)

// Case 19 for webhooks: kill -9 right after the last of a stream of sends
// is acked, while their message.created events wait in the queue (the
// receiver is down), are being sent, or have not left the in-memory
// hand-off yet. After the restart, with the receiver back, the event of
// every acked message is delivered: the queue and its in-flight deliveries
// survive the crash, and the start-up catch-up queues the events of
// messages that reached the log but not the queue (at least once).
func TestCase19WebhooksSurviveKill(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and kills server processes")
	}
	bin := warblerBinary(t)
	dir := t.TempDir()
	ctx := context.Background()
	conf := filepath.Join(dir, "warbler.yaml")
	if err := os.WriteFile(conf, []byte("chat:\n  send_rate: -1\nwebhooks:\n  allow_private: true\n  retry_base: 20ms\n  retry_max: 100ms\n  max_attempts: 100000\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	var up atomic.Bool
	var mu sync.Mutex
	tried, delivered := map[string]bool{}, map[string]bool{} // by message cmid
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var ev struct {
			Type string
			Data struct{ Message struct{ CMID string } }
		}
		b, _ := io.ReadAll(r.Body)
		_ = json.Unmarshal(b, &ev)
		mu.Lock()
		defer mu.Unlock()
		if ev.Type != "message.created" {
			w.WriteHeader(http.StatusOK)
			return
		}
		tried[ev.Data.Message.CMID] = true
		if !up.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		delivered[ev.Data.Message.CMID] = true
	}))
	defer recv.Close()

	w, err := bench.StartWarbler(ctx, bin, dir, conf)
	if err != nil {
		t.Fatal(err)
	}
	keyb, err := os.ReadFile(filepath.Join(dir, "data", "admin.key"))
	if err != nil {
		t.Fatal(err)
	}
	key := string(bytes.TrimSpace(keyb))
	body, _ := json.Marshal(map[string]any{"url": recv.URL, "events": []string{"message.created"}})
	req, _ := http.NewRequest("POST", "http://"+w.HTTPAddr()+"/v1/apps/demo/webhooks", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("create webhook: %d", resp.StatusCode)
	}

	ac := userCreds(t, w, key, "alice", "phone")
	userCreds(t, w, key, "bob", "phone")
	alice, _, err := connectConn(t, mqtttest.DialTCP(t, w.Addr()), ac.ClientID, ac.Username, ac.Password)
	if err != nil {
		t.Fatal(err)
	}
	const n = 200
	var acked []string
	for i := range n {
		c := fmt.Sprintf("m%d", i)
		if code, err := alice.Publish(t, "w/demo/up/alice/phone", 1, envelope(c)); err == nil && code == 0 {
			acked = append(acked, c)
		}
	}
	if len(acked) != n {
		t.Fatalf("%d of %d sends acked", len(acked), n)
	}
	// Killed as soon as the last send is acked: events are queued, in
	// flight, or still in the in-memory hand-off (the catch-up at the next
	// start finds those in the log).
	mu.Lock()
	t.Logf("at the kill: %d of %d events tried", len(tried), n)
	mu.Unlock()
	if err := syscall.Kill(w.PID(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = w.Close() // reaps the killed process

	up.Store(true)
	w, err = bench.StartWarbler(ctx, bin, dir, conf)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	waitFor(t, "every event delivered after the restart", 120*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(delivered) == n
	})
	mu.Lock()
	defer mu.Unlock()
	for _, c := range acked {
		if !delivered[c] {
			t.Fatalf("the event of acked message %s was lost", c)
		}
	}
}
