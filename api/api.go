// Package api is Warbler's HTTP API: the /v1 resources that backend
// services, operators and the CLI use, plus the JSON conventions they share.
//
// Conventions. Requests and responses are JSON. Errors are always
//
//	{"error": {"code": "not_found", "message": "user bob not found"}}
//
// with a matching 4xx/5xx status. Bodies are limited in size (413 past the
// limit). Callers authenticate with "Authorization: Bearer KEY", where KEY is
// an app's service API key, the admin key, or a user's access token,
// depending on the route. Every object is scoped by app: an object of
// another app answers 404, never 403, so its existence is not revealed.
package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
)

// MaxBodyBytes is the default limit on a request body.
const MaxBodyBytes = 1 << 20

// Error is the JSON error body. Handlers return *Error values to choose the
// status and code; any other error becomes a 500 with a generic message.
type Error struct {
	Status  int    `json:"-"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Errorf builds an *Error.
func Errorf(status int, code, format string, a ...any) *Error {
	return &Error{Status: status, Code: code, Message: fmt.Sprintf(format, a...)}
}

// Common errors.
var (
	ErrUnauthorized = &Error{Status: http.StatusUnauthorized, Code: "unauthorized", Message: "missing or invalid credentials"}
	ErrForbidden    = &Error{Status: http.StatusForbidden, Code: "forbidden", Message: "not allowed"}
	ErrNotFound     = &Error{Status: http.StatusNotFound, Code: "not_found", Message: "no such resource"}
)

// WriteJSON writes v as JSON with the given status.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	_ = enc.Encode(v)
}

// WriteError writes err as the JSON error body. Errors that are not *Error
// are reported as 500 without their text, which may hold internals.
func WriteError(w http.ResponseWriter, err error) {
	var e *Error
	if !errors.As(err, &e) {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			e = Errorf(http.StatusRequestEntityTooLarge, "too_large", "request body exceeds %d bytes", mbe.Limit)
		} else {
			e = &Error{Status: http.StatusInternalServerError, Code: "internal", Message: "internal error"}
		}
	}
	WriteJSON(w, e.Status, map[string]any{"error": e})
}

// DecodeJSON reads a JSON body of at most limit bytes (MaxBodyBytes if limit
// is 0) into v, refusing unknown fields and trailing data.
func DecodeJSON(w http.ResponseWriter, r *http.Request, limit int64, v any) error {
	if limit <= 0 {
		limit = MaxBodyBytes
	}
	body := http.MaxBytesReader(w, r.Body, limit)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return Errorf(http.StatusRequestEntityTooLarge, "too_large", "request body exceeds %d bytes", limit)
		}
		if errors.Is(err, io.EOF) {
			return Errorf(http.StatusBadRequest, "bad_json", "request body is empty")
		}
		if e := readError(err); e != nil {
			return e
		}
		return Errorf(http.StatusBadRequest, "bad_json", "invalid JSON body: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Errorf(http.StatusBadRequest, "bad_json", "unexpected data after the JSON body")
	}
	return nil
}

// readError classifies a failure to read a request body that is not about
// its JSON: the read deadline (408) or the connection (400). Their text,
// which names the server's addresses, is not passed on. It returns nil for
// a JSON error.
func readError(err error) *Error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	if errors.As(err, &syn) || errors.As(err, &typ) || errors.Is(err, io.ErrUnexpectedEOF) {
		return nil
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return Errorf(http.StatusRequestTimeout, "timeout", "the request body did not arrive in time")
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return Errorf(http.StatusBadRequest, "bad_request", "the request body could not be read")
	}
	return nil
}

// BearerToken returns the token of an "Authorization: Bearer X" header.
func BearerToken(r *http.Request) string {
	h := r.Header.Get("Authorization")
	if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		return strings.TrimSpace(h[7:])
	}
	return ""
}

// HandlerFunc is an http handler that returns an error to be written by
// WriteError.
type HandlerFunc func(w http.ResponseWriter, r *http.Request) error

// ServeHTTP implements http.Handler.
func (f HandlerFunc) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := f(w, r); err != nil {
		WriteError(w, err)
	}
}
