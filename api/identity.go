package api

// This file serves the identity resources: apps, API keys, users, devices,
// tokens, sign-in and second factors.
//
// Who may call what. Every route but login and refresh needs a bearer
// credential:
//
//	admin key                 every route of every app, and /v1/apps
//	app key with scope S      the app's routes that need S ("admin" implies all)
//	user access token         /v1/logout and /v1/me/...
//
// A key of app A asking for an object of app B gets 404, as if B did not
// exist; a key of the right app without the needed scope gets 403.
//
//	POST   /v1/apps                                      admin    create an app
//	GET    /v1/apps                                      admin    list apps
//	GET    /v1/apps/{app}                                any key of the app
//	PATCH  /v1/apps/{app}                                admin    name, quotas, settings, disabled
//	POST   /v1/apps/{app}/disable                        admin
//	POST   /v1/apps/{app}/rotate-secret                  "admin"  revokes every server-issued token
//	PUT    /v1/apps/{app}/public-key                     "admin"  key for app-minted tokens
//	POST   /v1/apps/{app}/keys                           "admin"  returns the plaintext key, once
//	GET    /v1/apps/{app}/keys                           "admin"
//	POST   /v1/apps/{app}/keys/{id}/rotate               "admin"  returns the new plaintext, once
//	DELETE /v1/apps/{app}/keys/{id}                      "admin"
//	POST   /v1/apps/{app}/users                          "users"
//	GET    /v1/apps/{app}/users?after=&limit=            "users"  paged by ID
//	GET    /v1/apps/{app}/users/{user}                   "users"
//	PATCH  /v1/apps/{app}/users/{user}                   "users"
//	DELETE /v1/apps/{app}/users/{user}                   "users"  disables and revokes; the ID stays taken
//	PUT    /v1/apps/{app}/users/{user}/devices/{device}      {platform, push_token, push_topic, locale}  "users" or "push"
//	GET    /v1/apps/{app}/users/{user}/devices           "users" or "push"
//	GET    /v1/apps/{app}/users/{user}/devices/{device}  "users" or "push"
//	DELETE /v1/apps/{app}/users/{user}/devices/{device}  "users" or "push"  forgets it and its push token
//	POST   /v1/apps/{app}/tokens                         "users"  MQTT credentials for a user's device
//	POST   /v1/apps/{app}/login                          public   password (+ TOTP or recovery code)
//	POST   /v1/apps/{app}/refresh                        public   refresh token
//	POST   /v1/logout                                    token
//	POST   /v1/me/totp/enroll                            token
//	POST   /v1/me/totp/confirm                           token
//	POST   /v1/me/totp/disable                           token    needs password and code
//	POST   /v1/me/recovery-codes                         token    needs a code
//
// Responses carry allowlisted fields only: no password hash, app secret,
// key digest, TOTP secret (except once at enrollment), API key (except
// once at creation) or push token is ever returned.
//
// Sign-in errors are 401 with code "invalid_credentials", "mfa_required"
// or "invalid_mfa", and 429 "locked" with a Retry-After header (seconds)
// once an account or client address has failed too often.

import (
	"encoding/base64"
	"errors"
	"math"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/warblerim/warbler/identity"
	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage"
)

// DefaultIdentityBodyLimit is the request body limit of the identity
// routes unless IdentityOptions says otherwise.
const DefaultIdentityBodyLimit = 64 << 10

// IdentityOptions configure an IdentityAPI.
type IdentityOptions struct {
	Service *identity.Service
	// MQTTAddr returns the host:port that clients should connect to; it is
	// returned with every set of MQTT credentials. Required.
	MQTTAddr func() string
	// ClientIP returns the address used to limit sign-in attempts per
	// client. The default is the host part of r.RemoteAddr; behind a
	// reverse proxy, supply one that trusts only the proxy's header.
	ClientIP func(r *http.Request) string
	// MaxBodyBytes limits request bodies; DefaultIdentityBodyLimit if 0.
	MaxBodyBytes int64
}

// IdentityAPI serves the identity routes. Create it with NewIdentityAPI
// and mount it with Register.
type IdentityAPI struct {
	authz
	mqttAddr func() string
	clientIP func(*http.Request) string
	limit    int64
}

// NewIdentityAPI returns the identity routes over o.Service.
func NewIdentityAPI(o IdentityOptions) *IdentityAPI {
	a := &IdentityAPI{authz: authz{svc: o.Service}, mqttAddr: o.MQTTAddr, clientIP: o.ClientIP, limit: o.MaxBodyBytes}
	if a.mqttAddr == nil {
		a.mqttAddr = func() string { return "" }
	}
	if a.clientIP == nil {
		a.clientIP = remoteHost
	}
	if a.limit <= 0 {
		a.limit = DefaultIdentityBodyLimit
	}
	return a
}

func remoteHost(r *http.Request) string {
	h, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return h
}

// Register adds the identity routes to mux.
func (a *IdentityAPI) Register(mux Mux) {
	h := func(pattern string, f HandlerFunc) { mux.Handle(pattern, f) }
	h("POST /v1/apps", a.createApp)
	h("GET /v1/apps", a.listApps)
	h("GET /v1/apps/{app}", a.getApp)
	h("PATCH /v1/apps/{app}", a.patchApp)
	h("POST /v1/apps/{app}/disable", a.disableApp)
	h("POST /v1/apps/{app}/rotate-secret", a.rotateSecret)
	h("PUT /v1/apps/{app}/public-key", a.putPublicKey)
	h("POST /v1/apps/{app}/keys", a.createKey)
	h("GET /v1/apps/{app}/keys", a.listKeys)
	h("POST /v1/apps/{app}/keys/{id}/rotate", a.rotateKey)
	h("DELETE /v1/apps/{app}/keys/{id}", a.deleteKey)
	h("POST /v1/apps/{app}/users", a.createUser)
	h("GET /v1/apps/{app}/users", a.listUsers)
	h("GET /v1/apps/{app}/users/{user}", a.getUser)
	h("PATCH /v1/apps/{app}/users/{user}", a.patchUser)
	h("DELETE /v1/apps/{app}/users/{user}", a.deleteUser)
	h("PUT /v1/apps/{app}/users/{user}/devices/{device}", a.putDevice)
	h("GET /v1/apps/{app}/users/{user}/devices", a.listDevices)
	h("GET /v1/apps/{app}/users/{user}/devices/{device}", a.getDevice)
	h("DELETE /v1/apps/{app}/users/{user}/devices/{device}", a.deleteDevice)
	h("POST /v1/apps/{app}/tokens", a.issueToken)
	h("POST /v1/apps/{app}/login", a.login)
	h("POST /v1/apps/{app}/refresh", a.refresh)
	h("POST /v1/logout", a.logout)
	h("POST /v1/me/totp/enroll", a.totpEnroll)
	h("POST /v1/me/totp/confirm", a.totpConfirm)
	h("POST /v1/me/totp/disable", a.totpDisable)
	h("POST /v1/me/recovery-codes", a.recoveryCodes)
}

// mapErr turns identity errors into API errors. w, if non-nil, receives a
// Retry-After header for a lockout.
func mapErr(err error) error { return mapErrW(nil, err) }

func mapErrW(w http.ResponseWriter, err error) error {
	var inv *identity.InvalidError
	var locked *identity.LockedError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &inv):
		return Errorf(http.StatusBadRequest, "invalid", "%s", inv.Error())
	case errors.As(err, &locked):
		secs := int(math.Ceil(locked.RetryAfter.Seconds()))
		if w != nil {
			w.Header().Set("Retry-After", strconv.Itoa(secs))
		}
		return Errorf(http.StatusTooManyRequests, "locked", "too many failed attempts; retry in %d seconds", secs)
	case errors.Is(err, identity.ErrNotFound):
		return ErrNotFound
	case errors.Is(err, identity.ErrExists):
		return Errorf(http.StatusConflict, "exists", "already exists")
	case errors.Is(err, identity.ErrQuota):
		return Errorf(http.StatusForbidden, "quota_exceeded", "the app's quota is used up")
	case errors.Is(err, identity.ErrAppDisabled):
		return Errorf(http.StatusForbidden, "app_disabled", "the app is disabled")
	case errors.Is(err, identity.ErrUserDisabled):
		return Errorf(http.StatusForbidden, "user_disabled", "the user is disabled")
	case errors.Is(err, identity.ErrInvalidCredentials):
		return Errorf(http.StatusUnauthorized, "invalid_credentials", "wrong username or password")
	case errors.Is(err, identity.ErrMFARequired):
		return Errorf(http.StatusUnauthorized, "mfa_required", "a TOTP code or a recovery code is required")
	case errors.Is(err, identity.ErrInvalidMFA):
		return Errorf(http.StatusUnauthorized, "invalid_mfa", "wrong, expired or already used code")
	case errors.Is(err, identity.ErrMFAEnabled):
		return Errorf(http.StatusConflict, "mfa_enabled", "TOTP is already enabled")
	case errors.Is(err, identity.ErrMFANotEnabled):
		return Errorf(http.StatusConflict, "mfa_not_enabled", "TOTP is not enabled")
	case errors.Is(err, identity.ErrNoEnrollment):
		return Errorf(http.StatusConflict, "no_enrollment", "start with POST /v1/me/totp/enroll")
	case errors.Is(err, identity.ErrTokenExpired):
		return Errorf(http.StatusUnauthorized, "token_expired", "the token has expired")
	case errors.Is(err, identity.ErrTokenRevoked):
		return Errorf(http.StatusUnauthorized, "token_revoked", "the token was revoked")
	case errors.Is(err, identity.ErrInvalidToken), errors.Is(err, identity.ErrInvalidKey):
		return ErrUnauthorized
	}
	return err
}

func (a *IdentityAPI) decode(w http.ResponseWriter, r *http.Request, v any) error {
	return DecodeJSON(w, r, a.limit, v)
}

// Views: the only fields that leave the server.

type appView struct {
	ID            string              `json:"id"`
	Name          string              `json:"name"`
	Disabled      bool                `json:"disabled"`
	SecretVersion uint32              `json:"secret_version"`
	PublicKey     string              `json:"public_key,omitempty"`
	Quotas        storage.AppQuotas   `json:"quotas"`
	Settings      storage.AppSettings `json:"settings"`
	CreatedAt     time.Time           `json:"created_at"`
	UpdatedAt     time.Time           `json:"updated_at"`
}

func viewApp(x storage.App) appView {
	return appView{ID: x.ID, Name: x.Name, Disabled: x.Disabled, SecretVersion: x.SecretVersion, PublicKey: x.PublicKeyPEM,
		Quotas: x.Quotas, Settings: x.Settings, CreatedAt: x.CreatedAt, UpdatedAt: x.UpdatedAt}
}

type keyView struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Scopes    []string  `json:"scopes"`
	CreatedAt time.Time `json:"created_at"`
	RotatedAt time.Time `json:"rotated_at,omitzero"`
	// Key is the plaintext, present only in the response that creates or
	// rotates it.
	Key string `json:"key,omitempty"`
}

func viewKey(k identity.KeyInfo, plain string) keyView {
	return keyView{ID: k.ID, Name: k.Name, Scopes: k.Scopes, CreatedAt: k.CreatedAt, RotatedAt: k.RotatedAt, Key: plain}
}

type userView struct {
	ID          string            `json:"id"`
	DisplayName string            `json:"display_name,omitempty"`
	Tags        []string          `json:"tags,omitempty"`
	Attrs       map[string]string `json:"attrs,omitempty"`
	Disabled    bool              `json:"disabled"`
	CreatedAt   time.Time         `json:"created_at"`
	UpdatedAt   time.Time         `json:"updated_at"`
}

func viewUser(u storage.User) userView {
	return userView{ID: u.ID, DisplayName: u.DisplayName, Tags: u.Tags, Attrs: u.Attrs, Disabled: u.Disabled,
		CreatedAt: u.CreatedAt, UpdatedAt: u.UpdatedAt}
}

type deviceView struct {
	ID           string    `json:"id"`
	Platform     string    `json:"platform,omitempty"`
	HasPushToken bool      `json:"has_push_token"`
	PushTopic    string    `json:"push_topic,omitempty"`
	Locale       string    `json:"locale,omitempty"`
	LastSeen     time.Time `json:"last_seen"`
	CreatedAt    time.Time `json:"created_at"`
}

func viewDevice(d storage.Device) deviceView {
	return deviceView{ID: d.ID, Platform: d.Platform, HasPushToken: d.PushToken != "", PushTopic: d.PushTopic,
		Locale: d.Locale, LastSeen: d.LastSeen, CreatedAt: d.CreatedAt}
}

// topicsView names a device's topics, so clients need not build them.
type topicsView struct {
	Downlink string `json:"downlink"`
	Device   string `json:"device"`
	Uplink   string `json:"uplink"`
}

func viewTopics(app, user, device string) topicsView {
	return topicsView{Downlink: protocol.Downlink(app, user), Device: protocol.DeviceTopic(app, user, device),
		Uplink: protocol.Uplink(app, user, device)}
}

// Apps.

type appBody struct {
	ID       string               `json:"id"`
	Name     string               `json:"name"`
	Quotas   *storage.AppQuotas   `json:"quotas"`
	Settings *storage.AppSettings `json:"settings"`
	Disabled *bool                `json:"disabled"`
}

func (a *IdentityAPI) createApp(w http.ResponseWriter, r *http.Request) error {
	if err := a.admin(r); err != nil {
		return err
	}
	var b appBody
	if err := a.decode(w, r, &b); err != nil {
		return err
	}
	if b.Name == "" {
		return Errorf(http.StatusBadRequest, "invalid", "name is required")
	}
	spec := identity.AppSpec{ID: b.ID, Name: b.Name}
	if b.Quotas != nil {
		spec.Quotas = *b.Quotas
	}
	if b.Settings != nil {
		spec.Settings = *b.Settings
	}
	app, err := a.svc.CreateApp(r.Context(), spec)
	if err != nil {
		return mapErr(err)
	}
	if b.Disabled != nil && *b.Disabled {
		if app, err = a.svc.DisableApp(r.Context(), app.ID); err != nil {
			return mapErr(err)
		}
	}
	WriteJSON(w, http.StatusCreated, viewApp(app))
	return nil
}

func (a *IdentityAPI) listApps(w http.ResponseWriter, r *http.Request) error {
	if err := a.admin(r); err != nil {
		return err
	}
	apps, err := a.svc.ListApps(r.Context())
	if err != nil {
		return err
	}
	out := make([]appView, len(apps))
	for i, x := range apps {
		out[i] = viewApp(x)
	}
	WriteJSON(w, http.StatusOK, map[string]any{"apps": out})
	return nil
}

func (a *IdentityAPI) getApp(w http.ResponseWriter, r *http.Request) error {
	app, err := a.forApp(r)
	if err != nil {
		return err
	}
	x, err := a.svc.GetApp(r.Context(), app)
	if err != nil {
		return mapErr(err)
	}
	WriteJSON(w, http.StatusOK, viewApp(x))
	return nil
}

func (a *IdentityAPI) patchApp(w http.ResponseWriter, r *http.Request) error {
	app, err := a.adminForApp(r)
	if err != nil {
		return err
	}
	var b appBody
	if err := a.decode(w, r, &b); err != nil {
		return err
	}
	if b.ID != "" {
		return Errorf(http.StatusBadRequest, "invalid", "id cannot be changed")
	}
	p := identity.AppPatch{Quotas: b.Quotas, Settings: b.Settings, Disabled: b.Disabled}
	if b.Name != "" {
		p.Name = &b.Name
	}
	x, err := a.svc.UpdateApp(r.Context(), app, p)
	if err != nil {
		return mapErr(err)
	}
	WriteJSON(w, http.StatusOK, viewApp(x))
	return nil
}

func (a *IdentityAPI) disableApp(w http.ResponseWriter, r *http.Request) error {
	app, err := a.adminForApp(r)
	if err != nil {
		return err
	}
	x, err := a.svc.DisableApp(r.Context(), app)
	if err != nil {
		return mapErr(err)
	}
	WriteJSON(w, http.StatusOK, viewApp(x))
	return nil
}

func (a *IdentityAPI) rotateSecret(w http.ResponseWriter, r *http.Request) error {
	app, err := a.forApp(r, identity.ScopeAdmin)
	if err != nil {
		return err
	}
	x, err := a.svc.RotateSecret(r.Context(), app)
	if err != nil {
		return mapErr(err)
	}
	WriteJSON(w, http.StatusOK, viewApp(x))
	return nil
}

func (a *IdentityAPI) putPublicKey(w http.ResponseWriter, r *http.Request) error {
	app, err := a.forApp(r, identity.ScopeAdmin)
	if err != nil {
		return err
	}
	var b struct {
		PublicKey string `json:"public_key"`
	}
	if err := a.decode(w, r, &b); err != nil {
		return err
	}
	x, err := a.svc.SetPublicKey(r.Context(), app, b.PublicKey)
	if err != nil {
		return mapErr(err)
	}
	WriteJSON(w, http.StatusOK, viewApp(x))
	return nil
}

// Keys.

func (a *IdentityAPI) createKey(w http.ResponseWriter, r *http.Request) error {
	app, err := a.forApp(r, identity.ScopeAdmin)
	if err != nil {
		return err
	}
	var b struct {
		Name   string   `json:"name"`
		Scopes []string `json:"scopes"`
	}
	if err := a.decode(w, r, &b); err != nil {
		return err
	}
	plain, k, err := a.svc.CreateKey(r.Context(), app, b.Name, b.Scopes)
	if err != nil {
		return mapErr(err)
	}
	w.Header().Set("Cache-Control", "no-store")
	WriteJSON(w, http.StatusCreated, viewKey(k, plain))
	return nil
}

func (a *IdentityAPI) listKeys(w http.ResponseWriter, r *http.Request) error {
	app, err := a.forApp(r, identity.ScopeAdmin)
	if err != nil {
		return err
	}
	ks, err := a.svc.ListKeys(r.Context(), app)
	if err != nil {
		return err
	}
	out := make([]keyView, len(ks))
	for i, k := range ks {
		out[i] = viewKey(k, "")
	}
	WriteJSON(w, http.StatusOK, map[string]any{"keys": out})
	return nil
}

func (a *IdentityAPI) rotateKey(w http.ResponseWriter, r *http.Request) error {
	app, err := a.forApp(r, identity.ScopeAdmin)
	if err != nil {
		return err
	}
	plain, k, err := a.svc.RotateKey(r.Context(), app, r.PathValue("id"))
	if err != nil {
		return mapErr(err)
	}
	w.Header().Set("Cache-Control", "no-store")
	WriteJSON(w, http.StatusOK, viewKey(k, plain))
	return nil
}

func (a *IdentityAPI) deleteKey(w http.ResponseWriter, r *http.Request) error {
	app, err := a.forApp(r, identity.ScopeAdmin)
	if err != nil {
		return err
	}
	if err := a.svc.DeleteKey(r.Context(), app, r.PathValue("id")); err != nil {
		return mapErr(err)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// Users and devices.

func (a *IdentityAPI) createUser(w http.ResponseWriter, r *http.Request) error {
	app, err := a.forApp(r, identity.ScopeUsers)
	if err != nil {
		return err
	}
	var b struct {
		ID          string            `json:"id"`
		DisplayName string            `json:"display_name"`
		Password    string            `json:"password"`
		Tags        []string          `json:"tags"`
		Attrs       map[string]string `json:"attrs"`
	}
	if err := a.decode(w, r, &b); err != nil {
		return err
	}
	u, err := a.svc.CreateUser(r.Context(), app, identity.UserSpec{
		ID: b.ID, DisplayName: b.DisplayName, Password: b.Password, Tags: b.Tags, Attrs: b.Attrs})
	if err != nil {
		return mapErr(err)
	}
	WriteJSON(w, http.StatusCreated, viewUser(u))
	return nil
}

func (a *IdentityAPI) listUsers(w http.ResponseWriter, r *http.Request) error {
	app, err := a.forApp(r, identity.ScopeUsers)
	if err != nil {
		return err
	}
	limit := 50
	if s := r.URL.Query().Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > identity.MaxPageSize {
			return Errorf(http.StatusBadRequest, "invalid", "limit must be 1 to %d", identity.MaxPageSize)
		}
		limit = n
	}
	us, next, err := a.svc.ListUsers(r.Context(), app, r.URL.Query().Get("after"), limit)
	if err != nil {
		return mapErr(err)
	}
	out := make([]userView, len(us))
	for i, u := range us {
		out[i] = viewUser(u)
	}
	WriteJSON(w, http.StatusOK, map[string]any{"users": out, "next": next})
	return nil
}

func (a *IdentityAPI) getUser(w http.ResponseWriter, r *http.Request) error {
	app, err := a.forApp(r, identity.ScopeUsers)
	if err != nil {
		return err
	}
	u, err := a.svc.GetUser(r.Context(), app, r.PathValue("user"))
	if err != nil {
		return mapErr(err)
	}
	WriteJSON(w, http.StatusOK, viewUser(u))
	return nil
}

func (a *IdentityAPI) patchUser(w http.ResponseWriter, r *http.Request) error {
	app, err := a.forApp(r, identity.ScopeUsers)
	if err != nil {
		return err
	}
	var b struct {
		DisplayName *string            `json:"display_name"`
		Tags        *[]string          `json:"tags"`
		Attrs       *map[string]string `json:"attrs"`
		Disabled    *bool              `json:"disabled"`
		Password    *string            `json:"password"`
	}
	if err := a.decode(w, r, &b); err != nil {
		return err
	}
	u, err := a.svc.UpdateUser(r.Context(), app, r.PathValue("user"), identity.UserPatch{
		DisplayName: b.DisplayName, Tags: b.Tags, Attrs: b.Attrs, Disabled: b.Disabled, Password: b.Password})
	if err != nil {
		return mapErr(err)
	}
	WriteJSON(w, http.StatusOK, viewUser(u))
	return nil
}

func (a *IdentityAPI) deleteUser(w http.ResponseWriter, r *http.Request) error {
	app, err := a.forApp(r, identity.ScopeUsers)
	if err != nil {
		return err
	}
	if _, err := a.svc.DisableUser(r.Context(), app, r.PathValue("user")); err != nil {
		return mapErr(err)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (a *IdentityAPI) putDevice(w http.ResponseWriter, r *http.Request) error {
	app, err := a.forApp(r, identity.ScopeUsers, identity.ScopePush)
	if err != nil {
		return err
	}
	var b struct {
		Platform  string  `json:"platform"`
		PushToken *string `json:"push_token"`
		PushTopic *string `json:"push_topic"`
		Locale    *string `json:"locale"`
	}
	if err := a.decode(w, r, &b); err != nil {
		return err
	}
	d, err := a.svc.PutDevice(r.Context(), app, r.PathValue("user"), identity.DeviceSpec{
		ID: r.PathValue("device"), Platform: b.Platform, PushToken: b.PushToken, PushTopic: b.PushTopic, Locale: b.Locale})
	if err != nil {
		return mapErr(err)
	}
	WriteJSON(w, http.StatusOK, viewDevice(d))
	return nil
}

func (a *IdentityAPI) listDevices(w http.ResponseWriter, r *http.Request) error {
	app, err := a.forApp(r, identity.ScopeUsers, identity.ScopePush)
	if err != nil {
		return err
	}
	ds, err := a.svc.ListDevices(r.Context(), app, r.PathValue("user"))
	if err != nil {
		return mapErr(err)
	}
	out := make([]deviceView, len(ds))
	for i, d := range ds {
		out[i] = viewDevice(d)
	}
	WriteJSON(w, http.StatusOK, map[string]any{"devices": out})
	return nil
}

func (a *IdentityAPI) getDevice(w http.ResponseWriter, r *http.Request) error {
	app, err := a.forApp(r, identity.ScopeUsers, identity.ScopePush)
	if err != nil {
		return err
	}
	d, err := a.svc.GetDevice(r.Context(), app, r.PathValue("user"), r.PathValue("device"))
	if err != nil {
		return mapErr(err)
	}
	WriteJSON(w, http.StatusOK, viewDevice(d))
	return nil
}

func (a *IdentityAPI) deleteDevice(w http.ResponseWriter, r *http.Request) error {
	app, err := a.forApp(r, identity.ScopeUsers, identity.ScopePush)
	if err != nil {
		return err
	}
	if err := a.svc.DeleteDevice(r.Context(), app, r.PathValue("user"), r.PathValue("device")); err != nil {
		return mapErr(err)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// Tokens and sessions.

// mqttCreds is what a device needs to connect: client ID, username and
// password (the access token), the broker address, and its topics.
type mqttCreds struct {
	ClientID  string     `json:"client_id"`
	Username  string     `json:"username"`
	Password  string     `json:"password"`
	MQTT      string     `json:"mqtt"`
	ExpiresAt time.Time  `json:"expires_at"`
	Topics    topicsView `json:"topics"`
}

func (a *IdentityAPI) issueToken(w http.ResponseWriter, r *http.Request) error {
	app, err := a.forApp(r, identity.ScopeUsers)
	if err != nil {
		return err
	}
	var b struct {
		User   string `json:"user"`
		Device string `json:"device"`
		TTL    int64  `json:"ttl"` // seconds
	}
	if err := a.decode(w, r, &b); err != nil {
		return err
	}
	if b.TTL < 0 || b.TTL > math.MaxInt32 {
		return Errorf(http.StatusBadRequest, "invalid", "ttl is in seconds")
	}
	tok, err := a.svc.IssueToken(r.Context(), app, b.User, b.Device, time.Duration(b.TTL)*time.Second)
	if err != nil {
		return mapErr(err)
	}
	c := tok.Claims
	w.Header().Set("Cache-Control", "no-store")
	WriteJSON(w, http.StatusOK, mqttCreds{
		ClientID: protocol.ClientID(app, c.User, c.Device), Username: app + ":" + c.User, Password: tok.Value,
		MQTT: a.mqttAddr(), ExpiresAt: tok.ExpiresAt.UTC(), Topics: viewTopics(app, c.User, c.Device),
	})
	return nil
}

type sessionView struct {
	AccessToken      string     `json:"access_token"`
	RefreshToken     string     `json:"refresh_token"`
	ExpiresAt        time.Time  `json:"expires_at"`
	RefreshExpiresAt time.Time  `json:"refresh_expires_at"`
	User             string     `json:"user"`
	Device           string     `json:"device"`
	ClientID         string     `json:"client_id"`
	Username         string     `json:"username"`
	MQTT             string     `json:"mqtt"`
	Topics           topicsView `json:"topics"`
}

func (a *IdentityAPI) writeSession(w http.ResponseWriter, s *identity.Session) {
	w.Header().Set("Cache-Control", "no-store")
	WriteJSON(w, http.StatusOK, sessionView{
		AccessToken: s.AccessToken, RefreshToken: s.RefreshToken,
		ExpiresAt: s.AccessExpires.UTC(), RefreshExpiresAt: s.RefreshExpires.UTC(),
		User: s.User, Device: s.Device, ClientID: protocol.ClientID(s.App, s.User, s.Device),
		Username: s.App + ":" + s.User, MQTT: a.mqttAddr(), Topics: viewTopics(s.App, s.User, s.Device),
	})
}

func (a *IdentityAPI) login(w http.ResponseWriter, r *http.Request) error {
	var b struct {
		Username     string `json:"username"`
		Password     string `json:"password"`
		Device       string `json:"device"`
		TOTP         string `json:"totp"`
		RecoveryCode string `json:"recovery_code"`
	}
	if err := a.decode(w, r, &b); err != nil {
		return err
	}
	s, err := a.svc.Login(r.Context(), identity.LoginRequest{
		App: r.PathValue("app"), Username: b.Username, Password: b.Password, Device: b.Device,
		TOTP: b.TOTP, RecoveryCode: b.RecoveryCode, IP: a.clientIP(r),
	})
	if err != nil {
		return mapErrW(w, err)
	}
	a.writeSession(w, s)
	return nil
}

func (a *IdentityAPI) refresh(w http.ResponseWriter, r *http.Request) error {
	var b struct {
		RefreshToken string `json:"refresh_token"`
	}
	if err := a.decode(w, r, &b); err != nil {
		return err
	}
	s, err := a.svc.Refresh(r.Context(), r.PathValue("app"), b.RefreshToken)
	if err != nil {
		return mapErr(err)
	}
	a.writeSession(w, s)
	return nil
}

func (a *IdentityAPI) logout(w http.ResponseWriter, r *http.Request) error {
	tok := BearerToken(r)
	if tok == "" {
		return ErrUnauthorized
	}
	if _, err := a.svc.Logout(r.Context(), tok); err != nil {
		return mapErr(err)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// Second factor.

func (a *IdentityAPI) totpEnroll(w http.ResponseWriter, r *http.Request) error {
	c, err := a.user(r)
	if err != nil {
		return err
	}
	en, err := a.svc.EnrollTOTP(r.Context(), c.App, c.User)
	if err != nil {
		return mapErr(err)
	}
	w.Header().Set("Cache-Control", "no-store")
	WriteJSON(w, http.StatusOK, map[string]string{
		"secret": en.Secret, "uri": en.URI, "qr_png": base64.StdEncoding.EncodeToString(en.QRPNG),
	})
	return nil
}

type codeBody struct {
	Code     string `json:"code"`
	Password string `json:"password"`
}

func (a *IdentityAPI) totpConfirm(w http.ResponseWriter, r *http.Request) error {
	c, err := a.user(r)
	if err != nil {
		return err
	}
	var b codeBody
	if err := a.decode(w, r, &b); err != nil {
		return err
	}
	codes, err := a.svc.ConfirmTOTP(r.Context(), c.App, c.User, b.Code)
	if err != nil {
		return mapErrW(w, err)
	}
	w.Header().Set("Cache-Control", "no-store")
	WriteJSON(w, http.StatusOK, map[string]any{"recovery_codes": codes})
	return nil
}

func (a *IdentityAPI) totpDisable(w http.ResponseWriter, r *http.Request) error {
	c, err := a.user(r)
	if err != nil {
		return err
	}
	var b codeBody
	if err := a.decode(w, r, &b); err != nil {
		return err
	}
	if err := a.svc.DisableTOTP(r.Context(), c.App, c.User, b.Password, b.Code); err != nil {
		return mapErrW(w, err)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (a *IdentityAPI) recoveryCodes(w http.ResponseWriter, r *http.Request) error {
	c, err := a.user(r)
	if err != nil {
		return err
	}
	var b codeBody
	if err := a.decode(w, r, &b); err != nil {
		return err
	}
	codes, err := a.svc.RegenerateRecoveryCodes(r.Context(), c.App, c.User, b.Code)
	if err != nil {
		return mapErrW(w, err)
	}
	w.Header().Set("Cache-Control", "no-store")
	WriteJSON(w, http.StatusOK, map[string]any{"recovery_codes": codes})
	return nil
}
