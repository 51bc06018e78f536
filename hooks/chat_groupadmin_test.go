package hooks_test

// Group administration over real MQTT clients: mutes, settings,
// announcements, ownership, invites, join requests, history visibility
// and the member limit, including what members may not do.

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/warblerim/warbler/chat"
)

// clock is a chat clock the test can move forward.
type clock struct{ off atomic.Int64 }

func (c *clock) now() time.Time          { return time.Now().Add(time.Duration(c.off.Load())) }
func (c *clock) advance(d time.Duration) { c.off.Add(int64(d)) }

func startAdminBroker(t *testing.T, maxGroup int) (*broker, *clock) {
	clk := &clock{}
	b := startBroker(t, func(_ *mqtt.Options, co *chat.Options) {
		co.Now = clk.now
		co.MaxGroupSize = maxGroup
	})
	return b, clk
}

func isEvent(conv, event string) func(inbound) bool {
	return func(in inbound) bool {
		if in.kind() != "msg" || in.data["conv"] != conv || in.data["type"] != "system" {
			return false
		}
		body, _ := in.data["body"].(map[string]any)
		return body["event"] == event
	}
}

func body(in inbound) map[string]any { b, _ := in.data["body"].(map[string]any); return b }

func groupOf(t *testing.T, r map[string]any) map[string]any {
	t.Helper()
	g, _ := r["group"].(map[string]any)
	if g == nil {
		t.Fatalf("no group info in %v", r)
	}
	return g
}

func TestGroupMutesSettingsOwnership(t *testing.T) {
	b, clk := startAdminBroker(t, 10)
	ann := connect(t, "mqtt://"+b.tcp, "ann", "phone")
	adm := connect(t, "mqtt://"+b.tcp, "adm", "phone")
	ben := connect(t, "mqtt://"+b.tcp, "ben", "phone")
	cal := connect(t, "mqtt://"+b.tcp, "cal", "phone")
	result(t, ann.request(map[string]any{"op": "create", "kind": "group", "conv": "g", "members": []string{"adm", "ben", "cal"}}))
	result(t, ann.request(map[string]any{"op": "role", "conv": "g", "user": "adm", "role": "admin"}))
	info := result(t, ben.request(map[string]any{"op": "info", "conv": "g"}))
	if g := groupOf(t, info); g["history"] != "all" || g["join"] != "invite" || g["max_members"] != 10.0 {
		t.Fatalf("default group info %v", g)
	}

	// Members may not mute; admins may not mute the owner.
	if c := errCode(t, ben.request(map[string]any{"op": "mute", "conv": "g", "users": []string{"cal"}})); c != "forbidden" {
		t.Fatalf("member mutes: %s", c)
	}
	if c := errCode(t, adm.request(map[string]any{"op": "mute", "conv": "g", "users": []string{"ann"}})); c != "forbidden" {
		t.Fatalf("admin mutes the owner: %s", c)
	}
	if c := errCode(t, adm.request(map[string]any{"op": "mute", "conv": "g", "users": []string{"zed"}})); c != "not_found" {
		t.Fatalf("mute a non-member: %s", c)
	}

	// A timed mute: an event everyone sees, sends and typing refused.
	r := result(t, adm.request(map[string]any{"op": "mute", "conv": "g", "users": []string{"ben"}, "duration": 60}))
	until, _ := r["until"].(float64)
	if until <= float64(clk.now().UnixMilli()) {
		t.Fatalf("mute: %v", r)
	}
	for _, d := range []*device{ann, adm, ben, cal} {
		ev := d.expect(isEvent("g", "muted"))
		if body(ev)["until"] != until || fmt.Sprint(body(ev)["users"]) != "[ben]" || body(ev)["by"] != "adm" {
			t.Fatalf("muted event %s", ev.raw)
		}
	}
	if c := errCode(t, ben.request(send("g", "", "b1", "hey"))); c != "muted" {
		t.Fatalf("muted send: %s", c)
	}
	if rc := ben.publish(send("g", "", "b2", "hey"), nil); rc != 0x87 {
		t.Fatalf("muted send PUBACK %#x", rc)
	}
	if c := errCode(t, ben.request(map[string]any{"op": "typing", "conv": "g"})); c != "muted" {
		t.Fatalf("muted typing: %s", c)
	}
	if g := groupOf(t, result(t, ben.request(map[string]any{"op": "info", "conv": "g"}))); g["muted_until"] != until {
		t.Fatalf("info for the muted member: %v", g)
	}
	clk.advance(61 * time.Second)
	result(t, ben.request(send("g", "", "b3", "free again")))

	// Until unmuted.
	r = result(t, adm.request(map[string]any{"op": "mute", "conv": "g", "users": []string{"cal"}}))
	if r["until"] != -1.0 {
		t.Fatalf("open-ended mute: %v", r)
	}
	clk.advance(24 * time.Hour)
	if c := errCode(t, cal.request(send("g", "", "c1", "hm"))); c != "muted" {
		t.Fatalf("muted send: %s", c)
	}
	if c := errCode(t, ben.request(map[string]any{"op": "unmute", "conv": "g", "users": []string{"cal"}})); c != "forbidden" {
		t.Fatalf("member unmutes: %s", c)
	}
	result(t, adm.request(map[string]any{"op": "unmute", "conv": "g", "users": []string{"cal"}}))
	cal.expect(isEvent("g", "unmuted"))
	result(t, cal.request(send("g", "", "c2", "thanks")))

	// The whole group muted: only admins and the owner write.
	if c := errCode(t, ben.request(map[string]any{"op": "settings", "conv": "g", "settings": map[string]any{"mute_all": true}})); c != "forbidden" {
		t.Fatalf("member changes settings: %s", c)
	}
	r = result(t, adm.request(map[string]any{"op": "settings", "conv": "g", "settings": map[string]any{"mute_all": true}}))
	if groupOf(t, r)["mute_all"] != true {
		t.Fatalf("settings: %v", r)
	}
	ev := ben.expect(isEvent("g", "settings"))
	if s, _ := body(ev)["settings"].(map[string]any); s["mute_all"] != true {
		t.Fatalf("settings event %s", ev.raw)
	}
	if c := errCode(t, ben.request(send("g", "", "b4", "hey"))); c != "muted" {
		t.Fatalf("send to a muted group: %s", c)
	}
	result(t, adm.request(send("g", "", "a1", "admins still talk")))
	result(t, ann.request(send("g", "", "o1", "and the owner")))
	result(t, adm.request(map[string]any{"op": "settings", "conv": "g", "settings": map[string]any{"mute_all": false}}))
	result(t, ben.request(send("g", "", "b5", "back")))

	// Announcement: admins set it, it is in info and in the log.
	if c := errCode(t, ben.request(map[string]any{"op": "announce", "conv": "g", "text": "mine"})); c != "forbidden" {
		t.Fatalf("member announces: %s", c)
	}
	result(t, adm.request(map[string]any{"op": "announce", "conv": "g", "text": "Meeting at 10"}))
	if ev := cal.expect(isEvent("g", "announcement")); body(ev)["text"] != "Meeting at 10" {
		t.Fatalf("announcement event %s", ev.raw)
	}
	a, _ := groupOf(t, result(t, cal.request(map[string]any{"op": "info", "conv": "g"})))["announcement"].(map[string]any)
	if a["text"] != "Meeting at 10" || a["by"] != "adm" {
		t.Fatalf("announcement in info: %v", a)
	}

	// Member limit: the group's own, never above the server's.
	if c := errCode(t, adm.request(map[string]any{"op": "settings", "conv": "g", "settings": map[string]any{"max_members": 11}})); c != "bad_request" {
		t.Fatalf("max_members above the server's: %s", c)
	}
	if c := errCode(t, adm.request(map[string]any{"op": "settings", "conv": "g", "settings": map[string]any{"max_members": 3}})); c != "bad_request" {
		t.Fatalf("max_members below the member count: %s", c)
	}
	result(t, adm.request(map[string]any{"op": "settings", "conv": "g", "settings": map[string]any{"max_members": 4}}))
	if c := errCode(t, adm.request(map[string]any{"op": "add", "conv": "g", "members": []string{"dan"}})); c != "full" {
		t.Fatalf("add beyond max_members: %s", c)
	}

	// Ownership: only the owner hands it over; the old owner becomes admin.
	if c := errCode(t, adm.request(map[string]any{"op": "transfer", "conv": "g", "user": "adm"})); c != "forbidden" {
		t.Fatalf("admin takes ownership: %s", c)
	}
	result(t, ann.request(map[string]any{"op": "transfer", "conv": "g", "user": "adm"}))
	if ev := ben.expect(func(in inbound) bool { return isEvent("g", "role")(in) && body(in)["role"] == "owner" }); body(ev)["by"] != "ann" || fmt.Sprint(body(ev)["users"]) != "[adm]" {
		t.Fatalf("role event %s", ev.raw)
	}
	roles := map[string]string{}
	for _, m := range result(t, ben.request(map[string]any{"op": "info", "conv": "g"}))["members"].([]any) {
		mm := m.(map[string]any)
		roles[mm["user"].(string)] = mm["role"].(string)
	}
	if roles["adm"] != "owner" || roles["ann"] != "admin" {
		t.Fatalf("roles after transfer: %v", roles)
	}
	// The new owner may now mute the old one (an admin).
	result(t, adm.request(map[string]any{"op": "mute", "conv": "g", "users": []string{"ann"}, "duration": 5}))
	if c := errCode(t, ann.request(send("g", "", "o2", "hm"))); c != "muted" {
		t.Fatalf("muted admin sends: %s", c)
	}
}

func TestGroupInvites(t *testing.T) {
	b, clk := startAdminBroker(t, 0)
	ann := connect(t, "mqtt://"+b.tcp, "ann", "phone")
	ben := connect(t, "mqtt://"+b.tcp, "ben", "phone")
	dan := connect(t, "mqtt://"+b.tcp, "dan", "phone")
	eve := connect(t, "mqtt://"+b.tcp, "eve", "phone")
	result(t, ann.request(map[string]any{"op": "create", "kind": "group", "conv": "g", "members": []string{"ben"}}))

	if c := errCode(t, ben.request(map[string]any{"op": "invite", "conv": "g"})); c != "forbidden" {
		t.Fatalf("member invites: %s", c)
	}
	if c := errCode(t, dan.request(map[string]any{"op": "join", "conv": "g"})); c != "forbidden" {
		t.Fatalf("join without an invite: %s", c)
	}
	inv := result(t, ann.request(map[string]any{"op": "invite", "conv": "g", "uses": 1}))
	token, _ := inv["token"].(string)
	if token == "" || inv["conv"] != "g" || inv["expires"].(float64) < float64(clk.now().Add(6*24*time.Hour).UnixMilli()) {
		t.Fatalf("invite %v", inv)
	}
	if c := errCode(t, dan.request(map[string]any{"op": "join", "conv": "other", "token": token})); c != "not_found" {
		t.Fatalf("token for another conversation: %s", c)
	}
	j := result(t, dan.request(map[string]any{"op": "join", "token": token}))
	if j["state"] != "joined" || j["conv"].(map[string]any)["conv"] != "g" {
		t.Fatalf("join: %v", j)
	}
	for _, d := range []*device{ann, ben, dan} {
		ev := d.expect(isEvent("g", "joined"))
		if body(ev)["via"] != "invite" || fmt.Sprint(body(ev)["users"]) != "[dan]" {
			t.Fatalf("joined event %s", ev.raw)
		}
	}
	// Joining again is a no-op; the single use is spent for anyone else.
	if j := result(t, dan.request(map[string]any{"op": "join", "token": token})); j["state"] != "joined" {
		t.Fatalf("join again: %v", j)
	}
	if c := errCode(t, eve.request(map[string]any{"op": "join", "token": token})); c != "expired" {
		t.Fatalf("used-up invite: %s", c)
	}
	if rc := eve.publish(map[string]any{"op": "join", "token": token}, nil); rc != 0x83 {
		t.Fatalf("used-up invite PUBACK %#x", rc)
	}

	// An invite that expires.
	inv = result(t, ann.request(map[string]any{"op": "invite", "conv": "g", "duration": 60}))
	clk.advance(61 * time.Second)
	if c := errCode(t, eve.request(map[string]any{"op": "join", "token": inv["token"]})); c != "expired" {
		t.Fatalf("expired invite: %s", c)
	}

	// A revoked invite.
	inv = result(t, ann.request(map[string]any{"op": "invite", "conv": "g"}))
	list := result(t, ann.request(map[string]any{"op": "invites", "conv": "g"}))
	if n := len(list["invites"].([]any)); n != 1 { // the used-up and expired ones are gone
		t.Fatalf("invites: %v", list)
	}
	if c := errCode(t, ben.request(map[string]any{"op": "revoke", "conv": "g", "token": inv["token"]})); c != "forbidden" {
		t.Fatalf("member revokes: %s", c)
	}
	list = result(t, ann.request(map[string]any{"op": "revoke", "conv": "g", "token": inv["token"]}))
	if n := len(list["invites"].([]any)); n != 0 {
		t.Fatalf("invites after revoke: %v", list)
	}
	if c := errCode(t, eve.request(map[string]any{"op": "join", "token": inv["token"]})); c != "not_found" {
		t.Fatalf("revoked invite: %s", c)
	}
	if c := errCode(t, eve.request(send("g", "", "e1", "in?"))); c != "not_member" {
		t.Fatalf("eve is not in: %s", c)
	}
}

func TestGroupJoinRequests(t *testing.T) {
	b, _ := startAdminBroker(t, 0)
	ann := connect(t, "mqtt://"+b.tcp, "ann", "phone")
	ben := connect(t, "mqtt://"+b.tcp, "ben", "phone")
	fay := connect(t, "mqtt://"+b.tcp, "fay", "phone")
	gus := connect(t, "mqtt://"+b.tcp, "gus", "phone")
	hal := connect(t, "mqtt://"+b.tcp, "hal", "phone")
	result(t, ann.request(map[string]any{"op": "create", "kind": "group", "conv": "g", "members": []string{"ben"}}))
	result(t, ann.request(map[string]any{"op": "settings", "conv": "g", "settings": map[string]any{"join": "approval"}}))

	if j := result(t, fay.request(map[string]any{"op": "join", "conv": "g", "text": "hi, I am fay"})); j["state"] != "pending" {
		t.Fatalf("join request: %v", j)
	}
	n := ann.expect(isKind("join_request"))
	if n.data["user"] != "fay" || n.data["text"] != "hi, I am fay" {
		t.Fatalf("admin notice %s", n.raw)
	}
	if c := errCode(t, fay.request(send("g", "", "f1", "in?"))); c != "not_member" {
		t.Fatalf("pending user sends: %s", c)
	}
	if c := errCode(t, ben.request(map[string]any{"op": "requests", "conv": "g"})); c != "forbidden" {
		t.Fatalf("member lists requests: %s", c)
	}
	if c := errCode(t, ben.request(map[string]any{"op": "approve", "conv": "g", "users": []string{"fay"}})); c != "forbidden" {
		t.Fatalf("member approves: %s", c)
	}
	reqs := result(t, ann.request(map[string]any{"op": "requests", "conv": "g"}))["requests"].([]any)
	if len(reqs) != 1 || reqs[0].(map[string]any)["user"] != "fay" {
		t.Fatalf("requests %v", reqs)
	}
	result(t, ann.request(map[string]any{"op": "approve", "conv": "g", "users": []string{"fay"}}))
	ev := fay.expect(isEvent("g", "joined"))
	if body(ev)["via"] != "approval" || body(ev)["by"] != "ann" {
		t.Fatalf("joined event %s", ev.raw)
	}
	result(t, fay.request(send("g", "", "f2", "thanks")))

	result(t, gus.request(map[string]any{"op": "join", "conv": "g"}))
	result(t, ann.request(map[string]any{"op": "reject", "conv": "g", "users": []string{"gus"}}))
	if n := gus.expect(isKind("join_request")); n.data["state"] != "rejected" || n.data["conv"] != "g" {
		t.Fatalf("rejection notice %s", n.raw)
	}
	if c := errCode(t, ann.request(map[string]any{"op": "approve", "conv": "g", "users": []string{"gus"}})); c != "not_found" {
		t.Fatalf("approve a rejected request: %s", c)
	}

	// Open groups take anyone.
	result(t, ann.request(map[string]any{"op": "settings", "conv": "g", "settings": map[string]any{"join": "open"}}))
	if j := result(t, hal.request(map[string]any{"op": "join", "conv": "g"})); j["state"] != "joined" {
		t.Fatalf("open join: %v", j)
	}
	if ev := hal.expect(isEvent("g", "joined")); body(ev)["via"] != "open" {
		t.Fatalf("joined event %s", ev.raw)
	}
	if c := errCode(t, hal.request(map[string]any{"op": "join", "conv": "nosuch"})); c != "not_member" {
		t.Fatalf("join a missing group: %s", c)
	}
}

func TestGroupHistoryVisibility(t *testing.T) {
	b, _ := startAdminBroker(t, 0)
	ann := connect(t, "mqtt://"+b.tcp, "ann", "phone")
	ben := connect(t, "mqtt://"+b.tcp, "ben", "phone")
	result(t, ann.request(map[string]any{"op": "create", "kind": "group", "conv": "g", "members": []string{"ben"}}))
	for i := 2; i <= 4; i++ {
		result(t, ann.request(send("g", "", fmt.Sprint("m", i), "before dan")))
	}
	result(t, ann.request(map[string]any{"op": "settings", "conv": "g", "settings": map[string]any{"history": "join"}})) // seq 5
	result(t, ann.request(map[string]any{"op": "add", "conv": "g", "members": []string{"dan"}}))                         // seq 6
	result(t, ann.request(send("g", "", "m7", "after dan")))                                                             // seq 7

	dan := connect(t, "mqtt://"+b.tcp, "dan", "phone")
	seqs := func(r map[string]any) string {
		var out []float64
		for _, m := range r["messages"].([]any) {
			out = append(out, m.(map[string]any)["seq"].(float64))
		}
		return fmt.Sprint(out)
	}
	sy := result(t, dan.request(map[string]any{"op": "sync"}))
	if s := seqs(sy); s != "[6 7]" {
		t.Fatalf("dan syncs %s", s)
	}
	// Unread: seq 7 only; the event that added dan (6) is no message.
	if c := sy["convs"].([]any)[0].(map[string]any); c["unread"] != 1.0 || c["read"] != 5.0 {
		t.Fatalf("dan's unread: %v", c)
	}
	if s := seqs(result(t, dan.request(map[string]any{"op": "history", "conv": "g"}))); s != "[6 7]" {
		t.Fatalf("dan's newest history %s", s)
	}
	if s := seqs(result(t, dan.request(map[string]any{"op": "history", "conv": "g", "before": 7}))); s != "[6]" {
		t.Fatalf("dan's history before 7: %s", s)
	}
	if s := seqs(result(t, dan.request(map[string]any{"op": "history", "conv": "g", "before": 6}))); s != "[]" {
		t.Fatalf("dan's history before 6: %s", s)
	}
	if s := seqs(result(t, dan.request(map[string]any{"op": "history", "conv": "g", "after": 1}))); s != "[6 7]" {
		t.Fatalf("dan's history after 1: %s", s)
	}
	// Members from the start read everything.
	if s := seqs(result(t, ben.request(map[string]any{"op": "history", "conv": "g", "after": 1}))); s != "[2 3 4 5 6 7]" {
		t.Fatalf("ben's history %s", s)
	}
	ctx := context.Background()
	for _, c := range []struct {
		user string
		seq  uint64
		want bool
	}{{"dan", 3, false}, {"dan", 6, true}, {"ben", 3, true}, {"eve", 7, false}} {
		if got, err := b.svc.CanRead(ctx, app, c.user, "g", c.seq); err != nil || got != c.want {
			t.Fatalf("CanRead(%s, %d) = %v, %v", c.user, c.seq, got, err)
		}
	}
	// Back to "all": dan reads the whole history.
	result(t, ann.request(map[string]any{"op": "settings", "conv": "g", "settings": map[string]any{"history": "all"}}))
	if s := seqs(result(t, dan.request(map[string]any{"op": "history", "conv": "g", "after": 1}))); s != "[2 3 4 5 6 7 8]" {
		t.Fatalf("dan's history under all: %s", s)
	}
}
