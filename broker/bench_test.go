package broker

import (
	"fmt"
	"runtime"
	"testing"
)

// BenchmarkIdleConnectionMemory reports the heap held per connected,
// authenticated MQTT 5 client that sits idle (b.N clients), with Warbler's
// outbound queue of 256 packets and with the broker's own default of 8192.
// Run with -benchtime=1000x.
func BenchmarkIdleConnectionMemory(b *testing.B) {
	for _, pending := range []int32{256, 8192} {
		b.Run(fmt.Sprintf("writes_pending=%d", pending), func(b *testing.B) {
			idleConnections(b, pending)
		})
	}
}

func idleConnections(b *testing.B, pending int32) {
	s := startServer(b, func(c *Config) { c.MQTT.MaxWritesPending = pending })
	// Tokens first: issuing one registers the device in the store, which
	// is not connection memory.
	for i := range b.N {
		creds(b, s, "raw", fmt.Sprintf("d%d", i))
	}
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	g0 := runtime.NumGoroutine()
	before := heap()
	b.ResetTimer()
	for i := range b.N {
		// Raw clients (a socket and a hand-made CONNECT) keep the client
		// side's share of the heap negligible.
		rawConnect(b, s, fmt.Sprintf("d%d", i))
	}
	b.StopTimer()
	after := heap()
	b.ReportMetric(float64(after-before)/float64(b.N), "heap-bytes/conn")
	b.ReportMetric(float64(runtime.NumGoroutine()-g0)/float64(b.N), "goroutines/conn")
}
