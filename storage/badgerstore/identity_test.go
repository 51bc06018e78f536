package badgerstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/warblerim/warbler/storage"
)

func openIdentity(t *testing.T, dir string) (*DB, *IdentityStore) {
	t.Helper()
	db, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	return db, NewIdentityStore(db)
}

func TestIdentityStoreAppsAndUsers(t *testing.T) {
	ctx := context.Background()
	db, s := openIdentity(t, t.TempDir())
	defer db.Close()

	if err := s.CreateApp(ctx, storage.App{ID: "a", Name: "A"}); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateApp(ctx, storage.App{ID: "a"}); !errors.Is(err, storage.ErrExists) {
		t.Fatalf("duplicate app: %v", err)
	}
	if err := s.CreateApp(ctx, storage.App{ID: "ab", Name: "AB"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetApp(ctx, "nope"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("missing app: %v", err)
	}
	a, err := s.UpdateApp(ctx, "a", func(a *storage.App) error { a.SecretVersion++; return nil })
	if err != nil || a.SecretVersion != 1 || a.Name != "A" {
		t.Fatalf("update: %+v %v", a, err)
	}
	boom := errors.New("boom")
	if _, err := s.UpdateApp(ctx, "a", func(a *storage.App) error { a.Name = "X"; return boom }); err != boom {
		t.Fatalf("fn error not returned: %v", err)
	}
	if a, _ := s.GetApp(ctx, "a"); a.Name != "A" {
		t.Fatalf("aborted update was written: %+v", a)
	}
	if _, err := s.UpdateApp(ctx, "nope", func(*storage.App) error { return nil }); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("update missing: %v", err)
	}
	apps, _ := s.ListApps(ctx)
	if len(apps) != 2 {
		t.Fatalf("apps: %+v", apps)
	}

	// Users of "a" and "ab" must not mix even though one ID prefixes the other.
	for i := range 5 {
		if err := s.CreateUser(ctx, storage.User{App: "a", ID: fmt.Sprintf("u%d", i)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.CreateUser(ctx, storage.User{App: "ab", ID: "u0"}, &storage.Credential{App: "ab", User: "u0", PasswordHash: "h"}); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateUser(ctx, storage.User{App: "a", ID: "u0"}, nil); !errors.Is(err, storage.ErrExists) {
		t.Fatalf("duplicate user: %v", err)
	}
	if n, _ := s.CountUsers(ctx, "a"); n != 5 {
		t.Fatalf("count a = %d", n)
	}
	page, _ := s.ListUsers(ctx, "a", "", 2)
	if len(page) != 2 || page[0].ID != "u0" || page[1].ID != "u1" {
		t.Fatalf("page 1: %+v", page)
	}
	page, _ = s.ListUsers(ctx, "a", "u1", 10)
	if len(page) != 3 || page[0].ID != "u2" {
		t.Fatalf("page 2: %+v", page)
	}
	if c, err := s.GetCredential(ctx, "ab", "u0"); err != nil || c.PasswordHash != "h" {
		t.Fatalf("credential: %+v %v", c, err)
	}
	if _, err := s.GetCredential(ctx, "a", "u0"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("credential of user without one: %v", err)
	}
	c, err := s.UpdateCredential(ctx, "a", "u0", func(c *storage.Credential) error { c.Failures = 3; return nil })
	if err != nil || c.App != "a" || c.User != "u0" || c.Failures != 3 {
		t.Fatalf("credential create-on-update: %+v %v", c, err)
	}
}

func TestIdentityStoreConcurrentUpdatesDoNotLoseWrites(t *testing.T) {
	ctx := context.Background()
	db, s := openIdentity(t, t.TempDir())
	defer db.Close()
	var wg sync.WaitGroup
	const n = 40
	for range n {
		wg.Go(func() {
			if _, err := s.UpdateCredential(ctx, "a", "u", func(c *storage.Credential) error { c.Failures++; return nil }); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	c, _ := s.GetCredential(ctx, "a", "u")
	if c.Failures != n {
		t.Fatalf("failures = %d, want %d (lost updates)", c.Failures, n)
	}
}

func TestIdentityStoreDurableAcrossReopen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	db, s := openIdentity(t, dir)
	now := time.Now()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(s.CreateApp(ctx, storage.App{ID: "a"}))
	must(s.PutDevice(ctx, storage.Device{App: "a", User: "u", ID: "d1", Platform: "ios", PushToken: "tok"}))
	must(s.PutDevice(ctx, storage.Device{App: "a", User: "u", ID: "d2"}))
	must(s.PutDevice(ctx, storage.Device{App: "a", User: "uu", ID: "d3"}))
	must(s.CreateAPIKey(ctx, storage.APIKey{ID: "k1", App: "a", Scopes: []string{"publish"}}))
	must(s.CreateAPIKey(ctx, storage.APIKey{ID: "k2", App: "b"}))
	must(s.RevokeToken(ctx, storage.TokenRevocation{App: "a", ID: "live", Until: now.Add(time.Hour)}))
	must(s.RevokeToken(ctx, storage.TokenRevocation{App: "a", ID: "old", Until: now.Add(-time.Hour)}))
	must(s.PutUserRevocation(ctx, storage.UserRevocation{App: "a", User: "u", Disabled: true}))
	must(s.PutUserRevocation(ctx, storage.UserRevocation{App: "a", User: "v", NotBefore: now}))
	must(s.DeleteUserRevocation(ctx, "a", "v"))
	must(db.Close())

	db, s = openIdentity(t, dir)
	defer db.Close()
	if _, err := s.GetApp(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	devs, _ := s.ListDevices(ctx, "a", "u")
	if len(devs) != 2 || devs[0].PushToken != "tok" {
		t.Fatalf("devices: %+v", devs)
	}
	keys, _ := s.ListAPIKeys(ctx, "a")
	if len(keys) != 1 || keys[0].ID != "k1" {
		t.Fatalf("keys: %+v", keys)
	}
	must(s.DeleteAPIKey(ctx, "k1"))
	if err := s.DeleteAPIKey(ctx, "k1"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("delete twice: %v", err)
	}
	toks, users, err := s.LoadRevocations(ctx, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(toks) != 1 || toks[0].ID != "live" {
		t.Fatalf("token revocations: %+v", toks)
	}
	if len(users) != 1 || users[0].User != "u" || !users[0].Disabled {
		t.Fatalf("user revocations: %+v", users)
	}
}
