package badgerstore

import (
	"bytes"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/warblerim/warbler/storage"
)

// BenchmarkAppendParallel measures durable appends from many concurrent
// senders (each its own conversation, one 200-byte message per Append).
// "group" is the group committer as shipped; "nogroup" caps a batch at one
// request, i.e. one sync per message, for comparison. appends/sync is how
// many senders shared each fsync.
func BenchmarkAppendParallel(b *testing.B) {
	for _, tc := range []struct {
		name     string
		maxBatch int
	}{{"group", 0}, {"nogroup", 1}} {
		for _, par := range []int{1, 16} {
			b.Run(fmt.Sprintf("%s/senders=%dxGOMAXPROCS", tc.name, par), func(b *testing.B) {
				db, err := Open(b.TempDir(), Options{})
				if err != nil {
					b.Fatal(err)
				}
				defer db.Close()
				s := NewChat(db, ChatOptions{MaxBatch: tc.maxBatch})
				defer s.Close()
				data := bytes.Repeat([]byte("x"), 200)
				var convs atomic.Int64
				b.SetParallelism(par)
				b.ResetTimer()
				b.RunParallel(func(pb *testing.PB) {
					conv := fmt.Sprint("c", convs.Add(1))
					var seq uint64
					for pb.Next() {
						seq++
						err := s.Append(bg, "app", storage.AppendBatch{Entries: []storage.LogEntry{{Conv: conv, Seq: seq, TS: 1, Sender: "u", Data: data}}})
						if err != nil {
							b.Error(err)
							return
						}
					}
				})
				b.StopTimer()
				st := s.Stats()
				if st.Batches > 0 {
					b.ReportMetric(float64(st.Requests)/float64(st.Batches), "appends/sync")
				}
			})
		}
	}
}
