package api

// This file serves user labels (tags and attributes), bulk user creation,
// behaviour events, audience previews and segments.
//
//	GET    /v1/apps/{app}/users/{user}/tags                    {"tags": [...]}
//	PUT    /v1/apps/{app}/users/{user}/tags        {"tags": [...]}           replace
//	PATCH  /v1/apps/{app}/users/{user}/tags        {"add": [...], "remove": [...]}
//	GET    /v1/apps/{app}/users/{user}/attributes              {"attributes": {...}}
//	PUT    /v1/apps/{app}/users/{user}/attributes  {"attributes": {...}}     replace
//	PATCH  /v1/apps/{app}/users/{user}/attributes  {"attributes": {"k": "v", "gone": null}}
//	POST   /v1/apps/{app}/users/bulk               {"users": [{"id", "display_name", "tags", "attributes"}]}  up to 1000
//	POST   /v1/apps/{app}/audience                 {"tags": expr} | {"rule": rule} | {"segment": id}, "limit"
//	POST   /v1/apps/{app}/events                   {"events": [{"user", "name", "properties", "time"}]}  up to 1000
//	POST   /v1/events                              the same, for the app of the API key
//	GET    /v1/apps/{app}/events?user=&name=&limit=
//	POST   /v1/apps/{app}/segments                 {"id", "name", "rule"}
//	GET    /v1/apps/{app}/segments
//	GET    /v1/apps/{app}/segments/{id}
//	PUT    /v1/apps/{app}/segments/{id}            {"name", "rule"}
//	DELETE /v1/apps/{app}/segments/{id}
//	GET    /v1/apps/{app}/segments/{id}/users?limit=            {"count", "users"}
//
// Labels and bulk users need a key with the "users" scope; events a key
// with "users" or "push"; audiences and segments "push". The admin key may
// do all of it.

import (
	"errors"
	"net/http"
	"slices"
	"strconv"

	"github.com/warblerim/warbler/audience"
	"github.com/warblerim/warbler/identity"
	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage"
)

// smallBodyLimit bounds the bodies of label, audience and segment
// requests.
const smallBodyLimit = 64 << 10

// DefaultBulkBodyLimit bounds bulk user and event bodies (1000 users or
// events fit easily).
const DefaultBulkBodyLimit = 512 << 10

// AudienceOptions configure the audience routes.
type AudienceOptions struct {
	Identity *identity.Service
	Audience *audience.Service
}

// AudienceAPI serves the audience routes. Create it with NewAudienceAPI.
type AudienceAPI struct {
	id   *identity.Service
	aud  *audience.Service
	auth authz
}

// NewAudienceAPI returns the audience routes.
func NewAudienceAPI(o AudienceOptions) *AudienceAPI {
	return &AudienceAPI{id: o.Identity, aud: o.Audience, auth: authz{svc: o.Identity}}
}

// Register mounts the routes on mux.
func (a *AudienceAPI) Register(mux Mux) {
	h := func(pattern string, f HandlerFunc) { mux.Handle(pattern, f) }
	h("GET /v1/apps/{app}/users/{user}/tags", a.getTags)
	h("PUT /v1/apps/{app}/users/{user}/tags", a.putTags)
	h("PATCH /v1/apps/{app}/users/{user}/tags", a.patchTags)
	h("GET /v1/apps/{app}/users/{user}/attributes", a.getAttrs)
	h("PUT /v1/apps/{app}/users/{user}/attributes", a.putAttrs)
	h("PATCH /v1/apps/{app}/users/{user}/attributes", a.patchAttrs)
	h("POST /v1/apps/{app}/users/bulk", a.bulkUsers)
	h("POST /v1/apps/{app}/audience", a.preview)
	h("POST /v1/apps/{app}/events", a.postEvents)
	h("POST /v1/events", a.postEvents)
	h("GET /v1/apps/{app}/events", a.listEvents)
	h("POST /v1/apps/{app}/segments", a.createSegment)
	h("GET /v1/apps/{app}/segments", a.listSegments)
	h("GET /v1/apps/{app}/segments/{id}", a.getSegment)
	h("PUT /v1/apps/{app}/segments/{id}", a.putSegment)
	h("DELETE /v1/apps/{app}/segments/{id}", a.deleteSegment)
	h("GET /v1/apps/{app}/segments/{id}/users", a.segmentUsers)
}

func audienceErr(err error) error {
	var inv *audience.Invalid
	if errors.As(err, &inv) {
		return Errorf(http.StatusBadRequest, "invalid", "%s", inv.Error())
	}
	if errors.Is(err, storage.ErrNotFound) {
		return ErrNotFound
	}
	return mapErr(err)
}

// appOfKey authorizes a route that names its app in the path, or (for
// /v1/events) takes it from the app key.
func (a *AudienceAPI) appOfKey(r *http.Request, scopes ...string) (string, error) {
	if r.PathValue("app") != "" {
		return a.auth.forApp(r, scopes...)
	}
	k, err := a.auth.key(r)
	if err != nil {
		return "", err
	}
	if k.IsAdmin() {
		return "", Errorf(http.StatusBadRequest, "invalid", "the admin key has no app: use /v1/apps/{app}/...")
	}
	for _, s := range scopes {
		if k.Can(k.App, s) {
			return k.App, nil
		}
	}
	return "", ErrForbidden
}

func (a *AudienceAPI) userOf(r *http.Request) (string, string, error) {
	app, err := a.auth.forApp(r, identity.ScopeUsers)
	if err != nil {
		return "", "", err
	}
	user := r.PathValue("user")
	if _, err := a.id.GetUser(r.Context(), app, user); err != nil {
		return "", "", mapErr(err)
	}
	return app, user, nil
}

func writeTags(w http.ResponseWriter, u storage.User) {
	tags := u.Tags
	if tags == nil {
		tags = []string{}
	}
	WriteJSON(w, http.StatusOK, map[string]any{"tags": tags})
}

func writeAttrs(w http.ResponseWriter, u storage.User) {
	attrs := u.Attrs
	if attrs == nil {
		attrs = map[string]string{}
	}
	WriteJSON(w, http.StatusOK, map[string]any{"attributes": attrs})
}

func (a *AudienceAPI) getTags(w http.ResponseWriter, r *http.Request) error {
	app, user, err := a.userOf(r)
	if err != nil {
		return err
	}
	u, err := a.id.GetUser(r.Context(), app, user)
	if err != nil {
		return mapErr(err)
	}
	writeTags(w, u)
	return nil
}

// dedupe returns tags without repeats, in first-seen order.
func dedupe(tags []string) []string {
	out := []string{}
	for _, t := range tags {
		if !slices.Contains(out, t) {
			out = append(out, t)
		}
	}
	return out
}

func (a *AudienceAPI) putTags(w http.ResponseWriter, r *http.Request) error {
	app, user, err := a.userOf(r)
	if err != nil {
		return err
	}
	var in struct {
		Tags []string `json:"tags"`
	}
	if err := DecodeJSON(w, r, smallBodyLimit, &in); err != nil {
		return err
	}
	u, err := a.id.EditLabels(r.Context(), app, user, func(_ []string, attrs map[string]string) ([]string, map[string]string, error) {
		return dedupe(in.Tags), attrs, nil
	})
	if err != nil {
		return mapErr(err)
	}
	writeTags(w, u)
	return nil
}

func (a *AudienceAPI) patchTags(w http.ResponseWriter, r *http.Request) error {
	app, user, err := a.userOf(r)
	if err != nil {
		return err
	}
	var in struct {
		Add    []string `json:"add"`
		Remove []string `json:"remove"`
	}
	if err := DecodeJSON(w, r, smallBodyLimit, &in); err != nil {
		return err
	}
	u, err := a.id.EditLabels(r.Context(), app, user, func(tags []string, attrs map[string]string) ([]string, map[string]string, error) {
		tags = slices.DeleteFunc(tags, func(t string) bool { return slices.Contains(in.Remove, t) })
		return dedupe(append(tags, in.Add...)), attrs, nil
	})
	if err != nil {
		return mapErr(err)
	}
	writeTags(w, u)
	return nil
}

func (a *AudienceAPI) getAttrs(w http.ResponseWriter, r *http.Request) error {
	app, user, err := a.userOf(r)
	if err != nil {
		return err
	}
	u, err := a.id.GetUser(r.Context(), app, user)
	if err != nil {
		return mapErr(err)
	}
	writeAttrs(w, u)
	return nil
}

func (a *AudienceAPI) putAttrs(w http.ResponseWriter, r *http.Request) error {
	app, user, err := a.userOf(r)
	if err != nil {
		return err
	}
	var in struct {
		Attributes map[string]string `json:"attributes"`
	}
	if err := DecodeJSON(w, r, smallBodyLimit, &in); err != nil {
		return err
	}
	u, err := a.id.EditLabels(r.Context(), app, user, func(tags []string, _ map[string]string) ([]string, map[string]string, error) {
		return tags, in.Attributes, nil
	})
	if err != nil {
		return mapErr(err)
	}
	writeAttrs(w, u)
	return nil
}

func (a *AudienceAPI) patchAttrs(w http.ResponseWriter, r *http.Request) error {
	app, user, err := a.userOf(r)
	if err != nil {
		return err
	}
	var in struct {
		Attributes map[string]*string `json:"attributes"`
	}
	if err := DecodeJSON(w, r, smallBodyLimit, &in); err != nil {
		return err
	}
	u, err := a.id.EditLabels(r.Context(), app, user, func(tags []string, attrs map[string]string) ([]string, map[string]string, error) {
		for k, v := range in.Attributes {
			if v == nil {
				delete(attrs, k)
			} else {
				attrs[k] = *v
			}
		}
		return tags, attrs, nil
	})
	if err != nil {
		return mapErr(err)
	}
	writeAttrs(w, u)
	return nil
}

func (a *AudienceAPI) bulkUsers(w http.ResponseWriter, r *http.Request) error {
	app, err := a.auth.forApp(r, identity.ScopeUsers)
	if err != nil {
		return err
	}
	var in struct {
		Users []struct {
			ID          string            `json:"id"`
			DisplayName string            `json:"display_name"`
			Tags        []string          `json:"tags"`
			Attributes  map[string]string `json:"attributes"`
		} `json:"users"`
	}
	if err := DecodeJSON(w, r, DefaultBulkBodyLimit, &in); err != nil {
		return err
	}
	specs := make([]identity.UserSpec, len(in.Users))
	for i, u := range in.Users {
		specs[i] = identity.UserSpec{ID: u.ID, DisplayName: u.DisplayName, Tags: dedupe(u.Tags), Attrs: u.Attributes}
	}
	us, err := a.id.CreateUsers(r.Context(), app, specs)
	if errors.Is(err, storage.ErrExists) {
		return Errorf(http.StatusConflict, "exists", "a user ID of the batch is taken or repeated; nothing was created")
	}
	if err != nil {
		return mapErr(err)
	}
	WriteJSON(w, http.StatusCreated, map[string]any{"created": len(us)})
	return nil
}

func limitParam(r *http.Request, def, max int) (int, error) {
	s := r.URL.Query().Get("limit")
	if s == "" {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > max {
		return 0, Errorf(http.StatusBadRequest, "invalid", "limit must be 1..%d", max)
	}
	return n, nil
}

func writeAudience(w http.ResponseWriter, users []string, limit int) {
	page := users[:min(limit, len(users))]
	if page == nil {
		page = []string{}
	}
	WriteJSON(w, http.StatusOK, map[string]any{"count": len(users), "users": page})
}

func (a *AudienceAPI) preview(w http.ResponseWriter, r *http.Request) error {
	app, err := a.auth.forApp(r, identity.ScopePush)
	if err != nil {
		return err
	}
	var in struct {
		Tags    string `json:"tags"`
		Rule    string `json:"rule"`
		Segment string `json:"segment"`
		Limit   int    `json:"limit"`
	}
	if err := DecodeJSON(w, r, smallBodyLimit, &in); err != nil {
		return err
	}
	if in.Limit <= 0 || in.Limit > 1000 {
		in.Limit = 100
	}
	var users []string
	switch {
	case in.Tags != "" && in.Rule == "" && in.Segment == "":
		n, perr := audience.ParseTags(in.Tags)
		if perr != nil {
			return Errorf(http.StatusBadRequest, "invalid", "tags: %v", perr)
		}
		users, err = a.aud.Evaluate(r.Context(), app, n)
	case in.Rule != "" && in.Tags == "" && in.Segment == "":
		n, perr := audience.ParseRule(in.Rule)
		if perr != nil {
			return Errorf(http.StatusBadRequest, "invalid", "rule: %v", perr)
		}
		users, err = a.aud.Evaluate(r.Context(), app, n)
	case in.Segment != "" && in.Tags == "" && in.Rule == "":
		users, err = a.aud.SegmentUsers(r.Context(), app, in.Segment)
	default:
		return Errorf(http.StatusBadRequest, "invalid", "set exactly one of tags, rule, segment")
	}
	if err != nil {
		return audienceErr(err)
	}
	writeAudience(w, users, in.Limit)
	return nil
}

func (a *AudienceAPI) postEvents(w http.ResponseWriter, r *http.Request) error {
	app, err := a.appOfKey(r, identity.ScopeUsers, identity.ScopePush)
	if err != nil {
		return err
	}
	var in struct {
		Events []storage.Event `json:"events"`
	}
	if err := DecodeJSON(w, r, DefaultBulkBodyLimit, &in); err != nil {
		return err
	}
	n, err := a.aud.RecordEvents(r.Context(), app, in.Events)
	if err != nil {
		return audienceErr(err)
	}
	WriteJSON(w, http.StatusAccepted, map[string]any{"accepted": len(in.Events), "stored": n})
	return nil
}

func (a *AudienceAPI) listEvents(w http.ResponseWriter, r *http.Request) error {
	app, err := a.auth.forApp(r, identity.ScopeUsers, identity.ScopePush)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	user, name := q.Get("user"), q.Get("name")
	if (user != "" && !protocol.ValidID(user)) || (name != "" && !audience.ValidEventName(name)) {
		return Errorf(http.StatusBadRequest, "invalid", "user must be a valid ID and name a valid event name")
	}
	limit, err := limitParam(r, 50, 500)
	if err != nil {
		return err
	}
	evs, err := a.aud.Events(r.Context(), app, user, name, limit)
	if err != nil {
		return audienceErr(err)
	}
	if evs == nil {
		evs = []storage.Event{}
	}
	WriteJSON(w, http.StatusOK, map[string]any{"events": evs})
	return nil
}

type segmentIn struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	Rule string `json:"rule"`
}

func (a *AudienceAPI) createSegment(w http.ResponseWriter, r *http.Request) error {
	app, err := a.auth.forApp(r, identity.ScopePush)
	if err != nil {
		return err
	}
	var in segmentIn
	if err := DecodeJSON(w, r, smallBodyLimit, &in); err != nil {
		return err
	}
	if _, err := a.aud.Segment(r.Context(), app, in.ID); err == nil {
		return Errorf(http.StatusConflict, "exists", "segment %s exists; PUT replaces it", in.ID)
	}
	sg, err := a.aud.PutSegment(r.Context(), storage.Segment{App: app, ID: in.ID, Name: in.Name, Rule: in.Rule})
	if err != nil {
		return audienceErr(err)
	}
	WriteJSON(w, http.StatusCreated, sg)
	return nil
}

func (a *AudienceAPI) putSegment(w http.ResponseWriter, r *http.Request) error {
	app, err := a.auth.forApp(r, identity.ScopePush)
	if err != nil {
		return err
	}
	var in segmentIn
	if err := DecodeJSON(w, r, smallBodyLimit, &in); err != nil {
		return err
	}
	id := r.PathValue("id")
	if in.ID != "" && in.ID != id {
		return Errorf(http.StatusBadRequest, "invalid", "id in the body differs from the path")
	}
	sg, err := a.aud.PutSegment(r.Context(), storage.Segment{App: app, ID: id, Name: in.Name, Rule: in.Rule})
	if err != nil {
		return audienceErr(err)
	}
	WriteJSON(w, http.StatusOK, sg)
	return nil
}

func (a *AudienceAPI) listSegments(w http.ResponseWriter, r *http.Request) error {
	app, err := a.auth.forApp(r, identity.ScopePush)
	if err != nil {
		return err
	}
	sgs, err := a.aud.Segments(r.Context(), app)
	if err != nil {
		return audienceErr(err)
	}
	if sgs == nil {
		sgs = []storage.Segment{}
	}
	WriteJSON(w, http.StatusOK, map[string]any{"segments": sgs})
	return nil
}

func (a *AudienceAPI) getSegment(w http.ResponseWriter, r *http.Request) error {
	app, err := a.auth.forApp(r, identity.ScopePush)
	if err != nil {
		return err
	}
	sg, err := a.aud.Segment(r.Context(), app, r.PathValue("id"))
	if err != nil {
		return audienceErr(err)
	}
	WriteJSON(w, http.StatusOK, sg)
	return nil
}

func (a *AudienceAPI) deleteSegment(w http.ResponseWriter, r *http.Request) error {
	app, err := a.auth.forApp(r, identity.ScopePush)
	if err != nil {
		return err
	}
	if err := a.aud.DeleteSegment(r.Context(), app, r.PathValue("id")); err != nil {
		return audienceErr(err)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (a *AudienceAPI) segmentUsers(w http.ResponseWriter, r *http.Request) error {
	app, err := a.auth.forApp(r, identity.ScopePush)
	if err != nil {
		return err
	}
	limit, err := limitParam(r, 100, 1000)
	if err != nil {
		return err
	}
	users, err := a.aud.SegmentUsers(r.Context(), app, r.PathValue("id"))
	if err != nil {
		return audienceErr(err)
	}
	writeAudience(w, users, limit)
	return nil
}
