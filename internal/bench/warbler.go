package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

// apiClient calls Warbler's HTTP API with the admin key.
type apiClient struct {
	base, key string
}

func (a *apiClient) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.base+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+a.key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		return fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, b)
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

// tokenResp is the answer of POST /v1/apps/{app}/tokens.
type tokenResp struct {
	ClientID string            `json:"client_id"`
	Username string            `json:"username"`
	Password string            `json:"password"`
	Topics   map[string]string `json:"topics"`
}

// user creates a user (if needed) and returns a token for its device d1.
func (w *Warbler) user(ctx context.Context, id string) (tokenResp, error) {
	var tr tokenResp
	err := w.api.do(ctx, "POST", "/v1/apps/"+w.app+"/users", map[string]any{"id": id}, nil)
	if err != nil && !strings.Contains(err.Error(), " 409 ") {
		return tr, err
	}
	err = w.api.do(ctx, "POST", "/v1/apps/"+w.app+"/tokens", map[string]any{"user": id, "device": "d1", "ttl": 3600}, &tr)
	return tr, err
}

func ep(t tokenResp) Endpoint {
	return Endpoint{ClientID: t.ClientID, Username: t.Username, Password: t.Password}
}

var (
	pairMu    sync.Mutex
	pairPeers = map[string]string{} // encode key -> receiver user
	groupConv string
)

// Pair makes two users; the sender's uplink carries envelopes to the
// receiver, whose devices read their downlink.
func (w *Warbler) Pair(ctx context.Context, i int) (pub, sub Endpoint, topic, filter string, err error) {
	s, err := w.user(ctx, w.prefix+"s"+strconv.Itoa(i))
	if err != nil {
		return
	}
	rname := w.prefix + "r" + strconv.Itoa(i)
	r, err := w.user(ctx, rname)
	if err != nil {
		return
	}
	pairMu.Lock()
	pairPeers["p"+strconv.Itoa(i)] = rname
	pairMu.Unlock()
	return ep(s), ep(r), s.Topics["uplink"], r.Topics["downlink"], nil
}

// Group makes n members and a sender, and has the sender create a group of
// them over MQTT (request/response on its device topic).
func (w *Warbler) Group(ctx context.Context, n int) (Endpoint, []Endpoint, string, []string, error) {
	sender, err := w.user(ctx, w.prefix+"gs")
	if err != nil {
		return Endpoint{}, nil, "", nil, err
	}
	members := make([]Endpoint, n)
	filters := make([]string, n)
	names := make([]string, n)
	for i := range n {
		names[i] = w.prefix + "g" + strconv.Itoa(i)
		tr, err := w.user(ctx, names[i])
		if err != nil {
			return Endpoint{}, nil, "", nil, err
		}
		members[i], filters[i] = ep(tr), tr.Topics["downlink"]
	}
	reply, err := w.request(ctx, sender, map[string]any{"op": "create", "kind": "group", "name": "bench", "members": names})
	if err != nil {
		return Endpoint{}, nil, "", nil, err
	}
	var res struct {
		Conv struct {
			Conv string `json:"conv"`
		} `json:"conv"`
	}
	if err := json.Unmarshal(reply, &res); err != nil || res.Conv.Conv == "" {
		return Endpoint{}, nil, "", nil, fmt.Errorf("create group: %s", reply)
	}
	pairMu.Lock()
	groupConv = res.Conv.Conv
	pairMu.Unlock()
	return ep(sender), members, sender.Topics["uplink"], filters, nil
}

// request sends one request from a user's device and returns the result of
// its reply (MQTT 3.1.1-style rid correlation on the device topic).
func (w *Warbler) request(ctx context.Context, who tokenResp, req map[string]any) (json.RawMessage, error) {
	replies := make(chan []byte, 16)
	c, _, err := dial(ctx, w.Addr(), ep(who), true, 0, func(p *paho.Publish) { replies <- p.Payload })
	if err != nil {
		return nil, err
	}
	defer c.close()
	if err := subscribe(ctx, c, who.Topics["device"]); err != nil {
		return nil, err
	}
	req["rid"] = "bench"
	b, _ := json.Marshal(req)
	if _, err := c.Publish(ctx, &paho.Publish{Topic: who.Topics["uplink"], QoS: 1, Payload: b}); err != nil {
		return nil, err
	}
	for {
		select {
		case p := <-replies:
			var r struct {
				Kind   string          `json:"kind"`
				RID    string          `json:"rid"`
				Result json.RawMessage `json:"result"`
				Error  json.RawMessage `json:"error"`
			}
			if json.Unmarshal(p, &r) != nil || r.RID != "bench" {
				continue
			}
			if r.Kind == "error" {
				return nil, fmt.Errorf("request failed: %s", r.Error)
			}
			return r.Result, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

type benchBody struct {
	T   int64  `json:"t"`
	Pad string `json:"pad,omitempty"`
}

func (w *Warbler) Encode(key string, seq int, sentNs int64, size int) []byte {
	env := map[string]any{"cmid": key + "-" + strconv.Itoa(seq), "type": "text"}
	pairMu.Lock()
	if key == "g" {
		env["conv"] = groupConv
	} else {
		env["to"] = pairPeers[key]
	}
	pairMu.Unlock()
	body := benchBody{T: sentNs}
	if size > 120 {
		body.Pad = strings.Repeat("x", size-120)
	}
	env["body"] = body
	b, _ := json.Marshal(env)
	return b
}

func (w *Warbler) Decode(p []byte) (int64, bool) {
	var m struct {
		Kind string    `json:"kind"`
		Body benchBody `json:"body"`
	}
	if json.Unmarshal(p, &m) != nil || m.Kind != "msg" || m.Body.T == 0 {
		return 0, false
	}
	return m.Body.T, true
}

// OfflineOptions configure the offline-backlog scenario.
type OfflineOptions struct {
	Messages int
	Page     int // sync page size (Warbler)
	Size     int
	Timeout  time.Duration
}

// OfflineTarget is a target that can run the offline-backlog scenario.
type OfflineTarget interface {
	// Backlog queues n messages for a receiver that is offline and returns
	// a function that reconnects it and returns once it holds all n.
	Backlog(ctx context.Context, o OfflineOptions) (catchUp func(context.Context) (int, error), err error)
}

// Offline measures how long an offline device takes, from reconnecting, to
// hold every message sent while it was away.
func Offline(ctx context.Context, t Target, ot OfflineTarget, o OfflineOptions) (Result, error) {
	r := Result{Scenario: "offline", Target: t.Name(), Sent: o.Messages}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	catchUp, err := ot.Backlog(ctx, o)
	if err != nil {
		return r, err
	}
	cpu0, _ := procCPU(t.PID())
	start := time.Now()
	n, err := catchUp(ctx)
	r.Duration = time.Since(start)
	if err != nil {
		return r, err
	}
	r.Delivered = n
	r.Throughput = float64(n) / r.Duration.Seconds()
	cpu1, _ := procCPU(t.PID())
	r.ServerCPU = cpu1 - cpu0
	r.ServerRSS, _ = procPeakRSS(t.PID())
	return r, nil
}

// sendAll publishes n QoS 1 messages with a window of 32 in flight.
func sendAll(ctx context.Context, c *client, topic string, n int, enc func(seq int) []byte) error {
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for w := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := w; seq < n; seq += 32 {
				resp, err := c.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: enc(seq)})
				if err == nil && resp != nil && resp.ReasonCode >= 0x80 {
					err = fmt.Errorf("PUBACK 0x%x", resp.ReasonCode)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// Offline implements OfflineTarget: the backlog is sent to a user whose
// device is offline; catching up is a paginated sync request loop.
func (w *Warbler) Offline() OfflineTarget { return w }

func (w *Warbler) Backlog(ctx context.Context, o OfflineOptions) (func(context.Context) (int, error), error) {
	s, err := w.user(ctx, w.prefix+"os")
	if err != nil {
		return nil, err
	}
	rname := w.prefix + "or"
	r, err := w.user(ctx, rname)
	if err != nil {
		return nil, err
	}
	pairMu.Lock()
	pairPeers["o"] = rname
	pairMu.Unlock()
	sc, _, err := dial(ctx, w.Addr(), ep(s), true, 0, nil)
	if err != nil {
		return nil, err
	}
	defer sc.close()
	if err := sendAll(ctx, sc, s.Topics["uplink"], o.Messages, func(seq int) []byte {
		return w.Encode("o", seq, time.Now().UnixNano(), o.Size)
	}); err != nil {
		return nil, err
	}
	return func(ctx context.Context) (int, error) {
		replies := make(chan []byte, 4)
		c, _, err := dial(ctx, w.Addr(), ep(r), true, 0, func(p *paho.Publish) {
			if bytes.Contains(p.Payload, []byte(`"rid":"sync`)) {
				replies <- p.Payload
			}
		})
		if err != nil {
			return 0, err
		}
		defer c.close()
		if err := subscribe(ctx, c, r.Topics["device"]); err != nil {
			return 0, err
		}
		got := 0
		cursors := map[string]uint64{}
		for page := 0; ; page++ {
			req := map[string]any{"op": "sync", "rid": "sync" + strconv.Itoa(page), "limit": o.Page}
			if page > 0 {
				req["cursors"] = cursors
			}
			b, _ := json.Marshal(req)
			if _, err := c.Publish(ctx, &paho.Publish{Topic: r.Topics["uplink"], QoS: 1, Payload: b}); err != nil {
				return got, err
			}
			var p []byte
			select {
			case p = <-replies:
			case <-ctx.Done():
				return got, ctx.Err()
			}
			var rep struct {
				Kind   string `json:"kind"`
				Result struct {
					Messages []json.RawMessage `json:"messages"`
					Cursors  map[string]uint64 `json:"cursors"`
					More     bool              `json:"more"`
				} `json:"result"`
				Error json.RawMessage `json:"error"`
			}
			if err := json.Unmarshal(p, &rep); err != nil || rep.Kind != "reply" {
				return got, fmt.Errorf("sync reply: %s", p)
			}
			got += len(rep.Result.Messages)
			cursors = rep.Result.Cursors
			if !rep.Result.More {
				return got, nil
			}
		}
	}, nil
}

// plainOffline is the offline scenario on a plain MQTT broker: a persistent
// session keeps the backlog.
type plainOffline struct{ t Target }

func (p plainOffline) Backlog(ctx context.Context, o OfflineOptions) (func(context.Context) (int, error), error) {
	recv := Endpoint{ClientID: "offline-recv"}
	topic := "bench/offline"
	c, _, err := dial(ctx, p.t.Addr(), recv, true, 3600, nil)
	if err != nil {
		return nil, err
	}
	if err := subscribe(ctx, c, topic); err != nil {
		return nil, err
	}
	c.close()
	sc, _, err := dial(ctx, p.t.Addr(), Endpoint{ClientID: "offline-send"}, true, 0, nil)
	if err != nil {
		return nil, err
	}
	defer sc.close()
	if err := sendAll(ctx, sc, topic, o.Messages, func(seq int) []byte {
		return rawEncode(seq, time.Now().UnixNano(), o.Size)
	}); err != nil {
		return nil, err
	}
	return func(ctx context.Context) (int, error) {
		var mu sync.Mutex
		got := 0
		done := make(chan struct{})
		c, ack, err := dial(ctx, p.t.Addr(), recv, false, 3600, func(*paho.Publish) {
			mu.Lock()
			got++
			if got == o.Messages {
				close(done)
			}
			mu.Unlock()
		})
		if err != nil {
			return 0, err
		}
		defer c.close()
		if !ack.SessionPresent {
			return 0, fmt.Errorf("session not kept by %s", p.t.Name())
		}
		select {
		case <-done:
		case <-ctx.Done():
		}
		mu.Lock()
		defer mu.Unlock()
		return got, ctx.Err()
	}, nil
}
