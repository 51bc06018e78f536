// Package bridge is Warbler's push bridge: it turns chat messages for
// devices that are not connected into Apple Push Notification service
// (APNs) and Firebase Cloud Messaging (FCM) notifications, sent with each
// app's own credentials, through a durable queue with a delivery ledger.
//
// # The path of a notification
//
// The chat service calls MessageStored once a message is durably stored,
// with the users it is for. For every device of every recipient the bridge
// decides, from the app's settings and the user's preferences, whether a
// notification is warranted:
//
//   - the author is skipped, and so is every device that is online (asked
//     through Presence) unless the app has a grace period: then the online
//     device is notified only if it has not acknowledged the message when
//     the grace period ends;
//   - a muted conversation is skipped unless the message mentions the
//     user; do-not-disturb and quiet hours (in the user's time zone) turn
//     the notification quiet (no sound, no banner) rather than drop it, so
//     that the badge stays right;
//   - devices without a token, or on a provider the app has no
//     credentials for, are skipped.
//
// Each surviving notification becomes one storage.PushRecord, written
// durably before MessageStored returns. A record is due after the app's
// coalescing window; a newer message to the same device in the same
// conversation that arrives while the older one still waits replaces it
// ("3 new messages"), so a burst yields one notification.
//
// When a record is due, a worker of its queue (one queue per app and
// provider, with its own concurrency and rate limit) reconciles it with the
// chat state right before sending: a message the user has read meanwhile,
// on any device, is dropped ("read"), and so is one the online device
// acknowledged within the grace period ("delivered"). The badge is the
// user's unread count at that moment.
//
// # Notification kinds
//
//   - alert: title and body according to the app's preview mode: "full"
//     (sender and text), "sender" (sender only) or "hidden" (a generic,
//     localizable text).
//   - silent (Silent option): a background push (APNs content-available,
//     push type background; FCM data-only, normal priority) that tells the
//     app to sync.
//   - private (Private option, for end-to-end encrypted conversations): no
//     text from the message at all. APNs gets a generic alert with
//     mutable-content so that a notification service extension can
//     decrypt and rewrite it; FCM gets a high-priority data-only message.
//
// Every kind carries "conv", "seq", "msg_id" and "nid" (the notification ID)
// in its data, so the app can sync from the right place and drop a
// notification it has already seen.
//
// # Durability and exactly once
//
// The state of a record moves queued -> sent -> accepted | failed, or
// queued -> dropped. "sent" is written (with the attempt count) before the
// request leaves, and the outcome right after the provider answers. A
// crash can therefore leave a record in "sent" whose request may or may not
// have reached the provider; on the next Start those records, and only
// those, are queued again and resent. Everything else is sent exactly once
// in the absence of provider errors. The window of doubt is one request
// per worker: at most Concurrency notifications per queue can be
// duplicated by a crash, and each duplicate carries the same IDs as the
// original: the same apns-id and collapse ID (the device replaces rather
// than stacks a notification with the same collapse ID) and the same "nid"
// in the data payload (FCM has no idempotency key; the app drops a "nid"
// it has seen). The FCM client's own retries of 503s and network errors
// widen this window in the same way.
//
// # Errors
//
// 429 and 5xx answers, timeouts and network errors are retried with
// exponential backoff and full jitter, never sooner than a Retry-After
// header says; a 429 also holds the whole queue until then. APNs 400
// BadDeviceToken, APNs 410 Unregistered (only if the token was registered
// before Apple's timestamp: a newer token is a new registration) and FCM
// UNREGISTERED prune the token through Directory.PruneToken and fail the
// record. Authentication errors (APNs 403 ExpiredProviderToken,
// InvalidProviderToken, BadCertificate..., FCM UNAUTHENTICATED,
// PERMISSION_DENIED, THIRD_PARTY_AUTH_ERROR, or a service account whose
// token exchange fails) pause the queue, return the record to the queue
// without counting the attempt, and set warbler_push_paused{app,provider}
// to 1: an alert, not a burn of retries. Storing new credentials, or
// Resume, restarts the queue. Other rejections fail the record with the
// provider's reason.
//
// # Credentials and endpoints
//
// APNs: token auth (.p8 key, key ID, team ID) or a .p12 certificate,
// production or sandbox. FCM: a service-account JSON and project ID. Both
// are sealed with AES-256-GCM under a key derived from the server's master
// key, bound to the app and provider, and opened only to build a client.
// Each app has one long-lived client per provider (APNs treats connection
// churn as abuse). Endpoints and trust roots can be set per app, for
// proxies, private gateways and tests; the defaults are Apple's and
// Google's production hosts and the system roots. A service account's
// token exchange goes to its own token_uri, through the same trust roots.
//
// # Observing
//
// Every record is also its delivery ledger entry, with a history of
// events, kept for the store's retention period and listed by Ledger and
// LedgerEntry. Collector returns the Prometheus metrics.
package bridge
