// Package webhook is Warbler's webhook delivery: per-app endpoints that
// subscribe an HTTPS (or HTTP) URL to event types, and the durable queue
// that delivers each event to each subscribed endpoint, signed, retried,
// and logged.
//
// # Events
//
// The server publishes message.created (a chat message was stored),
// message.updated (one was edited, recalled or reacted to),
// conversation.updated (a group or channel was created, or its members,
// roles or name changed), user.online and user.offline (a user's first
// device connected, their last one disconnected) and push.failed (a push
// notification failed for good). An endpoint subscribes to a list of
// types, families ("user.*") or "*". The request body is the event as JSON:
//
//	{"id": "evt_...", "type": "message.created", "app": "demo",
//	 "created": 1767225600000, "data": {"message": {...the stored envelope...}}}
//
// Message bodies pass through as stored: this package never reads them.
//
// # Signatures
//
// Every request carries
//
//	Warbler-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>
//
// where secret is the endpoint's signing secret ("whsec_...", shown once
// when the endpoint is created or its secret rotated) used as the HMAC key
// as is. For a while after a rotation the header carries one v1 per valid
// secret. A receiver recomputes the HMAC over the raw body, compares in
// constant time, and rejects timestamps far from its clock (Verify does
// all of that). Warbler-Event-Id, Warbler-Event-Type and
// Warbler-Delivery-Id are sent too.
//
// # Delivery
//
// Publish hands an event to a goroutine that writes one delivery per
// subscribed endpoint to the store (storage.WebhookStore) in synced
// batches. Workers (Options.Workers, bounding the requests in flight over
// all endpoints, and Options.PerEndpoint, bounding those to one endpoint)
// claim due deliveries and POST them. A 2xx answer is
// success. Anything else — another status, a redirect (never followed), a
// timeout, a refused or failed connection — is retried after
// RetryBase*2^(n-1), capped at RetryMax and jittered to between half and
// all of it (a Retry-After on 429/503 can lengthen the wait), until
// MaxAttempts; then the delivery fails for good. Response bodies are read
// up to 64 KiB and the first 200 bytes of a failure are kept in the log.
//
// Deliveries are at least once: a delivery claimed when the process stops
// is queued again at the next Start, and one whose request was cancelled
// by a stop is put back untried. Receivers dedupe on the event ID, which
// every attempt of an event carries. There is no ordering between events,
// not even for one endpoint: workers run in parallel and retries overtake.
// Use "created" and the message's seq to order.
//
// Between Publish and the write to the queue, events wait in memory: a
// kill loses them (a stop does not: Close writes them). Events of a
// conversation's log therefore go through PublishLogged, whose write also
// records how far the conversation's events are queued (a mark), and
// whose IDs derive from the log entry (LogEventID); at start, CatchUp
// queues the events of entries after the mark, with the same IDs. Other
// events (presence, push outcomes) have no log to catch up from.
//
// Every delivery is also its endpoint's log entry (attempts with status,
// latency and error, the payload), kept for the store's retention once
// finished. An endpoint whose every attempt fails for DisableAfter is
// turned off with a reason; enabling it again clears that.
//
// # Reaching only the outside (SSRF)
//
// Endpoint URLs are checked when saved and again when each connection is
// made (Guard): loopback, private, unique-local, link-local, multicast,
// unspecified and reserved addresses are refused unless the operator
// allows them. The dial-time check runs on the resolved address itself, so
// a name that resolves to a public address when saved and a private one
// later is still refused; proxies from the environment are not used, since
// they would connect on the server's behalf.
//
// In a deployment of several processes sharing a store, each one claims
// from the same queue; endpoint changes reach another process's cache
// within Options.CacheTTL.
package webhook
