package mqttstop_test

import (
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/warblerim/warbler/internal/mqttstop"
)

// connect5 is an MQTT 5 CONNECT with client ID id.
func connect5(id string) []byte {
	body := append([]byte{0, 4, 'M', 'Q', 'T', 'T', 5, 0x02, 0, 60, 0, 0, byte(len(id))}, id...)
	return append([]byte{0x10, byte(len(body))}, body...)
}

// Clients that disconnect while the server stops: Close returns, every
// time, and every client is closed. (mochi's own Close can hang here; see
// the package documentation.)
func TestCloseWhileClientsLeave(t *testing.T) {
	rounds := 30
	if testing.Short() {
		rounds = 5
	}
	for round := range rounds {
		srv := mqtt.New(&mqtt.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		if err := srv.AddListener(listeners.NewNet("tcp", ln)); err != nil {
			t.Fatal(err)
		}
		if err := srv.Serve(); err != nil {
			t.Fatal(err)
		}
		const n = 20
		conns := make([]net.Conn, n)
		for i := range conns {
			c, err := net.DialTimeout("tcp", ln.Addr().String(), 10*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Write(connect5(string(rune('a'+i)) + "x")); err != nil {
				t.Fatal(err)
			}
			c.SetReadDeadline(time.Now().Add(30 * time.Second))
			b := make([]byte, 1)
			if _, err := io.ReadFull(c, b); err != nil || b[0] != 0x20 {
				t.Fatalf("round %d client %d: no CONNACK: %v %x", round, i, err, b)
			}
			conns[i] = c
		}
		// Half the clients leave while the server stops.
		var wg sync.WaitGroup
		for _, c := range conns[:n/2] {
			wg.Go(func() { c.Close() })
		}
		done := make(chan error, 1)
		go func() { done <- mqttstop.Close(srv) }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
		case <-time.After(time.Minute):
			t.Fatalf("round %d: Close did not return within a minute", round)
		}
		wg.Wait()
		for i, c := range conns[n/2:] {
			c.SetReadDeadline(time.Now().Add(30 * time.Second))
			if _, err := io.ReadAll(c); err != nil {
				t.Fatalf("round %d client %d still open: %v", round, n/2+i, err)
			}
		}
	}
}
