package search_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/search"
	"github.com/warblerim/warbler/storage"
	"github.com/warblerim/warbler/storage/badgerstore"
)

var benchTexts = []string{
	"我们下周去北京开会，记得带护照",
	"Beijing in March: bring the passports and the slides",
	"明天的天气怎么样？听说上海要下雨",
	"lunch at noon? the usual place near the station",
	"会議は東京で午後三時からです",
	"회의는 서울에서 오후 세 시에 합니다",
}

// benchIndex indexes n messages spread over convs conversations.
func benchIndex(b *testing.B, n, convs int) (*search.Service, access) {
	db, err := badgerstore.Open(b.TempDir(), badgerstore.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	st := badgerstore.NewChat(db, badgerstore.ChatOptions{})
	b.Cleanup(func() { st.Close() })
	a := access{"u": {}}
	for c := 0; c < convs; c++ {
		a["u"][fmt.Sprint("c", c)] = 0
	}
	s, err := search.New(search.Options{Index: badgerstore.NewSearchIndex(db), Log: st, Convs: st, Access: a})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	now := time.Now()
	var batch storage.AppendBatch
	for i := 0; i < n; i++ {
		m := protocol.Message{Kind: "msg", Conv: fmt.Sprint("c", i%convs), Seq: uint64(i/convs + 1), TS: now.Add(-time.Duration(n-i) * time.Minute).UnixMilli(),
			From: protocol.Sender{User: "u"}, Type: "text", Body: []byte(fmt.Sprintf(`{"text":%q}`, fmt.Sprint(benchTexts[i%len(benchTexts)], " #", i)))}
		data, _ := json.Marshal(m)
		batch.Entries = append(batch.Entries, storage.LogEntry{Conv: m.Conv, Seq: m.Seq, TS: m.TS, Sender: "u", Data: data})
		if len(batch.Entries) == 1000 || i == n-1 {
			if err := st.Append(ctx, "demo", batch); err != nil {
				b.Fatal(err)
			}
			batch = storage.AppendBatch{}
		}
		if err := s.Index(ctx, "demo", m); err != nil {
			b.Fatal(err)
		}
	}
	return s, a
}

// BenchmarkIndexMessage is the cost of indexing one chat message (about
// 20 terms) in Badger.
func BenchmarkIndexMessage(b *testing.B) {
	s, _ := benchIndex(b, 0, 1)
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		m := protocol.Message{Conv: "c0", Seq: uint64(i + 1), TS: int64(i), From: protocol.Sender{User: "u"}, Type: "text",
			Body: []byte(fmt.Sprintf(`{"text":%q}`, benchTexts[i%len(benchTexts)]))}
		if err := s.Index(ctx, "demo", m); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSearch queries 20 000 indexed messages in 50 conversations.
func BenchmarkSearch(b *testing.B) {
	s, _ := benchIndex(b, 20000, 50)
	ctx := context.Background()
	for _, q := range []string{"北京", "passports beijing", "会議", "lunch station"} {
		b.Run(q, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				r, err := s.Search(ctx, "demo", "u", q, "", 20)
				if err != nil || len(r.Hits) == 0 {
					b.Fatal(err, r)
				}
			}
		})
	}
}
