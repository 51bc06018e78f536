package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// proc is a server process started by the bench.
type proc struct {
	cmd  *exec.Cmd
	done chan error
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// stop ends the process we started, by PID, and waits for it.
func (p *proc) stop() error {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		return err
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		return <-p.done
	}
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func waitAccept(ctx context.Context, addr string) error {
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s did not accept: %w", addr, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Mosquitto is a Mosquitto broker (the Debian package) on a loopback port,
// with anonymous access and queues large enough for the offline scenario.
type Mosquitto struct {
	p    *proc
	addr string
}

// StartMosquitto starts mosquitto with a configuration written to dir.
func StartMosquitto(ctx context.Context, dir string) (*Mosquitto, error) {
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/mosquitto"); serr == nil {
			bin = "/usr/sbin/mosquitto"
		} else {
			return nil, errors.New("mosquitto not installed (Debian package mosquitto)")
		}
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	conf := filepath.Join(dir, "mosquitto.conf")
	body := fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\nmax_inflight_messages 0\npersistence false\nlog_dest none\n", port)
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "-c", conf)
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &proc{cmd: cmd, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	m := &Mosquitto{p: p, addr: "127.0.0.1:" + strconv.Itoa(port)}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := waitAccept(wctx, m.addr); err != nil {
		_ = p.stop()
		return nil, err
	}
	return m, nil
}

func (m *Mosquitto) Name() string { return "mosquitto" }
func (m *Mosquitto) Addr() string { return m.addr }
func (m *Mosquitto) PID() int     { return m.p.pid() }
func (m *Mosquitto) Close() error { return m.p.stop() }

func (m *Mosquitto) Pair(_ context.Context, i int) (pub, sub Endpoint, topic, filter string, err error) {
	t := "bench/pair/" + strconv.Itoa(i)
	return Endpoint{ClientID: "mp" + strconv.Itoa(i)}, Endpoint{ClientID: "ms" + strconv.Itoa(i)}, t, t, nil
}

func (m *Mosquitto) Group(_ context.Context, n int) (Endpoint, []Endpoint, string, []string, error) {
	members := make([]Endpoint, n)
	filters := make([]string, n)
	for i := range members {
		members[i] = Endpoint{ClientID: "mg" + strconv.Itoa(i)}
		filters[i] = "bench/group"
	}
	return Endpoint{ClientID: "mgsender"}, members, "bench/group", filters, nil
}

func (m *Mosquitto) Encode(_ string, seq int, sentNs int64, size int) []byte {
	return rawEncode(seq, sentNs, size)
}
func (m *Mosquitto) Decode(p []byte) (int64, bool) { return rawDecode(p) }

// Offline implements the offline-backlog scenario for a plain broker: a
// persistent session subscribes and leaves, n messages are queued for it,
// and the timing starts when it reconnects.
func (m *Mosquitto) Offline() OfflineTarget { return plainOffline{m} }

// Warbler is a warbler server process started from a binary.
type Warbler struct {
	p        *proc
	addrs    map[string]string
	dataDir  string
	adminKey string
	api      *apiClient
	app      string
	prefix   string // user ID prefix of this run
}

// StartWarbler runs "bin serve" with its data in dir, on loopback ports.
//
// The per-user send quota (20 msg/s by default, a limit for people, not for
// load generators) is turned off and the group size limit (1000) raised
// with a configuration file; everything else runs with the defaults,
// durability included.
//
// A non-empty conf names a configuration file to use instead; it should
// turn the quota off too.
func StartWarbler(ctx context.Context, bin, dir, conf string) (*Warbler, error) {
	if conf == "" {
		conf = filepath.Join(dir, "warbler.yaml")
		if err := os.WriteFile(conf, []byte("chat:\n  send_rate: -1\n  max_group_size: 100000\n"), 0o600); err != nil {
			return nil, err
		}
	}
	cmd := exec.Command(bin, "serve", "--config", conf, "--data", filepath.Join(dir, "data"), "--mqtt", "127.0.0.1:0",
		"--ws", "", "--http", "127.0.0.1:0", "--log-format", "json")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &proc{cmd: cmd, done: make(chan error, 1)}
	ready := make(chan map[string]string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var rec map[string]any
			if json.Unmarshal(sc.Bytes(), &rec) == nil && rec["msg"] == "warbler listening" {
				a := map[string]string{}
				for k, v := range rec {
					if s, ok := v.(string); ok {
						a[k] = s
					}
				}
				ready <- a
			}
		}
	}()
	go func() { p.done <- cmd.Wait() }()
	w := &Warbler{p: p, dataDir: filepath.Join(dir, "data"), app: "demo", prefix: "b" + strconv.FormatInt(time.Now().UnixNano()%1e6, 36)}
	select {
	case w.addrs = <-ready:
	case err := <-p.done:
		return nil, fmt.Errorf("warbler exited: %v", err)
	case <-time.After(60 * time.Second):
		_ = p.stop()
		return nil, errors.New("warbler did not start")
	}
	key, err := os.ReadFile(filepath.Join(w.dataDir, "admin.key"))
	if err != nil {
		_ = p.stop()
		return nil, err
	}
	w.adminKey = strings.TrimSpace(string(key))
	w.api = &apiClient{base: "http://" + w.addrs["http"], key: w.adminKey}
	return w, nil
}

func (w *Warbler) Name() string { return "warbler" }

// HTTPAddr is the server's HTTP address.
func (w *Warbler) HTTPAddr() string { return w.addrs["http"] }
func (w *Warbler) Addr() string     { return w.addrs["mqtt"] }
func (w *Warbler) PID() int         { return w.p.pid() }
func (w *Warbler) Close() error     { return w.p.stop() }
