package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/warblerim/warbler/chat"
	"github.com/warblerim/warbler/hooks"
	"github.com/warblerim/warbler/internal/mqtttest"
	"github.com/warblerim/warbler/protocol"
)

// The whole server under more chat load than limits.overload allows: real
// clients pipeline sends until the server sheds. Every PUBACK is either
// 0x00 (and the message is in the log) or 0x97 "server busy" (and it is
// not); the refusals show on /metrics; and once the load stops, the server
// recovers: a new client connects and sends.
func TestOverloadThroughTheServer(t *testing.T) {
	s := startServer(t, func(c *Config) {
		c.Chat.SendRate = -1
		c.Limits.Overload = OverloadConfig{MaxInflightSends: 3, ResumeInflightSends: 1}
	})
	creds(t, s, "sink", "d1") // the recipient exists
	const senders, window = 6, 32
	var (
		stop     atomic.Bool
		mu       sync.Mutex
		acked    = map[string]bool{}
		refused  = map[string]bool{}
		problems []string
		wg       sync.WaitGroup
	)
	clients := make([]*mqtttest.Client, senders) // all connected before the load starts
	for i := range clients {
		clients[i] = connectAs(t, s, mqtttest.DialTCP(t, s.Addrs().MQTT), fmt.Sprint("load", i), "d1")
	}
	for i, c := range clients {
		user := fmt.Sprint("load", i)
		up := protocol.Uplink("demo", user, "d1")
		sem := make(chan struct{}, window) // publishes in flight per client
		wg.Add(1)
		go func() {
			defer wg.Done()
			var inner sync.WaitGroup
			defer inner.Wait()
			for n := 0; !stop.Load(); n++ {
				sem <- struct{}{}
				inner.Add(1)
				cmid := fmt.Sprintf("%s-%d", user, n)
				go func() {
					defer inner.Done()
					defer func() { <-sem }()
					ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					defer cancel()
					body := fmt.Sprintf(`{"to":"sink","cmid":%q,"type":"text","body":"x"}`, cmid)
					resp, err := c.Client.Publish(ctx, &paho.Publish{Topic: up, QoS: 1, Payload: []byte(body)})
					mu.Lock()
					defer mu.Unlock()
					switch {
					case resp == nil:
						problems = append(problems, fmt.Sprintf("%s: no PUBACK: %v", cmid, err))
					case resp.ReasonCode == 0:
						acked[cmid] = true
					case resp.ReasonCode == 0x97 && resp.Properties != nil && resp.Properties.ReasonString == "server busy":
						refused[cmid] = true
					default:
						problems = append(problems, fmt.Sprintf("%s: PUBACK 0x%x %+v", cmid, resp.ReasonCode, resp.Properties))
					}
				}()
			}
		}()
	}
	deadline := time.Now().Add(60 * time.Second)
	for s.Overload().Refused()[hooks.ShedChat] < 20 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	stop.Store(true)
	wg.Wait()
	if len(problems) > 0 {
		t.Fatalf("%d bad answers, first: %s", len(problems), problems[0])
	}
	if len(refused) == 0 {
		t.Fatalf("no send refused within 60 s (%d acked): the load never passed limits.overload", len(acked))
	}
	t.Logf("%d sends acked, %d refused with 0x97 \"server busy\", %d shedding episodes", len(acked), len(refused), s.Overload().Episodes())

	// Recovery: with the load gone the backlog drains, and new work is
	// accepted again.
	waitFor(t, "the server to stop shedding", func() bool { return metricValue(t, s, "warbler_overload_shedding") == 0 })
	late := connectAs(t, s, mqtttest.DialTCP(t, s.Addrs().MQTT), "late", "d1")
	if code, err := late.Publish(t, protocol.Uplink("demo", "late", "d1"), 1,
		[]byte(`{"to":"sink","cmid":"late-0","type":"text","body":"x"}`)); code != 0 || err != nil {
		t.Fatalf("send after recovery: 0x%x %v", code, err)
	}
	acked["late-0"] = true
	if got := metricValue(t, s, `warbler_overload_refused_total{what="chat"}`); got < float64(len(refused)) {
		t.Fatalf("metric counts %v chat refusals, clients saw %d", got, len(refused))
	}

	// No acked message lost, no refused one stored.
	stored := map[string]bool{}
	for i := range senders + 1 {
		user := fmt.Sprint("load", i)
		if i == senders {
			user = "late"
		}
		var after uint64
		for {
			res, err := s.Chat().History(context.Background(), chat.Sender{App: "demo", User: "sink", Device: "d1"},
				protocol.DirectConvID(user, "sink"), 0, after, 200)
			var pe *protocol.Error
			if errors.As(err, &pe) && pe.Code == protocol.CodeNotMember {
				break // nothing of this sender's was stored, so there is no conversation
			}
			if err != nil {
				t.Fatalf("history of %s: %v", user, err)
			}
			for _, raw := range res.Messages {
				var m protocol.Message
				if err := json.Unmarshal(raw, &m); err != nil {
					t.Fatal(err)
				}
				stored[m.CMID] = true
				after = max(after, m.Seq)
			}
			if !res.More || len(res.Messages) == 0 {
				break
			}
		}
	}
	for cmid := range acked {
		if !stored[cmid] {
			t.Errorf("acked %s is not in the log", cmid)
		}
	}
	for cmid := range refused {
		if stored[cmid] {
			t.Errorf("refused %s was stored", cmid)
		}
	}
}

// waitFor polls cond until it holds, for at most 30 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
