package api

// This file serves the push bridge's resources. Every route needs the
// admin key or a key of the app with the "push" scope; another app's key
// gets 404.
//
//	PUT    /v1/apps/{app}/push/credentials/{provider}          store apns or fcm credentials (sealed at rest)
//	GET    /v1/apps/{app}/push/credentials/{provider}          non-secret summary and pause state
//	DELETE /v1/apps/{app}/push/credentials/{provider}
//	POST   /v1/apps/{app}/push/credentials/{provider}/resume   restart a queue paused by an auth error
//	GET    /v1/apps/{app}/push/settings                        preview, concurrency, rate, TTL, grace, coalescing
//	PUT    /v1/apps/{app}/push/settings
//	GET    /v1/apps/{app}/push/users/{user}/prefs              mutes, do-not-disturb, quiet hours
//	PUT    /v1/apps/{app}/push/users/{user}/prefs
//	GET    /v1/apps/{app}/push/ledger?user=&device=&limit=     notifications, newest first
//	GET    /v1/apps/{app}/push/ledger/{id}                     one notification with its history
//	POST   /v1/apps/{app}/push/test {user, title, body}        a test push to the user's devices
//
// The body of PUT .../credentials/apns is
//
//	{"auth_key": "-----BEGIN PRIVATE KEY-----...", "key_id": "...", "team_id": "...",
//	 "topic": "com.example.app", "sandbox": false}
//
// or, for certificate auth, {"certificate": "<base64 of the .p12>",
// "certificate_password": "...", "topic": ...}. The body of PUT
// .../credentials/fcm is {"service_account": {...the JSON key file...},
// "project_id": "..."}. Both accept "endpoint" and "root_cas" (PEM) to send
// through a proxy or private gateway. No response ever contains a
// credential, a push token or a notification's text.

import (
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/warblerim/warbler/bridge"
	"github.com/warblerim/warbler/identity"
	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage"
)

// DefaultPushBodyLimit bounds push request bodies (a .p12 in base64 fits).
const DefaultPushBodyLimit = 256 << 10

// PushOptions configure the push routes.
type PushOptions struct {
	Bridge   *bridge.Bridge
	Identity *identity.Service
	// MaxBodyBytes limits request bodies; DefaultPushBodyLimit if 0.
	MaxBodyBytes int64
}

// PushAPI serves the push routes. Create it with NewPushAPI.
type PushAPI struct {
	br    *bridge.Bridge
	auth  authz
	limit int64
}

// NewPushAPI returns the push routes.
func NewPushAPI(o PushOptions) *PushAPI {
	p := &PushAPI{br: o.Bridge, auth: authz{svc: o.Identity}, limit: o.MaxBodyBytes}
	if p.limit <= 0 {
		p.limit = DefaultPushBodyLimit
	}
	return p
}

// Register mounts the routes on mux.
func (p *PushAPI) Register(mux Mux) {
	h := func(pattern string, f HandlerFunc) { mux.Handle(pattern, f) }
	h("PUT /v1/apps/{app}/push/credentials/{provider}", p.putCreds)
	h("GET /v1/apps/{app}/push/credentials/{provider}", p.getCreds)
	h("DELETE /v1/apps/{app}/push/credentials/{provider}", p.deleteCreds)
	h("POST /v1/apps/{app}/push/credentials/{provider}/resume", p.resume)
	h("GET /v1/apps/{app}/push/settings", p.getSettings)
	h("PUT /v1/apps/{app}/push/settings", p.putSettings)
	h("GET /v1/apps/{app}/push/users/{user}/prefs", p.getPrefs)
	h("PUT /v1/apps/{app}/push/users/{user}/prefs", p.putPrefs)
	h("GET /v1/apps/{app}/push/ledger", p.ledger)
	h("GET /v1/apps/{app}/push/ledger/{id}", p.ledgerEntry)
	h("POST /v1/apps/{app}/push/test", p.test)
}

func pushErr(err error) error {
	switch {
	case errors.Is(err, bridge.ErrInvalid):
		return Errorf(http.StatusBadRequest, "invalid", "%s", err.Error())
	case errors.Is(err, bridge.ErrNoCredentials):
		return Errorf(http.StatusConflict, "no_credentials", "the app has no push credentials for the user's devices")
	case errors.Is(err, storage.ErrNotFound):
		return ErrNotFound
	}
	return mapErr(err)
}

// app authorizes the request and returns the app and the provider in the
// path (if the route has one).
func (p *PushAPI) app(r *http.Request) (string, string, error) {
	app, err := p.auth.forApp(r, identity.ScopePush)
	if err != nil {
		return "", "", err
	}
	prov := r.PathValue("provider")
	if prov != "" && prov != storage.ProviderAPNs && prov != storage.ProviderFCM {
		return "", "", ErrNotFound
	}
	return app, prov, nil
}

func (p *PushAPI) putCreds(w http.ResponseWriter, r *http.Request) error {
	app, prov, err := p.app(r)
	if err != nil {
		return err
	}
	var c bridge.Credentials
	if prov == storage.ProviderAPNs {
		c.APNs = &bridge.APNsCredentials{}
		err = DecodeJSON(w, r, p.limit, c.APNs)
	} else {
		c.FCM = &bridge.FCMCredentials{}
		err = DecodeJSON(w, r, p.limit, c.FCM)
	}
	if err != nil {
		return err
	}
	info, err := p.br.SetCredentials(r.Context(), app, c)
	if err != nil {
		return pushErr(err)
	}
	WriteJSON(w, http.StatusOK, info)
	return nil
}

func (p *PushAPI) getCreds(w http.ResponseWriter, r *http.Request) error {
	app, prov, err := p.app(r)
	if err != nil {
		return err
	}
	info, err := p.br.CredentialInfo(r.Context(), app, prov)
	if err != nil {
		return pushErr(err)
	}
	WriteJSON(w, http.StatusOK, info)
	return nil
}

func (p *PushAPI) deleteCreds(w http.ResponseWriter, r *http.Request) error {
	app, prov, err := p.app(r)
	if err != nil {
		return err
	}
	if err := p.br.DeleteCredentials(r.Context(), app, prov); err != nil {
		return pushErr(err)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (p *PushAPI) resume(w http.ResponseWriter, r *http.Request) error {
	app, prov, err := p.app(r)
	if err != nil {
		return err
	}
	if err := p.br.Resume(r.Context(), app, prov); err != nil {
		return pushErr(err)
	}
	info, err := p.br.CredentialInfo(r.Context(), app, prov)
	if err != nil {
		return pushErr(err)
	}
	WriteJSON(w, http.StatusOK, info)
	return nil
}

func (p *PushAPI) getSettings(w http.ResponseWriter, r *http.Request) error {
	app, _, err := p.app(r)
	if err != nil {
		return err
	}
	s, err := p.br.Settings(r.Context(), app)
	if err != nil {
		return pushErr(err)
	}
	WriteJSON(w, http.StatusOK, s)
	return nil
}

func (p *PushAPI) putSettings(w http.ResponseWriter, r *http.Request) error {
	app, _, err := p.app(r)
	if err != nil {
		return err
	}
	var s storage.PushSettings
	if err := DecodeJSON(w, r, p.limit, &s); err != nil {
		return err
	}
	if s.App != "" && s.App != app {
		return Errorf(http.StatusBadRequest, "invalid", "app in the body differs from the path")
	}
	s.App = app
	out, err := p.br.PutSettings(r.Context(), s)
	if err != nil {
		return pushErr(err)
	}
	WriteJSON(w, http.StatusOK, out)
	return nil
}

// user checks the user in the path exists in the app.
func (p *PushAPI) user(r *http.Request, app string) (string, error) {
	user := r.PathValue("user")
	if !protocol.ValidID(user) {
		return "", ErrNotFound
	}
	if _, err := p.auth.svc.GetUser(r.Context(), app, user); err != nil {
		return "", mapErr(err)
	}
	return user, nil
}

func (p *PushAPI) getPrefs(w http.ResponseWriter, r *http.Request) error {
	app, _, err := p.app(r)
	if err != nil {
		return err
	}
	user, err := p.user(r, app)
	if err != nil {
		return err
	}
	prefs, err := p.br.Prefs(r.Context(), app, user)
	if err != nil {
		return pushErr(err)
	}
	WriteJSON(w, http.StatusOK, prefs)
	return nil
}

func (p *PushAPI) putPrefs(w http.ResponseWriter, r *http.Request) error {
	app, _, err := p.app(r)
	if err != nil {
		return err
	}
	user, err := p.user(r, app)
	if err != nil {
		return err
	}
	var prefs storage.PushPrefs
	if err := DecodeJSON(w, r, p.limit, &prefs); err != nil {
		return err
	}
	if (prefs.App != "" && prefs.App != app) || (prefs.User != "" && prefs.User != user) {
		return Errorf(http.StatusBadRequest, "invalid", "app or user in the body differs from the path")
	}
	prefs.App, prefs.User = app, user
	out, err := p.br.PutPrefs(r.Context(), prefs)
	if err != nil {
		return pushErr(err)
	}
	WriteJSON(w, http.StatusOK, out)
	return nil
}

// ledgerView is a ledger entry without the token or the text.
type ledgerView struct {
	ID         string              `json:"id"`
	User       string              `json:"user"`
	Device     string              `json:"device"`
	Provider   string              `json:"provider"`
	TokenHint  string              `json:"token_hint,omitempty"` // the token's last 6 characters
	Conv       string              `json:"conv,omitempty"`
	Seq        uint64              `json:"seq,omitempty"`
	MsgID      string              `json:"msg_id,omitempty"`
	Count      int                 `json:"count,omitempty"`
	Kind       string              `json:"kind"`
	State      string              `json:"state"`
	Reason     string              `json:"reason,omitempty"`
	Status     int                 `json:"status,omitempty"`
	Attempts   int                 `json:"attempts"`
	ProviderID string              `json:"provider_id,omitempty"`
	Due        time.Time           `json:"due"`
	Expires    time.Time           `json:"expires,omitzero"`
	CreatedAt  time.Time           `json:"created_at"`
	UpdatedAt  time.Time           `json:"updated_at"`
	Events     []storage.PushEvent `json:"events,omitempty"`
}

func viewLedger(x storage.PushRecord, events bool) ledgerView {
	v := ledgerView{ID: x.ID, User: x.User, Device: x.Device, Provider: x.Provider, Conv: x.Conv, Seq: x.Seq, MsgID: x.MsgID,
		Count: x.Count, Kind: x.Kind, State: x.State, Reason: x.Reason, Status: x.Status, Attempts: x.Attempts,
		ProviderID: x.ProviderID, Due: x.Due, Expires: x.Expires, CreatedAt: x.CreatedAt, UpdatedAt: x.UpdatedAt}
	if len(x.Token) > 6 {
		v.TokenHint = x.Token[len(x.Token)-6:]
	}
	if events {
		v.Events = x.Events
	}
	return v
}

func (p *PushAPI) ledger(w http.ResponseWriter, r *http.Request) error {
	app, _, err := p.app(r)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	user, device := q.Get("user"), q.Get("device")
	if (user != "" && !protocol.ValidID(user)) || (device != "" && !protocol.ValidID(device)) {
		return Errorf(http.StatusBadRequest, "invalid", "user and device must be valid IDs")
	}
	if device != "" && user == "" {
		return Errorf(http.StatusBadRequest, "invalid", "device needs user")
	}
	limit := 50
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 500 {
			return Errorf(http.StatusBadRequest, "invalid", "limit must be 1..500")
		}
		limit = n
	}
	recs, err := p.br.Ledger(r.Context(), app, user, device, limit)
	if err != nil {
		return pushErr(err)
	}
	out := make([]ledgerView, len(recs))
	for i, x := range recs {
		out[i] = viewLedger(x, false)
	}
	WriteJSON(w, http.StatusOK, map[string]any{"notifications": out})
	return nil
}

func (p *PushAPI) ledgerEntry(w http.ResponseWriter, r *http.Request) error {
	app, _, err := p.app(r)
	if err != nil {
		return err
	}
	id := r.PathValue("id")
	if len(id) != 36 {
		return ErrNotFound
	}
	x, err := p.br.LedgerEntry(r.Context(), app, id)
	if err != nil {
		return pushErr(err)
	}
	WriteJSON(w, http.StatusOK, viewLedger(x, true))
	return nil
}

func (p *PushAPI) test(w http.ResponseWriter, r *http.Request) error {
	app, _, err := p.app(r)
	if err != nil {
		return err
	}
	var in struct {
		User  string `json:"user"`
		Title string `json:"title"`
		Body  string `json:"body"`
	}
	if err := DecodeJSON(w, r, p.limit, &in); err != nil {
		return err
	}
	if !protocol.ValidID(in.User) || len(in.Title) > 256 || len(in.Body) > 2048 || in.Body == "" {
		return Errorf(http.StatusBadRequest, "invalid", "user must be a valid ID, body 1..2048 bytes, title at most 256")
	}
	if _, err := p.auth.svc.GetUser(r.Context(), app, in.User); err != nil {
		return mapErr(err)
	}
	ids, err := p.br.Notify(r.Context(), app, in.User, in.Title, in.Body)
	if err != nil {
		return pushErr(err)
	}
	if ids == nil {
		ids = []string{}
	}
	WriteJSON(w, http.StatusAccepted, map[string]any{"ids": ids})
	return nil
}
