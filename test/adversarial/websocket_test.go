package adversarial

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/warblerim/warbler/broker"
	"github.com/warblerim/warbler/internal/mqtttest"
	"github.com/warblerim/warbler/internal/wsstream"
)

// Case 17: a WebSocket from a foreign Origin is refused with 403 on both
// WebSocket endpoints; a frame larger than the maximum packet size closes
// the socket with status 1009 from its header alone; a banned address
// gets 403 before the upgrade.
func TestCase17WebSocket(t *testing.T) {
	s := start(t, func(c *broker.Config) {
		c.MQTT.MaxPacketSize = 1024
		c.MQTT.AllowedOrigins = []string{"https://app.example.com"}
	})
	ctl := newControl(t, s)
	for _, addr := range []string{s.Addrs().WS, s.Addrs().HTTP} {
		url := "ws://" + addr + "/mqtt"
		for _, origin := range []string{"https://evil.example", "http://" + addr + ".evil.example", "null"} {
			_, resp, err := mqtttest.DialWS(t, url, origin)
			if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
				t.Errorf("%s from Origin %q: %v %v, want 403", addr, origin, resp, err)
			}
		}
		conn, _, err := mqtttest.DialWS(t, url, "https://app.example.com")
		if err != nil {
			t.Fatalf("allowlisted origin: %v", err)
		}
		cid, u, p := creds(t, s, "demo", "ws", "d-"+strings.ReplaceAll(addr, ":", "-"))
		mqtttest.MustConnect(t, conn, cid, u, p)
	}
	if n := metric(t, s, `warbler_websocket_rejected_total{reason="origin"}`); n != 6 {
		t.Errorf("origin refusals %v, want 6", n)
	}

	conn, _, err := mqtttest.DialWS(t, "ws://"+s.Addrs().WS+"/mqtt", "")
	if err != nil {
		t.Fatal(err)
	}
	// A masked binary frame header claiming 1 MiB, without the payload.
	hdr := []byte{0x82, 0x80 | 127, 0, 0, 0, 0, 0, 0x10, 0, 0, 1, 2, 3, 4}
	if _, err := conn.(*wsstream.Conn).Conn.Write(hdr); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err = conn.Read(make([]byte, 16)); !strings.Contains(fmt.Sprint(err), "1009") {
		t.Fatalf("want close 1009 (message too big), got %v", err)
	}

	key := adminKey(t, s)
	if r := api(t, s, "POST", "/v1/bans", key, map[string]any{"kind": "ip", "value": "127.0.0.1"}, nil); r.StatusCode != 201 {
		t.Fatal(r.StatusCode)
	}
	_, resp, err := mqtttest.DialWS(t, "ws://"+s.Addrs().WS+"/mqtt", "")
	if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("WebSocket from a banned address: %v %v, want 403", resp, err)
	}
	// The ban also covered the control pair, which is on 127.0.0.1: lift it
	// and check that the server still serves.
	if r := apiFrom(t, httpFrom("127.0.0.5"), s, "DELETE", "/v1/bans/ip/127.0.0.1", key, nil, nil); r.StatusCode != 204 {
		t.Fatal(r.StatusCode)
	}
	ctl = newControl(t, s)
	ctl.check(t)
}
