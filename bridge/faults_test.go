package bridge_test

import (
	"context"
	"encoding/json"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/warblerim/warbler/bridge"
	"github.com/warblerim/warbler/storage"
)

func toJSON(v any) string { b, _ := json.Marshal(v); return string(b) }

// only keeps bob's iPhone, or his Pixel, so that a test talks to one
// provider.
func (e *env) only(device string) {
	e.devs.mu.Lock()
	defer e.devs.mu.Unlock()
	var keep []bridge.Device
	for _, d := range e.devs.devs["bob"] {
		if d.ID == device {
			keep = append(keep, d)
		}
	}
	e.devs.devs["bob"] = keep
}

// 429 with Retry-After: the bridge waits at least that long, then resends.
func TestAPNs429RetryAfter(t *testing.T) {
	e := newEnv(t, nil)
	e.only("iphone")
	e.apns.setRespond(func(r apnsReq, n int) reply {
		if n == 1 {
			rep := apnsError(429, "TooManyRequests")
			rep.header = map[string]string{"Retry-After": "1"}
			return rep
		}
		return reply{}
	})
	_, ids := e.send("g1", "hi", []string{"bob"})
	e.led.waitTerminal(t, e.store, wait, ids...)
	reqs := e.apns.requests()
	r := e.get(ids[0])
	if len(reqs) != 2 || r.State != storage.PushAccepted || r.Attempts != 2 {
		t.Fatalf("%d requests, record %s after %d attempts", len(reqs), r.State, r.Attempts)
	}
	if gap := reqs[1].At.Sub(reqs[0].At); gap < time.Second {
		t.Fatalf("resent after %v, before Retry-After (1s)", gap)
	}
}

func TestFCM429RetryAfter(t *testing.T) {
	e := newEnv(t, nil)
	e.only("pixel")
	e.fcm.setRespond(func(r fcmReq, n int) reply {
		if n == 1 {
			rep := fcmError(429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED")
			rep.header = map[string]string{"Retry-After": "1"}
			return rep
		}
		return reply{}
	})
	_, ids := e.send("g1", "hi", []string{"bob"})
	e.led.waitTerminal(t, e.store, wait, ids...)
	reqs := e.fcm.requests()
	if r := e.get(ids[0]); len(reqs) != 2 || r.State != storage.PushAccepted || r.Attempts != 2 {
		t.Fatalf("%d requests, record %+v", len(reqs), r)
	}
	if gap := reqs[1].At.Sub(reqs[0].At); gap < time.Second {
		t.Fatalf("resent after %v, before Retry-After", gap)
	}
}

// 503 is retried: by the bridge for APNs, by the Firebase client itself
// (within one attempt) for FCM.
func TestServiceUnavailable(t *testing.T) {
	e := newEnv(t, nil)
	e.apns.setRespond(func(r apnsReq, n int) reply {
		if n <= 2 {
			return apnsError(503, "ServiceUnavailable")
		}
		return reply{}
	})
	e.fcm.setRespond(func(r fcmReq, n int) reply {
		if n == 1 {
			return fcmError(503, "UNAVAILABLE", "UNAVAILABLE")
		}
		return reply{}
	})
	_, ids := e.send("g1", "hi", []string{"bob"})
	e.led.waitTerminal(t, e.store, wait, ids...)
	if r := e.recOf(ids, "apns"); r.State != storage.PushAccepted || r.Attempts != 3 || len(e.apns.requests()) != 3 {
		t.Fatalf("APNs record %+v after %d requests", r, len(e.apns.requests()))
	}
	if r := e.recOf(ids, "fcm"); r.State != storage.PushAccepted || len(e.fcm.requests()) != 2 {
		t.Fatalf("FCM record %+v after %d requests", r, len(e.fcm.requests()))
	}
}

// A provider that does not answer within SendTimeout is retried.
func TestTimeout(t *testing.T) {
	e := newEnv(t, func(o *bridge.Options) { o.SendTimeout = time.Second })
	never := make(chan struct{})
	t.Cleanup(func() { close(never) })
	e.apns.setRespond(func(r apnsReq, n int) reply {
		if n == 1 {
			return reply{block: never}
		}
		return reply{}
	})
	var fcmCalls atomic.Int32
	e.fcm.setRespond(func(r fcmReq, n int) reply {
		if fcmCalls.Add(1) == 1 {
			return reply{block: never}
		}
		return reply{}
	})
	_, ids := e.send("g1", "hi", []string{"bob"})
	e.led.waitTerminal(t, e.store, wait, ids...)
	for _, p := range []string{"apns", "fcm"} {
		r := e.recOf(ids, p)
		// The first request never gets an answer; the next ones are
		// answered at once, but on a busy machine one may still miss the
		// deadline. So: accepted after at least two attempts, and every
		// attempt before the last ended in a timeout.
		timeouts := 0
		for _, ev := range r.Events {
			if ev.State == storage.PushQueued && strings.Contains(ev.Reason, "deadline exceeded") {
				timeouts++
			}
		}
		if r.State != storage.PushAccepted || r.Attempts < 2 || timeouts != r.Attempts-1 {
			t.Fatalf("%s record %s after %d attempts, %d of them timed out: %+v", p, r.State, r.Attempts, timeouts, r.Events)
		}
	}
}

// 410 prunes a token older than Apple's timestamp, and keeps a newer one.
func TestAPNs410(t *testing.T) {
	e := newEnv(t, nil)
	e.only("iphone")
	stamp := time.Now().Add(-30 * time.Minute) // bob's token is one hour old
	e.apns.setRespond(func(r apnsReq, n int) reply {
		return apnsError(410, "Unregistered", `"timestamp":`+jsonInt(stamp.UnixMilli()))
	})
	_, ids := e.send("g1", "hi", []string{"bob"})
	e.led.waitTerminal(t, e.store, wait, ids...)
	if r := e.get(ids[0]); r.State != storage.PushFailed || !strings.Contains(r.Reason, "pruned") {
		t.Fatalf("old token: %s %s", r.State, r.Reason)
	}
	if p := e.devs.prunedList(); len(p) != 1 || p[0] != "bob/iphone/aaaa0001" {
		t.Fatalf("pruned %v", p)
	}

	// A token registered after Apple's timestamp is kept.
	e.devs.mu.Lock()
	e.devs.devs["bob"] = []bridge.Device{{ID: "iphone", Platform: "ios", Token: "aaaa0002", TokenAt: time.Now()}}
	e.devs.mu.Unlock()
	_, ids = e.send("g1", "hi", []string{"bob"})
	e.led.waitTerminal(t, e.store, wait, ids...)
	if r := e.get(ids[0]); r.State != storage.PushFailed || strings.Contains(r.Reason, "pruned") || r.Attempts != 1 {
		t.Fatalf("new token: %s %s", r.State, r.Reason)
	}
	if p := e.devs.prunedList(); len(p) != 1 {
		t.Fatalf("pruned %v", p)
	}
}

func jsonInt(n int64) string { b, _ := json.Marshal(n); return string(b) }

// 400 BadDeviceToken and FCM UNREGISTERED prune at once, without retries;
// other notifications already queued for the dead token fail without a
// request.
func TestDeadTokensPruned(t *testing.T) {
	// Both messages wait out a coalescing window, so both are queued
	// before the first answer prunes the token.
	e := newEnv(t, func(o *bridge.Options) { o.Defaults.Concurrency = 1; o.Defaults.CoalesceMillis = 300 })
	e.apns.setRespond(func(r apnsReq, n int) reply { return apnsError(400, "BadDeviceToken") })
	e.fcm.setRespond(func(r fcmReq, n int) reply { return fcmError(404, "NOT_FOUND", "UNREGISTERED") })
	_, ids := e.send("g1", "one", []string{"bob"})
	_, ids2 := e.send("g2", "two", []string{"bob"})
	e.led.waitTerminal(t, e.store, wait, append(ids, ids2...)...)
	for _, id := range append(ids, ids2...) {
		if r := e.get(id); r.State != storage.PushFailed || r.Attempts != 1 {
			t.Fatalf("record %+v", r)
		}
	}
	if len(e.apns.requests()) != 1 || len(e.fcm.requests()) != 1 {
		t.Fatalf("apns %d, fcm %d requests; want one each", len(e.apns.requests()), len(e.fcm.requests()))
	}
	// Whichever of the two went first pruned the token; the other failed
	// without a request.
	for _, p := range []string{"apns", "fcm"} {
		reasons := e.recOf(ids, p).Reason + " | " + e.recOf(ids2, p).Reason
		if !strings.Contains(reasons, "token pruned") || !strings.Contains(reasons, "token_pruned") {
			t.Fatalf("%s reasons: %s", p, reasons)
		}
	}
	if p := e.devs.prunedList(); len(p) != 2 {
		t.Fatalf("pruned %v", p)
	}
}

// 403 pauses the app's APNs queue (FCM goes on), raises the alert metric
// and burns no attempts; new credentials resume it.
func TestAPNs403PausesQueue(t *testing.T) {
	e := newEnv(t, nil)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(e.b.Collector())
	var refuse atomic.Bool
	refuse.Store(true)
	e.apns.setRespond(func(r apnsReq, n int) reply {
		if refuse.Load() {
			return apnsError(403, "ExpiredProviderToken")
		}
		return reply{}
	})
	_, ids := e.send("g1", "hi", []string{"bob"})
	_, ids2 := e.send("g2", "hi", []string{"bob"})
	fcmIDs := []string{e.recOf(ids, "fcm").ID, e.recOf(ids2, "fcm").ID}
	e.led.waitTerminal(t, e.store, wait, fcmIDs...)
	e.led.wait(t, wait, "the APNs record to return to the queue", func(m map[string]storage.PushRecord) bool {
		r, ok := m[e.recOf(ids, "apns").ID]
		return ok && r.State == storage.PushQueued
	})
	// The queue stops at once, in memory, and then records why; a record
	// that another worker hands back meanwhile can be back in the queue
	// before that. The record that met the 403 is handed back after it:
	// wait for both.
	paused := []string{e.recOf(ids, "apns").ID, e.recOf(ids2, "apns").ID}
	e.led.wait(t, wait, "both APNs records back in the queue, no attempt counted", func(map[string]storage.PushRecord) bool {
		for _, id := range paused {
			r, _ := e.store.GetPush(context.Background(), app, id)
			if r.State != storage.PushQueued || r.Attempts != 0 {
				return false
			}
		}
		return true
	})
	info, err := e.b.CredentialInfo(context.Background(), app, "apns")
	if err != nil || info.Paused != "ExpiredProviderToken" {
		r, _ := e.store.GetPush(context.Background(), app, e.recOf(ids, "apns").ID)
		t.Fatalf("credential info %+v %v; record %+v", info, err, r.Events)
	}
	if v := gaugeValue(t, reg, "warbler_push_paused", "apns"); v != 1 {
		t.Fatalf("paused{apns} = %v", v)
	}
	// The queue is paused: no more requests than the one refused (another
	// worker may have had the second in flight).
	nReq := len(e.apns.requests())
	if nReq < 1 || nReq > 2 {
		t.Fatalf("%d APNs requests while paused", nReq)
	}
	// The operator uploads a fixed key: the queue resumes and drains.
	refuse.Store(false)
	if _, err := e.b.SetCredentials(context.Background(), app, e.apnsCreds()); err != nil {
		t.Fatal(err)
	}
	apnsIDs := []string{e.recOf(ids, "apns").ID, e.recOf(ids2, "apns").ID}
	e.led.wait(t, wait, "the APNs records to be accepted", func(m map[string]storage.PushRecord) bool {
		for _, id := range apnsIDs {
			if m[id].State != storage.PushAccepted {
				return false
			}
		}
		return true
	})
	if v := gaugeValue(t, reg, "warbler_push_paused", "apns"); v != 0 {
		t.Fatalf("paused{apns} = %v after resume", v)
	}
}

// A service account whose token exchange is refused pauses FCM.
func TestFCMAuthFailurePausesQueue(t *testing.T) {
	e := newEnv(t, nil)
	e.only("pixel")
	e.fcm.mu.Lock()
	e.fcm.tokenErr = true
	e.fcm.mu.Unlock()
	_, ids := e.send("g1", "hi", []string{"bob"})
	e.led.wait(t, wait, "the FCM record to return to the queue", func(m map[string]storage.PushRecord) bool {
		return m[ids[0]].State == storage.PushQueued
	})
	info, _ := e.b.CredentialInfo(context.Background(), app, "fcm")
	if !strings.HasPrefix(info.Paused, "UNAUTHENTICATED") || len(e.fcm.requests()) != 0 {
		t.Fatalf("paused %q, %d requests", info.Paused, len(e.fcm.requests()))
	}
	e.fcm.mu.Lock()
	e.fcm.tokenErr = false
	e.fcm.mu.Unlock()
	if err := e.b.Resume(context.Background(), app, "fcm"); err != nil {
		t.Fatal(err)
	}
	e.led.wait(t, wait, "acceptance after resume", func(m map[string]storage.PushRecord) bool {
		return m[ids[0]].State == storage.PushAccepted
	})
}

// Retries stop after Retry.Attempts.
func TestRetriesExhausted(t *testing.T) {
	e := newEnv(t, nil)
	e.only("iphone")
	e.apns.setRespond(func(r apnsReq, n int) reply { return apnsError(500, "InternalServerError") })
	_, ids := e.send("g1", "hi", []string{"bob"})
	e.led.waitTerminal(t, e.store, wait, ids...)
	if r := e.get(ids[0]); r.State != storage.PushFailed || r.Attempts != 5 || len(e.apns.requests()) != 5 {
		t.Fatalf("record %s after %d attempts, %d requests", r.State, r.Attempts, len(e.apns.requests()))
	}
}

func gaugeValue(t *testing.T, reg *prometheus.Registry, name, provider string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "provider" && l.GetValue() == provider {
					if m.Gauge != nil {
						return m.Gauge.GetValue()
					}
					return m.Counter.GetValue()
				}
			}
		}
	}
	return -1
}
