package broker

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/warblerim/warbler/identity"
	"github.com/warblerim/warbler/internal/mqtttest"
	"github.com/warblerim/warbler/internal/wsstream"
	"github.com/warblerim/warbler/protocol"
)

// testLogger sends server logs at warn and above to the test log.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// loopbackConfig is the default configuration with every listener on a free
// loopback port and the data in a temporary directory.
func loopbackConfig(t testing.TB) Config {
	cfg := Default()
	cfg.Data = t.TempDir()
	cfg.MQTT.Addr = "127.0.0.1:0"
	cfg.MQTT.WSAddr = "127.0.0.1:0"
	cfg.MQTT.TLSAddr = "127.0.0.1:0"
	cfg.MQTT.WSSAddr = "127.0.0.1:0"
	cfg.HTTP.Addr = "127.0.0.1:0"
	return cfg
}

// startServer runs a real server on loopback ports, with real identity:
// clients authenticate with tokens (see creds).
func startServer(t testing.TB, mod func(*Config)) *Server {
	t.Helper()
	cfg := loopbackConfig(t)
	if mod != nil {
		mod(&cfg)
	}
	s, err := New(cfg, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := s.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return s
}

func wsURL(addr string) string { return "ws://" + addr + "/mqtt" }

// creds returns MQTT credentials for a device of a user of the demo app,
// creating the user if needed: client ID, username, token.
func creds(t testing.TB, s *Server, user, device string) (string, string, string) {
	t.Helper()
	ctx := context.Background()
	if _, err := s.Identity().CreateUser(ctx, "demo", identity.UserSpec{ID: user}); err != nil && !errors.Is(err, identity.ErrExists) {
		t.Fatalf("create user %s: %v", user, err)
	}
	tok, err := s.Identity().IssueToken(ctx, "demo", user, device, time.Hour)
	if err != nil {
		t.Fatalf("token for %s/%s: %v", user, device, err)
	}
	return protocol.ClientID("demo", user, device), "demo:" + user, tok.Value
}

// connectAs connects a device of a demo user over conn.
func connectAs(t testing.TB, s *Server, conn net.Conn, user, device string) *mqtttest.Client {
	t.Helper()
	cid, u, p := creds(t, s, user, device)
	return mqtttest.MustConnect(t, conn, cid, u, p)
}

// iot is a topic in a demo user's IoT area, which the demo app's rule
// w/{app}/iot/%u/# lets every device of that user read and write.
func iot(user, rest string) string { return "w/demo/iot/" + user + "/" + rest }

// pair connects a subscriber and a publisher and checks that one message
// flows; it is the "other clients are unaffected" control.
type pair struct {
	sub, pub *mqtttest.Client
	topic    string
	n        int
}

func newPair(t *testing.T, s *Server) *pair {
	p := &pair{topic: iot("ctl", "control")}
	p.sub = connectAs(t, s, mqtttest.DialTCP(t, s.Addrs().MQTT), "ctl", "sub")
	if r := p.sub.Subscribe(t, p.topic); r[0] != 1 {
		t.Fatalf("control subscribe reason %d", r[0])
	}
	p.pub = connectAs(t, s, mqtttest.DialTCP(t, s.Addrs().MQTT), "ctl", "pub")
	p.check(t)
	return p
}

func (p *pair) check(t *testing.T) {
	t.Helper()
	p.n++
	want := fmt.Sprintf("control-%d", p.n)
	if _, err := p.pub.Publish(t, p.topic, 1, []byte(want)); err != nil {
		t.Fatalf("control publish: %v", err)
	}
	if got := string(p.sub.Expect(t).Payload); got != want {
		t.Fatalf("control got %q, want %q", got, want)
	}
}

func TestPubSubOverTCPAndWebSocket(t *testing.T) {
	s := startServer(t, nil)
	for _, tc := range []struct{ name, wsAddr string }{
		{"dedicated-ws-port", s.Addrs().WS},
		{"http-port-same-origin", s.Addrs().HTTP},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, _, err := mqtttest.DialWS(t, wsURL(tc.wsAddr), "")
			if err != nil {
				t.Fatal(err)
			}
			sub := connectAs(t, s, conn, "wsuser", "ws-"+tc.name)
			room1, room2 := iot("wsuser", "room/1"), iot("wsuser", "room/2")
			if r := sub.Subscribe(t, room1); r[0] != 1 {
				t.Fatalf("suback %v", r)
			}
			pub := connectAs(t, s, mqtttest.DialTCP(t, s.Addrs().MQTT), "wsuser", "tcp-"+tc.name)
			if code, err := pub.Publish(t, room1, 1, []byte("hello over ws")); err != nil || code != 0 {
				t.Fatalf("publish: code %d err %v", code, err)
			}
			if m := sub.Expect(t); string(m.Payload) != "hello over ws" || m.Topic != room1 {
				t.Fatalf("got %s %q", m.Topic, m.Payload)
			}
			// And back: the WebSocket client publishes, a TCP client receives.
			if r := pub.Subscribe(t, room2); r[0] != 1 {
				t.Fatalf("suback %v", r)
			}
			if _, err := sub.Publish(t, room2, 1, []byte("reply")); err != nil {
				t.Fatal(err)
			}
			if m := pub.Expect(t); string(m.Payload) != "reply" {
				t.Fatalf("got %q", m.Payload)
			}
		})
	}
}

func TestMosquittoClients(t *testing.T) {
	sub, pub := mqtttest.RequireTool(t, "mosquitto_sub"), mqtttest.RequireTool(t, "mosquitto_pub")
	s := startServer(t, nil)
	host, port, _ := net.SplitHostPort(s.Addrs().MQTT)
	for _, v := range []string{"mqttv311", "mqttv5"} {
		t.Run(v, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			topic := iot("mosq", "news/"+v)
			scid, suser, spass := creds(t, s, "mosq", "sub-"+v)
			pcid, puser, ppass := creds(t, s, "mosq", "pub-"+v)
			cmd := exec.CommandContext(ctx, sub, "-h", host, "-p", port, "-V", v, "-i", scid, "-u", suser, "-P", spass,
				"-t", topic, "-q", "1", "-C", "1", "-v")
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			lines := bufio.NewScanner(out)
			waitSubscribed(t, s, topic)
			msg := "from mosquitto_pub " + v
			if b, err := exec.CommandContext(ctx, pub, "-h", host, "-p", port, "-V", v, "-i", pcid, "-u", puser, "-P", ppass,
				"-t", topic, "-q", "1", "-m", msg).CombinedOutput(); err != nil {
				t.Fatalf("mosquitto_pub: %v: %s", err, b)
			}
			waitLine(t, lines, topic+" "+msg)
			if err := cmd.Wait(); err != nil {
				t.Fatalf("mosquitto_sub: %v", err)
			}
		})
	}
}

// waitSubscribed waits until the broker holds a subscription to filter.
func waitSubscribed(t *testing.T, s *Server, filter string) {
	t.Helper()
	deadline := time.Now().Add(mqtttest.Timeout)
	for len(s.MQTT().Topics.Subscribers(filter).Subscriptions) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no subscription to %s within %v", filter, mqtttest.Timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func waitLine(t *testing.T, sc *bufio.Scanner, substr string) {
	t.Helper()
	for sc.Scan() {
		if strings.Contains(sc.Text(), substr) {
			return
		}
	}
	t.Fatalf("output ended without a line containing %q (err %v)", substr, sc.Err())
}

// rawConnect opens a socket and completes an MQTT 5 CONNECT by hand, as a
// device of the demo user "raw".
func rawConnect(t testing.TB, s *Server, device string) net.Conn {
	t.Helper()
	c := mqtttest.DialTCP(t, s.Addrs().MQTT)
	cid, user, pass := creds(t, s, "raw", device)
	str := func(b []byte, v string) []byte { return append(append(b, byte(len(v)>>8), byte(len(v))), v...) }
	body := []byte{0, 4, 'M', 'Q', 'T', 'T', 5, 0xC2, 0, 60, 0} // username, password, clean start
	body = str(body, cid)
	body = str(body, user)
	body = str(body, pass)
	hdr := []byte{0x10}
	for n := len(body); ; {
		b := byte(n % 128)
		if n /= 128; n > 0 {
			hdr = append(hdr, b|0x80)
			continue
		}
		hdr = append(hdr, b)
		break
	}
	mustWrite(t, c, append(hdr, body...))
	_ = c.SetReadDeadline(time.Now().Add(mqtttest.Timeout))
	ack := make([]byte, 2)
	if _, err := io.ReadFull(c, ack); err != nil || ack[0] != 0x20 {
		t.Fatalf("no CONNACK: % x %v", ack, err)
	}
	rest := make([]byte, ack[1])
	if _, err := io.ReadFull(c, rest); err != nil || rest[1] != 0 {
		t.Fatalf("CONNACK refused: % x %v", rest, err)
	}
	return c
}

func mustWrite(t testing.TB, c net.Conn, b []byte) {
	t.Helper()
	if _, err := c.Write(b); err != nil {
		t.Fatalf("write: %v", err)
	}
}

// waitClosed reads until the server closes the socket and returns how long
// that took. Anything the server sends first (a DISCONNECT) is discarded.
func waitClosed(t *testing.T, c net.Conn, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	_ = c.SetReadDeadline(start.Add(within))
	_, err := io.Copy(io.Discard, c)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("socket still open after %v", within)
	}
	return time.Since(start)
}

func metricValue(t *testing.T, s *Server, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + s.Addrs().HTTP + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, name+" ") {
			var v float64
			fmt.Sscanf(strings.TrimPrefix(line, name+" "), "%g", &v)
			return v
		}
	}
	t.Fatalf("metric %s not found", name)
	return 0
}

func TestMalformedInputIsContained(t *testing.T) {
	s := startServer(t, func(c *Config) { c.MQTT.ConnectTimeout = Duration(500 * time.Millisecond) })
	ctl := newPair(t, s)
	addr := s.Addrs().MQTT

	cases := []struct {
		name    string
		connect bool // complete a CONNECT first
		send    []byte
	}{
		// security.md §0.1: SUBSCRIBE v5 whose only filter lacks its options byte.
		{"truncated v5 SUBSCRIBE", true, []byte{0x82, 0x08, 0x00, 0x01, 0x00, 0x00, 0x03, 'a', '/', 'b'}},
		{"268 MB length claim", false, []byte{0x10, 0xFF, 0xFF, 0xFF, 0x7F}},
		{"length claim after CONNECT", true, []byte{0x30, 0xFF, 0xFF, 0xFF, 0x7F}},
		{"five-byte remaining length", true, []byte{0x30, 0x80, 0x80, 0x80, 0x80, 0x01}},
		{"non-CONNECT first packet", false, []byte{0xC0, 0x00}},
		{"SUBSCRIBE first", false, []byte{0x82, 0x06, 0x00, 0x01, 0x00, 0x01, 'a', 0x00}},
		{"CONNACK from a client", true, []byte{0x20, 0x02, 0x00, 0x00}},
		{"garbage CONNECT", false, []byte{0x10, 0x04, 0xde, 0xad, 0xbe, 0xef}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := metricValue(t, s, "warbler_malformed_packets_total")
			var c net.Conn
			if tc.connect {
				c = rawConnect(t, s, fmt.Sprintf("raw-%d", i))
			} else {
				c = mqtttest.DialTCP(t, addr)
			}
			mustWrite(t, c, tc.send)
			waitClosed(t, c, 5*time.Second)
			if after := metricValue(t, s, "warbler_malformed_packets_total"); after <= before {
				t.Errorf("malformed counter did not move: %v -> %v", before, after)
			}
			ctl.check(t)
		})
	}

	t.Run("silent socket closed at connect deadline", func(t *testing.T) {
		c := mqtttest.DialTCP(t, addr)
		if took := waitClosed(t, c, 5*time.Second); took < 400*time.Millisecond {
			t.Fatalf("closed after %v, before the 500ms connect deadline", took)
		}
		ctl.check(t)
	})
	t.Run("slowloris CONNECT closed at deadline", func(t *testing.T) {
		c := mqtttest.DialTCP(t, addr)
		mustWrite(t, c, []byte{0x10, 0x20, 0x00}) // a CONNECT that never finishes
		waitClosed(t, c, 5*time.Second)
		ctl.check(t)
	})
}

func TestLengthClaimsDoNotAllocate(t *testing.T) {
	s := startServer(t, nil)
	ctl := newPair(t, s)
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	before := heap()
	const n = 64
	conns := make([]net.Conn, n)
	for i := range conns {
		conns[i] = mqtttest.DialTCP(t, s.Addrs().MQTT)
		mustWrite(t, conns[i], []byte{0x10, 0xFF, 0xFF, 0xFF, 0x7F})
	}
	for _, c := range conns {
		waitClosed(t, c, 5*time.Second)
	}
	after := heap()
	growth := int64(after) - int64(before)
	t.Logf("heap before %d KiB, after %d claims of 256 MiB: %d KiB (growth %d KiB)", before>>10, n, after>>10, growth>>10)
	// 64 claims of 256 MiB each would be 16 GiB if allocated; allow a few MiB
	// of noise for sockets and goroutines.
	if growth > 8<<20 {
		t.Fatalf("heap grew by %d KiB", growth>>10)
	}
	ctl.check(t)
}

func TestOversizedPublishDisconnects(t *testing.T) {
	s := startServer(t, func(c *Config) { c.MQTT.MaxPacketSize = 1024 })
	ctl := newPair(t, s)
	big := connectAs(t, s, mqtttest.DialTCP(t, s.Addrs().MQTT), "ctl", "big")
	_, _ = big.Publish(t, ctl.topic, 1, bytes.Repeat([]byte("x"), 2048))
	big.WaitDisconnected(t)
	select {
	case m := <-ctl.sub.Msgs:
		t.Fatalf("oversized message delivered: %d bytes", len(m.Payload))
	default:
	}
	ctl.check(t)
}

func TestWebSocketOrigin(t *testing.T) {
	s := startServer(t, func(c *Config) { c.MQTT.AllowedOrigins = []string{"https://app.example.com"} })
	httpAddr := s.Addrs().HTTP
	cases := []struct {
		name, addr, origin string
		ok                 bool
	}{
		{"no origin (not a browser)", httpAddr, "", true},
		{"same origin", httpAddr, "http://" + httpAddr, true},
		{"allowlisted", httpAddr, "https://app.example.com", true},
		{"foreign", httpAddr, "https://evil.example", false},
		{"foreign on ws port", s.Addrs().WS, "https://evil.example", false},
		{"look-alike host", httpAddr, "http://" + httpAddr + ".evil.example", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			conn, resp, err := mqtttest.DialWS(t, wsURL(tc.addr), tc.origin)
			if !tc.ok {
				if err == nil {
					t.Fatal("handshake accepted")
				}
				if resp == nil || resp.StatusCode != http.StatusForbidden {
					t.Fatalf("want 403, got %v", resp)
				}
				return
			}
			if err != nil {
				t.Fatalf("handshake: %v", err)
			}
			connectAs(t, s, conn, "origin", strings.NewReplacer(" ", "-", "(", "", ")", "").Replace(tc.name))
		})
	}
	t.Run("plain GET gets a JSON 400", func(t *testing.T) {
		resp, err := http.Get("http://" + httpAddr + "/mqtt")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body map[string]map[string]string
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || resp.StatusCode != 400 || body["error"]["code"] == "" {
			t.Fatalf("status %d body %v err %v", resp.StatusCode, body, err)
		}
	})
}

func TestWebSocketOversizedFrame(t *testing.T) {
	s := startServer(t, func(c *Config) { c.MQTT.MaxPacketSize = 1024 })
	conn, _, err := mqtttest.DialWS(t, wsURL(s.Addrs().WS), "")
	if err != nil {
		t.Fatal(err)
	}
	// A raw frame header claiming 1 MiB of binary payload (masked, as from a
	// client), with no payload: the server must refuse it from the header.
	ws := conn.(*wsstream.Conn)
	hdr := []byte{0x82, 0x80 | 127, 0, 0, 0, 0, 0, 0x10, 0, 0, 1, 2, 3, 4}
	if _, err := ws.Conn.Write(hdr); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = conn.Read(make([]byte, 16))
	if !strings.Contains(fmt.Sprint(err), "1009") {
		t.Fatalf("want close 1009 (message too big), got %v", err)
	}
}

func TestHealthReadyMetrics(t *testing.T) {
	s := startServer(t, nil)
	base := "http://" + s.Addrs().HTTP
	for _, path := range []string{"/healthz", "/readyz"} {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		var body map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
			t.Fatalf("%s: %d %v", path, resp.StatusCode, body)
		}
	}
	c := connectAs(t, s, mqtttest.DialTCP(t, s.Addrs().MQTT), "metrics", "m1")
	c.Subscribe(t, iot("metrics", "m"))
	if _, err := c.Publish(t, iot("metrics", "m"), 1, []byte("x")); err != nil {
		t.Fatal(err)
	}
	c.Expect(t)
	if v := metricValue(t, s, "warbler_connections"); v != 1 {
		t.Errorf("warbler_connections = %v, want 1", v)
	}
	if v := metricValue(t, s, `warbler_messages_received_total{qos="1"}`); v != 1 {
		t.Errorf("received qos1 = %v, want 1", v)
	}
	if v := metricValue(t, s, `warbler_messages_sent_total{qos="1"}`); v != 1 {
		t.Errorf("sent qos1 = %v, want 1", v)
	}
	if v := metricValue(t, s, "warbler_bytes_received_total"); v <= 0 {
		t.Errorf("bytes received = %v", v)
	}
}

func TestHealthzBeforeStartAndAfterShutdown(t *testing.T) {
	cfg := loopbackConfig(t)
	s, err := New(cfg, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	rec := &statusRecorder{}
	s.handleHealthz(rec, nil)
	if rec.code != http.StatusServiceUnavailable {
		t.Fatalf("healthz before start: %d", rec.code)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	rec = &statusRecorder{}
	s.handleHealthz(rec, nil)
	if rec.code != http.StatusOK {
		t.Fatalf("healthz after start: %d", rec.code)
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	rec = &statusRecorder{}
	s.handleHealthz(rec, nil)
	if rec.code != http.StatusServiceUnavailable {
		t.Fatalf("healthz after shutdown: %d", rec.code)
	}
}

type statusRecorder struct {
	code int
	h    http.Header
	bytes.Buffer
}

func (r *statusRecorder) Header() http.Header {
	if r.h == nil {
		r.h = http.Header{}
	}
	return r.h
}
func (r *statusRecorder) WriteHeader(c int) { r.code = c }

func TestStartupErrors(t *testing.T) {
	t.Run("port taken", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		cfg := loopbackConfig(t)
		cfg.MQTT.Addr = ln.Addr().String()
		_, err = New(cfg, Options{Logger: testLogger(t)})
		if err == nil || !strings.Contains(err.Error(), "listen mqtt on "+ln.Addr().String()) ||
			!strings.Contains(err.Error(), "address already in use") {
			t.Fatalf("want a clear port error, got %v", err)
		}
		// Everything opened before the failure is released: the same data
		// directory opens again at once.
		cfg.MQTT.Addr = "127.0.0.1:0"
		s, err := New(cfg, Options{Logger: testLogger(t)})
		if err != nil {
			t.Fatalf("reopen after failed start: %v", err)
		}
		_ = s.Shutdown(context.Background())
	})
	t.Run("data dir is a file", func(t *testing.T) {
		cfg := loopbackConfig(t)
		f := filepath.Join(t.TempDir(), "file")
		os.WriteFile(f, nil, 0o600)
		cfg.Data = f
		if _, err := New(cfg, Options{Logger: testLogger(t)}); err == nil || !strings.Contains(err.Error(), f) {
			t.Fatalf("want an error naming %s, got %v", f, err)
		}
	})
	t.Run("data dir in use", func(t *testing.T) {
		cfg := loopbackConfig(t)
		s1, err := New(cfg, Options{Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		defer s1.Shutdown(context.Background())
		cfg2 := loopbackConfig(t)
		cfg2.Data = cfg.Data
		if _, err := New(cfg2, Options{Logger: testLogger(t)}); err == nil || !strings.Contains(err.Error(), cfg.Data) {
			t.Fatalf("want an error naming the locked dir, got %v", err)
		}
	})
}

// selfSigned writes a certificate for 127.0.0.1 and returns the file names
// and a pool trusting it.
func selfSigned(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	kb, _ := x509.MarshalECPrivateKey(key)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

func TestTLSAndWSS(t *testing.T) {
	certFile, keyFile, pool := selfSigned(t)
	s := startServer(t, func(c *Config) { c.TLS = TLSConfig{CertFile: certFile, KeyFile: keyFile} })
	if s.Addrs().MQTTTLS == "" || s.Addrs().WSS == "" {
		t.Fatalf("TLS listeners not started: %+v", s.Addrs())
	}
	tc, err := tls.Dial("tcp", s.Addrs().MQTTTLS, &tls.Config{RootCAs: pool})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tc.Close() })
	sub := connectAs(t, s, mqtttest.Locked(tc), "tls", "sub")
	sub.Subscribe(t, iot("tls", "secure"))

	wss, _, err := dialWSS(t, "wss://"+s.Addrs().WSS+"/mqtt", pool)
	if err != nil {
		t.Fatal(err)
	}
	pub := connectAs(t, s, wss, "tls", "pub")
	if _, err := pub.Publish(t, iot("tls", "secure"), 1, []byte("sealed")); err != nil {
		t.Fatal(err)
	}
	if m := sub.Expect(t); string(m.Payload) != "sealed" {
		t.Fatalf("got %q", m.Payload)
	}
	// A plain-text client on the TLS port gets nowhere and harms nobody.
	raw := mqtttest.DialTCP(t, s.Addrs().MQTTTLS)
	mustWrite(t, raw, []byte{0x10, 0xFF, 0xFF, 0xFF, 0x7F})
	waitClosed(t, raw, 15*time.Second)
}

func TestShutdownDisconnectsClientsAndReopens(t *testing.T) {
	cfg := loopbackConfig(t)
	s, err := New(cfg, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	c := connectAs(t, s, mqtttest.DialTCP(t, s.Addrs().MQTT), "sd", "d1")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	c.WaitDisconnected(t)
	if c.ServerDisconnect != nil && c.ServerDisconnect.ReasonCode != 0x8B {
		t.Errorf("disconnect reason 0x%x, want 0x8B server shutting down", c.ServerDisconnect.ReasonCode)
	}
	s2, err := New(cfg, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("data dir did not reopen: %v", err)
	}
	_ = s2.Shutdown(context.Background())
}

// dialWSS opens MQTT over secure WebSocket trusting pool.
func dialWSS(t *testing.T, url string, pool *x509.CertPool) (net.Conn, *http.Response, error) {
	t.Helper()
	return mqtttest.DialWSConfig(t, url, "", &tls.Config{RootCAs: pool})
}
