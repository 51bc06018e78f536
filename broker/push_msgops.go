package broker

import (
	"context"
	"encoding/json"

	"github.com/warblerim/warbler/bridge"
	"github.com/warblerim/warbler/chat"
	"github.com/warblerim/warbler/protocol"
)

// pushOptions shapes the notification of a stored message from what the
// message says: mentioned users are notified even if they muted the
// conversation (all members for @all), and a ringing call is sent at once,
// at high priority, never merged with (or replaced by) a message
// notification, with the call's ID and media in the data, and expires when
// the call would stop ringing.
func pushOptions(msg protocol.Message) []bridge.Option {
	var opts []bridge.Option
	if msg.MentionAll {
		opts = append(opts, bridge.MentionAll())
	}
	if len(msg.Mentions) > 0 {
		opts = append(opts, bridge.Mentions(msg.Mentions...))
	}
	if msg.Type == protocol.TypeCall {
		var ev protocol.CallEvent
		if json.Unmarshal(msg.Body, &ev) == nil && ev.Action == protocol.CallRing {
			opts = append(opts, bridge.Priority(10), bridge.Immediate(), bridge.TTL(chat.DefaultCallRingTimeout),
				bridge.Data(map[string]string{"call": ev.Call, "action": ev.Action, "media": ev.Media}))
		}
	}
	return opts
}

// Recalled implements bridge.Recalls: a notification of a message recalled
// meanwhile is dropped.
func (p positions) Recalled(ctx context.Context, app, conv string, seq uint64) (bool, error) {
	return p.chat.Recalled(ctx, app, conv, seq)
}
