package bridge_test

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/warblerim/warbler/bridge"
	"github.com/warblerim/warbler/storage"
)

const wait = 10 * time.Second

func noProblems(t *testing.T, what string, p []string) {
	t.Helper()
	if len(p) > 0 {
		t.Fatalf("%s: the provider would refuse it: %v", what, p)
	}
}

// An offline device gets exactly one well-formed notification per
// provider.
func TestOfflineDeviceGetsOneNotification(t *testing.T) {
	e := newEnv(t, nil)
	e.pos.unread["bob"] = 4
	msg, ids := e.send("g1", "lunch at noon?", []string{"alice", "bob"}, bridge.SenderName("Alice"))
	if len(ids) != 2 {
		t.Fatalf("enqueued %d notifications, want 2 (one per device of bob, none for the author)", len(ids))
	}
	e.led.waitTerminal(t, e.store, wait, ids...)
	ar, fr := e.recOf(ids, storage.ProviderAPNs), e.recOf(ids, storage.ProviderFCM)
	for _, r := range []storage.PushRecord{ar, fr} {
		if r.State != storage.PushAccepted || r.Attempts != 1 {
			t.Fatalf("record %+v, want accepted after 1 attempt", r)
		}
	}

	// APNs: one request, with every header and the payload right.
	reqs := e.apns.requests()
	if len(reqs) != 1 {
		t.Fatalf("APNs got %d requests, want 1", len(reqs))
	}
	a := reqs[0]
	noProblems(t, "APNs request", a.Problems)
	if a.Token != "aaaa0001" || a.ID != ar.ID || a.Topic != "com.acme.chat" || a.PushType != "alert" ||
		a.Collapse != "c:g1" || a.Prio != "10" || ar.ProviderID != ar.ID {
		t.Fatalf("APNs request %+v, record %+v", a, ar)
	}
	exp, _ := strconv.ParseInt(a.Expiry, 10, 64)
	if d := time.Until(time.Unix(exp, 0)); d < bridge.DefaultTTL-time.Minute || d > bridge.DefaultTTL {
		t.Fatalf("apns-expiration %s is %v away, want about %v", a.Expiry, d, bridge.DefaultTTL)
	}
	aps := a.Payload["aps"].(map[string]any)
	alert := aps["alert"].(map[string]any)
	if alert["title"] != "Alice" || alert["body"] != "lunch at noon?" || aps["badge"] != 4.0 || aps["sound"] != "default" || aps["thread-id"] != "g1" {
		t.Fatalf("aps %v", aps)
	}
	if a.Payload["conv"] != "g1" || a.Payload["seq"] != strconv.FormatUint(msg.Seq, 10) || a.Payload["msg_id"] != msg.ID || a.Payload["nid"] != ar.ID {
		t.Fatalf("payload data %v", a.Payload)
	}

	// FCM: one v1 send with the same content.
	freqs := e.fcm.requests()
	if len(freqs) != 1 {
		t.Fatalf("FCM got %d requests, want 1", len(freqs))
	}
	f := freqs[0]
	noProblems(t, "FCM request", f.Problems)
	m := f.Message
	n := m["notification"].(map[string]any)
	data := m["data"].(map[string]any)
	android := m["android"].(map[string]any)
	an := android["notification"].(map[string]any)
	if m["token"] != "fcm-token-1" || n["title"] != "Alice" || n["body"] != "lunch at noon?" ||
		data["conv"] != "g1" || data["seq"] != strconv.FormatUint(msg.Seq, 10) || data["nid"] != fr.ID ||
		android["collapse_key"] != "c:g1" || android["priority"] != "high" || an["notification_count"] != 4.0 || an["tag"] != "c:g1" {
		t.Fatalf("FCM message %v", m)
	}
	if !strings.HasSuffix(fr.ProviderID, "/messages/"+fr.ID) {
		t.Fatalf("FCM message name %q", fr.ProviderID)
	}

	// The ledger answers by user and by device, newest first.
	byDev, err := e.b.Ledger(context.Background(), app, "bob", "iphone", 10)
	if err != nil || len(byDev) != 1 || byDev[0].ID != ar.ID {
		t.Fatalf("ledger of bob/iphone: %v %v", byDev, err)
	}
	ev := byDev[0].Events
	if len(ev) != 3 || ev[0].State != "queued" || ev[1].State != "sent" || ev[2].State != "accepted" {
		t.Fatalf("events %+v, want queued, sent, accepted", ev)
	}

	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(e.b.Collector())
	if v := gaugeValue(t, reg, "warbler_push_accepted_total", "apns"); v != 1 {
		t.Fatalf("accepted_total{apns} = %v", v)
	}
}

func TestOnlineDeviceGetsNone(t *testing.T) {
	e := newEnv(t, nil)
	e.pres.set("bob", "iphone", true)
	e.pres.set("bob", "pixel", true)
	if _, ids := e.send("g1", "hi", []string{"bob"}); len(ids) != 0 {
		t.Fatalf("enqueued %d for online devices", len(ids))
	}
	// One device offline: only that one is notified.
	e.pres.set("bob", "pixel", false)
	_, ids := e.send("g1", "hi", []string{"bob"})
	e.led.waitTerminal(t, e.store, wait, ids...)
	if len(ids) != 1 || len(e.apns.requests()) != 0 || len(e.fcm.requests()) != 1 {
		t.Fatalf("ids %v, apns %d, fcm %d", ids, len(e.apns.requests()), len(e.fcm.requests()))
	}
}

// With a grace period an online device is notified only if it has not
// acknowledged the message when the grace period ends.
func TestGracePeriod(t *testing.T) {
	e := newEnv(t, func(o *bridge.Options) { o.Defaults.GraceMillis = 300 })
	e.pres.set("bob", "iphone", true)
	e.pres.set("bob", "pixel", true)
	msg, ids := e.send("g1", "hi", []string{"bob"})
	if len(ids) != 2 {
		t.Fatalf("enqueued %d", len(ids))
	}
	e.pos.mu.Lock()
	e.pos.delivered["bob/iphone/g1"] = msg.Seq // the iPhone acknowledged it
	e.pos.mu.Unlock()
	e.led.waitTerminal(t, e.store, wait, ids...)
	if r := e.recOf(ids, "apns"); r.State != storage.PushDropped || r.Reason != "delivered" {
		t.Fatalf("iPhone record %s %s", r.State, r.Reason)
	}
	if r := e.recOf(ids, "fcm"); r.State != storage.PushAccepted {
		t.Fatalf("pixel record %s %s", r.State, r.Reason)
	}
	if len(e.apns.requests()) != 0 || len(e.fcm.requests()) != 1 {
		t.Fatal("wrong requests")
	}
}

func TestMutedConversation(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	if err := e.b.Mute(ctx, app, "bob", "g1", time.Time{}); err != nil {
		t.Fatal(err)
	}
	if _, ids := e.send("g1", "hi", []string{"bob"}); len(ids) != 0 {
		t.Fatalf("enqueued %d in a muted conversation", len(ids))
	}
	// Another conversation is not muted; a mention overrides the mute.
	_, other := e.send("g2", "hi", []string{"bob"})
	_, mention := e.send("g1", "@bob look", []string{"bob"}, bridge.Mentions("bob"))
	if len(other) != 2 || len(mention) != 2 {
		t.Fatalf("other %d, mention %d", len(other), len(mention))
	}
	// An expired mute is no mute.
	if err := e.b.Mute(ctx, app, "bob", "g3", time.Now().Add(-time.Minute)); err != nil {
		t.Fatal(err)
	}
	if _, ids := e.send("g3", "hi", []string{"bob"}); len(ids) != 2 {
		t.Fatalf("expired mute: %d", len(ids))
	}
	if err := e.b.Unmute(ctx, app, "bob", "g1"); err != nil {
		t.Fatal(err)
	}
	if _, ids := e.send("g1", "hi", []string{"bob"}); len(ids) != 2 {
		t.Fatalf("after unmute: %d", len(ids))
	}
}

// A message read on another device before the push goes out is not
// pushed.
func TestReadOnAnotherDevice(t *testing.T) {
	e := newEnv(t, func(o *bridge.Options) { o.Defaults.CoalesceMillis = 200 })
	msg, ids := e.send("g1", "hi", []string{"bob"})
	e.pos.markRead("bob", "g1", msg.Seq) // read on bob's laptop, within the coalescing window
	e.led.waitTerminal(t, e.store, wait, ids...)
	for _, id := range ids {
		if r := e.get(id); r.State != storage.PushDropped || r.Reason != "read" {
			t.Fatalf("record %s: %s %s", id, r.State, r.Reason)
		}
	}
	if len(e.apns.requests())+len(e.fcm.requests()) != 0 {
		t.Fatal("a read message was pushed")
	}
}

// A burst in one conversation becomes one notification per device.
func TestCoalesceBurst(t *testing.T) {
	e := newEnv(t, func(o *bridge.Options) { o.Defaults.CoalesceMillis = 2000; o.Defaults.Preview = bridge.PreviewSender })
	var all []string
	for range 3 {
		_, ids := e.send("g1", "spam", []string{"bob"})
		all = append(all, ids...)
	}
	e.led.waitTerminal(t, e.store, wait, all...)
	accepted := 0
	for _, id := range all {
		r, _ := e.b.LedgerEntry(context.Background(), app, id)
		switch {
		case r.State == storage.PushAccepted:
			accepted++
			if r.Count != 3 || r.Body != "3 new messages" || r.Data["count"] != "3" {
				t.Fatalf("coalesced record %+v", r)
			}
		case r.State == storage.PushDropped && strings.HasPrefix(r.Reason, "coalesced into "):
		default:
			t.Fatalf("record %s: %s %s", id, r.State, r.Reason)
		}
	}
	if accepted != 2 || len(e.apns.requests()) != 1 || len(e.fcm.requests()) != 1 {
		t.Fatalf("accepted %d, apns %d, fcm %d", accepted, len(e.apns.requests()), len(e.fcm.requests()))
	}
}

// Quiet hours in the user's time zone make notifications quiet; preview
// modes, silent and private pushes shape the payload.
func TestPayloadKinds(t *testing.T) {
	// 23:30 in Berlin (UTC+2 in June).
	now := time.Date(2025, 6, 1, 21, 30, 0, 0, time.UTC)
	e := newEnv(t, func(o *bridge.Options) { o.Now = func() time.Time { return now } })
	ctx := context.Background()
	_, err := e.b.PutPrefs(ctx, storage.PushPrefs{App: app, User: "bob", Quiet: &storage.QuietHours{Start: "22:00", End: "07:00", TimeZone: "Europe/Berlin"}})
	if err != nil {
		t.Fatal(err)
	}
	_, ids := e.send("g1", "psst", []string{"bob"})
	e.led.waitTerminal(t, e.store, wait, ids...)
	aps := e.apns.requests()[0].Payload["aps"].(map[string]any)
	if aps["sound"] != nil || aps["interruption-level"] != "passive" || e.apns.requests()[0].Prio != "5" {
		t.Fatalf("quiet hours: aps %v prio %s", aps, e.apns.requests()[0].Prio)
	}
	an := e.fcm.requests()[0].Message["android"].(map[string]any)
	if an["priority"] != "normal" || an["notification"].(map[string]any)["notification_priority"] != "PRIORITY_MIN" {
		t.Fatalf("quiet hours: android %v", an)
	}
	if _, err := e.b.PutPrefs(ctx, storage.PushPrefs{App: app, User: "bob"}); err != nil {
		t.Fatal(err)
	}

	// Hidden preview.
	if _, err := e.b.PutSettings(ctx, storage.PushSettings{App: app, Preview: bridge.PreviewHidden, CoalesceMillis: -1}); err != nil {
		t.Fatal(err)
	}
	_, ids = e.send("g1", "secret plans", []string{"bob"})
	e.led.waitTerminal(t, e.store, wait, ids...)
	alert := e.apns.requests()[1].Payload["aps"].(map[string]any)["alert"].(map[string]any)
	if alert["title"] != nil || alert["body"] != "New message" {
		t.Fatalf("hidden preview: %v", alert)
	}

	// Silent: background push, data only.
	_, ids = e.send("g1", "sync", []string{"bob"}, bridge.Silent())
	e.led.waitTerminal(t, e.store, wait, ids...)
	sr := e.apns.requests()[2]
	saps := sr.Payload["aps"].(map[string]any)
	if sr.PushType != "background" || sr.Prio != "5" || saps["content-available"] != 1.0 || saps["alert"] != nil || saps["badge"] != nil {
		t.Fatalf("silent APNs: %+v", sr)
	}
	fm := e.fcm.requests()[2].Message
	if fm["notification"] != nil || fm["android"].(map[string]any)["priority"] != "normal" || fm["data"].(map[string]any)["conv"] != "g1" {
		t.Fatalf("silent FCM: %v", fm)
	}

	// Private (end-to-end encrypted): nothing of the message leaves.
	_, ids = e.send("g1", "the launch code is 1234", []string{"bob"}, bridge.Private(), bridge.SenderName("Alice"))
	e.led.waitTerminal(t, e.store, wait, ids...)
	pr := e.apns.requests()[3]
	paps := pr.Payload["aps"].(map[string]any)
	if paps["mutable-content"] != 1.0 || paps["alert"].(map[string]any)["loc-key"] != "WARBLER_NEW_MESSAGE" {
		t.Fatalf("private APNs: %v", pr.Payload)
	}
	pm := e.fcm.requests()[3].Message
	for _, raw := range []any{pr.Payload, pm} {
		if s := strings.ToLower(toJSON(raw)); strings.Contains(s, "1234") || strings.Contains(s, "alice") {
			t.Fatalf("private push leaks content: %s", s)
		}
	}
	if pm["notification"] != nil || pm["data"].(map[string]any)["seq"] == nil {
		t.Fatalf("private FCM: %v", pm)
	}
}
