package api

// This file serves message search to users:
//
//	GET /v1/me/search?q=&conv=&limit=   user token   200 {"q","terms","hits":[{conv,seq,score,message}]}
//
// It is the HTTP form of the chat request {"op":"search"} (see
// docs/PROTOCOL.md, "Search"): the caller's own conversations only,
// checked when the query runs.

import (
	"net/http"

	"github.com/warblerim/warbler/identity"
	"github.com/warblerim/warbler/search"
)

// SearchOptions configure the search route.
type SearchOptions struct {
	Service  *search.Service
	Identity *identity.Service
}

// SearchAPI serves the search route. Create it with NewSearchAPI.
type SearchAPI struct {
	svc  *search.Service
	auth authz
}

// NewSearchAPI returns the search route.
func NewSearchAPI(o SearchOptions) *SearchAPI {
	return &SearchAPI{svc: o.Service, auth: authz{svc: o.Identity}}
}

// Register mounts the route on mux.
func (a *SearchAPI) Register(mux Mux) {
	mux.Handle("GET /v1/me/search", HandlerFunc(a.search))
}

func (a *SearchAPI) search(w http.ResponseWriter, r *http.Request) error {
	c, err := a.auth.user(r)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	limit, err := uintParam(q.Get("limit"))
	if err != nil {
		return Errorf(http.StatusBadRequest, "bad_request", "limit: %v", err)
	}
	res, err := a.svc.Search(r.Context(), c.App, c.User, q.Get("q"), q.Get("conv"), int(min(limit, 100)))
	if err != nil {
		return chatErr(err)
	}
	WriteJSON(w, http.StatusOK, res)
	return nil
}
