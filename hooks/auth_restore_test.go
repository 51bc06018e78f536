package hooks

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/warblerim/warbler/identity"
	"github.com/warblerim/warbler/internal/mqttstop"
	"github.com/warblerim/warbler/storage/badgerstore"
)

// restartRig runs successive brokers over one Badger database, with the
// Sessions hook persisting sessions, as the real server does.
type restartRig struct {
	t   *testing.T
	db  *badgerstore.DB
	svc *identity.Service
}

// start runs a broker; it returns the environment and a stop function.
func (r *restartRig) start(restore bool) (*azEnv, func()) {
	t := r.t
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	e := &azEnv{t: t, svc: r.svc, reg: NewPrincipals(), keys: map[string]string{}}
	var err error
	e.auth, err = NewAuth(AuthOptions{Identity: r.svc, Principals: e.reg, RestoreSessions: restore, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	e.acl, _ = NewACL(ACLOptions{Principals: e.reg})
	e.server = mqtt.New(&mqtt.Options{InlineClient: false, Capabilities: mqtt.NewDefaultServerCapabilities(), Logger: quiet})
	for _, h := range []mqtt.Hook{NewSessions(r.db.KV("q/"), quiet), e.auth, e.acl} {
		if err := e.server.AddHook(h, nil); err != nil {
			t.Fatal(err)
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.addr = ln.Addr().String()
	_ = e.server.AddListener(listeners.NewNet("tcp", ln))
	if err := e.server.Serve(); err != nil {
		t.Fatal(err)
	}
	e.injector = e.server.NewClient(nil, "local", "injector", true)
	return e, func() { mqttstop.Close(e.server) }
}

// TestAuthRestoredSessions: persistent sessions restored from storage after
// a restart receive what is published while their owners are away, if
// RestoreSessions is on; a disabled user's restored session does not.
func TestAuthRestoredSessions(t *testing.T) {
	ctx := context.Background()
	db, err := badgerstore.Open(t.TempDir(), badgerstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	svc, err := identity.New(ctx, identity.Options{Store: badgerstore.NewIdentityStore(db), MasterKey: bytes.Repeat([]byte{3}, 32)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.CreateApp(ctx, identity.AppSpec{ID: "a1"}); err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{"alice", "bob"} {
		if _, err := svc.CreateUser(ctx, "a1", identity.UserSpec{ID: u}); err != nil {
			t.Fatal(err)
		}
	}
	rig := &restartRig{t: t, db: db, svc: svc}
	token := func(user string) string {
		tok, err := svc.IssueToken(ctx, "a1", user, "d1", 0)
		if err != nil {
			t.Fatal(err)
		}
		return tok.Value
	}

	// First life: alice and bob leave persistent sessions subscribed to
	// their downlinks.
	e, stop := rig.start(true)
	for _, u := range []string{"alice", "bob"} {
		c := e.mustDial(azConn{clientID: "a1:" + u + ":d1", password: token(u), keepSession: true})
		if code := c.sub("w/a1/u/" + u); code != 1 {
			t.Fatalf("SUBACK 0x%02x", code)
		}
		_ = c.c.Disconnect(&paho.Disconnect{})
	}
	stop()
	if _, err := svc.DisableUser(ctx, "a1", "bob"); err != nil {
		t.Fatal(err)
	}

	for _, restore := range []bool{true, false} {
		e, stop := rig.start(restore)
		if _, ok := e.server.Clients.Get("a1:alice:d1"); !ok {
			t.Fatal("session not restored by the Sessions hook")
		}
		_, alicePrincipal := e.reg.Lookup("a1:alice:d1")
		_, bobPrincipal := e.reg.Lookup("a1:bob:d1")
		if alicePrincipal != restore || bobPrincipal {
			t.Fatalf("restore=%v: alice has a principal: %v, disabled bob: %v", restore, alicePrincipal, bobPrincipal)
		}
		e.inject("w/a1/u/alice", "while away")
		e.inject("w/a1/u/bob", "for disabled bob")

		alice := e.mustDial(azConn{clientID: "a1:alice:d1", password: token("alice"), keepSession: true})
		if restore {
			select {
			case m := <-alice.msgs:
				if string(m.Payload) != "while away" {
					t.Fatalf("got %q", m.Payload)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the restored session did not keep what arrived while alice was away")
			}
		}
		// Without restore nothing was queued; either way nothing else is.
		e.barrier(alice, "w/a1/u/alice")
		// The session's unacknowledged deliveries are stored and would be
		// sent again after the restart: let the acks land first.
		deadline := time.Now().Add(5 * time.Second)
		for cl, _ := e.server.Clients.Get("a1:alice:d1"); cl.State.Inflight.Len() > 0; {
			if time.Now().After(deadline) {
				t.Fatal("alice's acknowledgements never arrived")
			}
			time.Sleep(time.Millisecond)
		}
		_ = alice.c.Disconnect(&paho.Disconnect{})
		stop()
	}
}
