package media

import (
	"context"
	"errors"
	"os"
	"time"

	"github.com/warblerim/warbler/storage"
)

// SweepStats counts what one sweep removed.
type SweepStats struct {
	Files   int // uploads no message referred to within OrphanTTL
	Blobs   int // blobs (and thumbnails) no record refers to any more
	Uploads int // resumable uploads left unfinished for OrphanTTL
}

// Sweep removes orphans: stored files that no message has referred to
// (Attach links them) within OrphanTTL of their upload, and resumable
// uploads unfinished after OrphanTTL. A blob is removed with the last
// record that refers to it.
func (s *Service) Sweep(ctx context.Context) (SweepStats, error) {
	var st SweepStats
	cutoff := s.o.Now().Add(-s.o.OrphanTTL).UnixMilli()
	err := s.store.WalkOrphans(ctx, func(app, id string, created int64) error {
		if created >= cutoff {
			return nil
		}
		return s.removeFile(ctx, app, id, &st)
	})
	if err != nil {
		return st, err
	}
	var ups []storage.Upload
	err = s.store.WalkUploads(ctx, func(u storage.Upload) error {
		if u.Created < cutoff {
			ups = append(ups, u)
		}
		return nil
	})
	if err != nil {
		return st, err
	}
	for _, u := range ups {
		s.discard(ctx, u)
		st.Uploads++
	}
	return st, nil
}

func (s *Service) removeFile(ctx context.Context, app, id string, st *SweepStats) error {
	s.blobMu.Lock()
	defer s.blobMu.Unlock()
	// Re-read under the lock: a message may have linked it meanwhile.
	f, err := s.store.GetFile(ctx, app, id)
	if errors.Is(err, storage.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if f.Linked {
		return nil
	}
	deleted, left, err := s.store.DeleteOrphan(ctx, f.App, f.ID)
	if err != nil || !deleted {
		return err
	}
	st.Files++
	s.swept.Add(1)
	if left == 0 {
		_ = os.Remove(s.blobPath(f.SHA256))
		_ = os.Remove(s.thumbPath(f.SHA256))
		st.Blobs++
	}
	return nil
}

// StartSweeper runs Sweep every interval until the returned stop is
// called (stop waits for a sweep in progress).
func (s *Service) StartSweeper(interval time.Duration) (stop func()) {
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
				st, err := s.Sweep(ctx)
				if err != nil && ctx.Err() == nil {
					s.log.Error("media: sweep failed", "err", err)
				} else if st.Files+st.Uploads > 0 {
					s.log.Info("media: removed orphaned uploads", "files", st.Files, "blobs", st.Blobs, "uploads", st.Uploads)
				}
			}
		}
	}()
	return func() { cancel(); <-done }
}
