// Package bench is Warbler's load generator: MQTT-level scenarios run with
// real paho.golang clients against a real server process on loopback,
// measuring throughput, latency percentiles and the server's CPU time and
// peak memory. The same scenario runs against Warbler and against Mosquitto,
// in the same run, so results are reported as ratios on the same machine.
//
// Targets are started and stopped by the package (see StartWarbler and
// StartMosquitto); each one knows how to name clients, topics and payloads
// for a scenario: plain topics for Mosquitto, the chat protocol (uplink
// envelopes, downlink messages) for Warbler.
package bench

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

// Endpoint is what one client connects with.
type Endpoint struct {
	ClientID, Username, Password string
}

// Target is a server under test.
type Target interface {
	Name() string
	// Addr is the MQTT/TCP address.
	Addr() string
	// PID is the server process, for CPU and memory readings.
	PID() int
	// Pair returns the publisher and subscriber of 1:1 pair i, with the
	// topic the publisher writes and the filter the subscriber reads.
	Pair(ctx context.Context, i int) (pub, sub Endpoint, topic, filter string, err error)
	// Group prepares a group of n members: the sender, the members, the
	// topic the sender writes and the filter of each member.
	Group(ctx context.Context, n int) (sender Endpoint, members []Endpoint, topic string, filters []string, err error)
	// Encode builds the payload of message seq sent at sentNs to pair or
	// group key, padded to about size bytes.
	Encode(key string, seq int, sentNs int64, size int) []byte
	// Decode extracts the send time from a delivered payload; ok is false
	// for payloads that are not benchmark messages (receipts, replies).
	Decode(payload []byte) (sentNs int64, ok bool)
	// Close stops the server.
	Close() error
}

// Result is one scenario's measurement on one target.
type Result struct {
	Scenario   string        `json:"scenario"`
	Target     string        `json:"target"`
	Sent       int           `json:"sent"`
	Delivered  int           `json:"delivered"`
	Duration   time.Duration `json:"duration"`
	Throughput float64       `json:"throughput_msgs_per_s"`
	P50        time.Duration `json:"p50"`
	P99        time.Duration `json:"p99"`
	Max        time.Duration `json:"max"`
	ServerCPU  time.Duration `json:"server_cpu"`
	ServerRSS  int64         `json:"server_peak_rss_bytes"`
	Note       string        `json:"note,omitempty"`
}

func (r Result) String() string {
	return fmt.Sprintf("%-10s %-10s sent=%-7d delivered=%-8d %8.0f msg/s  p50=%-9v p99=%-9v max=%-9v cpu=%-8v rss=%dMiB %s",
		r.Scenario, r.Target, r.Sent, r.Delivered, r.Throughput, r.P50.Round(time.Microsecond),
		r.P99.Round(time.Microsecond), r.Max.Round(time.Microsecond), r.ServerCPU.Round(time.Millisecond),
		r.ServerRSS>>20, r.Note)
}

// latencies collects samples from many goroutines.
type latencies struct {
	mu sync.Mutex
	d  []time.Duration
}

func (l *latencies) add(d time.Duration) { l.mu.Lock(); l.d = append(l.d, d); l.mu.Unlock() }

func (l *latencies) fill(r *Result) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.d) == 0 {
		return
	}
	sort.Slice(l.d, func(i, j int) bool { return l.d[i] < l.d[j] })
	r.P50 = l.d[len(l.d)/2]
	r.P99 = l.d[len(l.d)*99/100]
	r.Max = l.d[len(l.d)-1]
}

// client is a connected paho client delivering to a handler.
type client struct {
	*paho.Client
}

func dial(ctx context.Context, addr string, ep Endpoint, clean bool, expiry uint32, onMsg func(*paho.Publish)) (*client, *paho.Connack, error) {
	d := net.Dialer{Timeout: 5 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	c := paho.NewClient(paho.ClientConfig{
		Conn: conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			if onMsg != nil {
				onMsg(pr.Packet)
			}
			return true, nil
		}},
		PacketTimeout: 30 * time.Second,
	})
	cp := &paho.Connect{ClientID: ep.ClientID, CleanStart: clean, KeepAlive: 60,
		Properties: &paho.ConnectProperties{RequestProblemInfo: true}}
	if expiry > 0 {
		cp.Properties.SessionExpiryInterval = &expiry
	}
	if ep.Username != "" {
		cp.Username, cp.UsernameFlag = ep.Username, true
	}
	if ep.Password != "" {
		cp.Password, cp.PasswordFlag = []byte(ep.Password), true
	}
	ack, err := c.Connect(ctx, cp)
	if err != nil {
		conn.Close()
		return nil, ack, fmt.Errorf("connect %s: %w", ep.ClientID, err)
	}
	return &client{c}, ack, nil
}

func (c *client) close() { _ = c.Disconnect(&paho.Disconnect{}) }

func subscribe(ctx context.Context, c *client, filter string) error {
	ack, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: 1}}})
	if err != nil {
		return err
	}
	if len(ack.Reasons) != 1 || ack.Reasons[0] >= 0x80 {
		return fmt.Errorf("subscribe %s refused: %v", filter, ack.Reasons)
	}
	return nil
}

// PairsOptions configure the 1:1 scenario.
type PairsOptions struct {
	Pairs    int           // publisher/subscriber pairs
	Messages int           // messages per publisher
	Window   int           // QoS 1 publishes in flight per publisher
	Rate     int           // total messages per second; 0 = as fast as possible
	Size     int           // payload size in bytes
	Timeout  time.Duration // bound on the whole run
}

// Pairs runs N 1:1 pairs: each publisher sends QoS 1 messages to its own
// subscriber; throughput counts messages delivered, latency is publish to
// delivery.
func Pairs(ctx context.Context, t Target, o PairsOptions) (Result, error) {
	r := Result{Scenario: "pairs", Target: t.Name()}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	var lat latencies
	var delivered atomic.Int64
	want := int64(o.Pairs * o.Messages)
	allIn := make(chan struct{})
	var subs, pubs []*client
	defer func() {
		for _, c := range append(subs, pubs...) {
			c.close()
		}
	}()
	topics := make([]string, o.Pairs)
	for i := range o.Pairs {
		pub, sub, topic, filter, err := t.Pair(ctx, i)
		if err != nil {
			return r, err
		}
		topics[i] = topic
		sc, _, err := dial(ctx, t.Addr(), sub, true, 0, func(p *paho.Publish) {
			if ns, ok := t.Decode(p.Payload); ok {
				lat.add(time.Duration(time.Now().UnixNano() - ns))
				if delivered.Add(1) == want {
					close(allIn)
				}
			}
		})
		if err != nil {
			return r, err
		}
		subs = append(subs, sc)
		if err := subscribe(ctx, sc, filter); err != nil {
			return r, err
		}
		pc, _, err := dial(ctx, t.Addr(), pub, true, 0, nil)
		if err != nil {
			return r, err
		}
		pubs = append(pubs, pc)
	}
	cpu0, _ := procCPU(t.PID())
	var sent atomic.Int64
	var sendErr atomic.Value
	start := time.Now()
	var interval time.Duration
	if o.Rate > 0 {
		interval = time.Duration(float64(time.Second) * float64(o.Pairs*o.Window) / float64(o.Rate))
	}
	var wg sync.WaitGroup
	for i, pc := range pubs {
		for w := range o.Window {
			wg.Add(1)
			go func() {
				defer wg.Done()
				next := time.Now()
				for seq := w; seq < o.Messages; seq += o.Window {
					if interval > 0 {
						if d := time.Until(next); d > 0 {
							time.Sleep(d)
						}
						next = next.Add(interval)
					}
					p := t.Encode("p"+strconv.Itoa(i), seq, time.Now().UnixNano(), o.Size)
					resp, err := pc.Publish(ctx, &paho.Publish{Topic: topics[i], QoS: 1, Payload: p})
					if err != nil {
						sendErr.Store(err)
						return
					}
					if resp != nil && resp.ReasonCode >= 0x80 {
						sendErr.Store(fmt.Errorf("PUBACK reason 0x%x", resp.ReasonCode))
						return
					}
					sent.Add(1)
				}
			}()
		}
	}
	wg.Wait()
	if err, _ := sendErr.Load().(error); err != nil {
		return r, err
	}
	select {
	case <-allIn:
	case <-ctx.Done():
		r.Note = "timed out waiting for deliveries"
	}
	r.Duration = time.Since(start)
	r.Sent, r.Delivered = int(sent.Load()), int(delivered.Load())
	r.Throughput = float64(r.Delivered) / r.Duration.Seconds()
	lat.fill(&r)
	cpu1, _ := procCPU(t.PID())
	r.ServerCPU = cpu1 - cpu0
	r.ServerRSS, _ = procPeakRSS(t.PID())
	return r, nil
}

// GroupOptions configure the fan-out scenario.
type GroupOptions struct {
	Members  int
	Messages int
	Size     int
	Timeout  time.Duration
}

// Group connects Members subscribers and one sender, then sends Messages
// messages one after another, each waiting until every member has it. The
// latency of a message is the time until its last delivery (the fan-out
// time); throughput counts deliveries.
func Group(ctx context.Context, t Target, o GroupOptions) (Result, error) {
	r := Result{Scenario: fmt.Sprintf("group%d", o.Members), Target: t.Name()}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	sender, members, topic, filters, err := t.Group(ctx, o.Members)
	if err != nil {
		return r, err
	}
	var got atomic.Int64
	round := make(chan struct{}, 1)
	var target atomic.Int64
	var clients []*client
	defer func() {
		for _, c := range clients {
			c.close()
		}
	}()
	var mu sync.Mutex
	for i, ep := range members {
		c, _, err := dial(ctx, t.Addr(), ep, true, 0, func(p *paho.Publish) {
			if _, ok := t.Decode(p.Payload); ok {
				if got.Add(1) == target.Load() {
					select {
					case round <- struct{}{}:
					default:
					}
				}
			}
		})
		if err != nil {
			return r, err
		}
		mu.Lock()
		clients = append(clients, c)
		mu.Unlock()
		if err := subscribe(ctx, c, filters[i]); err != nil {
			return r, err
		}
	}
	sc, _, err := dial(ctx, t.Addr(), sender, true, 0, nil)
	if err != nil {
		return r, err
	}
	clients = append(clients, sc)
	cpu0, _ := procCPU(t.PID())
	var lat latencies
	start := time.Now()
	for seq := range o.Messages {
		target.Store(int64((seq + 1) * len(members)))
		t0 := time.Now()
		if _, err := sc.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: t.Encode("g", seq, t0.UnixNano(), o.Size)}); err != nil {
			return r, err
		}
		r.Sent++
		select {
		case <-round:
			lat.add(time.Since(t0))
		case <-ctx.Done():
			r.Note = "timed out waiting for fan-out"
			seq = o.Messages
		}
		if ctx.Err() != nil {
			break
		}
	}
	r.Duration = time.Since(start)
	r.Delivered = int(got.Load())
	r.Throughput = float64(r.Delivered) / r.Duration.Seconds()
	lat.fill(&r)
	cpu1, _ := procCPU(t.PID())
	r.ServerCPU = cpu1 - cpu0
	r.ServerRSS, _ = procPeakRSS(t.PID())
	return r, nil
}

// rawEncode is the payload of plain MQTT targets: the send time, the seq,
// then padding.
func rawEncode(seq int, sentNs int64, size int) []byte {
	if size < 16 {
		size = 16
	}
	b := make([]byte, size)
	binary.BigEndian.PutUint64(b, uint64(sentNs))
	binary.BigEndian.PutUint64(b[8:], uint64(seq))
	return b
}

func rawDecode(p []byte) (int64, bool) {
	if len(p) < 16 {
		return 0, false
	}
	return int64(binary.BigEndian.Uint64(p)), true
}

// procCPU returns the user+system CPU time of a process.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	f := strings.Fields(s[i+2:])
	if len(f) < 13 {
		return 0, fmt.Errorf("short /proc stat")
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * (time.Second / 100), nil // USER_HZ is 100 on Linux
}

// procPeakRSS returns a process's peak resident set size.
func procPeakRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			kb, _ := strconv.ParseInt(strings.Fields(line)[1], 10, 64)
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("no VmHWM")
}
