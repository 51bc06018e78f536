package chat

import (
	"testing"

	"github.com/warblerim/warbler/protocol"
)

// TestDeleteConversation deletes a group with an invite: members get the
// "deleted" event, the conversation and its log are gone, the invite token
// no longer exists (also not for a group re-created with the same ID), and
// only services may delete.
func TestDeleteConversation(t *testing.T) {
	e := newEnv(t, nil)
	owner := dev("olga", "d")
	svc := Sender{App: "app", User: "_svc", Service: true}
	mustCreate(t, e.svc, owner, "g", "group", "ann")
	inv, err := e.svc.CreateInvite(ctx, owner, "g", 3600, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.svc.DeleteConversation(ctx, owner, "g"); code(err) != protocol.CodeForbidden {
		t.Fatalf("owner deletes: %v", err)
	}
	if err := e.svc.DeleteConversation(ctx, svc, "g"); err != nil {
		t.Fatal(err)
	}
	ms := e.rec.msgs("g")
	if last := ms[len(ms)-1]; last.Type != protocol.TypeSystem || string(last.Body) != `{"event":"deleted","by":"_svc"}` {
		t.Fatalf("last delivered: %+v %s", last, last.Body)
	}
	if _, err := e.svc.Info(ctx, owner, "g", "", 10); code(err) != protocol.CodeNotMember {
		t.Fatalf("info after delete: %v", err)
	}
	if err := e.svc.DeleteConversation(ctx, svc, "g"); code(err) != protocol.CodeNotMember {
		t.Fatalf("second delete: %v", err)
	}
	mustCreate(t, e.svc, owner, "g", "group", "ann")
	if _, err := e.svc.Join(ctx, dev("zed", "d"), "g", inv.Token, ""); code(err) != protocol.CodeNotFound {
		t.Fatalf("join with the old group's invite: %v", err)
	}
	n := 0
	for _, p := range []string{"gi/", "inv/", "gs/"} {
		if err := e.store.ScanRecords(ctx, "app", p, "", 0, func(string, []byte) error { n++; return nil }); err != nil {
			t.Fatal(err)
		}
	}
	if n != 0 {
		t.Fatalf("%d group records left", n)
	}
}
