package broker

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/warblerim/warbler/api"
	"github.com/warblerim/warbler/chat"
	"github.com/warblerim/warbler/media"
	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage/badgerstore"
)

// MediaConfig configures attachments: uploads, downloads and the sweeping
// of orphans. Files live in the data directory's "media" folder.
type MediaConfig struct {
	// MaxUpload is the largest upload in bytes (100 MiB) for apps whose
	// settings do not set max_upload_bytes.
	MaxUpload int64 `yaml:"max_upload"`
	// OrphanTTL is how long an upload may stay unreferenced by any message,
	// or a resumable upload unfinished, before it is deleted (24h).
	OrphanTTL Duration `yaml:"orphan_ttl"`
	// SweepInterval is how often orphans are looked for (10m).
	SweepInterval Duration `yaml:"sweep_interval"`
}

func defaultMedia() MediaConfig {
	return MediaConfig{MaxUpload: media.DefaultMaxSize, OrphanTTL: Duration(24 * time.Hour), SweepInterval: Duration(10 * time.Minute)}
}

func (m MediaConfig) validate() error {
	if m.MaxUpload < 1 {
		return fmt.Errorf("config: media.max_upload %d must be positive", m.MaxUpload)
	}
	if m.OrphanTTL.D() < time.Minute {
		return fmt.Errorf("config: media.orphan_ttl %s must be at least 1m", m.OrphanTTL.D())
	}
	if m.SweepInterval.D() < time.Second {
		return fmt.Errorf("config: media.sweep_interval %s must be at least 1s", m.SweepInterval.D())
	}
	return nil
}

// mediaState is the Server's part for attachments.
type mediaState struct {
	media *media.Service
}

// attachments is handed to the chat service before the media service
// exists (each needs the other); it is set before any client connects.
func (s *Server) attachments() chat.Attachments { return lateAttachments{s} }

type lateAttachments struct{ s *Server }

func (l lateAttachments) Attach(ctx context.Context, app, user, conv, id string) (*protocol.Attachment, error) {
	if l.s.media == nil {
		return nil, errors.New("media service not started")
	}
	return l.s.media.Attach(ctx, app, user, conv, id)
}

func (l lateAttachments) Sent(ctx context.Context, app, conv, id string, seq uint64) {
	if l.s.media != nil {
		l.s.media.Sent(ctx, app, conv, id, seq)
	}
}

// wireMedia starts the media service, its orphan sweeper and its HTTP
// routes.
func (s *Server) wireMedia() error {
	cfg := s.cfg.Media
	svc, err := media.New(media.Options{
		Store:   badgerstore.NewMediaStore(s.db),
		Dir:     filepath.Join(s.cfg.Data, "media"),
		Members: s.chat,
		MaxSize: func(app string) int64 {
			if n := s.identity.AppMaxUpload(context.Background(), app); n > 0 {
				return n
			}
			return cfg.MaxUpload
		},
		OrphanTTL: cfg.OrphanTTL.D(),
		Logger:    s.log.With("component", "media"),
	})
	if err != nil {
		return err
	}
	s.media = svc
	stop := svc.StartSweeper(cfg.SweepInterval.D())
	s.closers = append(s.closers, func() error { stop(); return nil })
	api.NewMediaAPI(api.MediaOptions{Service: svc, Identity: s.identity}).Register(s.mux)
	s.metrics.Registry.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "warbler_media_files_stored_total", Help: "Uploads stored as files."},
			func() float64 { return float64(svc.Stats().Stored) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "warbler_media_orphans_removed_total", Help: "Unreferenced uploads removed by the sweeper."},
			func() float64 { return float64(svc.Stats().Swept) }),
	)
	return nil
}
