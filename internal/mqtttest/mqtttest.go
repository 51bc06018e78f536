// Package mqtttest holds helpers for tests that talk to a real Warbler
// broker with real MQTT clients (paho.golang) over TCP or WebSocket. It
// contains no fakes: every helper opens a real socket.
package mqtttest

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/gorilla/websocket"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/warblerim/warbler/internal/wsstream"
)

// RequireTool returns the path of a program a test needs. CI installs them
// (.ci/run), so a missing one fails the test there; elsewhere it skips.
func RequireTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s not installed (CI must install it)", name)
		}
		t.Skipf("%s not installed; run .ci/run or install it", name)
	}
	return p
}

// Timeout bounds every wait in these helpers.
const Timeout = 10 * time.Second

// DialTCP opens a TCP connection to addr or fails the test.
func DialTCP(t testing.TB, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, Timeout)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// DialWS opens MQTT over WebSocket (subprotocol "mqtt") at url, sending
// origin as the Origin header when it is not empty. On a refused handshake
// it returns the HTTP response so tests can check the status.
func DialWS(t testing.TB, url, origin string) (net.Conn, *http.Response, error) {
	t.Helper()
	return DialWSConfig(t, url, origin, nil)
}

// DialWSConfig is DialWS with a TLS configuration for wss:// URLs.
func DialWSConfig(t testing.TB, url, origin string, tc *tls.Config) (net.Conn, *http.Response, error) {
	t.Helper()
	h := http.Header{}
	if origin != "" {
		h.Set("Origin", origin)
	}
	d := websocket.Dialer{Subprotocols: []string{"mqtt"}, HandshakeTimeout: Timeout, TLSClientConfig: tc}
	ws, resp, err := d.Dial(url, h)
	if err != nil {
		return nil, resp, err
	}
	c := wsstream.New(ws)
	t.Cleanup(func() { _ = c.Close() })
	return c, resp, nil
}

// Client is a connected paho client whose received messages arrive on Msgs.
type Client struct {
	*paho.Client
	Msgs chan *paho.Publish
	// Disconnected is closed when the server ends the connection.
	Disconnected chan struct{}
	// ServerDisconnect holds a DISCONNECT sent by the server, if any.
	ServerDisconnect *paho.Disconnect
}

// Connect performs an MQTT 5 CONNECT over conn. cp.ClientID must be set.
// RequestProblemInfo is always set so the server keeps user properties on
// PUBLISHes it sends (see docs on the broker's MQTT-3.1.2-29 handling).
func Connect(t testing.TB, conn net.Conn, cp *paho.Connect) (*Client, *paho.Connack, error) {
	t.Helper()
	c := &Client{Msgs: make(chan *paho.Publish, 1024), Disconnected: make(chan struct{})}
	var once sync.Once
	closed := func() { once.Do(func() { close(c.Disconnected) }) }
	c.Client = paho.NewClient(paho.ClientConfig{
		Conn: conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){
			func(pr paho.PublishReceived) (bool, error) {
				select {
				case c.Msgs <- pr.Packet:
				default:
					t.Errorf("mqtttest: message buffer full, dropping %s", pr.Packet.Topic)
				}
				return true, nil
			},
		},
		OnServerDisconnect: func(d *paho.Disconnect) { c.ServerDisconnect = d; closed() },
		OnClientError:      func(error) { closed() },
		PacketTimeout:      Timeout,
	})
	if cp.KeepAlive == 0 {
		cp.KeepAlive = 30
	}
	if cp.Properties == nil {
		cp.Properties = &paho.ConnectProperties{}
	}
	cp.Properties.RequestProblemInfo = true
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	ack, err := c.Client.Connect(ctx, cp)
	if err != nil {
		return nil, ack, err
	}
	t.Cleanup(func() { _ = c.Client.Disconnect(&paho.Disconnect{ReasonCode: 0}) })
	return c, ack, nil
}

// MustConnect is Connect that fails the test on error.
func MustConnect(t testing.TB, conn net.Conn, clientID, user, pass string) *Client {
	t.Helper()
	cp := &paho.Connect{ClientID: clientID, CleanStart: true}
	if user != "" {
		cp.Username, cp.UsernameFlag = user, true
	}
	if pass != "" {
		cp.Password, cp.PasswordFlag = []byte(pass), true
	}
	c, ack, err := Connect(t, conn, cp)
	if err != nil {
		code := -1
		if ack != nil {
			code = int(ack.ReasonCode)
		}
		t.Fatalf("connect %s: %v (reason %d)", clientID, err, code)
	}
	return c
}

// Subscribe subscribes to filters at QoS 1 and returns the SUBACK reasons.
func (c *Client) Subscribe(t testing.TB, filters ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	s := &paho.Subscribe{}
	for _, f := range filters {
		s.Subscriptions = append(s.Subscriptions, paho.SubscribeOptions{Topic: f, QoS: 1})
	}
	ack, err := c.Client.Subscribe(ctx, s)
	if ack == nil {
		t.Fatalf("subscribe %v: %v", filters, err)
	}
	return ack.Reasons
}

// Publish sends payload to topic at qos and returns the PUBACK reason (0
// for QoS 0) and any error.
func (c *Client) Publish(t testing.TB, topic string, qos byte, payload []byte) (byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	resp, err := c.Client.Publish(ctx, &paho.Publish{Topic: topic, QoS: qos, Payload: payload})
	if resp != nil {
		return resp.ReasonCode, err
	}
	return 0, err
}

// Expect waits for the next message.
func (c *Client) Expect(t testing.TB) *paho.Publish {
	t.Helper()
	select {
	case m := <-c.Msgs:
		return m
	case <-time.After(Timeout):
		t.Fatalf("no message within %v", Timeout)
		return nil
	}
}

// WaitDisconnected waits until the server closes the connection.
func (c *Client) WaitDisconnected(t testing.TB) {
	t.Helper()
	select {
	case <-c.Disconnected:
	case <-time.After(Timeout):
		t.Fatalf("connection still open after %v", Timeout)
	}
}

// DialTCPFrom opens a TCP connection to addr from the local address local
// (for example "127.0.0.2": every 127.0.0.0/8 address reaches loopback on
// Linux), so that a test can play clients at several addresses. It returns
// the error instead of failing, because the server may refuse the socket.
func DialTCPFrom(t testing.TB, local, addr string) (net.Conn, error) {
	t.Helper()
	d := net.Dialer{Timeout: Timeout, LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { _ = c.Close() })
	return c, nil
}

// lockedConn is a net.Conn that is also a sync.Locker.
type lockedConn struct {
	net.Conn
	sync.Mutex
}

// Locked makes c a sync.Locker, so that paho writes each packet under the
// lock (it writes a packet in several Write calls, and its keep-alive
// pinger writes from another goroutine). Use it for connections whose
// Write is not one system call, such as TLS; plain TCP and wsstream
// connections do not need it.
func Locked(c net.Conn) net.Conn { return &lockedConn{Conn: c} }

// Encode serializes a packet a raw-socket test client sends (CONNECT,
// SUBSCRIBE, PUBLISH, PUBACK) with the broker's own encoder, at the
// packet's ProtocolVersion.
func Encode(pk packets.Packet) ([]byte, error) {
	var buf bytes.Buffer
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(&buf)
	case packets.Subscribe:
		err = pk.SubscribeEncode(&buf)
	case packets.Publish:
		err = pk.PublishEncode(&buf)
	case packets.Puback:
		err = pk.PubackEncode(&buf)
	default:
		err = fmt.Errorf("mqtttest: cannot encode packet type %d", pk.FixedHeader.Type)
	}
	return buf.Bytes(), err
}
