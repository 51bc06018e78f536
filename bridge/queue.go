package bridge

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/warblerim/warbler/storage"
)

// queue dispatches one app's notifications for one provider: it claims due
// records from the store, at most Concurrency at a time and no faster than
// RatePerSec, and hands each to a delivery goroutine.
type queue struct {
	b  *Bridge
	id storage.PushQueueID

	wake chan struct{} // new records, a freed slot, a resume

	mu       sync.Mutex
	paused   string    // why the queue is paused; "" when running
	holdTill time.Time // a 429 holds the whole queue until then
	inflight int
	conc     int
	lim      *rate.Limiter
}

func newQueue(b *Bridge, id storage.PushQueueID) *queue {
	q := &queue{b: b, id: id, wake: make(chan struct{}, 1), conc: DefaultConcurrency, lim: rate.NewLimiter(rate.Inf, 1)}
	if s, ok := b.settings[id.App]; ok { // b.mu is held; run loads uncached settings
		q.configure(s)
	}
	return q
}

func (q *queue) configure(s storage.PushSettings) {
	q.mu.Lock()
	q.conc = max(s.Concurrency, 1)
	if s.RatePerSec > 0 {
		q.lim.SetLimit(rate.Limit(s.RatePerSec))
		q.lim.SetBurst(max(1, int(s.RatePerSec/10)))
	} else {
		q.lim.SetLimit(rate.Inf)
	}
	q.mu.Unlock()
	q.poke()
}

func (q *queue) poke() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *queue) setPaused(reason string) {
	q.mu.Lock()
	q.paused = reason
	q.mu.Unlock()
	q.b.m.setPaused(q.id, reason != "")
}

func (q *queue) resume() {
	q.setPaused("")
	q.poke()
}

func (q *queue) status() (string, int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.paused, q.inflight
}

// run is the dispatcher loop; it ends when the bridge closes.
func (q *queue) run() {
	defer q.b.wg.Done()
	ctx := q.b.ctx
	if s, err := q.b.Settings(ctx, q.id.App); err == nil {
		q.configure(s)
	}
	idle := time.NewTimer(time.Hour)
	defer idle.Stop()
	wait := func(d time.Duration) bool {
		idle.Reset(max(d, time.Millisecond))
		select {
		case <-ctx.Done():
			return false
		case <-q.wake:
		case <-idle.C:
		}
		if !idle.Stop() {
			select {
			case <-idle.C:
			default:
			}
		}
		return true
	}
	for ctx.Err() == nil {
		now := q.b.o.Now()
		q.mu.Lock()
		paused, hold, free := q.paused, q.holdTill, q.conc-q.inflight
		q.mu.Unlock()
		switch {
		case paused != "":
			if !wait(time.Hour) {
				return
			}
			continue
		case hold.After(now):
			if !wait(hold.Sub(now)) {
				return
			}
			continue
		case free <= 0:
			if !wait(time.Hour) {
				return
			}
			continue
		}
		recs, err := q.b.store.ClaimPush(ctx, q.id, now, min(free, maxClaim))
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			q.b.log.Error("push: claim failed", "app", q.id.App, "provider", q.id.Provider, "err", err)
			if !wait(time.Second) {
				return
			}
			continue
		}
		if len(recs) == 0 {
			d := time.Hour
			if due, ok, err := q.b.store.NextPushDue(ctx, q.id); err == nil && ok {
				d = due.Sub(now)
			}
			if !wait(d) {
				return
			}
			continue
		}
		q.mu.Lock()
		q.inflight += len(recs)
		q.mu.Unlock()
		q.b.wg.Add(len(recs))
		for _, r := range recs {
			go q.deliver(r)
		}
	}
}

// deliver reconciles, sends and records one claimed record. It runs to the
// end even while the bridge closes, bounded by SendTimeout, so that a
// graceful Close leaves no record in state "sent".
func (q *queue) deliver(r storage.PushRecord) {
	defer q.b.wg.Done()
	defer func() {
		q.mu.Lock()
		q.inflight--
		q.mu.Unlock()
		q.poke()
	}()
	b := q.b
	ctx, cancel := context.WithTimeout(context.Background(), b.o.SendTimeout)
	defer cancel()
	now := b.o.Now()

	finish := func(state, reason string) {
		r.State, r.Reason, r.UpdatedAt = state, reason, b.o.Now()
		b.record(ctx, r)
	}
	requeue := func(due time.Time, reason string) {
		r.State, r.Due, r.Reason, r.UpdatedAt = storage.PushQueued, due, reason, b.o.Now()
		b.record(ctx, r)
	}

	if !r.Expires.IsZero() && !now.Before(r.Expires) {
		b.m.dropped("expired")
		finish(storage.PushDropped, "expired")
		return
	}
	if reason := b.reconcile(ctx, &r); reason != "" {
		b.m.dropped(reason)
		finish(storage.PushDropped, reason)
		return
	}
	if b.isPruned(&r) {
		b.m.failed(r.Provider, "token_pruned")
		finish(storage.PushFailed, "token_pruned")
		return
	}
	q.mu.Lock()
	paused := q.paused
	q.mu.Unlock()
	if paused != "" { // paused after this record was claimed: give it back
		r.Attempts--
		requeue(now, "queue paused: "+paused)
		return
	}
	cl, err := b.client(ctx, q.id)
	if err != nil {
		r.Attempts--
		reason := "no_credentials"
		if !errors.Is(err, ErrNoCredentials) {
			reason = "client: " + err.Error()
		}
		q.pause(reason)
		requeue(now, reason)
		return
	}
	if err := q.lim.Wait(b.ctx); err != nil { // closing: give the record back untouched
		r.Attempts--
		requeue(now, "")
		return
	}
	var badge *int
	if r.Kind != KindSilent && b.o.Positions != nil && r.Conv != "" {
		if n, err := b.o.Positions.Unread(ctx, r.App, r.User); err == nil {
			badge = &n
		}
	}
	b.m.sent(r.Provider)
	start := time.Now()
	o := cl.send(ctx, &r, badge)
	b.m.observeSend(r.Provider, time.Since(start))
	r.Status = o.status
	switch o.class {
	case outAccepted:
		r.ProviderID = o.providerID
		b.m.accepted(r.Provider, b.o.Now().Sub(r.CreatedAt))
		finish(storage.PushAccepted, "")
	case outPrune:
		b.prune(ctx, &r)
		b.m.failed(r.Provider, o.reason)
		finish(storage.PushFailed, o.reason+": token pruned")
	case outAuth:
		r.Attempts--
		q.pause(o.reason)
		b.m.authFailure(q.id)
		requeue(b.o.Now(), o.reason)
	case outFail:
		b.m.failed(r.Provider, o.reason)
		finish(storage.PushFailed, o.reason)
	case outRetry:
		if r.Attempts >= b.o.Retry.Attempts {
			b.m.failed(r.Provider, "retries_exhausted")
			finish(storage.PushFailed, "retries exhausted: "+o.reason)
			return
		}
		delay := max(b.backoff(r.Attempts), o.retryAfter)
		if o.retryAfter > 0 {
			q.hold(b.o.Now().Add(o.retryAfter))
		}
		b.m.retried(r.Provider, o.status)
		requeue(b.o.Now().Add(delay), o.reason)
	}
}

// hold keeps the queue from sending until t (a provider's Retry-After).
func (q *queue) hold(t time.Time) {
	q.mu.Lock()
	if t.After(q.holdTill) {
		q.holdTill = t
	}
	q.mu.Unlock()
}

// pause stops the queue and persists why, so that a restart does not burn
// the same refusal again.
func (q *queue) pause(reason string) {
	q.mu.Lock()
	already := q.paused != ""
	q.mu.Unlock()
	if already {
		return
	}
	q.setPaused(reason)
	q.b.log.Error("push: queue paused: the provider refused the app's credentials", "app", q.id.App, "provider", q.id.Provider, "reason", reason)
	now := q.b.o.Now().UTC()
	_, err := q.b.store.UpdatePushCredential(context.Background(), q.id.App, q.id.Provider, func(c *storage.PushCredential) error {
		c.Paused, c.PausedAt = reason, now
		return nil
	})
	if err != nil && !errors.Is(err, storage.ErrNotFound) {
		q.b.log.Error("push: persisting the pause failed", "app", q.id.App, "err", err)
	}
	q.b.mu.Lock()
	q.b.dropClientLocked(q.id)
	q.b.mu.Unlock()
}

// backoff is the delay before attempt n+1: Base·2^(n-1), capped at Max,
// with full jitter over its upper half.
func (b *Bridge) backoff(n int) time.Duration {
	d := b.o.Retry.Base
	for i := 1; i < n && d < b.o.Retry.Max; i++ {
		d *= 2
	}
	d = min(d, b.o.Retry.Max)
	return d/2 + rand.N(d/2+1)
}

// record writes a record's new state. If the write fails the record stays
// "sent" in the store and is resent after the next restart.
func (b *Bridge) record(ctx context.Context, r storage.PushRecord) {
	if err := b.store.FinishPush(context.WithoutCancel(ctx), r); err != nil {
		b.log.Error("push: recording an outcome failed", "id", r.ID, "state", r.State, "err", err)
		return
	}
	if r.State == storage.PushQueued {
		if q := b.queue(storage.PushQueueID{App: r.App, Provider: r.Provider}); q != nil {
			q.poke()
		}
	}
	if b.o.OnFinish != nil {
		b.o.OnFinish(r)
	}
}

// reconcile returns why r should no longer be sent, or "".
func (b *Bridge) reconcile(ctx context.Context, r *storage.PushRecord) string {
	p := b.o.Positions
	if p == nil || r.Conv == "" || r.Seq == 0 {
		return ""
	}
	if n, err := p.ReadSeq(ctx, r.App, r.User, r.Conv); err == nil && n >= r.Seq {
		return "read"
	}
	if rc, ok := p.(Recalls); ok {
		if gone, err := rc.Recalled(ctx, r.App, r.Conv, r.Seq); err == nil && gone {
			return "recalled"
		}
	}
	if r.CheckDelivered {
		if n, err := p.DeliveredSeq(ctx, r.App, r.User, r.Device, r.Conv); err == nil && n >= r.Seq {
			return "delivered"
		}
	}
	return ""
}

// isPruned reports whether this process pruned r's token after r was
// created: the other notifications queued for a dead token fail without a
// request. A token registered again after the prune is used again.
func (b *Bridge) isPruned(r *storage.PushRecord) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	at, ok := b.pruned[r.Provider+"/"+r.Token]
	return ok && r.CreatedAt.Before(at)
}

func (b *Bridge) prune(ctx context.Context, r *storage.PushRecord) {
	b.mu.Lock()
	if len(b.pruned) > 100000 {
		clear(b.pruned)
	}
	b.pruned[r.Provider+"/"+r.Token] = b.o.Now()
	b.mu.Unlock()
	b.m.prunedToken(r.Provider)
	if err := b.o.Directory.PruneToken(ctx, r.App, r.User, r.Device, r.Token); err != nil {
		b.log.Warn("push: pruning a dead token failed", "app", r.App, "user", r.User, "device", r.Device, "err", err)
	}
}
