package broker

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
)

// connect5 and connect3 are minimal valid CONNECT packets.
var (
	connect5 = []byte{0x10, 0x10, 0, 4, 'M', 'Q', 'T', 'T', 5, 0x02, 0, 60, 0, 0, 3, 'f', 'z', '1'}
	connect3 = []byte{0x10, 0x0f, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 60, 0, 3, 'f', 'z', '2'}
)

func cat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

// FuzzConnection drives a whole client connection of a real broker over
// net.Pipe with arbitrary bytes: the CONNECT, then anything. Whatever the
// input, the connection handler must return, the process must not crash,
// and no panic may get past the packet guard into the broker.
func FuzzConnection(f *testing.F) {
	seeds := [][]byte{
		connect5,
		connect3,
		cat(connect5, []byte{0x82, 0x08, 0x00, 0x01, 0x00, 0x00, 0x03, 'a', '/', 'b'}),       // truncated v5 SUBSCRIBE
		cat(connect5, []byte{0x82, 0x09, 0x00, 0x01, 0x00, 0x00, 0x03, 'a', '/', 'b', 0x01}), // valid SUBSCRIBE
		cat(connect3, []byte{0x82, 0x08, 0x00, 0x01, 0x00, 0x03, 'a', '/', 'b', 0x01}),
		cat(connect5, []byte{0x32, 0x08, 0x00, 0x01, 'a', 0x00, 0x01, 0x00, 'h', 'i'}),        // QoS1 PUBLISH
		cat(connect5, []byte{0x30, 0x05, 0x00, 0x01, '#', 0x00, 'x'}),                         // wildcard topic
		cat(connect5, []byte{0x32, 0x04, 0x00, 0x01, 'a', 0x00}),                              // QoS1 without packet ID
		cat(connect5, []byte{0x30, 0x09, 0x00, 0x01, 'a', 0x04, 0x01, 0x00, 0x01, 0x01, 'x'}), // repeated property
		cat(connect5, []byte{0xA2, 0x06, 0x00, 0x02, 0x00, 0x00, 0x01, 'a'}),                  // UNSUBSCRIBE
		cat(connect5, []byte{0xF0, 0x02, 0x00, 0x00}),                                         // AUTH
		cat(connect5, []byte{0xE0, 0x00}),                                                     // DISCONNECT
		{0x10, 0xFF, 0xFF, 0xFF, 0x7F},
		{0xC0, 0x00},
	}
	for _, s := range seeds {
		f.Add(s)
	}
	s, err := New(fuzzConfig(f), Options{Logger: slog.New(slog.DiscardHandler), Hooks: []mqtt.Hook{new(auth.AllowHook)}})
	if err != nil {
		f.Fatal(err)
	}
	if err := s.Start(); err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = s.Shutdown(f.Context()) })
	g := s.guardOptions()
	g.connectTimeout = time.Second

	f.Fuzz(func(t *testing.T, data []byte) {
		client, server := net.Pipe()
		done := make(chan struct{})
		go func() {
			defer close(done)
			g.establish("mqtt", server, s.mqtt.EstablishConnection)
		}()
		go func() { _, _ = io.Copy(io.Discard, client) }()
		_ = client.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = client.Write(data)
		_ = client.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("connection handler did not return")
		}
		if p := testutilCounter(s.metrics.Panics); p != 0 {
			t.Fatalf("%v panics reached the broker past the packet guard", p)
		}
	})
}

func fuzzConfig(f *testing.F) Config {
	cfg := Default()
	cfg.Data = f.TempDir()
	cfg.MQTT.Addr = "127.0.0.1:0"
	cfg.MQTT.WSAddr = ""
	cfg.HTTP.Addr = ""
	cfg.MQTT.MaxPacketSize = 4096
	return cfg
}

// FuzzGuardFraming checks the packet guard alone: it never panics, and what
// it passes on is always an unaltered prefix of its input (a refused or
// truncated packet ends the stream; nothing is ever rewritten or invented).
func FuzzGuardFraming(f *testing.F) {
	f.Add(cat(connect5, []byte{0x32, 0x08, 0x00, 0x01, 'a', 0x00, 0x01, 0x00, 'h', 'i'}, []byte{0xC0, 0x00}))
	f.Add(cat(connect3, []byte{0x82, 0x08, 0x00, 0x01, 0x00, 0x03, 'a', '/', 'b', 0x01}))
	f.Add([]byte{0x10, 0xFF, 0xFF, 0xFF, 0x7F})
	f.Add(cat(connect5, []byte{0x30, 0x0D, 0x00, 0x01, 'a', 0x08, 0x26, 0x00, 0x01, 'k', 0x00, 0x01, 'v', 0x01, 0x01, 'x'}))
	f.Fuzz(func(t *testing.T, data []byte) {
		client, server := net.Pipe()
		go func() {
			_, _ = client.Write(data)
			_ = client.Close()
		}()
		g := newGuardConn(server, 4096, 0, nil)
		out, _ := io.ReadAll(g)
		_ = server.Close()
		if !bytes.HasPrefix(data, out) {
			t.Fatalf("guard passed %q, not a prefix of its input %q", out, data)
		}
	})
}
