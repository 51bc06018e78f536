package chat

import (
	"context"

	"github.com/warblerim/warbler/protocol"
)

// Searcher answers the "search" request; the search service implements it.
type Searcher interface {
	Search(ctx context.Context, app, user, q, conv string, limit int) (protocol.SearchResult, error)
}

// Indexer is told of every entry appended to a conversation's log
// (messages, events, system notices), once it is durable, in seq order per
// conversation; the search service implements it. It must not block.
type Indexer interface {
	Stored(app string, msg protocol.Message)
}

// search runs the "search" request.
func (s *Service) search(ctx context.Context, from Sender, r *protocol.Request) (any, error) {
	if s.o.Search == nil {
		return nil, protocol.Errorf(protocol.CodeBadRequest, "op: search is not available here")
	}
	if from.Service {
		return nil, protocol.Errorf(protocol.CodeBadRequest, "op: search is for users")
	}
	res, err := s.o.Search.Search(ctx, from.App, from.User, r.Query, r.Conv, r.Limit)
	if err != nil {
		return nil, s.internal("search", err)
	}
	return res, nil
}

// Readable returns the conversations user is a member of, each with the
// first seq they may read (0: all of it; see the group setting "history").
// Search asks it at query time.
func (s *Service) Readable(ctx context.Context, app, user string) (map[string]uint64, error) {
	ids, err := s.store.UserConversations(ctx, app, user, "", 0)
	if err != nil {
		return nil, s.internal("list conversations", err)
	}
	out := make(map[string]uint64, len(ids))
	for _, id := range ids {
		from, err := s.visibleFrom(ctx, app, id, user)
		if err != nil {
			return nil, err
		}
		out[id] = from
	}
	return out, nil
}
