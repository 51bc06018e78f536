package api

// This file serves targeted push (campaigns). Every route needs the admin
// key or a key of the app with the "push" scope, except the open report,
// which the app's own users may send with their access token.
//
//	POST /v1/apps/{app}/campaigns               a Spec; 202 with the campaign (200 if the dedupe key named one)
//	POST /v1/push                               the same, for the app of the API key
//	GET  /v1/apps/{app}/campaigns?before=&limit=  newest first
//	GET  /v1/apps/{app}/campaigns/{id}          state and stats
//	POST /v1/apps/{app}/campaigns/{id}/cancel
//	POST /v1/apps/{app}/campaigns/{id}/opened   {"user": "u"} with a key, or {} with the user's access token
//
// A Spec (see package campaign) looks like
//
//	{"audience": {"tags": "vip AND NOT churned"},
//	 "notification": {"title": "Sale", "body": "20% off today", "data": {"url": "/sale"}},
//	 "message": {"any": "JSON for the in-app view"},
//	 "schedule_at": "2026-12-01T09:00:00Z", "expires_at": "2026-12-01T21:00:00Z",
//	 "quiet_hours": {"start": "22:00", "end": "08:00"},
//	 "frequency_cap": 2, "dedupe_key": "sale-2026-12-01"}

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/warblerim/warbler/campaign"
	"github.com/warblerim/warbler/identity"
	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage"
)

// CampaignOptions configure the campaign routes.
type CampaignOptions struct {
	Identity *identity.Service
	Campaign *campaign.Service
}

// CampaignAPI serves the campaign routes. Create it with NewCampaignAPI.
type CampaignAPI struct {
	svc  *campaign.Service
	auth authz
	aud  *AudienceAPI // for appOfKey
}

// NewCampaignAPI returns the campaign routes.
func NewCampaignAPI(o CampaignOptions) *CampaignAPI {
	auth := authz{svc: o.Identity}
	return &CampaignAPI{svc: o.Campaign, auth: auth, aud: &AudienceAPI{id: o.Identity, auth: auth}}
}

// Register mounts the routes on mux.
func (c *CampaignAPI) Register(mux Mux) {
	h := func(pattern string, f HandlerFunc) { mux.Handle(pattern, f) }
	h("POST /v1/apps/{app}/campaigns", c.create)
	h("POST /v1/push", c.create)
	h("GET /v1/apps/{app}/campaigns", c.list)
	h("GET /v1/apps/{app}/campaigns/{id}", c.get)
	h("POST /v1/apps/{app}/campaigns/{id}/cancel", c.cancel)
	h("POST /v1/apps/{app}/campaigns/{id}/opened", c.opened)
}

func campaignErr(err error) error {
	var inv *campaign.InvalidError
	switch {
	case errors.As(err, &inv):
		return Errorf(http.StatusBadRequest, "invalid", "%s", inv.Error())
	case errors.Is(err, storage.ErrNotFound):
		return ErrNotFound
	case errors.Is(err, campaign.ErrClosed):
		return Errorf(http.StatusServiceUnavailable, "unavailable", "the server is shutting down; retry")
	}
	return mapErr(err)
}

// campaignView is a campaign with its spec decoded.
type campaignView struct {
	storage.Campaign
	Spec campaign.Spec `json:"spec"`
}

func viewCampaign(c storage.Campaign) any {
	v := campaignView{Campaign: c}
	_ = jsonUnmarshal(c.Spec, &v.Spec)
	return v
}

func (c *CampaignAPI) create(w http.ResponseWriter, r *http.Request) error {
	app, err := c.aud.appOfKey(r, identity.ScopePush)
	if err != nil {
		return err
	}
	var sp campaign.Spec
	if err := DecodeJSON(w, r, campaign.MaxMessage+256<<10, &sp); err != nil {
		return err
	}
	cp, created, err := c.svc.Submit(r.Context(), app, sp)
	if err != nil {
		return campaignErr(err)
	}
	status := http.StatusAccepted
	if !created {
		status = http.StatusOK
	}
	w.Header().Set("Location", "/v1/apps/"+app+"/campaigns/"+cp.ID)
	WriteJSON(w, status, viewCampaign(cp))
	return nil
}

func (c *CampaignAPI) list(w http.ResponseWriter, r *http.Request) error {
	app, err := c.auth.forApp(r, identity.ScopePush)
	if err != nil {
		return err
	}
	before := r.URL.Query().Get("before")
	if before != "" && !protocol.ValidID(before) {
		return Errorf(http.StatusBadRequest, "invalid", "before must be a campaign ID")
	}
	limit, err := limitParam(r, 50, 200)
	if err != nil {
		return err
	}
	cs, err := c.svc.List(r.Context(), app, before, limit)
	if err != nil {
		return campaignErr(err)
	}
	out := make([]any, len(cs))
	for i, x := range cs {
		out[i] = viewCampaign(x)
	}
	WriteJSON(w, http.StatusOK, map[string]any{"campaigns": out})
	return nil
}

func (c *CampaignAPI) get(w http.ResponseWriter, r *http.Request) error {
	app, err := c.auth.forApp(r, identity.ScopePush)
	if err != nil {
		return err
	}
	cp, err := c.svc.Get(r.Context(), app, r.PathValue("id"))
	if err != nil {
		return campaignErr(err)
	}
	WriteJSON(w, http.StatusOK, viewCampaign(cp))
	return nil
}

func (c *CampaignAPI) cancel(w http.ResponseWriter, r *http.Request) error {
	app, err := c.auth.forApp(r, identity.ScopePush)
	if err != nil {
		return err
	}
	cp, err := c.svc.Cancel(r.Context(), app, r.PathValue("id"))
	if err != nil {
		var inv *campaign.InvalidError
		if errors.As(err, &inv) {
			return Errorf(http.StatusConflict, "conflict", "%s", inv.Error())
		}
		return campaignErr(err)
	}
	WriteJSON(w, http.StatusOK, viewCampaign(cp))
	return nil
}

// opened takes an open report from the user (access token) or from the
// app's backend (API key, user in the body).
func (c *CampaignAPI) opened(w http.ResponseWriter, r *http.Request) error {
	app := r.PathValue("app")
	var in struct {
		User string `json:"user"`
	}
	user := ""
	if cl, err := c.auth.user(r); err == nil {
		if cl.App != app {
			return ErrNotFound
		}
		if err := DecodeJSON(w, r, 4096, &in); err != nil {
			return err
		}
		if in.User != "" && in.User != cl.User {
			return ErrForbidden
		}
		user = cl.User
	} else {
		if _, err := c.auth.forApp(r, identity.ScopePush); err != nil {
			return err
		}
		if err := DecodeJSON(w, r, 4096, &in); err != nil {
			return err
		}
		if !protocol.ValidID(in.User) {
			return Errorf(http.StatusBadRequest, "invalid", "user must be a valid ID")
		}
		user = in.User
	}
	first, err := c.svc.Opened(r.Context(), app, r.PathValue("id"), user)
	if err != nil {
		return campaignErr(err)
	}
	WriteJSON(w, http.StatusOK, map[string]any{"first": first})
	return nil
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }
