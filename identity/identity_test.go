package identity

import (
	"bytes"
	"context"
	"errors"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pquerna/otp/totp"

	"github.com/warblerim/warbler/storage"
	"github.com/warblerim/warbler/storage/badgerstore"
)

func TestAppsAndUsers(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	var inv *InvalidError
	for _, id := range []string{"_admin", "_x", "a/b", "a+b", "", strings.Repeat("a", 65), ".a"} {
		if _, err := f.svc.CreateApp(ctx, AppSpec{ID: id, Name: "x"}); id != "" && !errors.As(err, &inv) {
			t.Errorf("app id %q: %v", id, err)
		}
	}
	gen := must[storage.App](t)(f.svc.CreateApp(ctx, AppSpec{Name: "generated"}))
	if !validAppID(gen.ID) {
		t.Fatalf("generated id %q", gen.ID)
	}
	a := must[storage.App](t)(f.svc.CreateApp(ctx, AppSpec{ID: "chat", Quotas: storage.AppQuotas{MaxUsers: 2}}))
	if _, err := f.svc.CreateApp(ctx, AppSpec{ID: "chat"}); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate: %v", err)
	}
	// The signing secret is sealed at rest, bound to the app ID.
	stored := must[storage.App](t)(f.store.GetApp(ctx, "chat"))
	if len(stored.SecretSealed) != 12+32+16 {
		t.Fatalf("sealed secret is %d bytes", len(stored.SecretSealed))
	}
	e := f.svc.appEntry("chat")
	if bytes.Contains(stored.SecretSealed, e.secret) {
		t.Fatal("secret stored in clear")
	}
	if _, err := open(f.svc.keys.appSecret, stored.SecretSealed, []byte("other")); err == nil {
		t.Fatal("secret opens under another app's AAD")
	}
	// A service with another master key refuses to start rather than
	// run with unreadable secrets.
	if _, err := New(ctx, Options{Store: f.store, MasterKey: make([]byte, 32)}); err == nil {
		t.Fatal("wrong master key accepted")
	}
	_ = a

	for _, id := range []string{"_svc", "_x", "a:b", "a b", "a/b"} {
		if _, err := f.svc.CreateUser(ctx, "chat", UserSpec{ID: id}); !errors.As(err, &inv) {
			t.Errorf("user id %q: %v", id, err)
		}
	}
	if _, err := f.svc.CreateUser(ctx, "chat", UserSpec{ID: "u", Password: "short"}); !errors.As(err, &inv) {
		t.Errorf("short password: %v", err)
	}
	if _, err := f.svc.CreateUser(ctx, "chat", UserSpec{ID: "u", DisplayName: "bad\x00name"}); !errors.As(err, &inv) {
		t.Errorf("control char: %v", err)
	}
	must[storage.User](t)(f.svc.CreateUser(ctx, "chat", UserSpec{ID: "u1", Tags: []string{"x"}, Attrs: map[string]string{"k": "v"}}))
	must[storage.User](t)(f.svc.CreateUser(ctx, "chat", UserSpec{ID: "u2"}))
	if _, err := f.svc.CreateUser(ctx, "chat", UserSpec{ID: "u3"}); !errors.Is(err, ErrQuota) {
		t.Fatalf("quota: %v", err)
	}
	if _, err := f.svc.CreateUser(ctx, "nope", UserSpec{ID: "u3"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown app: %v", err)
	}
	page, next, err := f.svc.ListUsers(ctx, "chat", "", 1)
	if err != nil || len(page) != 1 || next != "u1" {
		t.Fatalf("page: %v %q %v", page, next, err)
	}
	page, next, _ = f.svc.ListUsers(ctx, "chat", next, 1)
	if len(page) != 1 || page[0].ID != "u2" || next != "" {
		t.Fatalf("page 2: %v %q", page, next)
	}
	name := "Ursula"
	u := must[storage.User](t)(f.svc.UpdateUser(ctx, "chat", "u1", UserPatch{DisplayName: &name}))
	if u.DisplayName != name || len(u.Tags) != 1 {
		t.Fatalf("patched %+v", u)
	}
	if _, err := f.svc.PutDevice(ctx, "chat", "u1", DeviceSpec{ID: "d1", Platform: "fridge"}); !errors.As(err, &inv) {
		t.Fatalf("platform: %v", err)
	}
	tok := "apns-token"
	must[storage.Device](t)(f.svc.PutDevice(ctx, "chat", "u1", DeviceSpec{ID: "d1", Platform: "ios", PushToken: &tok}))
	d := must[storage.Device](t)(f.svc.PutDevice(ctx, "chat", "u1", DeviceSpec{ID: "d1"}))
	if d.Platform != "ios" || d.PushToken != tok {
		t.Fatalf("partial update lost fields: %+v", d)
	}
	if _, err := f.svc.PutDevice(ctx, "chat", "ghost", DeviceSpec{ID: "d1"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("device of unknown user: %v", err)
	}
}

func TestAPIKeys(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	must[storage.App](t)(f.svc.CreateApp(ctx, AppSpec{ID: "a1"}))
	must[storage.App](t)(f.svc.CreateApp(ctx, AppSpec{ID: "a2"}))
	if _, _, err := f.svc.CreateKey(ctx, "a1", "k", []string{"root"}); err == nil {
		t.Fatal("unknown scope accepted")
	}
	plain, info, err := f.svc.CreateKey(ctx, "a1", "backend", []string{ScopeUsers})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(plain, "wk_"+info.ID+"_") {
		t.Fatalf("key %q id %q", plain, info.ID)
	}
	k, err := f.svc.VerifyKey(ctx, plain)
	if err != nil || k.App != "a1" || !k.Can("a1", ScopeUsers) || k.Can("a1", ScopePublish) || k.Can("a2", ScopeUsers) {
		t.Fatalf("verify: %+v %v", k, err)
	}
	stored := must[storage.APIKey](t)(f.store.GetAPIKey(ctx, info.ID))
	if bytes.Contains(stored.Hash, []byte(plain)) || len(stored.Hash) != 32 {
		t.Fatal("key not stored as a digest")
	}
	wrong := plain[:len(plain)-1] + "a"
	if wrong == plain {
		wrong = plain[:len(plain)-1] + "b"
	}
	for _, bad := range []string{wrong, "", "wk_", plain + "x", strings.ToUpper(plain), "Bearer " + plain} {
		if _, err := f.svc.VerifyKey(ctx, bad); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("key %q: %v", bad, err)
		}
	}
	if err := f.svc.DeleteKey(ctx, "a2", info.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("delete from another app: %v", err)
	}
	if _, _, err := f.svc.RotateKey(ctx, "a2", info.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("rotate from another app: %v", err)
	}
	plain2, _, err := f.svc.RotateKey(ctx, "a1", info.ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.VerifyKey(ctx, plain); !errors.Is(err, ErrInvalidKey) {
		t.Fatalf("old secret after rotation: %v", err)
	}
	if _, err := f.svc.VerifyKey(ctx, plain2); err != nil {
		t.Fatal(err)
	}
	must[storage.App](t)(f.svc.DisableApp(ctx, "a1"))
	if _, err := f.svc.VerifyKey(ctx, plain2); !errors.Is(err, ErrAppDisabled) {
		t.Fatalf("key of disabled app: %v", err)
	}
	if err := f.svc.DeleteKey(ctx, "a1", info.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.VerifyKey(ctx, plain2); !errors.Is(err, ErrInvalidKey) {
		t.Fatalf("deleted key: %v", err)
	}
}

func TestLoginLockout(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	setupChat(t, f)
	login := func(pw, ip string) error {
		_, err := f.svc.Login(ctx, LoginRequest{App: "chat", Username: "alice", Password: pw, IP: ip})
		return err
	}
	if err := login("correct horse", "1.1.1.1"); err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		if err := login("wrong", "1.1.1.1"); !errors.Is(err, ErrInvalidCredentials) {
			t.Fatalf("failure %d: %v", i+1, err)
		}
	}
	// The fifth failure locks the account for one minute, and while it is
	// locked even the right password is refused.
	if err := login("wrong", "1.1.1.1"); !errors.Is(err, ErrInvalidCredentials) {
		t.Fatal(err)
	}
	var le *LockedError
	if err := login("correct horse", "2.2.2.2"); !errors.As(err, &le) || le.RetryAfter != time.Minute {
		t.Fatalf("locked: %v", err)
	}
	// The lock is persisted: a restarted service enforces it too.
	restarted := f.open(t)
	if _, err := restarted.Login(ctx, LoginRequest{App: "chat", Username: "alice", Password: "correct horse"}); !errors.Is(err, ErrLocked) {
		t.Fatalf("after restart: %v", err)
	}
	f.clock.Advance(time.Minute)
	// Exponential backoff: the next failure doubles the lock.
	if err := login("wrong", "1.1.1.1"); !errors.Is(err, ErrInvalidCredentials) {
		t.Fatal(err)
	}
	if err := login("correct horse", ""); !errors.As(err, &le) || le.RetryAfter != 2*time.Minute {
		t.Fatalf("second lock: %v", err)
	}
	f.clock.Advance(2 * time.Minute)
	if err := login("correct horse", ""); err != nil {
		t.Fatalf("after the lock: %v", err)
	}
	c := must[storage.Credential](t)(f.store.GetCredential(ctx, "chat", "alice"))
	if c.Failures != 0 || !c.LockedUntil.IsZero() {
		t.Fatalf("success did not reset: %+v", c)
	}

	// Per IP: 20 failures from one address, spread over unknown users,
	// lock that address only.
	for i := range 20 {
		_, err := f.svc.Login(ctx, LoginRequest{App: "chat", Username: "ghost" + string(rune('a'+i)), Password: "whatever1", IP: "6.6.6.6"})
		if !errors.Is(err, ErrInvalidCredentials) {
			t.Fatalf("ip failure %d: %v", i, err)
		}
	}
	if err := login("correct horse", "6.6.6.6"); !errors.Is(err, ErrLocked) {
		t.Fatalf("ip lock: %v", err)
	}
	if err := login("correct horse", "7.7.7.7"); err != nil {
		t.Fatalf("other ip: %v", err)
	}
}

func TestHashConcurrencyIsCapped(t *testing.T) {
	h := newHasher(2)
	phc := h.hash("password1")
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if ok, err := h.verify("password1", phc); !ok || err != nil {
				t.Error("verify failed", err)
			}
		})
	}
	wg.Wait()
	if p := h.peak.Load(); p != 2 {
		t.Fatalf("peak of %d concurrent hashes; the cap is 2 and 8 were queued", p)
	}
	if !strings.HasPrefix(phc, "$argon2id$v=19$m=19456,t=2,p=1$") {
		t.Fatalf("parameters: %s", phc)
	}
	if ok, _ := h.verify("password2", phc); ok {
		t.Fatal("wrong password verified")
	}
}

func TestTOTPFlow(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	setupChat(t, f)
	code := func(secret string, at time.Time) string {
		c, err := totp.GenerateCodeCustom(secret, at, totpOpts)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	login := func(r LoginRequest) (*Session, error) {
		r.App, r.Username, r.Device = "chat", "alice", "d1"
		if r.Password == "" {
			r.Password = "correct horse"
		}
		return f.svc.Login(ctx, r)
	}

	en := must[*Enrollment](t)(f.svc.EnrollTOTP(ctx, "chat", "alice"))
	if !strings.HasPrefix(en.URI, "otpauth://totp/") || !strings.Contains(en.URI, "secret="+en.Secret) {
		t.Fatalf("uri %s", en.URI)
	}
	if _, err := png.Decode(bytes.NewReader(en.QRPNG)); err != nil {
		t.Fatalf("qr: %v", err)
	}
	c := must[storage.Credential](t)(f.store.GetCredential(ctx, "chat", "alice"))
	if bytes.Contains(c.TOTPPendingSealed, []byte(en.Secret)) {
		t.Fatal("TOTP secret stored in clear")
	}
	// Not active before confirmation.
	if _, err := login(LoginRequest{}); err != nil {
		t.Fatalf("login before confirm: %v", err)
	}
	if _, err := f.svc.ConfirmTOTP(ctx, "chat", "alice", "000000"); !errors.Is(err, ErrInvalidMFA) {
		t.Fatalf("bad confirm: %v", err)
	}
	rc, err := f.svc.ConfirmTOTP(ctx, "chat", "alice", code(en.Secret, f.clock.Now()))
	if err != nil {
		t.Fatal(err)
	}
	if len(rc) != RecoveryCodeCount || len(rc[0]) != 14 {
		t.Fatalf("recovery codes %v", rc)
	}
	if _, err := f.svc.EnrollTOTP(ctx, "chat", "alice"); !errors.Is(err, ErrMFAEnabled) {
		t.Fatalf("re-enroll: %v", err)
	}

	if _, err := login(LoginRequest{}); !errors.Is(err, ErrMFARequired) {
		t.Fatalf("login without code: %v", err)
	}
	if _, err := login(LoginRequest{Password: "wrong pass", TOTP: "123456"}); !errors.Is(err, ErrInvalidCredentials) {
		t.Fatalf("wrong password with code: %v", err)
	}
	// The code that confirmed enrollment is spent: same step.
	if _, err := login(LoginRequest{TOTP: code(en.Secret, f.clock.Now())}); !errors.Is(err, ErrInvalidMFA) {
		t.Fatalf("reuse of the confirm code: %v", err)
	}
	f.clock.Advance(30 * time.Second)
	now := code(en.Secret, f.clock.Now())
	if _, err := login(LoginRequest{TOTP: now}); err != nil {
		t.Fatalf("login with code: %v", err)
	}
	if _, err := login(LoginRequest{TOTP: now}); !errors.Is(err, ErrInvalidMFA) {
		t.Fatalf("replay: %v", err)
	}
	// An older step (still inside the skew window) is refused once a newer
	// one was used.
	f.clock.Advance(30 * time.Second)
	if _, err := login(LoginRequest{TOTP: now}); !errors.Is(err, ErrInvalidMFA) {
		t.Fatalf("previous step after use: %v", err)
	}
	// Restarting does not reopen the replay window.
	f.svc = f.open(t)
	if _, err := login(LoginRequest{TOTP: now}); !errors.Is(err, ErrInvalidMFA) {
		t.Fatalf("replay after restart: %v", err)
	}

	if _, err := login(LoginRequest{RecoveryCode: strings.ToUpper(rc[3])}); err != nil {
		t.Fatalf("recovery code: %v", err)
	}
	if _, err := login(LoginRequest{RecoveryCode: rc[3]}); !errors.Is(err, ErrInvalidMFA) {
		t.Fatalf("recovery code twice: %v", err)
	}
	f.clock.Advance(30 * time.Second)
	rc2, err := f.svc.RegenerateRecoveryCodes(ctx, "chat", "alice", code(en.Secret, f.clock.Now()))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := login(LoginRequest{RecoveryCode: rc[4]}); !errors.Is(err, ErrInvalidMFA) {
		t.Fatalf("old set after regeneration: %v", err)
	}
	if _, err := login(LoginRequest{RecoveryCode: rc2[0]}); err != nil {
		t.Fatalf("new set: %v", err)
	}

	f.clock.Advance(30 * time.Second)
	if err := f.svc.DisableTOTP(ctx, "chat", "alice", "wrong pass", code(en.Secret, f.clock.Now())); !errors.Is(err, ErrInvalidCredentials) {
		t.Fatalf("disable with wrong password: %v", err)
	}
	if err := f.svc.DisableTOTP(ctx, "chat", "alice", "correct horse", code(en.Secret, f.clock.Now())); err != nil {
		t.Fatalf("disable: %v", err)
	}
	if _, err := login(LoginRequest{}); err != nil {
		t.Fatalf("login after disable: %v", err)
	}
	if _, err := f.svc.RegenerateRecoveryCodes(ctx, "chat", "alice", "123456"); !errors.Is(err, ErrMFANotEnabled) {
		t.Fatalf("regenerate without MFA: %v", err)
	}
}

func TestTOTPGuessingLocksAccount(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	setupChat(t, f)
	en := must[*Enrollment](t)(f.svc.EnrollTOTP(ctx, "chat", "alice"))
	c, _ := totp.GenerateCodeCustom(en.Secret, f.clock.Now(), totpOpts)
	must[[]string](t)(f.svc.ConfirmTOTP(ctx, "chat", "alice", c))
	f.clock.Advance(30 * time.Second)
	for range 5 {
		_, err := f.svc.Login(ctx, LoginRequest{App: "chat", Username: "alice", Password: "correct horse", TOTP: "000000"})
		if !errors.Is(err, ErrInvalidMFA) {
			t.Fatal(err)
		}
	}
	good, _ := totp.GenerateCodeCustom(en.Secret, f.clock.Now(), totpOpts)
	if _, err := f.svc.Login(ctx, LoginRequest{App: "chat", Username: "alice", Password: "correct horse", TOTP: good}); !errors.Is(err, ErrLocked) {
		t.Fatalf("after 5 bad codes: %v", err)
	}
}

func TestRules(t *testing.T) {
	bad := []storage.TopicRule{
		{Pattern: "w/{app}/iot/#", Access: "all"},
		{Pattern: "w/other/iot/x", Access: "read"},
		{Pattern: "w/{app}/iot/", Access: "read"},
		{Pattern: "w/{app}/iot", Access: "read"},
		{Pattern: "w/{app}/u/%u", Access: "read"},
		{Pattern: "w/{app}/iot/dev-%u", Access: "read"},
		{Pattern: "w/{app}/iot/#/x", Access: "read"},
		{Pattern: "w/{app}/iot/a+", Access: "read"},
		{Pattern: "w/{app}/iot/%x", Access: "read"},
		{Pattern: "w/{app}/iot/$SYS", Access: "read"},
		{Pattern: "w/{app}/iot/\x00", Access: "read"},
	}
	for _, r := range bad {
		if _, err := CompileRules("demo", []storage.TopicRule{r}); err == nil {
			t.Errorf("rule %+v accepted", r)
		}
	}
	rs, err := CompileRules("demo", []storage.TopicRule{
		{Pattern: "w/{app}/iot/%u/#", Access: "readwrite"},
		{Pattern: "w/demo/iot/public/+", Access: "read"},
		{Pattern: "w/{app}/iot/cmd/%c", Access: "read"},
		{Pattern: "w/{app}/iot/telemetry/%u", Access: "write"},
	})
	if err != nil {
		t.Fatal(err)
	}
	const cid = "demo:alice:d1"
	cases := []struct {
		f     string
		write bool
		want  bool
	}{
		{"w/demo/iot/alice/temp", true, true},
		{"w/demo/iot/alice/temp", false, true},
		{"w/demo/iot/alice", false, true},
		{"w/demo/iot/alice/#", false, true},
		{"w/demo/iot/alice/+/x", false, true},
		{"w/demo/iot/bob/temp", false, false},
		{"w/demo/iot/+/temp", false, false},
		{"w/demo/iot/#", false, false},
		{"w/demo/iot/+", false, false},
		{"w/demo/iot/public/news", false, true},
		{"w/demo/iot/public/+", false, true},
		{"w/demo/iot/public/#", false, false},
		{"w/demo/iot/public/news/deep", false, false},
		{"w/demo/iot/public/news", true, false},
		{"w/demo/iot/cmd/" + cid, false, true},
		{"w/demo/iot/cmd/demo:bob:d1", false, false},
		{"w/demo/iot/telemetry/alice", true, true},
		{"w/demo/iot/telemetry/alice", false, false},
		{"w/demo/iot/telemetry/bob", true, false},
		{"w/other/iot/alice/temp", false, false},
		{"w/demo/iot/%u/x", false, false},
	}
	for _, c := range cases {
		if got := rs.Allow(c.f, "alice", cid, c.write); got != c.want {
			t.Errorf("Allow(%q, write=%v) = %v, want %v", c.f, c.write, got, c.want)
		}
	}
	if rs.Allow("w/demo/iot/x/y", "", "", false) {
		t.Error("anonymous matched a %u rule")
	}
	if allocs := testing.AllocsPerRun(100, func() { rs.Allow("w/demo/iot/alice/a/b", "alice", cid, false) }); allocs != 0 {
		t.Errorf("Allow allocates %v times", allocs)
	}
}

func TestBootstrap(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	openStore := func() (*badgerstore.DB, *badgerstore.IdentityStore) {
		db, err := badgerstore.Open(filepath.Join(dir, "store"), badgerstore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		return db, badgerstore.NewIdentityStore(db)
	}
	db, st := openStore()
	b, err := Bootstrap(ctx, dir, Options{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	if !b.FirstStart || !b.CreatedDemo || b.AdminKey == "" {
		t.Fatalf("first start %+v", b)
	}
	for _, p := range []string{b.MasterKeyPath, b.AdminKeyPath} {
		fi, err := os.Stat(p)
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v", p, fi.Mode(), err)
		}
	}
	k, err := b.Service.VerifyKey(ctx, b.AdminKey)
	if err != nil || !k.IsAdmin() || !k.Can("demo", ScopeUsers) {
		t.Fatalf("admin key: %+v %v", k, err)
	}
	if rs := b.Service.AppRules("demo"); rs.Len() != 1 {
		t.Fatal("demo app has no IoT rule")
	}
	db.Close()

	db, st = openStore()
	b2, err := Bootstrap(ctx, dir, Options{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	if b2.FirstStart || b2.CreatedDemo || b2.AdminKey != b.AdminKey {
		t.Fatalf("second start %+v", b2)
	}
	// The app secret still opens: same master key.
	if _, err := b2.Service.IssueToken(ctx, "demo", "nobody", "", 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("issue for unknown user: %v", err)
	}
	db.Close()

	// Loose permissions are an error, not a warning.
	if err := os.Chmod(b.MasterKeyPath, 0o644); err != nil {
		t.Fatal(err)
	}
	db, st = openStore()
	if _, err := Bootstrap(ctx, dir, Options{Store: st}); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("0644 master key: %v", err)
	}
	db.Close()
	_ = os.Chmod(b.MasterKeyPath, 0o600)

	// A wiped store gets the admin key back from admin.key.
	if err := os.RemoveAll(filepath.Join(dir, "store")); err != nil {
		t.Fatal(err)
	}
	db, st = openStore()
	b3, err := Bootstrap(ctx, dir, Options{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b3.Service.VerifyKey(ctx, b.AdminKey); err != nil {
		t.Fatalf("admin key after wipe: %v", err)
	}
	db.Close()

	// A tampered admin.key is refused.
	tampered := []byte(b.AdminKey)
	tampered[30] = map[bool]byte{true: 'b', false: 'c'}[tampered[30] != 'b']
	if err := os.WriteFile(b.AdminKeyPath, append(tampered, '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	db, st = openStore()
	defer db.Close()
	if _, err := Bootstrap(ctx, dir, Options{Store: st}); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("tampered admin.key: %v", err)
	}
}
