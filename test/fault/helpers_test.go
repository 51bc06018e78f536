package fault

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/warblerim/warbler/internal/mqtttest"
)

// bin is the server binary built once by TestMain.
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "warbler-fault-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = filepath.Join(dir, "warbler")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/warblerim/warbler/cmd/warbler").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "go build: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// server is one warbler process started by a test.
type server struct {
	cmd   *exec.Cmd
	data  string
	addrs map[string]string
	key   string // admin API key
	mu    sync.Mutex
	logs  []string
	done  chan struct{} // closed when the process has exited
	err   error         // the exit status, once done is closed
}

// config turns the per-user send quota off (these tests send faster than a
// person) and the debug endpoints on (the soak test has the server collect
// garbage and free memory through them before each sample; they answer
// loopback only), and leaves everything else, durability included, at the
// defaults.
const config = "chat:\n  send_rate: -1\nhttp:\n  pprof: true\n"

// launch starts "warbler serve" on loopback ports with its data in data
// and returns at once; the caller waits with ready or exited.
func launch(t testing.TB, data string) *server {
	t.Helper()
	conf := filepath.Join(t.TempDir(), "warbler.yaml")
	if err := os.WriteFile(conf, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "serve", "--config", conf, "--data", data, "--mqtt", "127.0.0.1:0",
		"--ws", "", "--http", "127.0.0.1:0", "--log-format", "json")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &server{cmd: cmd, data: data, done: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			s.mu.Lock()
			s.logs = append(s.logs, sc.Text())
			s.mu.Unlock()
		}
		s.err = cmd.Wait()
		close(s.done)
	}()
	t.Cleanup(func() { s.kill() })
	return s
}

// start launches a server and waits until it listens.
func start(t testing.TB, data string) *server {
	t.Helper()
	s := launch(t, data)
	if !s.wait(t) {
		t.Fatalf("warbler exited before listening: %v\n%s", s.err, s.logText())
	}
	return s
}

// wait waits until the server listens (true, with its addresses and admin
// key read) or exits (false), for at most a minute.
func (s *server) wait(t testing.TB) bool {
	t.Helper()
	deadline := time.After(60 * time.Second)
	for {
		if rec := s.find("warbler listening"); rec != nil {
			s.addrs = map[string]string{}
			for k, v := range rec {
				if str, ok := v.(string); ok {
					s.addrs[k] = str
				}
			}
			break
		}
		select {
		case <-s.done:
			if s.find("warbler listening") == nil {
				return false
			}
		case <-deadline:
			t.Fatalf("warbler neither listened nor exited within 60s\n%s", s.logText())
		case <-time.After(10 * time.Millisecond): // poll the log lines gathered so far
		}
	}
	key, err := os.ReadFile(filepath.Join(s.data, "admin.key"))
	if err != nil {
		t.Fatal(err)
	}
	s.key = strings.TrimSpace(string(key))
	return true
}

// find returns the first JSON log record whose msg is msg, or nil.
func (s *server) find(msg string) map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range s.logs {
		var rec map[string]any
		if json.Unmarshal([]byte(l), &rec) == nil && rec["msg"] == msg {
			return rec
		}
	}
	return nil
}

func (s *server) logText() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.logs, "\n")
}

// running reports whether the process has not exited.
func (s *server) running() bool {
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}

// kill ends the process group this test started, if it still runs.
func (s *server) kill() {
	if s.running() {
		_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-s.done
	}
}

// stop asks the server to stop and waits for a clean exit.
func (s *server) stop(t testing.TB) {
	t.Helper()
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-s.done:
		if s.err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", s.err, s.logText())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("still running 30s after SIGTERM\n%s", s.logText())
	}
}

// api calls the admin HTTP API and decodes a JSON answer into out.
func (s *server) api(t testing.TB, method, path string, in, out any) int {
	t.Helper()
	b, _ := json.Marshal(in)
	req, _ := http.NewRequest(method, "http://"+s.addrs["http"]+path, bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+s.key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if out != nil {
		_ = json.Unmarshal(body, out)
	}
	return resp.StatusCode
}

// creds are a device's MQTT credentials.
type creds struct {
	ClientID string `json:"client_id"`
	Username string `json:"username"`
	Password string `json:"password"`
}

// device creates the demo user (if new) and a token for one of its devices.
func (s *server) device(t testing.TB, user, device string) creds {
	t.Helper()
	if code := s.api(t, "POST", "/v1/apps/demo/users", map[string]any{"id": user}, nil); code >= 300 && code != 409 {
		t.Fatalf("create user %s: HTTP %d", user, code)
	}
	var c creds
	if code := s.api(t, "POST", "/v1/apps/demo/tokens", map[string]any{"user": user, "device": device, "ttl": 3600}, &c); code >= 300 {
		t.Fatalf("token for %s/%s: HTTP %d", user, device, code)
	}
	return c
}

// connect connects a device with MQTT 5 (paho).
func (s *server) connect(t testing.TB, user, device string) *mqtttest.Client {
	t.Helper()
	c := s.device(t, user, device)
	return mqtttest.MustConnect(t, mqtttest.DialTCP(t, s.addrs["mqtt"]), c.ClientID, c.Username, c.Password)
}

// envelope is a chat text send to user "to" with client message ID cmid.
func envelope(to, cmid string) []byte {
	return []byte(fmt.Sprintf(`{"to":%q,"cmid":%q,"type":"text","body":{"c":%q}}`, to, cmid, cmid))
}

// send publishes a chat send at QoS 1 and returns the PUBACK reason code,
// or an error if no PUBACK came within the timeout.
func send(cl *paho.Client, from, device, to, cmid string, within time.Duration) (byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	resp, err := cl.Publish(ctx, &paho.Publish{Topic: "w/demo/up/" + from + "/" + device, QoS: 1, Payload: envelope(to, cmid)})
	if err != nil {
		return 0, err
	}
	return resp.ReasonCode, nil
}

// history syncs a user's whole log from a fresh device and returns how many
// times each text message's cmid appears in it.
func (s *server) history(t testing.TB, user string) map[string]int {
	t.Helper()
	dev := fmt.Sprintf("reader%d", time.Now().UnixNano())
	cl := s.connect(t, user, dev)
	cl.Subscribe(t, "w/demo/d/"+user+"/"+dev)
	seen := map[string]int{}
	cursors := json.RawMessage("null")
	for page := 0; ; page++ {
		rid := fmt.Sprintf("s%d", page)
		req := fmt.Sprintf(`{"op":"sync","limit":500,"rid":%q,"cursors":%s}`, rid, cursors)
		if code, err := cl.Publish(t, "w/demo/up/"+user+"/"+dev, 1, []byte(req)); err != nil || code >= 0x80 {
			t.Fatalf("sync request: reason 0x%x, %v", code, err)
		}
		var reply struct {
			RID    string `json:"rid"`
			Error  any    `json:"error"`
			Result struct {
				Messages []struct {
					CMID string `json:"cmid"`
					Type string `json:"type"`
				} `json:"messages"`
				Cursors json.RawMessage `json:"cursors"`
				More    bool            `json:"more"`
			} `json:"result"`
		}
		for reply.RID != rid {
			reply.RID = ""
			_ = json.Unmarshal(cl.Expect(t).Payload, &reply)
		}
		if reply.Error != nil {
			t.Fatalf("sync: %v", reply.Error)
		}
		for _, m := range reply.Result.Messages {
			if m.Type == "text" {
				seen[m.CMID]++
			}
		}
		if !reply.Result.More {
			return seen
		}
		cursors = reply.Result.Cursors
	}
}
