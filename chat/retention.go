package chat

import (
	"context"
	"sync"
	"time"
)

type appConv struct{ app, conv string }

// RunRetention trims every conversation once, by the policy of its app
// (Options.Retention), and returns how many messages it deleted. Heads and
// read positions are untouched: seqs keep counting up, and a device whose
// cursor points into the trimmed part simply syncs from the oldest message
// still kept.
func (s *Service) RunRetention(ctx context.Context) (int, error) {
	if s.o.Retention == nil {
		return 0, nil
	}
	var all []appConv
	err := s.store.WalkConversations(ctx, func(app, conv string) error {
		all = append(all, appConv{app, conv})
		return nil
	})
	if err != nil {
		return 0, err
	}
	deleted := 0
	policies := map[string]Retention{}
	for _, ac := range all {
		p, ok := policies[ac.app]
		if !ok {
			p = s.o.Retention(ac.app)
			policies[ac.app] = p
		}
		if p.MaxAge <= 0 && p.MaxMessages <= 0 {
			continue
		}
		var olderThan int64
		if p.MaxAge > 0 {
			olderThan = s.now().Add(-p.MaxAge).UnixMilli()
		}
		n, err := s.store.Trim(ctx, ac.app, ac.conv, olderThan, p.MaxMessages)
		deleted += n
		if err != nil {
			return deleted, err
		}
	}
	return deleted, nil
}

// StartRetention runs RunRetention every interval (default 10 minutes) in
// a goroutine, logging failures, until the returned stop function is
// called; stop waits for a pass in progress to end and may be called more
// than once. In a cluster, run it on one node (or accept that passes
// overlap: trimming is idempotent).
func (s *Service) StartRetention(interval time.Duration) (stop func()) {
	if interval <= 0 {
		interval = 10 * time.Minute
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				n, err := s.RunRetention(ctx)
				if err != nil && ctx.Err() == nil {
					s.log.Error("chat retention pass failed", "deleted", n, "err", err)
				} else if n > 0 {
					s.log.Info("chat retention pass", "deleted", n)
				}
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			cancel()
			<-done
		})
	}
}
