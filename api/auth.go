package api

import (
	"errors"
	"net/http"

	"github.com/warblerim/warbler/identity"
)

// authz authorizes requests for every group of routes: it checks the
// bearer credential (the admin key, an app's API key or a user's access
// token) against the identity service. Route groups embed or hold one.
type authz struct {
	svc *identity.Service
}

// key returns the API key of the request, or a 401.
func (a authz) key(r *http.Request) (*identity.KeyInfo, error) {
	tok := BearerToken(r)
	if tok == "" {
		return nil, ErrUnauthorized
	}
	k, err := a.svc.VerifyKey(r.Context(), tok)
	if err != nil {
		if errors.Is(err, identity.ErrInvalidKey) || errors.Is(err, identity.ErrAppDisabled) {
			return nil, ErrUnauthorized
		}
		return nil, err
	}
	return k, nil
}

// admin requires the admin key.
func (a authz) admin(r *http.Request) error {
	k, err := a.key(r)
	if err != nil {
		return err
	}
	if !k.IsAdmin() {
		return ErrForbidden
	}
	return nil
}

// adminForApp requires the admin key on a route of one app. Another app's
// key gets 404 (as everywhere), the app's own key 403.
func (a authz) adminForApp(r *http.Request) (string, error) {
	app := r.PathValue("app")
	k, err := a.key(r)
	if err != nil {
		return "", err
	}
	if !k.IsAdmin() {
		if k.App != app {
			return "", ErrNotFound
		}
		return "", ErrForbidden
	}
	return app, nil
}

// forApp requires a key that may act on the app in the path with one of
// scopes (any scope if none are given). The app must exist: an unknown
// app, or another app's, is 404.
func (a authz) forApp(r *http.Request, scopes ...string) (string, error) {
	app := r.PathValue("app")
	k, err := a.key(r)
	if err != nil {
		return "", err
	}
	if !k.IsAdmin() && k.App != app {
		return "", ErrNotFound
	}
	if k.IsAdmin() {
		if _, err := a.svc.GetApp(r.Context(), app); err != nil {
			return "", mapErr(err)
		}
	}
	if len(scopes) == 0 {
		return app, nil
	}
	for _, s := range scopes {
		if k.Can(app, s) {
			return app, nil
		}
	}
	return "", ErrForbidden
}

// user requires a user's access token.
func (a authz) user(r *http.Request) (*identity.Claims, error) {
	tok := BearerToken(r)
	if tok == "" {
		return nil, ErrUnauthorized
	}
	c, err := a.svc.VerifyAccess(tok)
	if err != nil {
		return nil, mapErr(err)
	}
	return c, nil
}
