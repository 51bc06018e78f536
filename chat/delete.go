package chat

import (
	"context"
	"strings"

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
// it again finishes the job. The ID may be used again, from seq 1. The
// group's records go too (settings, per-member mutes, invites and their
// tokens, join requests); the search indexer, told of the "deleted" event
// like of any entry, drops the conversation's index and cursor.
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
	if err := s.forgetGroupRecords(ctx, from.App, conv); err != nil {
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

// forgetGroupRecords deletes the chat records of a group's administration
// (groupadmin.go): its settings, member mutes, invites with their tokens,
// and join requests. The caller holds the conversation's lock.
func (s *Service) forgetGroupRecords(ctx context.Context, app, conv string) error {
	if s.records == nil {
		return nil
	}
	var doomed []string
	for _, p := range []string{"gm/" + conv + "/", "gi/" + conv + "/", "jr/" + conv + "/"} {
		err := s.records.ScanRecords(ctx, app, p, "", 0, func(key string, _ []byte) error {
			doomed = append(doomed, key)
			if t, ok := strings.CutPrefix(key, "gi/"+conv+"/"); ok {
				doomed = append(doomed, "inv/"+t)
			}
			return nil
		})
		if err != nil {
			return s.internal("list group records", err)
		}
	}
	for _, k := range append(doomed, "gs/"+conv) {
		if err := s.records.PutRecord(ctx, app, k, nil); err != nil {
			return s.internal("delete group records", err)
		}
	}
	return nil
}
