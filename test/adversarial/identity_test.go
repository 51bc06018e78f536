package adversarial

import (
	"context"
	"testing"
	"time"

	"github.com/pquerna/otp/totp"

	"github.com/warblerim/warbler/identity"
)

// Case 18: password guessing locks the account (429 "locked" with
// Retry-After, even for the right password); a TOTP code is accepted once
// and a replay is refused.
func TestCase18Guessing(t *testing.T) {
	s := start(t, nil)
	ctl := newControl(t, s)
	ctx := context.Background()
	if _, err := s.Identity().CreateUser(ctx, "demo", identity.UserSpec{ID: "guessme", Password: "correct horse battery"}); err != nil {
		t.Fatal(err)
	}
	login := func(user, pass, code string) (int, map[string]any, string) {
		var out map[string]any
		r := api(t, s, "POST", "/v1/apps/demo/login", "", map[string]any{"username": user, "password": pass, "device": "d1", "totp": code}, &out)
		return r.StatusCode, out, r.Header.Get("Retry-After")
	}
	for i := range 5 {
		if code, _, _ := login("guessme", "wrong guess", ""); code != 401 {
			t.Fatalf("guess %d: %d, want 401", i+1, code)
		}
	}
	code, body, retry := login("guessme", "correct horse battery", "")
	if code != 429 || retry == "" || body["error"].(map[string]any)["code"] != "locked" {
		t.Fatalf("after 5 failures, the right password: %d %v Retry-After=%q, want 429 locked", code, body, retry)
	}

	// TOTP: enroll, confirm, then each code works once.
	if _, err := s.Identity().CreateUser(ctx, "demo", identity.UserSpec{ID: "mfa", Password: "correct horse battery"}); err != nil {
		t.Fatal(err)
	}
	code, body, _ = login("mfa", "correct horse battery", "")
	if code != 200 {
		t.Fatalf("login: %d %v", code, body)
	}
	access := body["access_token"].(string)
	var en struct{ Secret string }
	if r := api(t, s, "POST", "/v1/me/totp/enroll", access, nil, &en); r.StatusCode != 200 || en.Secret == "" {
		t.Fatalf("enroll: %d", r.StatusCode)
	}
	now := time.Now()
	first, _ := totp.GenerateCode(en.Secret, now)
	if r := api(t, s, "POST", "/v1/me/totp/confirm", access, map[string]any{"code": first}, nil); r.StatusCode != 200 {
		t.Fatalf("confirm: %d", r.StatusCode)
	}
	if code, body, _ := login("mfa", "correct horse battery", ""); code != 401 || body["error"].(map[string]any)["code"] != "mfa_required" {
		t.Fatalf("without a code: %d %v", code, body)
	}
	if code, body, _ := login("mfa", "correct horse battery", first); code != 401 || body["error"].(map[string]any)["code"] != "invalid_mfa" {
		t.Fatalf("replaying the confirmation code: %d %v, want 401 invalid_mfa", code, body)
	}
	next, _ := totp.GenerateCode(en.Secret, now.Add(30*time.Second)) // the next step, within the allowed skew
	if code, body, _ := login("mfa", "correct horse battery", next); code != 200 {
		t.Fatalf("a fresh code: %d %v", code, body)
	}
	if code, body, _ := login("mfa", "correct horse battery", next); code != 401 || body["error"].(map[string]any)["code"] != "invalid_mfa" {
		t.Fatalf("replaying a code that signed in: %d %v, want 401 invalid_mfa", code, body)
	}
	ctl.check(t)
}
