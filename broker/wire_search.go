package broker

import (
	"context"
	"errors"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/warblerim/warbler/api"
	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/search"
	"github.com/warblerim/warbler/storage/badgerstore"
)

// searchState is the Server's part for search.
type searchState struct {
	search *search.Service
}

// lateSearch is handed to the chat service before the search service
// exists (each needs the other); it is set before any client connects.
// Entries stored before that are read from the log by the indexer's
// catch-up.
type lateSearch struct{ s *Server }

func (l lateSearch) Search(ctx context.Context, app, user, q, conv string, limit int) (protocol.SearchResult, error) {
	if l.s.search == nil {
		return protocol.SearchResult{}, errors.New("search service not started")
	}
	return l.s.search.Search(ctx, app, user, q, conv, limit)
}

func (l lateSearch) Stored(app string, msg protocol.Message) {
	if l.s.search != nil {
		l.s.search.Stored(app, msg)
	}
}

// wireSearch starts the search indexer (which first catches up with the
// log) and the search HTTP route.
func (s *Server) wireSearch() error {
	svc, err := search.New(search.Options{
		Index:  badgerstore.NewSearchIndex(s.db),
		Log:    s.chatStore,
		Convs:  s.chatStore,
		Access: s.chat,
		Logger: s.log.With("component", "search"),
	})
	if err != nil {
		return err
	}
	s.search = svc
	stop := svc.Start()
	s.closers = append(s.closers, func() error { stop(); return nil })
	api.NewSearchAPI(api.SearchOptions{Service: svc, Identity: s.identity}).Register(s.mux)
	s.metrics.Registry.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "warbler_search_indexed_total", Help: "Log entries read by the search indexer."},
			func() float64 { return float64(svc.Stats().Indexed) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "warbler_search_dropped_total", Help: "Live hand-offs to the search indexer dropped at a full queue (read from the log instead)."},
			func() float64 { return float64(svc.Stats().Dropped) }),
	)
	return nil
}
