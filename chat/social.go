package chat

// Group administration, typing, presence, and contacts and blocks share
// this file's plumbing: the keyed records they keep (storage.ChatRecords),
// their per-process state, and the dispatch of their ops. The features
// themselves are in groupadmin.go, typing.go, presence.go and contacts.go.
//
// Records (keys of storage.ChatRecords; IDs never contain '/'):
//
//	gs/{conv}            group settings and announcement (JSON groupSettings)
//	gm/{conv}/{user}     a member's mute (JSON muteRec)
//	gf/{conv}/{user}     the first seq a member who joined later may read (decimal)
//	inv/{token}          an invite token (JSON inviteRec)
//	gi/{conv}/{token}    index of a conversation's invite tokens (empty)
//	jr/{conv}/{user}     a pending join request (JSON joinReq)
//	ct/{user}/{other}    other is a contact of user (unix ms added)
//	bk/{user}/{other}    user has blocked other (unix ms blocked)
//	pv/{user}            user's presence privacy (the setting's name)
//	ls/{user}            user's last seen, unix ms (decimal)

import (
	"context"
	"errors"
	"strconv"

	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage"
)

// social is the Service's state for this part of the chat domain.
type social struct {
	records  storage.ChatRecords // nil: the features that need it answer unavailable
	presence presenceHub
	typing   typingLimiter
	groups   groupCache
	privacy  privacyCache
}

// DeviceDeliverer is implemented by a Deliverer that can reach one device
// (its device topic) rather than every device of a user. Presence events go
// to the devices that asked for them, and call signals to the device in the
// call (calls.go); without it they go to the user's downlink.
type DeviceDeliverer interface {
	DeliverDevice(app, user, device string, payload []byte)
}

func (s *Service) initSocial() {
	s.records = s.o.Records
	if s.records == nil {
		s.records, _ = s.o.Store.(storage.ChatRecords)
	}
	s.presence.init()
	s.groups.init()
	s.privacy.init()
}

// needRecords fails a request whose feature needs ChatRecords when the store
// has none.
func (s *Service) needRecords() error {
	if s.records == nil {
		return protocol.Errorf(protocol.CodeUnavailable, "this feature needs a store with chat records")
	}
	return nil
}

// handleSocial runs the ops of this part; ok is false for other ops.
func (s *Service) handleSocial(ctx context.Context, from Sender, r *protocol.Request) (res any, ok bool, err error) {
	switch r.Op {
	case protocol.OpTyping:
		res, err = s.Typing(ctx, from, r.Conv, r.To)
	case protocol.OpPresence:
		res, err = s.WatchPresence(ctx, from, r.Users)
	case protocol.OpPrivacy:
		res, err = s.Privacy(ctx, from, r.Presence)
	case protocol.OpContacts:
		res, err = s.Contacts(ctx, from)
	case protocol.OpContactAdd, protocol.OpContactRemove, protocol.OpBlock, protocol.OpUnblock:
		res, err = s.changeRelation(ctx, from, r.Op, r.Users)
	case protocol.OpMute:
		res, err = s.Mute(ctx, from, r.Conv, r.Users, r.Duration)
	case protocol.OpUnmute:
		res, err = s.Unmute(ctx, from, r.Conv, r.Users)
	case protocol.OpSettings:
		res, err = s.UpdateSettings(ctx, from, r.Conv, *r.Settings)
	case protocol.OpAnnounce:
		res, err = s.Announce(ctx, from, r.Conv, r.Text)
	case protocol.OpTransfer:
		res, err = s.SetRole(ctx, from, r.Conv, r.User, protocol.RoleOwner)
	case protocol.OpInvite:
		res, err = s.CreateInvite(ctx, from, r.Conv, r.Duration, r.Uses)
	case protocol.OpInvites:
		res, err = s.Invites(ctx, from, r.Conv)
	case protocol.OpRevoke:
		res, err = s.RevokeInvite(ctx, from, r.Conv, *r.Token)
	case protocol.OpJoin:
		token := ""
		if r.Token != nil {
			token = *r.Token
		}
		res, err = s.Join(ctx, from, r.Conv, token, r.Text)
	case protocol.OpRequests:
		res, err = s.JoinRequests(ctx, from, r.Conv)
	case protocol.OpApprove:
		res, err = s.Approve(ctx, from, r.Conv, r.Users)
	case protocol.OpReject:
		res, err = s.Reject(ctx, from, r.Conv, r.Users)
	default:
		return nil, false, nil
	}
	return res, true, err
}

// getInt reads a decimal record; 0 and false if absent.
func (s *Service) getInt(ctx context.Context, app, key string) (int64, bool, error) {
	b, err := s.records.GetRecord(ctx, app, key)
	if errors.Is(err, storage.ErrNotFound) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	v, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil {
		return 0, false, nil // unreadable: treated as absent
	}
	return v, true, nil
}

func (s *Service) putInt(ctx context.Context, app, key string, v int64) error {
	return s.records.PutRecord(ctx, app, key, strconv.AppendInt(nil, v, 10))
}

// hasRecord reports whether key exists.
func (s *Service) hasRecord(ctx context.Context, app, key string) (bool, error) {
	_, err := s.records.GetRecord(ctx, app, key)
	if errors.Is(err, storage.ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}
