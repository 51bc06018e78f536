// Package campaign is targeted push: a backend service asks for one
// notification (and optionally an in-app message) to reach an audience —
// every user, a list of users, a tag expression, a saved segment or the
// members of a channel — and the service evaluates the audience, applies
// the per-user rules and queues the deliveries in the background, durably.
//
// # Lifecycle
//
// Submit validates a Spec and stores the campaign ("scheduled") before it
// returns: a campaign accepted is on disk and survives a crash. A single
// runner goroutine takes due campaigns one at a time ("running"), resolves
// the audience (package audience) and walks it in chunks of ChunkSize
// users. For each user it decides one outcome:
//
//   - skipped, with a reason: "expired" (past the time window), "no_user",
//     "disabled", "push_off" (the user turned pushes off), "quiet_hours"
//     (the user's do-not-disturb or quiet hours, or the campaign's quiet
//     hours in the user's time zone), "frequency_cap" (the user already got
//     FrequencyCap campaigns today, UTC), "unreachable" (no connected
//     device and no device a push provider can reach);
//   - delivered: a device of the user is connected, and the in-app
//     message goes to the user's downlink topic over MQTT;
//   - pushed: no device is connected, and a notification is queued in the
//     push bridge's durable queue for each device with a push token.
//
// A chunk's outcomes, its share of the statistics and the frequency-cap
// counters are written in one atomic, synced write after the chunk's
// deliveries were handed over. After a crash the runner resumes the
// campaign and skips the users that have an outcome; the users of the one
// chunk in flight may be handled again (push notifications that are still
// queued are replaced, not repeated, because they carry a coalescing key).
// So targeted = delivered + pushed + skipped holds at every moment.
//
// The runner yields between chunks and its writes are a few per chunk, so
// a campaign to a large audience does not hold up chat traffic.
//
// Provider outcomes (accepted, failed, dropped) arrive from the push
// bridge through Outcome and are added to the statistics in batches every
// FlushEvery: a crash may lose the counts of the last interval, never a
// notification. Opens are reported by the app (Opened), once per user.
package campaign
