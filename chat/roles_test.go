package chat

import (
	"testing"

	"github.com/warblerim/warbler/storage"
)

// A group has one owner whoever hands ownership over: when a service (the
// HTTP API) makes a member owner, the previous owner becomes an admin, and
// a service cannot demote the owner without naming a new one.
func TestServiceTransferKeepsOneOwner(t *testing.T) {
	e := newEnv(t, nil)
	svc := Sender{App: "app", User: "_svc", Service: true}
	mustCreate(t, e.svc, dev("ann", "p"), "g", "group", "ben", "cal")
	if _, err := e.svc.SetRole(ctx, svc, "g", "ben", "owner"); err != nil {
		t.Fatal(err)
	}
	owners := func() []string {
		ms, err := e.store.ListMembers(ctx, "app", "g", "", 0)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, m := range ms {
			if m.Role == storage.RoleOwner {
				out = append(out, m.User)
			}
		}
		return out
	}
	if o := owners(); len(o) != 1 || o[0] != "ben" {
		t.Fatalf("owners after a service transfer: %v", o)
	}
	if m, _ := e.store.GetMember(ctx, "app", "g", "ann"); m.Role != storage.RoleAdmin {
		t.Fatalf("previous owner is %s", m.Role)
	}
	if _, err := e.svc.SetRole(ctx, svc, "g", "ben", "member"); code(err) != "bad_request" {
		t.Fatalf("service demotes the owner: %v", err)
	}
	if o := owners(); len(o) != 1 || o[0] != "ben" {
		t.Fatalf("owners after a refused demotion: %v", o)
	}
}
