package broker

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// errMalformed marks a connection closed by the packet guard.
var errMalformed = errors.New("malformed packet")

// MalformedError says why the guard closed a connection.
type MalformedError struct{ Reason string }

func (e *MalformedError) Error() string { return "malformed packet: " + e.Reason }
func (e *MalformedError) Unwrap() error { return errMalformed }

// guardConn sits between a client socket and the broker's packet reader. It
// frames the inbound byte stream into MQTT packets and checks each one
// before the broker sees it:
//
//   - the first packet must be CONNECT, and must arrive complete within the
//     connect deadline;
//   - a remaining length uses at most four bytes and never exceeds the
//     maximum packet size, so a huge length claim is refused before anything
//     is allocated;
//   - every packet other than the hot-path ones (PUBLISH, the QoS acks,
//     PINGREQ) is trial-decoded with the broker's own decoder under recover,
//     so a packet that would panic the decoder (a truncated v5 SUBSCRIBE,
//     say) closes only its own connection.
//
// A refused packet ends the stream with a *MalformedError, which the broker
// handles as any read error: the will is published, hooks run, the session is
// cleaned up. An MQTT 5 client that has connected is first sent DISCONNECT
// 0x81 "malformed packet", so that it knows why. The hot-path decoders are
// covered by fuzz targets instead, and a recover around the whole connection
// remains as the last line.
//
// Writes. Every write to the client must finish within writeTimeout, or the
// connection is closed (onSlow). A client that stops reading fills its
// socket buffers and then blocks the write in progress; the broker holds
// that client's lock meanwhile, and anyone publishing to it at QoS 1 or 2
// waits for the same lock to number the message. The timeout bounds that
// wait, once: the stalled client is disconnected (its session keeps its
// QoS 1/2 messages for when it comes back), and the rest carry on. QoS 0
// deliveries never wait: they are dropped at the client's full queue.
type guardConn struct {
	net.Conn
	r       *bufio.Reader
	maxSize int
	version byte // protocol version from CONNECT; 0 until then
	// connected is set once a packet after the CONNECT is being read,
	// which the broker does only after it has answered the CONNECT.
	connected bool
	pending   []byte
	through   int // bytes of the current packet to pass through undecoded
	buf       []byte
	err       error
	onBad     func(reason string)

	writeTimeout time.Duration
	onSlow       func()
	wmu          sync.Mutex   // one write at a time: packets never interleave
	deadline     atomic.Int64 // a write deadline set by SetWriteDeadline (unix ns), or 0
	slow         atomic.Bool
}

func newGuardConn(c net.Conn, maxSize uint32, connectTimeout time.Duration, onBad func(string)) *guardConn {
	if connectTimeout > 0 {
		// An absolute deadline for the whole CONNECT: the broker replaces it
		// with the keep-alive deadline once the client is authenticated.
		_ = c.SetReadDeadline(time.Now().Add(connectTimeout))
	}
	return &guardConn{Conn: c, r: bufio.NewReaderSize(c, 2048), maxSize: int(maxSize), onBad: onBad}
}

// Write implements net.Conn: the write must finish within writeTimeout
// (or by a deadline set with SetWriteDeadline, if sooner); one that does
// not closes the connection.
func (g *guardConn) Write(p []byte) (int, error) {
	g.wmu.Lock()
	defer g.wmu.Unlock()
	if g.writeTimeout > 0 {
		d := time.Now().Add(g.writeTimeout)
		if f := g.deadline.Load(); f != 0 && f < d.UnixNano() {
			d = time.Unix(0, f)
		}
		_ = g.Conn.SetWriteDeadline(d)
	}
	n, err := g.Conn.Write(p)
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) && g.slow.CompareAndSwap(false, true) {
		if g.onSlow != nil {
			g.onSlow()
		}
		_ = g.Conn.Close()
	}
	return n, err
}

// SetWriteDeadline implements net.Conn; the deadline applies on top of the
// per-write timeout.
func (g *guardConn) SetWriteDeadline(t time.Time) error {
	if t.IsZero() {
		g.deadline.Store(0)
	} else {
		g.deadline.Store(t.UnixNano())
	}
	return g.Conn.SetWriteDeadline(t)
}

// SetDeadline implements net.Conn.
func (g *guardConn) SetDeadline(t time.Time) error {
	if err := g.SetReadDeadline(t); err != nil {
		return err
	}
	return g.SetWriteDeadline(t)
}

// Read implements net.Conn.
func (g *guardConn) Read(p []byte) (int, error) {
	if len(g.pending) == 0 && g.through == 0 {
		if g.err != nil {
			return 0, g.err
		}
		if err := g.next(); err != nil {
			g.err = err
			return 0, err
		}
	}
	if len(g.pending) > 0 {
		n := copy(p, g.pending)
		g.pending = g.pending[n:]
		return n, nil
	}
	if len(p) > g.through {
		p = p[:g.through]
	}
	n, err := g.r.Read(p)
	g.through -= n
	return n, err
}

// next reads and checks the next packet's header (and, for packets that are
// not passed through, its body), leaving the bytes to hand on in pending.
func (g *guardConn) next() error {
	var hdr [5]byte
	b, err := g.r.ReadByte()
	if err != nil {
		return err
	}
	hdr[0] = b
	typ := b >> 4
	g.connected = g.version != 0 // a packet after the CONNECT: the broker has answered it
	if g.version == 0 && typ != packets.Connect {
		return g.bad(fmt.Sprintf("first packet is type %d, not CONNECT", typ))
	}
	remaining, mult, n := 0, 1, 1
	for {
		c, err := g.r.ReadByte()
		if err != nil {
			return err
		}
		hdr[n] = c
		n++
		remaining += int(c&127) * mult
		if c&128 == 0 {
			break
		}
		if n == 5 {
			return g.bad("remaining length longer than four bytes")
		}
		mult *= 128
	}
	if g.maxSize > 0 && remaining+n > g.maxSize {
		return g.bad(fmt.Sprintf("packet of %d bytes exceeds the maximum of %d", remaining+n, g.maxSize))
	}
	switch typ {
	case packets.Publish, packets.Puback, packets.Pubrec, packets.Pubrel, packets.Pubcomp, packets.Pingreq:
		if g.version == 5 && typ == packets.Publish {
			return g.publish5(b, hdr[:n], remaining)
		}
		if g.version != 0 {
			g.pending = append(g.buf[:0], hdr[:n]...)
			g.through = remaining
			return nil
		}
	}
	need := n + remaining
	if cap(g.buf) < need {
		g.buf = make([]byte, need)
	}
	g.buf = g.buf[:need]
	copy(g.buf, hdr[:n])
	if _, err := io.ReadFull(g.r, g.buf[n:]); err != nil {
		return err
	}
	if reason := g.check(hdr[0], g.buf[n:]); reason != "" {
		return g.bad(reason)
	}
	g.pending = g.buf
	return nil
}

// publish5 passes an MQTT 5 PUBLISH on after reading its variable header
// (topic, packet ID, properties: usually a few dozen bytes) to refuse a
// property given twice, which MQTT 5 (2.2.2.2) makes a protocol error and
// the broker's decoder would accept, keeping the last value. Only User
// Property may repeat. The payload passes through unread. A header that
// does not add up is left for the broker's decoder to refuse.
func (g *guardConn) publish5(first byte, hdr []byte, remaining int) error {
	g.buf = append(g.buf[:0], hdr...)
	left := remaining
	read := func(k int) ([]byte, error) {
		if k > left {
			return nil, errShort
		}
		start := len(g.buf)
		g.buf = slices.Grow(g.buf, k)[:start+k]
		if _, err := io.ReadFull(g.r, g.buf[start:]); err != nil {
			return nil, err
		}
		left -= k
		return g.buf[start:], nil
	}
	err := func() error {
		b, err := read(2)
		if err != nil {
			return err
		}
		skip := int(b[0])<<8 | int(b[1])
		if (first>>1)&3 > 0 {
			skip += 2 // packet ID
		}
		if _, err := read(skip); err != nil {
			return err
		}
		plen, mult := 0, 1
		for i := 0; ; i++ {
			c, err := read(1)
			if err != nil {
				return err
			}
			plen += int(c[0]&127) * mult
			if c[0]&128 == 0 {
				break
			}
			if i == 3 {
				return errShort
			}
			mult *= 128
		}
		props, err := read(plen)
		if err != nil {
			return err
		}
		if id, dup := repeatedProperty(props); dup {
			return g.badCode(fmt.Sprintf("PUBLISH property 0x%02x given more than once", id), packets.ErrProtocolViolation.Code)
		}
		return nil
	}()
	switch {
	case err == nil, errors.Is(err, errShort):
	default:
		return err
	}
	g.pending, g.through = g.buf, left
	return nil
}

// errShort marks a PUBLISH header that does not fit its packet.
var errShort = errors.New("short")

// repeatedProperty scans MQTT 5 PUBLISH properties and reports the first
// one (other than User Property) that appears twice. It stops quietly at
// anything it cannot size (a property PUBLISH may not carry, a truncated
// value), which the broker's decoder refuses.
func repeatedProperty(p []byte) (byte, bool) {
	var seen [256]bool
	for len(p) > 0 {
		id := p[0]
		p = p[1:]
		n := 0
		switch id {
		case 0x01: // payload format indicator
			n = 1
		case 0x02: // message expiry interval
			n = 4
		case 0x23: // topic alias
			n = 2
		case 0x03, 0x08, 0x09: // content type, response topic, correlation data
			if len(p) < 2 {
				return 0, false
			}
			n = 2 + (int(p[0])<<8 | int(p[1]))
		case 0x26: // user property: two strings, may repeat
			if len(p) < 2 {
				return 0, false
			}
			k := 2 + (int(p[0])<<8 | int(p[1]))
			if len(p) < k+2 {
				return 0, false
			}
			n = k + 2 + (int(p[k])<<8 | int(p[k+1]))
		case 0x0B: // subscription identifier (a varint)
			for n < len(p) && p[n]&128 != 0 {
				n++
			}
			n++
		default:
			return 0, false
		}
		if n > len(p) {
			return 0, false
		}
		p = p[n:]
		if id != 0x26 {
			if seen[id] {
				return id, true
			}
			seen[id] = true
		}
	}
	return 0, false
}

// check trial-decodes one packet body with the broker's decoder and reports
// a non-empty reason if it fails or panics.
func (g *guardConn) check(first byte, body []byte) (reason string) {
	defer func() {
		if r := recover(); r != nil {
			reason = fmt.Sprintf("decoder panic on packet type %d: %v", first>>4, r)
		}
	}()
	var fh packets.FixedHeader
	if err := fh.Decode(first); err != nil {
		return err.Error()
	}
	pk := packets.Packet{FixedHeader: fh, ProtocolVersion: g.version}
	pk.FixedHeader.Remaining = len(body)
	px := append([]byte(nil), body...) // decoders may keep slices of their input
	var err error
	switch fh.Type {
	case packets.Connect:
		err = pk.ConnectDecode(px)
		if err == nil {
			g.version = pk.ProtocolVersion
			if g.version == 0 {
				return "CONNECT with protocol version 0"
			}
		}
	case packets.Subscribe:
		err = pk.SubscribeDecode(px)
	case packets.Unsubscribe:
		err = pk.UnsubscribeDecode(px)
	case packets.Disconnect:
		err = pk.DisconnectDecode(px)
	case packets.Auth:
		err = pk.AuthDecode(px)
	case packets.Publish:
		err = pk.PublishDecode(px)
	case packets.Puback:
		err = pk.PubackDecode(px)
	case packets.Pubrec:
		err = pk.PubrecDecode(px)
	case packets.Pubrel:
		err = pk.PubrelDecode(px)
	case packets.Pubcomp:
		err = pk.PubcompDecode(px)
	case packets.Pingreq:
	default:
		// CONNACK, SUBACK, UNSUBACK, PINGRESP and type 0/15 are never sent
		// by a client.
		return fmt.Sprintf("packet type %d is not sent by clients", fh.Type)
	}
	if err != nil {
		return err.Error()
	}
	return ""
}

func (g *guardConn) bad(reason string) error {
	return g.badCode(reason, packets.ErrMalformedPacket.Code)
}

// badCode refuses a packet; an MQTT 5 client that has connected is sent
// DISCONNECT with code (0x81 malformed packet, 0x82 protocol error) first.
func (g *guardConn) badCode(reason string, code byte) error {
	if g.onBad != nil {
		g.onBad(reason)
	}
	if g.version == 5 && g.connected {
		// DISCONNECT with the reason code, no properties. The broker has
		// answered the CONNECT by now (it reads the next packet only after
		// that), and writes go one at a time, so this cannot land inside
		// another packet.
		g.wmu.Lock()
		_ = g.Conn.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = g.Conn.Write([]byte{packets.Disconnect << 4, 2, code, 0})
		g.wmu.Unlock()
	}
	return &MalformedError{Reason: reason}
}
