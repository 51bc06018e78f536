package adversarial

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/warblerim/warbler/broker"
	"github.com/warblerim/warbler/identity"
	"github.com/warblerim/warbler/internal/mqtttest"
	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage"
)

// The control clients and the well-behaved clients of every test connect
// from 127.0.0.1, which the tests' configuration exempts from per-address
// limits; attackers connect from other loopback addresses (127.0.0.2 and
// up), which are limited as any remote address would be.
const (
	controlIP = "127.0.0.1"
	attacker  = "127.0.0.2"
)

// config is the default configuration with every listener on a free
// loopback port, the data in dir, and only 127.0.0.1 exempt from
// per-address limits.
func config(dir string) broker.Config {
	cfg := broker.Default()
	cfg.Data = dir
	cfg.MQTT.Addr = "127.0.0.1:0"
	cfg.MQTT.WSAddr = "127.0.0.1:0"
	cfg.MQTT.TLSAddr = ""
	cfg.MQTT.WSSAddr = ""
	cfg.HTTP.Addr = "127.0.0.1:0"
	cfg.Limits.Exempt = []string{controlIP + "/32"}
	return cfg
}

// start runs a real server (real store in a temporary directory, real
// listeners on loopback) with the configuration changed by mod.
func start(t testing.TB, mod func(*broker.Config)) *broker.Server {
	t.Helper()
	cfg := config(t.TempDir())
	if mod != nil {
		mod(&cfg)
	}
	return startConfig(t, cfg)
}

func startConfig(t testing.TB, cfg broker.Config) *broker.Server {
	t.Helper()
	s, err := broker.New(cfg, broker.Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := s.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { stop(t, s) })
	return s
}

func stop(t testing.TB, s *broker.Server) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

// restart stops s and starts a new server over the same configuration
// and data directory.
func restart(t testing.TB, s *broker.Server) *broker.Server {
	t.Helper()
	cfg := s.Config()
	stop(t, s)
	// Listen on the addresses the old server had, so clients see "the
	// same server" come back.
	cfg.MQTT.Addr, cfg.HTTP.Addr, cfg.MQTT.WSAddr = s.Addrs().MQTT, s.Addrs().HTTP, s.Addrs().WS
	return startConfig(t, cfg)
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// creds returns MQTT credentials for a device of a user of app (created if
// needed): client ID, username, token.
func creds(t testing.TB, s *broker.Server, app, user, device string) (string, string, string) {
	t.Helper()
	ctx := context.Background()
	if _, err := s.Identity().CreateUser(ctx, app, identity.UserSpec{ID: user}); err != nil && !errors.Is(err, identity.ErrExists) {
		t.Fatalf("create user %s: %v", user, err)
	}
	tok, err := s.Identity().IssueToken(ctx, app, user, device, time.Hour)
	if err != nil {
		t.Fatalf("token for %s/%s: %v", user, device, err)
	}
	return protocol.ClientID(app, user, device), app + ":" + user, tok.Value
}

// connect connects a device of a demo user from 127.0.0.1 with paho.
func connect(t testing.TB, s *broker.Server, user, device string) *mqtttest.Client {
	t.Helper()
	cid, u, p := creds(t, s, "demo", user, device)
	return mqtttest.MustConnect(t, mqtttest.DialTCP(t, s.Addrs().MQTT), cid, u, p)
}

// connectConn connects over conn and returns the CONNACK reason code
// (with the client when accepted).
func connectConn(t testing.TB, conn net.Conn, cid, user, pass string) (*mqtttest.Client, byte, error) {
	t.Helper()
	cp := &paho.Connect{ClientID: cid, CleanStart: true, Username: user, UsernameFlag: user != "",
		Password: []byte(pass), PasswordFlag: pass != ""}
	c, ack, err := mqtttest.Connect(t, conn, cp)
	if ack != nil {
		return c, ack.ReasonCode, err
	}
	return c, 0xFF, err
}

// iot is a topic in a demo user's IoT area (rule w/{app}/iot/%u/#).
func iot(user, rest string) string { return "w/demo/iot/" + user + "/" + rest }

// control is the pair of well-behaved clients every test checks after its
// attack: a subscriber and a publisher of another user, from 127.0.0.1.
type control struct {
	sub, pub *mqtttest.Client
	topic    string
	n        int
}

func newControl(t testing.TB, s *broker.Server) *control {
	t.Helper()
	c := &control{topic: iot("ctl", "control")}
	c.sub = connect(t, s, "ctl", "sub")
	if r := c.sub.Subscribe(t, c.topic); r[0] != 1 {
		t.Fatalf("control subscribe: 0x%x", r[0])
	}
	c.pub = connect(t, s, "ctl", "pub")
	c.check(t)
	return c
}

// check sends one QoS 1 message from the control publisher and waits for
// the control subscriber to get exactly it.
func (c *control) check(t testing.TB) {
	t.Helper()
	c.n++
	want := fmt.Sprintf("control-%d", c.n)
	if code, err := c.pub.Publish(t, c.topic, 1, []byte(want)); err != nil || code != 0 {
		t.Fatalf("control publish: 0x%x %v", code, err)
	}
	if got := string(c.sub.Expect(t).Payload); got != want {
		t.Fatalf("control got %q, want %q", got, want)
	}
}

// metric reads one sample of the server's /metrics, 0 if absent.
func metric(t testing.TB, s *broker.Server, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + s.Addrs().HTTP + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			var f float64
			fmt.Sscanf(v, "%g", &f)
			return f
		}
	}
	return 0
}

func limited(t testing.TB, s *broker.Server, reason string) float64 {
	t.Helper()
	return metric(t, s, `warbler_limited_total{reason="`+reason+`"}`)
}

// waitFor polls cond every 10ms until it holds or the deadline passes.
func waitFor(t testing.TB, what string, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, within)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// API calls with the admin key.

func adminKey(t testing.TB, s *broker.Server) string {
	t.Helper()
	k, err := os.ReadFile(filepath.Join(s.Config().Data, "admin.key"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(k))
}

// api calls the HTTP API with a bearer key and decodes the JSON answer
// into out (if not nil); it returns the response.
func api(t testing.TB, s *broker.Server, method, path, key string, in, out any) *http.Response {
	t.Helper()
	return apiFrom(t, http.DefaultClient, s, method, path, key, in, out)
}

func apiFrom(t testing.TB, hc *http.Client, s *broker.Server, method, path, key string, in, out any) *http.Response {
	t.Helper()
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, "http://"+s.Addrs().HTTP+path, body)
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %d %s: %v", method, path, resp.StatusCode, b, err)
		}
	}
	return resp
}

// httpFrom is an HTTP client whose connections come from a local address.
func httpFrom(ip string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: mqtttest.Timeout}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext}, Timeout: mqtttest.Timeout}
}

// Raw MQTT, for packets no well-behaved client library would send.

func varint(n int) []byte {
	var b []byte
	for {
		c := byte(n % 128)
		if n /= 128; n > 0 {
			b = append(b, c|0x80)
			continue
		}
		return append(b, c)
	}
}

func mstr(s string) []byte {
	return append([]byte{byte(len(s) >> 8), byte(len(s))}, s...)
}

func packet(first byte, body []byte) []byte {
	return append(append([]byte{first}, varint(len(body))...), body...)
}

// connectPacket builds a CONNECT of protocol version v (4 or 5) with
// username and password when set; props is the raw MQTT 5 property block
// (without its length).
func connectPacket(v byte, cid, user, pass string, clean bool, props []byte) []byte {
	flags := byte(0)
	if clean {
		flags |= 0x02
	}
	if user != "" {
		flags |= 0x80
	}
	if pass != "" {
		flags |= 0x40
	}
	body := append(mstr("MQTT"), v, flags, 0, 60)
	if v == 5 {
		body = append(append(body, varint(len(props))...), props...)
	}
	body = append(body, mstr(cid)...)
	if user != "" {
		body = append(body, mstr(user)...)
	}
	if pass != "" {
		body = append(body, mstr(pass)...)
	}
	return packet(0x10, body)
}

// publishPacket builds an MQTT 5 PUBLISH (props without their length).
func publishPacket(topic string, qos byte, id uint16, props, payload []byte) []byte {
	body := mstr(topic)
	if qos > 0 {
		body = binary.BigEndian.AppendUint16(body, id)
	}
	body = append(append(body, varint(len(props))...), props...)
	return packet(0x30|qos<<1, append(body, payload...))
}

// subscribePacket builds an MQTT 5 SUBSCRIBE of filters at QoS 1.
func subscribePacket(id uint16, filters ...string) []byte {
	body := binary.BigEndian.AppendUint16(nil, id)
	body = append(body, 0) // no properties
	for _, f := range filters {
		body = append(append(body, mstr(f)...), 1)
	}
	return packet(0x82, body)
}

// rawConn is a socket speaking raw MQTT.
type rawConn struct {
	net.Conn
	t testing.TB
	r *bufio.Reader
}

func newRaw(t testing.TB, c net.Conn) *rawConn { return &rawConn{Conn: c, t: t, r: bufio.NewReader(c)} }

func (c *rawConn) send(b []byte) {
	c.t.Helper()
	_ = c.SetWriteDeadline(time.Now().Add(mqtttest.Timeout))
	if _, err := c.Write(b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// read returns the next packet's first byte and body, or an error (io.EOF
// when the server closed the socket).
func (c *rawConn) read(within time.Duration) (byte, []byte, error) {
	_ = c.SetReadDeadline(time.Now().Add(within))
	first, err := c.r.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	n, mult := 0, 1
	for i := 0; i < 4; i++ {
		b, err := c.r.ReadByte()
		if err != nil {
			return 0, nil, err
		}
		n += int(b&127) * mult
		if b&128 == 0 {
			break
		}
		mult *= 128
	}
	body := make([]byte, n)
	_, err = io.ReadFull(c.r, body)
	return first, body, err
}

// expect reads the next packet and fails unless it has the given type.
func (c *rawConn) expect(typ byte) []byte {
	c.t.Helper()
	first, body, err := c.read(mqtttest.Timeout)
	if err != nil {
		c.t.Fatalf("waiting for packet type %d: %v", typ, err)
	}
	if first>>4 != typ {
		c.t.Fatalf("got packet type %d (% x), want %d", first>>4, body, typ)
	}
	return body
}

// closedAfter reads (discarding packets) until the server closes the
// socket, failing if that takes longer than within. It returns the reason
// code of a DISCONNECT received on the way (-1 if none).
func (c *rawConn) closedAfter(within time.Duration) int {
	c.t.Helper()
	deadline := time.Now().Add(within)
	code := -1
	for {
		first, body, err := c.read(time.Until(deadline))
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				c.t.Fatalf("socket still open after %v", within)
			}
			return code
		}
		if first>>4 == 14 && len(body) > 0 {
			code = int(body[0])
		}
	}
}

// rawSession connects as a demo user's device over a raw socket from ip
// with protocol version v, and returns the socket after a successful
// CONNACK.
func rawSession(t testing.TB, s *broker.Server, ip string, v byte, user, device string) *rawConn {
	t.Helper()
	conn, err := mqtttest.DialTCPFrom(t, ip, s.Addrs().MQTT)
	if err != nil {
		t.Fatal(err)
	}
	c := newRaw(t, conn)
	cid, u, p := creds(t, s, "demo", user, device)
	c.send(connectPacket(v, cid, u, p, true, nil))
	ack := c.expect(2)
	if len(ack) < 2 || ack[1] != 0 {
		t.Fatalf("CONNACK refused: % x", ack)
	}
	return c
}

// connackCode connects raw with the given packet and returns the CONNACK
// reason code, or -1 if the socket was closed without one.
func connackCode(t testing.TB, c *rawConn, connect []byte) int {
	t.Helper()
	c.send(connect)
	first, body, err := c.read(mqtttest.Timeout)
	if err != nil || first>>4 != 2 || len(body) < 2 {
		return -1
	}
	return int(body[1])
}

func dial(t testing.TB, s *broker.Server) net.Conn { return mqtttest.DialTCP(t, s.Addrs().MQTT) }

func quotaPatch(q *storage.AppQuotas) identity.AppPatch { return identity.AppPatch{Quotas: q} }
