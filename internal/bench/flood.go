package bench

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// FloodOptions configure the flood scenario.
type FloodOptions struct {
	// Pairs are the well-behaved clients, measured twice. A zero rate is
	// replaced by 400 messages a second in total, and the messages per
	// pair are then set so that each phase lasts about ten seconds:
	// latency is only comparable at a fixed load.
	Pairs PairsOptions
	// From is the local address the flooder connects from (127.0.0.2 by
	// default: on Linux every 127/8 address reaches loopback), so that the
	// server treats it as a remote client and not as an exempt local one.
	From string
	// Size is the flood's payload size in bytes (200).
	Size int
}

// FloodTarget is implemented by targets that can name a flooding client.
type FloodTarget interface {
	// Flooder returns a client allowed to publish to topic.
	Flooder(ctx context.Context) (Endpoint, string, error)
}

// Flood measures what one abusive client costs the others. It runs the
// pairs scenario twice in one run: without a flood ("flood-off") and while
// one client publishes QoS 0 messages as fast as its socket takes them
// ("flood-on"), reconnecting at once whenever it is disconnected or
// refused, as an attacker would. The flooder writes pre-encoded packets in
// batches from a raw socket, which is faster than any client library. The
// p99 of the pairs is compared between the two results; the flood-on
// result's note says how much the flooder sent and how often it had to
// reconnect.
func Flood(ctx context.Context, t Target, o FloodOptions) ([]Result, error) {
	ft, ok := t.(FloodTarget)
	if !ok {
		return nil, fmt.Errorf("%s cannot name a flooding client", t.Name())
	}
	if o.Pairs.Rate == 0 {
		o.Pairs.Rate = 400
		o.Pairs.Messages = max(1, o.Pairs.Rate*10/max(1, o.Pairs.Pairs))
	}
	if o.From == "" {
		o.From = "127.0.0.2"
	}
	if o.Size <= 0 {
		o.Size = 200
	}
	calm, err := Pairs(ctx, t, o.Pairs)
	if err != nil {
		return nil, err
	}
	calm.Scenario = "flood-off"

	// Warbler deduplicates sends by (device, cmid), and the second run
	// would repeat the first one's cmids: give it fresh users.
	if r, ok := t.(interface{ renewUsers() }); ok {
		r.renewUsers()
	}
	ep, topic, err := ft.Flooder(ctx)
	if err != nil {
		return nil, err
	}
	f := &flooder{addr: t.Addr(), from: o.From, ep: ep, topic: topic, size: o.Size}
	fctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); f.run(fctx) }()
	// Measure only once the flood is under way.
	for f.written.Load() == 0 && f.connects.Load() < 100 && fctx.Err() == nil {
		time.Sleep(5 * time.Millisecond)
	}
	began := time.Now()
	flooded, err := Pairs(ctx, t, o.Pairs)
	stop()
	wg.Wait()
	if err != nil {
		return nil, err
	}
	secs := time.Since(began).Seconds()
	flooded.Scenario = "flood-on"
	flooded.Note = fmt.Sprintf("flooder sent %d msgs (%.0f/s, %.1f MB/s); %d connects, %d refused or cut; p99 %.2fx of flood-off",
		f.written.Load(), float64(f.written.Load())/secs, float64(f.bytes.Load())/secs/1e6,
		f.connects.Load(), f.cut.Load(), float64(flooded.P99)/float64(max(calm.P99, 1)))
	return []Result{calm, flooded}, nil
}

// flooder is one client publishing as fast as it can.
type flooder struct {
	addr, from, topic string
	ep                Endpoint
	size              int
	written, bytes    atomic.Int64 // PUBLISH packets and bytes handed to the socket
	connects, cut     atomic.Int64 // CONNECTs sent; connections refused or closed by the server
}

func (f *flooder) run(ctx context.Context) {
	batch := f.batch(64)
	for ctx.Err() == nil {
		c, err := f.connect(ctx)
		if err != nil {
			f.cut.Add(1)
			continue
		}
		dead := make(chan struct{})
		go func() { _, _ = io.Copy(io.Discard, c); close(dead) }()
		stop := context.AfterFunc(ctx, func() { _ = c.Close() })
		for {
			if _, err := c.Write(batch); err != nil {
				break
			}
			f.written.Add(64)
			f.bytes.Add(int64(len(batch)))
		}
		stop()
		_ = c.Close()
		<-dead
		if ctx.Err() == nil {
			f.cut.Add(1)
		}
	}
}

// connect opens a socket from f.from and completes an MQTT 5 CONNECT.
func (f *flooder) connect(ctx context.Context) (net.Conn, error) {
	d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(f.from)}}
	c, err := d.DialContext(ctx, "tcp", f.addr)
	if err != nil {
		return nil, err
	}
	f.connects.Add(1)
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write(connectPacket(f.ep)); err != nil {
		c.Close()
		return nil, err
	}
	r := bufio.NewReader(c)
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil || hdr[0] != 0x20 || hdr[3] != 0 {
		c.Close()
		return nil, errors.New("connect refused")
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

// batch encodes n QoS 0 PUBLISH packets of f.size bytes back to back.
func (f *flooder) batch(n int) []byte {
	payload := make([]byte, f.size)
	body := append(binary.BigEndian.AppendUint16(nil, uint16(len(f.topic))), f.topic...)
	body = append(body, 0) // no properties
	body = append(body, payload...)
	one := append([]byte{0x30}, remaining(len(body))...)
	one = append(one, body...)
	var out []byte
	for range n {
		out = append(out, one...)
	}
	return out
}

func connectPacket(ep Endpoint) []byte {
	str := func(b []byte, s string) []byte {
		return append(binary.BigEndian.AppendUint16(b, uint16(len(s))), s...)
	}
	flags := byte(0x02)
	if ep.Username != "" {
		flags |= 0x80
	}
	if ep.Password != "" {
		flags |= 0x40
	}
	body := str(nil, "MQTT")
	body = append(body, 5, flags, 0, 60, 0)
	body = str(body, ep.ClientID)
	if ep.Username != "" {
		body = str(body, ep.Username)
	}
	if ep.Password != "" {
		body = str(body, ep.Password)
	}
	return append(append([]byte{0x10}, remaining(len(body))...), body...)
}

func remaining(n int) []byte {
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

// Flooder implements FloodTarget: any client may publish anywhere.
func (m *Mosquitto) Flooder(context.Context) (Endpoint, string, error) {
	return Endpoint{ClientID: "flooder"}, "bench/flood", nil
}

// Flooder implements FloodTarget: a user of the demo app publishing in its
// own IoT area, which the demo app's rules allow, so that every message
// passes authentication and the ACL and meets the limits.
func (w *Warbler) Flooder(ctx context.Context) (Endpoint, string, error) {
	tr, err := w.user(ctx, w.prefix+"flood")
	if err != nil {
		return Endpoint{}, "", err
	}
	return ep(tr), "w/" + w.app + "/iot/" + w.prefix + "flood/x", nil
}

// renewUsers makes the next scenario use users of its own, so that its
// sends are not taken for retries of an earlier scenario's.
func (w *Warbler) renewUsers() { w.prefix += "n" }
