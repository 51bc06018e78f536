// Package chat is Warbler's chat domain: conversations (direct, group,
// channel), their members and roles, sending with gap-free per-conversation
// sequence numbers and idempotent retries, sync and history, receipts,
// retention and send quotas; group administration (mutes, settings,
// announcements, invites, join requests, history visibility), typing
// notices, presence, and contacts and blocks (see social.go and the files
// it names). It owns the meaning of the chat envelope
// (protocol.Request in, protocol.Message/Receipt out) and nothing about
// MQTT: persistence is a storage.ChatStore and fan-out is a Deliverer, both
// small interfaces, so the same Service runs behind the MQTT hook, the HTTP
// API or a test.
//
// # Sending
//
// Send resolves the conversation ("to" derives the direct conversation and
// creates it on first use), checks that the sender may write (members of
// groups and direct conversations; admins, owners and services for
// channels), and then:
//
//  1. claims (app, user, device, cmid) and looks it up in the store: a
//     retry of a message that was stored returns the original id and seq
//     and is not delivered again, and a retry of one still on its way to
//     the disk waits for it and gets the same answer;
//  2. under the conversation's lock, takes the next seq from an in-memory
//     head (seeded from the log) and queues the message, its dedupe entry
//     and the author's read mark as one durable append (the store
//     group-commits it with other senders');
//  3. once it is durable, hands the stored bytes to the Deliverer for every
//     member, from the conversation's outbox, in seq order.
//
// Send waits for all of that; SendAsync returns after step 2, so that a
// transport can take a device's next message while the disk works, and
// reports the outcome later. Member lists and conversation records come from
// a per-process cache (see Invalidate).
//
// A failure never leaves a gap. The store carries appends out in the order
// they were queued and each one is also a compare-and-set on the stored
// head: when one fails, every append queued after it in that conversation
// fails too (none of them continues the log), and the next send re-reads
// the head from the store. The same compare-and-set guards against another
// process appending meanwhile (a scaled-out deployment where a
// conversation's sequencer moved): two writers cannot both take a seq, and
// Send retries after such a conflict. Live messages of one conversation
// leave in seq order, so a receiver that sees a gap knows to sync.
//
// # Delivery and catching up
//
// Live delivery is best effort by design: the Deliverer must never block a
// sender on a slow receiver (the MQTT hook drops to a full client queue and
// sends a sync hint later). Nothing is lost by that, because the log is the
// truth: a device runs "sync" on (re)connect and whenever it sees a gap or a
// hint, and gets everything after its cursors, paginated, in order.
// Devices move their cursors with "delivered" (which also sends delivered
// receipts to the authors) and users their read position with "read".
//
// # Channels
//
// A channel is a conversation whose members read and whose admins (and
// backend services) write. Its log is kept like any other. By default a
// channel message is delivered as per-user copies on each member's
// downlink, which needs no extra subscription and no ACL beyond "a user
// reads their own downlink", but costs one publish per member. With
// Options.ChannelBroadcast the message is published once on the channel's
// broadcast topic instead (w/{app}/b/{conv}); that scales to large
// audiences but members must subscribe to that topic, and the ACL must
// allow it only to members: Service.MayReadBroadcast answers that from the
// conversation cache, for every subscription and every delivery. Either
// way sync, history and the OnStored hand-off (push) work the same.
//
// # Operations on messages, and calls
//
// Edits, recalls and reactions are events in the log that name the message
// they act on, written in one durable batch with the message's stored copy
// rewritten to its new state; replies, forwards and mentions are checked
// and set at send time (msgops.go). Calls are a state machine per call ID
// whose state changes are logged and whose WebRTC negotiation is relayed
// device to device without being stored (calls.go).
package chat
