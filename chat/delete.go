package chat

import (
	"context"

	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage"
)

// DeleteConversation deletes a group or channel for good (backend
// services only): its record, members, every message of its log and the
// devices' positions in it. Before anything is deleted, a system event
// {"event":"deleted","by":…} is stored and delivered to the members, so
// that connected devices drop the conversation at once (with
// Options.ChannelBroadcast it also goes to every member's downlink, since
// not every member need be subscribed to the channel's topic); devices that
// are offline find it gone from their list of conversations, and sync
// skips it. The event is handed to OnSystem like any other, so webhooks
// see it. Direct conversations cannot be deleted (not_found is kept for
// conversations that do not exist, forbidden for direct ones).
//
// The deletion is idempotent in effect: if the store fails part way, the
// conversation is still there (part of its log may be gone) and deleting
// it again finishes the job. The ID may be used again, from seq 1.
// Records kept about the conversation elsewhere are not deleted yet: the
// group's settings and invites (chat records), and the search index's
// postings and cursor for it, so a conversation re-created with the same
// ID inherits those settings and has its first messages (up to the old
// last seq) missing from search.
func (s *Service) DeleteConversation(ctx context.Context, from Sender, conv string) error {
	if !from.Service {
		return protocol.Errorf(protocol.CodeForbidden, "only a backend service deletes conversations")
	}
	cs, c, _, unlock, err := s.lockedMember(ctx, from, conv, storage.RoleOwner)
	if err != nil {
		return err
	}
	defer unlock()
	v, err := s.view(ctx, from.App, conv)
	if err != nil {
		return s.internal("read conversation", err)
	}
	var extra []string
	if c.Kind == storage.KindChannel && s.o.ChannelBroadcast {
		extra = v.users
	}
	if err := s.system(ctx, cs, from.App, c, from.User, event{Event: "deleted", By: from.User}, extra); err != nil {
		return err
	}
	members, err := s.store.DeleteConversation(ctx, from.App, conv)
	s.Invalidate(from.App, conv)
	if err != nil {
		return s.internal("delete conversation", err)
	}
	s.recheckAfterLeaving(ctx, from.App, conv, members) // presence.go
	return nil
}
