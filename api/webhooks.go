package api

// This file serves an app's webhook endpoints:
//
//	POST   /v1/apps/{app}/webhooks                                 create; the answer holds the secret
//	GET    /v1/apps/{app}/webhooks                                 list
//	GET    /v1/apps/{app}/webhooks/{id}                            one endpoint
//	PATCH  /v1/apps/{app}/webhooks/{id}                            change url, events, description, enabled
//	DELETE /v1/apps/{app}/webhooks/{id}                            delete with its queue and log
//	POST   /v1/apps/{app}/webhooks/{id}/rotate-secret              new secret (old one signs too for grace_seconds)
//	POST   /v1/apps/{app}/webhooks/{id}/test                       queue a webhook.test event
//	GET    /v1/apps/{app}/webhooks/{id}/deliveries?before=&limit=  delivery log, newest first
//	GET    /v1/apps/{app}/webhooks/{id}/deliveries/{delivery}      one delivery with its payload
//	POST   /v1/apps/{app}/webhooks/{id}/deliveries/{delivery}/redeliver  send a finished delivery's event again
//
// Webhooks see every message of the app, so they need the admin key or an
// app key with the "admin" scope, like reading conversations does.

import (
	"errors"
	"net/http"
	"time"

	"github.com/warblerim/warbler/identity"
	"github.com/warblerim/warbler/storage"
	"github.com/warblerim/warbler/webhook"
)

// WebhookOptions configure the webhook routes.
type WebhookOptions struct {
	Service  *webhook.Service
	Identity *identity.Service
}

// WebhookAPI serves the webhook routes. Create it with NewWebhookAPI.
type WebhookAPI struct {
	svc  *webhook.Service
	auth authz
}

// NewWebhookAPI returns the webhook routes.
func NewWebhookAPI(o WebhookOptions) *WebhookAPI {
	return &WebhookAPI{svc: o.Service, auth: authz{svc: o.Identity}}
}

// Register mounts the routes on mux.
func (a *WebhookAPI) Register(mux Mux) {
	h := func(pattern string, f HandlerFunc) { mux.Handle(pattern, f) }
	h("POST /v1/apps/{app}/webhooks", a.create)
	h("GET /v1/apps/{app}/webhooks", a.list)
	h("GET /v1/apps/{app}/webhooks/{id}", a.get)
	h("PATCH /v1/apps/{app}/webhooks/{id}", a.update)
	h("DELETE /v1/apps/{app}/webhooks/{id}", a.delete)
	h("POST /v1/apps/{app}/webhooks/{id}/rotate-secret", a.rotate)
	h("POST /v1/apps/{app}/webhooks/{id}/test", a.test)
	h("GET /v1/apps/{app}/webhooks/{id}/deliveries", a.deliveries)
	h("GET /v1/apps/{app}/webhooks/{id}/deliveries/{delivery}", a.delivery)
	h("POST /v1/apps/{app}/webhooks/{id}/deliveries/{delivery}/redeliver", a.redeliver)
}

// webhookBodyLimit bounds a request body of these routes.
const webhookBodyLimit = 16 << 10

func webhookErr(err error) error {
	var inv *webhook.InvalidError
	switch {
	case errors.As(err, &inv):
		return Errorf(http.StatusBadRequest, "invalid", "%s", inv.Msg)
	case errors.Is(err, webhook.ErrNotFound):
		return ErrNotFound
	case errors.Is(err, webhook.ErrPending):
		return Errorf(http.StatusConflict, "pending", "the delivery is still queued or being sent")
	case errors.Is(err, webhook.ErrLimit):
		return Errorf(http.StatusConflict, "limit", "the app has as many webhook endpoints as it may")
	}
	return err
}

type endpointWithSecret struct {
	webhook.Endpoint
	Secret string `json:"secret"`
}

func (a *WebhookAPI) app(r *http.Request) (string, error) {
	return a.auth.forApp(r, identity.ScopeAdmin)
}

func (a *WebhookAPI) create(w http.ResponseWriter, r *http.Request) error {
	app, err := a.app(r)
	if err != nil {
		return err
	}
	var spec webhook.EndpointSpec
	if err := DecodeJSON(w, r, webhookBodyLimit, &spec); err != nil {
		return err
	}
	e, secret, err := a.svc.CreateEndpoint(r.Context(), app, spec)
	if err != nil {
		return webhookErr(err)
	}
	WriteJSON(w, http.StatusCreated, endpointWithSecret{Endpoint: e, Secret: secret})
	return nil
}

func (a *WebhookAPI) list(w http.ResponseWriter, r *http.Request) error {
	app, err := a.app(r)
	if err != nil {
		return err
	}
	es, err := a.svc.ListEndpoints(r.Context(), app)
	if err != nil {
		return webhookErr(err)
	}
	if es == nil {
		es = []webhook.Endpoint{}
	}
	WriteJSON(w, http.StatusOK, map[string]any{"webhooks": es})
	return nil
}

func (a *WebhookAPI) get(w http.ResponseWriter, r *http.Request) error {
	app, err := a.app(r)
	if err != nil {
		return err
	}
	e, err := a.svc.GetEndpoint(r.Context(), app, r.PathValue("id"))
	if err != nil {
		return webhookErr(err)
	}
	WriteJSON(w, http.StatusOK, e)
	return nil
}

func (a *WebhookAPI) update(w http.ResponseWriter, r *http.Request) error {
	app, err := a.app(r)
	if err != nil {
		return err
	}
	var spec webhook.EndpointSpec
	if err := DecodeJSON(w, r, webhookBodyLimit, &spec); err != nil {
		return err
	}
	e, err := a.svc.UpdateEndpoint(r.Context(), app, r.PathValue("id"), spec)
	if err != nil {
		return webhookErr(err)
	}
	WriteJSON(w, http.StatusOK, e)
	return nil
}

func (a *WebhookAPI) delete(w http.ResponseWriter, r *http.Request) error {
	app, err := a.app(r)
	if err != nil {
		return err
	}
	if err := a.svc.DeleteEndpoint(r.Context(), app, r.PathValue("id")); err != nil {
		return webhookErr(err)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// maxGrace bounds how long a rotated-out secret keeps signing.
const maxGrace = 7 * 24 * time.Hour

func (a *WebhookAPI) rotate(w http.ResponseWriter, r *http.Request) error {
	app, err := a.app(r)
	if err != nil {
		return err
	}
	var body struct {
		// GraceSeconds is how long the old secret keeps signing too
		// (default 86400; 0 drops it at once).
		GraceSeconds *int64 `json:"grace_seconds"`
	}
	if r.ContentLength != 0 {
		if err := DecodeJSON(w, r, webhookBodyLimit, &body); err != nil {
			return err
		}
	}
	grace := 24 * time.Hour
	if body.GraceSeconds != nil {
		if *body.GraceSeconds < 0 || time.Duration(*body.GraceSeconds)*time.Second > maxGrace {
			return Errorf(http.StatusBadRequest, "invalid", "grace_seconds: 0 to %d", int64(maxGrace/time.Second))
		}
		grace = time.Duration(*body.GraceSeconds) * time.Second
	}
	secret, err := a.svc.RotateSecret(r.Context(), app, r.PathValue("id"), grace)
	if err != nil {
		return webhookErr(err)
	}
	WriteJSON(w, http.StatusOK, map[string]any{"secret": secret, "previous_valid_until": time.Now().Add(grace).UTC()})
	return nil
}

func (a *WebhookAPI) test(w http.ResponseWriter, r *http.Request) error {
	app, err := a.app(r)
	if err != nil {
		return err
	}
	d, err := a.svc.Test(r.Context(), app, r.PathValue("id"))
	if err != nil {
		return webhookErr(err)
	}
	WriteJSON(w, http.StatusAccepted, deliveryView(d, false))
	return nil
}

// delivery is a delivery as listed: the payload only in the single view.
type delivery struct {
	ID        string                   `json:"id"`
	Endpoint  string                   `json:"endpoint"`
	EventID   string                   `json:"event_id"`
	EventType string                   `json:"event_type"`
	State     string                   `json:"state"`
	Tries     int                      `json:"tries"`
	NextTry   *time.Time               `json:"next_attempt,omitempty"`
	Attempts  []storage.WebhookAttempt `json:"attempts"`
	CreatedAt time.Time                `json:"created_at"`
	UpdatedAt time.Time                `json:"updated_at"`
	Payload   any                      `json:"payload,omitempty"`
}

func deliveryView(d storage.WebhookDelivery, payload bool) delivery {
	v := delivery{ID: d.ID, Endpoint: d.Endpoint, EventID: d.EventID, EventType: d.EventType, State: d.State, Tries: d.Tries,
		Attempts: d.Attempts, CreatedAt: d.CreatedAt, UpdatedAt: d.UpdatedAt}
	if v.Attempts == nil {
		v.Attempts = []storage.WebhookAttempt{}
	}
	if d.State == storage.WebhookQueued {
		due := d.Due.UTC()
		v.NextTry = &due
	}
	if payload {
		v.Payload = d.Payload
	}
	return v
}

func (a *WebhookAPI) deliveries(w http.ResponseWriter, r *http.Request) error {
	app, err := a.app(r)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	limit, err := uintParam(q.Get("limit"))
	if err != nil || limit > 100 {
		return Errorf(http.StatusBadRequest, "bad_request", "limit: a number from 1 to 100")
	}
	if limit == 0 {
		limit = 20
	}
	ds, err := a.svc.Deliveries(r.Context(), app, r.PathValue("id"), q.Get("before"), int(limit)+1)
	if err != nil {
		return webhookErr(err)
	}
	more := len(ds) > int(limit)
	if more {
		ds = ds[:limit]
	}
	out := make([]delivery, len(ds))
	for i, d := range ds {
		out[i] = deliveryView(d, false)
	}
	res := map[string]any{"deliveries": out, "more": more}
	if more {
		res["next_before"] = ds[len(ds)-1].ID
	}
	WriteJSON(w, http.StatusOK, res)
	return nil
}

func (a *WebhookAPI) delivery(w http.ResponseWriter, r *http.Request) error {
	app, err := a.app(r)
	if err != nil {
		return err
	}
	d, err := a.svc.Delivery(r.Context(), app, r.PathValue("id"), r.PathValue("delivery"))
	if err != nil {
		return webhookErr(err)
	}
	WriteJSON(w, http.StatusOK, deliveryView(d, true))
	return nil
}

func (a *WebhookAPI) redeliver(w http.ResponseWriter, r *http.Request) error {
	app, err := a.app(r)
	if err != nil {
		return err
	}
	d, err := a.svc.Redeliver(r.Context(), app, r.PathValue("id"), r.PathValue("delivery"))
	if err != nil {
		return webhookErr(err)
	}
	WriteJSON(w, http.StatusAccepted, deliveryView(d, false))
	return nil
}
