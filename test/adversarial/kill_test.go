package adversarial

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/warblerim/warbler/internal/bench"
	"github.com/warblerim/warbler/internal/mqtttest"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// warblerBinary builds cmd/warbler once per test run.
func warblerBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "warbler-adversarial-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "warbler")
		out, err := exec.Command("go", "build", "-o", binPath, "github.com/warblerim/warbler/cmd/warbler").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

type mqttCreds struct {
	ClientID string `json:"client_id"`
	Username string `json:"username"`
	Password string `json:"password"`
}

// userCreds creates a demo user over the HTTP API of a server process and
// returns MQTT credentials for one of its devices.
func userCreds(t *testing.T, w *bench.Warbler, key, user, device string) mqttCreds {
	t.Helper()
	call := func(path string, in any, out any) {
		b, _ := json.Marshal(in)
		req, _ := http.NewRequest("POST", "http://"+w.HTTPAddr()+path, bytes.NewReader(b))
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode >= 300 && resp.StatusCode != 409 {
			t.Fatalf("POST %s: %d %s", path, resp.StatusCode, body)
		}
		if out != nil {
			_ = json.Unmarshal(body, out)
		}
	}
	call("/v1/apps/demo/users", map[string]any{"id": user}, nil)
	var c mqttCreds
	call("/v1/apps/demo/tokens", map[string]any{"user": user, "device": device, "ttl": 3600}, &c)
	return c
}

// Case 19: kill -9 during a QoS 1 stream of chat sends, several times.
// Bookkeeping as in Jepsen's queue checker: every send that got a PUBACK
// 0x00 (acked) must be in the recipient's synced log after the restarts
// (lost = acked − delivered = ∅), nothing appears that was never sent
// (unexpected = ∅), and no message appears twice, although a send in
// doubt at a kill is retried with the same cmid after the restart.
func TestCase19KillDuringQoS1Stream(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and kills server processes")
	}
	bin := warblerBinary(t)
	dir := t.TempDir()
	ctx := context.Background()
	const perCycle = 150
	cycles := 3
	if v := os.Getenv("WARBLER_ADVERSARIAL_KILLS"); v != "" { // the long version
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("WARBLER_ADVERSARIAL_KILLS=%q", v)
		}
		cycles = n
	}

	var acked, sent []string
	inDoubt := map[string]bool{}
	seq := 0
	for cycle := range cycles + 1 {
		w, err := bench.StartWarbler(ctx, bin, dir, "")
		if err != nil {
			t.Fatal(err)
		}
		keyb, err := os.ReadFile(filepath.Join(dir, "data", "admin.key"))
		if err != nil {
			t.Fatal(err)
		}
		key := strings.TrimSpace(string(keyb))
		if cycle == cycles { // the last start only checks
			checkLog(t, w, key, acked, sent)
			_ = w.Close()
			return
		}
		ac := userCreds(t, w, key, "alice", "phone")
		userCreds(t, w, key, "bob", "phone")
		conn := mqtttest.DialTCP(t, w.Addr())
		alice, _, err := connectConn(t, conn, ac.ClientID, ac.Username, ac.Password)
		if err != nil {
			t.Fatal(err)
		}
		// First retry the sends left in doubt by the last kill, with the
		// same cmid: the server must not store them twice.
		var retry []string
		for c := range inDoubt {
			retry = append(retry, c)
		}
		for _, c := range retry {
			if code, err := alice.Publish(t, "w/demo/up/alice/phone", 1, envelope(c)); err == nil && code == 0 {
				acked = append(acked, c)
				delete(inDoubt, c)
			}
		}
		// Then stream with 8 sends in flight, and kill the server part way.
		var mu sync.Mutex
		var wg sync.WaitGroup
		next := make(chan string)
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for c := range next {
					pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
					resp, err := alice.Client.Publish(pctx, &paho.Publish{Topic: "w/demo/up/alice/phone", QoS: 1, Payload: envelope(c)})
					cancel()
					mu.Lock()
					if err == nil && resp.ReasonCode == 0 {
						acked = append(acked, c)
					} else {
						inDoubt[c] = true
					}
					mu.Unlock()
				}
			}()
		}
		killAt := perCycle / 2
		for i := range perCycle {
			seq++
			c := fmt.Sprintf("c%d-%d", cycle, seq)
			mu.Lock()
			sent = append(sent, c)
			mu.Unlock()
			if i == killAt {
				if err := syscall.Kill(w.PID(), syscall.SIGKILL); err != nil {
					t.Fatal(err)
				}
			}
			next <- c
		}
		close(next)
		wg.Wait()
		_ = w.Close() // reaps the killed process
		t.Logf("cycle %d: %d acked so far, %d in doubt", cycle, len(acked), len(inDoubt))
	}
}

func envelope(cmid string) []byte {
	return []byte(fmt.Sprintf(`{"to":"bob","cmid":%q,"type":"text","body":{"c":%q}}`, cmid, cmid))
}

// checkLog syncs bob's log and checks it against the bookkeeping.
func checkLog(t *testing.T, w *bench.Warbler, key string, acked, sent []string) {
	t.Helper()
	bc := userCreds(t, w, key, "bob", "reader")
	bob, _, err := connectConn(t, mqtttest.DialTCP(t, w.Addr()), bc.ClientID, bc.Username, bc.Password)
	if err != nil {
		t.Fatal(err)
	}
	bob.Subscribe(t, "w/demo/d/bob/reader")
	seen := map[string]int{}
	cursors := json.RawMessage("null")
	for page := 0; ; page++ {
		req := fmt.Sprintf(`{"op":"sync","limit":500,"rid":"s%d","cursors":%s}`, page, cursors)
		if _, err := bob.Publish(t, "w/demo/up/bob/reader", 1, []byte(req)); err != nil {
			t.Fatal(err)
		}
		var reply struct {
			RID    string `json:"rid"`
			Result struct {
				Messages []struct {
					CMID string `json:"cmid"`
					Type string `json:"type"`
				} `json:"messages"`
				Cursors json.RawMessage `json:"cursors"`
				More    bool            `json:"more"`
			} `json:"result"`
		}
		for reply.RID != fmt.Sprintf("s%d", page) {
			reply.RID = ""
			_ = json.Unmarshal(bob.Expect(t).Payload, &reply)
		}
		for _, m := range reply.Result.Messages {
			if m.Type == "text" {
				seen[m.CMID]++
			}
		}
		if !reply.Result.More {
			break
		}
		cursors = reply.Result.Cursors
	}
	wasSent := map[string]bool{}
	for _, c := range sent {
		wasSent[c] = true
	}
	var lost, unexpected, dup []string
	for _, c := range acked {
		if seen[c] == 0 {
			lost = append(lost, c)
		}
	}
	for c, n := range seen {
		if !wasSent[c] {
			unexpected = append(unexpected, c)
		}
		if n > 1 {
			dup = append(dup, c)
		}
	}
	t.Logf("sent %d, acked %d, in the log %d (acked or in doubt)", len(sent), len(acked), len(seen))
	if len(lost) > 0 || len(unexpected) > 0 || len(dup) > 0 {
		t.Fatalf("lost %v, unexpected %v, duplicated %v", lost, unexpected, dup)
	}
	if len(acked) == 0 {
		t.Fatal("nothing was acked: the test did not test anything")
	}
}
