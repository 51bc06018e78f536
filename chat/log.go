package chat

import (
	"context"
	"encoding/json"
	"errors"

	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage"
)

// Log returns up to limit messages of a conversation with seq > after, in
// ascending order, for operators and backend tools: it checks no
// membership, so callers must have authorized the request (the HTTP API
// requires an admin credential). A conversation that does not exist is a
// not_found error.
func (s *Service) Log(ctx context.Context, app, conv string, after uint64, limit int) (protocol.HistoryResult, error) {
	if _, err := s.store.GetConversation(ctx, app, conv); err != nil {
		if errors.Is(err, storage.ErrNotFound) {
			return protocol.HistoryResult{}, protocol.Errorf(protocol.CodeNotFound, "conversation %s does not exist", conv)
		}
		return protocol.HistoryResult{}, s.internal("read conversation", err)
	}
	maxPage := s.o.Limits.MaxPage
	if maxPage <= 0 {
		maxPage = protocol.DefaultMaxPage
	}
	if limit <= 0 || limit > maxPage {
		limit = maxPage
	}
	es, err := s.store.Range(ctx, app, conv, after+1, true, limit+1)
	if err != nil {
		return protocol.HistoryResult{}, s.internal("read log", err)
	}
	res := protocol.HistoryResult{Conv: conv, Messages: make([]json.RawMessage, 0, len(es))}
	if len(es) > limit {
		es, res.More = es[:limit], true
	}
	for _, e := range es {
		res.Messages = append(res.Messages, e.Data)
	}
	return res, nil
}
