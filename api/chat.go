package api

// This file serves chat resources to operators and backend tools:
//
//	GET /v1/apps/{app}/conversations/{conv}/messages?after=&limit=       admin
//	GET /v1/apps/{app}/users/{user}/direct/{peer}/messages?after=&limit= admin
//
// Both return {"conv", "messages": [envelope, ...], "more", "next_after"}:
// messages with seq > after, oldest first, each exactly as delivered to
// devices. Page with after=next_after while more is true. Reading
// conversations needs the admin key or an app key with the "admin" scope:
// ordinary service keys never read users' messages.

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"

	"github.com/warblerim/warbler/chat"
	"github.com/warblerim/warbler/identity"
	"github.com/warblerim/warbler/protocol"
)

// ChatOptions configure the chat routes.
type ChatOptions struct {
	Service  *chat.Service
	Identity *identity.Service
}

// ChatAPI serves the chat routes. Create it with NewChatAPI.
type ChatAPI struct {
	svc  *chat.Service
	auth authz
}

// NewChatAPI returns the chat routes.
func NewChatAPI(o ChatOptions) *ChatAPI {
	return &ChatAPI{svc: o.Service, auth: authz{svc: o.Identity}}
}

// Register mounts the routes on mux.
func (c *ChatAPI) Register(mux Mux) {
	mux.Handle("GET /v1/apps/{app}/conversations/{conv}/messages", HandlerFunc(c.convMessages))
	mux.Handle("GET /v1/apps/{app}/users/{user}/direct/{peer}/messages", HandlerFunc(c.directMessages))
	c.registerConversations(mux)
	c.registerMessageOps(mux)
}

type messagesView struct {
	Conv      string            `json:"conv"`
	Messages  []json.RawMessage `json:"messages"`
	More      bool              `json:"more"`
	NextAfter uint64            `json:"next_after"`
}

func (c *ChatAPI) convMessages(w http.ResponseWriter, r *http.Request) error {
	app, err := c.auth.forApp(r, "admin")
	if err != nil {
		return err
	}
	conv := r.PathValue("conv")
	if !protocol.ValidID(conv) {
		return Errorf(http.StatusBadRequest, "bad_request", "conversation ID %q is not valid", conv)
	}
	return c.page(w, r, app, conv)
}

func (c *ChatAPI) directMessages(w http.ResponseWriter, r *http.Request) error {
	app, err := c.auth.forApp(r, "admin")
	if err != nil {
		return err
	}
	user, peer := r.PathValue("user"), r.PathValue("peer")
	if !protocol.ValidID(user) || !protocol.ValidID(peer) || user == peer {
		return Errorf(http.StatusBadRequest, "bad_request", "user and peer must be two different valid user IDs")
	}
	return c.page(w, r, app, protocol.DirectConvID(user, peer))
}

func (c *ChatAPI) page(w http.ResponseWriter, r *http.Request, app, conv string) error {
	q := r.URL.Query()
	after, err := uintParam(q.Get("after"))
	if err != nil {
		return Errorf(http.StatusBadRequest, "bad_request", "after: %v", err)
	}
	limit, err := uintParam(q.Get("limit"))
	if err != nil {
		return Errorf(http.StatusBadRequest, "bad_request", "limit: %v", err)
	}
	res, err := c.svc.Log(r.Context(), app, conv, after, int(min(limit, 1000)))
	if err != nil {
		return chatErr(err)
	}
	v := messagesView{Conv: conv, Messages: res.Messages, More: res.More, NextAfter: after}
	if n := len(res.Messages); n > 0 {
		var last struct {
			Seq uint64 `json:"seq"`
		}
		_ = json.Unmarshal(res.Messages[n-1], &last)
		v.NextAfter = last.Seq
	}
	WriteJSON(w, http.StatusOK, v)
	return nil
}

func uintParam(s string) (uint64, error) {
	if s == "" {
		return 0, nil
	}
	return strconv.ParseUint(s, 10, 63)
}

// chatErr maps chat errors to HTTP errors.
func chatErr(err error) error {
	var pe *protocol.Error
	if !errors.As(err, &pe) {
		return err
	}
	status := http.StatusBadRequest
	switch pe.Code {
	case protocol.CodeNotFound, protocol.CodeNotMember:
		status = http.StatusNotFound
	case protocol.CodeForbidden, protocol.CodeTooLate, protocol.CodeBlocked, protocol.CodeMuted:
		status = http.StatusForbidden
	case protocol.CodeQuota:
		status = http.StatusTooManyRequests
	case protocol.CodeUnavailable:
		status = http.StatusServiceUnavailable
	case protocol.CodeInternal:
		status = http.StatusInternalServerError
	case protocol.CodeTooLarge:
		status = http.StatusRequestEntityTooLarge
	case protocol.CodeExists, protocol.CodeFull, protocol.CodeBadState:
		status = http.StatusConflict
	}
	if errors.Is(err, context.DeadlineExceeded) {
		status = http.StatusServiceUnavailable
	}
	return &Error{Status: status, Code: pe.Code, Message: pe.Message}
}
