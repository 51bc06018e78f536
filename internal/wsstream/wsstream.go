// Package wsstream presents a WebSocket as a byte stream (net.Conn), the
// way MQTT over WebSocket uses it: binary messages are read back to back as
// one stream, and each write is one binary message. The server's WebSocket
// listener and the test clients share it.
package wsstream

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// ErrTextFrame is returned by Read when the peer sends a text message.
var ErrTextFrame = errors.New("websocket: MQTT needs binary frames")

// Conn is a WebSocket as a net.Conn. The embedded net.Conn is the
// underlying socket, used for addresses and deadlines; Read, Write and
// Close go through the WebSocket.
type Conn struct {
	net.Conn
	ws  *websocket.Conn
	r   io.Reader
	wmu sync.Mutex   // one WebSocket message at a time
	pmu sync.Mutex   // one MQTT packet at a time; see Lock
	wdl atomic.Int64 // write deadline in Unix nanoseconds; 0 for none
}

// Lock and Unlock make Conn a sync.Locker. An MQTT client that writes one
// packet in several Write calls (paho writes the fixed header and the body
// separately, and its keep-alive pinger writes from another goroutine)
// holds this lock around the whole packet when the connection offers it, so
// that packets from different goroutines never interleave. A TCP socket
// gets the same effect from a single writev; a WebSocket needs the lock.
func (c *Conn) Lock() { c.pmu.Lock() }

// Unlock releases the packet lock.
func (c *Conn) Unlock() { c.pmu.Unlock() }

// New wraps ws.
func New(ws *websocket.Conn) *Conn { return &Conn{Conn: ws.NetConn(), ws: ws} }

// Read reads the stream formed by consecutive binary messages. A text
// message closes the WebSocket with status 1003 and returns ErrTextFrame.
func (c *Conn) Read(p []byte) (int, error) {
	for {
		if c.r == nil {
			op, r, err := c.ws.NextReader()
			if err != nil {
				return 0, err
			}
			if op != websocket.BinaryMessage {
				_ = c.ws.WriteControl(websocket.CloseMessage,
					websocket.FormatCloseMessage(websocket.CloseUnsupportedData, "binary frames only"), time.Now().Add(time.Second))
				return 0, ErrTextFrame
			}
			c.r = r
		}
		n, err := c.r.Read(p)
		if errors.Is(err, io.EOF) {
			c.r = nil
			if n > 0 {
				return n, nil
			}
			continue
		}
		return n, err
	}
}

// Write sends p as one binary message. It is safe for concurrent use.
func (c *Conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	var dl time.Time
	if ns := c.wdl.Load(); ns != 0 {
		dl = time.Unix(0, ns)
	}
	_ = c.ws.SetWriteDeadline(dl)
	if err := c.ws.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// SetDeadline sets the read and write deadlines. The socket's write
// deadline takes effect at once, also for a write in progress; the
// WebSocket, which sets the socket's write deadline itself before every
// message, is given the same deadline by the next Write.
func (c *Conn) SetDeadline(t time.Time) error {
	c.storeWriteDeadline(t)
	return c.Conn.SetDeadline(t)
}

// SetWriteDeadline sets the write deadline (see SetDeadline).
func (c *Conn) SetWriteDeadline(t time.Time) error {
	c.storeWriteDeadline(t)
	return c.Conn.SetWriteDeadline(t)
}

func (c *Conn) storeWriteDeadline(t time.Time) {
	if t.IsZero() {
		c.wdl.Store(0)
		return
	}
	c.wdl.Store(t.UnixNano())
}

// Close closes the WebSocket's socket.
func (c *Conn) Close() error { return c.ws.Close() }
