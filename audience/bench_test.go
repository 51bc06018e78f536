package audience_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/warblerim/warbler/audience"
	"github.com/warblerim/warbler/storage"
)

// BenchmarkEvaluate100k evaluates tag expressions over 100 000 users in a
// real store: "cold" after a write to the app (the tag sets are read from
// the index), "warm" from the cache.
func BenchmarkEvaluate100k(b *testing.B) {
	e := newEnv(b)
	ctx := context.Background()
	const n = 100_000
	for i := 0; i < n; i += 1000 {
		users := make([]storage.User, 0, 1000)
		for j := i; j < i+1000; j++ {
			tags := []string{"promo"}
			if j%10 == 0 {
				tags = append(tags, "churned")
			}
			if j%3 == 0 {
				tags = append(tags, "vip")
			}
			users = append(users, storage.User{App: "a", ID: fmt.Sprintf("u%06d", j), Tags: tags})
		}
		if err := e.ids.CreateUsers(ctx, users); err != nil {
			b.Fatal(err)
		}
	}
	for _, src := range []string{"promo", "vip AND NOT churned", "NOT vip OR churned"} {
		expr, err := audience.ParseTags(src)
		if err != nil {
			b.Fatal(err)
		}
		for _, warm := range []bool{false, true} {
			name := src + "/cold"
			if warm {
				name = src + "/warm"
			}
			b.Run(name, func(b *testing.B) {
				var got int
				for b.Loop() {
					if !warm {
						b.StopTimer()
						if _, err := e.ids.UpdateUser(ctx, "a", "u000001", func(*storage.User) error { return nil }); err != nil {
							b.Fatal(err)
						}
						b.StartTimer()
					}
					us, err := e.svc.Evaluate(ctx, "a", expr)
					if err != nil {
						b.Fatal(err)
					}
					got = len(us)
				}
				b.ReportMetric(float64(got), "users")
			})
		}
	}
}
