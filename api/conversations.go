package api

// This file serves conversations, their members and sending messages to
// backend services:
//
//	POST   /v1/apps/{app}/conversations                          "users"  create a group or channel
//	GET    /v1/apps/{app}/conversations/{conv}                   "users"  the conversation and its first members
//	PATCH  /v1/apps/{app}/conversations/{conv}                   "users"  rename
//	DELETE /v1/apps/{app}/conversations/{conv}                   "admin"  delete a group or channel with its log
//	GET    /v1/apps/{app}/conversations/{conv}/members?after=&limit=  "users"
//	POST   /v1/apps/{app}/conversations/{conv}/members           "users"  add {users, role?}
//	PATCH  /v1/apps/{app}/conversations/{conv}/members/{user}    "users"  {role}
//	DELETE /v1/apps/{app}/conversations/{conv}/members/{user}    "users"
//	GET    /v1/apps/{app}/users/{user}/conversations?after=&limit=    "users"  the user's conversations, with unread counts
//	POST   /v1/apps/{app}/conversations/{conv}/messages          "publish" as the service; "users" with "from"
//	POST   /v1/apps/{app}/users/{user}/direct/{peer}/messages    "users"  as user, to peer
//
// (Editing and recalling a stored message: messageops.go.)
//
// The service acts as the owner of every conversation of its app: it may
// add and remove anyone, change roles and write to channels. Membership
// changes are recorded in the conversation's log as system messages by
// "_svc" and reach members live and by sync, exactly as when a member makes
// them over MQTT. A conversation created without "owner" has no owner
// member; with "owner" it is created as that user would create it.
//
// Sending stores the message (answering once it is durable) and delivers
// it to the members' devices, with push notifications to the ones that are
// offline. "cmid" makes a send idempotent: a retry with the same cmid from
// the same sender answers the original's id and seq with "duplicate": true.
// Without one the server picks a fresh cmid, so a retry would send again.

import (
	"crypto/rand"
	"encoding/base32"
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/warblerim/warbler/chat"
	"github.com/warblerim/warbler/identity"
	"github.com/warblerim/warbler/protocol"
)

// DefaultChatBodyLimit bounds the request bodies of the conversation
// routes: a message body of the largest allowed size, escaped, fits.
const DefaultChatBodyLimit = 512 << 10

func (c *ChatAPI) registerConversations(mux Mux) {
	h := func(pattern string, f HandlerFunc) { mux.Handle(pattern, f) }
	h("POST /v1/apps/{app}/conversations", c.createConv)
	h("GET /v1/apps/{app}/conversations/{conv}", c.getConv)
	h("PATCH /v1/apps/{app}/conversations/{conv}", c.patchConv)
	h("DELETE /v1/apps/{app}/conversations/{conv}", c.deleteConv)
	h("GET /v1/apps/{app}/conversations/{conv}/members", c.listMembers)
	h("POST /v1/apps/{app}/conversations/{conv}/members", c.addMembers)
	h("PATCH /v1/apps/{app}/conversations/{conv}/members/{user}", c.patchMember)
	h("DELETE /v1/apps/{app}/conversations/{conv}/members/{user}", c.removeMember)
	h("GET /v1/apps/{app}/users/{user}/conversations", c.userConvs)
	h("POST /v1/apps/{app}/conversations/{conv}/messages", c.sendConv)
	h("POST /v1/apps/{app}/users/{user}/direct/{peer}/messages", c.sendDirect)
}

// service is the chat identity of an app's backend.
func service(app string) chat.Sender {
	return chat.Sender{App: app, User: identity.ServiceUser, Service: true}
}

// convView is a conversation as the service sees it: no role or read
// position of its own.
type convView struct {
	ID      string `json:"id"`
	Kind    string `json:"kind"`
	Name    string `json:"name,omitempty"`
	Members int    `json:"members"`
	LastSeq uint64 `json:"last_seq"`
}

type convResponse struct {
	Conv    convView              `json:"conversation"`
	Members []protocol.MemberInfo `json:"members"`
	More    bool                  `json:"more"`
	Next    string                `json:"next,omitempty"`
}

func viewInfo(res protocol.InfoResult) convResponse {
	out := convResponse{
		Conv: convView{ID: res.Conv.Conv, Kind: res.Conv.Kind, Name: res.Conv.Name, Members: res.Conv.Members, LastSeq: res.Conv.LastSeq},
		// An empty page is [] rather than null.
		Members: append([]protocol.MemberInfo{}, res.Members...),
		More:    res.More,
	}
	if res.More && len(res.Members) > 0 {
		out.Next = res.Members[len(res.Members)-1].User
	}
	return out
}

func (c *ChatAPI) decode(w http.ResponseWriter, r *http.Request, v any) error {
	return DecodeJSON(w, r, DefaultChatBodyLimit, v)
}

// convParam returns the valid conversation ID of the path, or a 400.
func convParam(r *http.Request) (string, error) {
	conv := r.PathValue("conv")
	if !protocol.ValidID(conv) {
		return "", Errorf(http.StatusBadRequest, "bad_request", "conversation ID %q is not valid", conv)
	}
	return conv, nil
}

// convRequest authenticates r for app with scope and reads its {conv}
// path value, the start of every per-conversation route.
func (c *ChatAPI) convRequest(r *http.Request, scope string) (app, conv string, err error) {
	if app, err = c.auth.forApp(r, scope); err != nil {
		return "", "", err
	}
	if conv, err = convParam(r); err != nil {
		return "", "", err
	}
	return app, conv, nil
}

// activeUser checks that user exists in app and is not disabled.
func (c *ChatAPI) activeUser(r *http.Request, app, user string) error {
	if !protocol.ValidID(user) {
		return Errorf(http.StatusBadRequest, "bad_request", "user ID %q is not valid", user)
	}
	u, err := c.auth.svc.GetUser(r.Context(), app, user)
	if err != nil {
		return mapErr(err)
	}
	if u.Disabled {
		return mapErr(identity.ErrUserDisabled)
	}
	return nil
}

// pageParams reads ?after= (a user or conversation ID) and ?limit=.
func pageParams(r *http.Request, def, max int) (string, int, error) {
	q := r.URL.Query()
	after := q.Get("after")
	if after != "" && !protocol.ValidID(after) {
		return "", 0, Errorf(http.StatusBadRequest, "bad_request", "after: %q is not a valid ID", after)
	}
	limit := def
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > max {
			return "", 0, Errorf(http.StatusBadRequest, "bad_request", "limit must be 1 to %d", max)
		}
		limit = n
	}
	return after, limit, nil
}

// afterStart turns an exclusive "after" cursor into the inclusive start
// the chat service takes: the smallest ID above it.
func afterStart(after string) string {
	if after == "" {
		return ""
	}
	return after + "\x00"
}

func (c *ChatAPI) createConv(w http.ResponseWriter, r *http.Request) error {
	app, err := c.auth.forApp(r, identity.ScopeUsers)
	if err != nil {
		return err
	}
	var b struct {
		ID      string   `json:"id"`
		Kind    string   `json:"kind"`
		Name    string   `json:"name"`
		Members []string `json:"members"`
		Owner   string   `json:"owner"`
	}
	if err := c.decode(w, r, &b); err != nil {
		return err
	}
	for _, u := range b.Members {
		if !protocol.ValidID(u) {
			return Errorf(http.StatusBadRequest, "bad_request", "members: %q is not a valid user ID", u)
		}
	}
	from := service(app)
	if b.Owner != "" {
		if err := c.activeUser(r, app, b.Owner); err != nil {
			return err
		}
		from = chat.Sender{App: app, User: b.Owner, Service: false}
	}
	res, err := c.svc.Create(r.Context(), from, chat.CreateRequest{Conv: b.ID, Kind: b.Kind, Name: b.Name, Members: b.Members})
	if err != nil {
		return chatErr(err)
	}
	WriteJSON(w, http.StatusCreated, viewInfo(res))
	return nil
}

func (c *ChatAPI) getConv(w http.ResponseWriter, r *http.Request) error {
	app, conv, err := c.convRequest(r, identity.ScopeUsers)
	if err != nil {
		return err
	}
	res, err := c.svc.Info(r.Context(), service(app), conv, "", 100)
	if err != nil {
		return chatErr(err)
	}
	WriteJSON(w, http.StatusOK, viewInfo(res))
	return nil
}

func (c *ChatAPI) patchConv(w http.ResponseWriter, r *http.Request) error {
	app, conv, err := c.convRequest(r, identity.ScopeUsers)
	if err != nil {
		return err
	}
	var b struct {
		Name *string `json:"name"`
	}
	if err := c.decode(w, r, &b); err != nil {
		return err
	}
	if b.Name == nil {
		return Errorf(http.StatusBadRequest, "bad_request", "nothing to change: give name")
	}
	res, err := c.svc.Rename(r.Context(), service(app), conv, *b.Name)
	if err != nil {
		return chatErr(err)
	}
	WriteJSON(w, http.StatusOK, viewInfo(res))
	return nil
}

func (c *ChatAPI) listMembers(w http.ResponseWriter, r *http.Request) error {
	app, conv, err := c.convRequest(r, identity.ScopeUsers)
	if err != nil {
		return err
	}
	after, limit, err := pageParams(r, 100, 1000)
	if err != nil {
		return err
	}
	res, err := c.svc.Info(r.Context(), service(app), conv, afterStart(after), limit)
	if err != nil {
		return chatErr(err)
	}
	v := viewInfo(res)
	WriteJSON(w, http.StatusOK, map[string]any{"members": v.Members, "more": v.More, "next": v.Next})
	return nil
}

func (c *ChatAPI) addMembers(w http.ResponseWriter, r *http.Request) error {
	app, conv, err := c.convRequest(r, identity.ScopeUsers)
	if err != nil {
		return err
	}
	var b struct {
		Users []string `json:"users"`
		Role  string   `json:"role"`
	}
	if err := c.decode(w, r, &b); err != nil {
		return err
	}
	if len(b.Users) == 0 {
		return Errorf(http.StatusBadRequest, "bad_request", "users: name at least one user")
	}
	for _, u := range b.Users {
		if !protocol.ValidID(u) {
			return Errorf(http.StatusBadRequest, "bad_request", "users: %q is not a valid user ID", u)
		}
	}
	res, err := c.svc.Add(r.Context(), service(app), conv, b.Users, b.Role)
	if err != nil {
		return chatErr(err)
	}
	WriteJSON(w, http.StatusOK, viewInfo(res))
	return nil
}

func (c *ChatAPI) patchMember(w http.ResponseWriter, r *http.Request) error {
	app, conv, err := c.convRequest(r, identity.ScopeUsers)
	if err != nil {
		return err
	}
	var b struct {
		Role string `json:"role"`
	}
	if err := c.decode(w, r, &b); err != nil {
		return err
	}
	user := r.PathValue("user")
	if !protocol.ValidID(user) {
		return Errorf(http.StatusBadRequest, "bad_request", "user ID %q is not valid", user)
	}
	res, err := c.svc.SetRole(r.Context(), service(app), conv, user, b.Role)
	if err != nil {
		return chatErr(err)
	}
	WriteJSON(w, http.StatusOK, viewInfo(res))
	return nil
}

func (c *ChatAPI) removeMember(w http.ResponseWriter, r *http.Request) error {
	app, conv, err := c.convRequest(r, identity.ScopeUsers)
	if err != nil {
		return err
	}
	user := r.PathValue("user")
	if !protocol.ValidID(user) {
		return Errorf(http.StatusBadRequest, "bad_request", "user ID %q is not valid", user)
	}
	// Remove ignores users who are not members; the API says so with 404.
	info, err := c.svc.Info(r.Context(), service(app), conv, user, 1)
	if err != nil {
		return chatErr(err)
	}
	if len(info.Members) == 0 || info.Members[0].User != user {
		return Errorf(http.StatusNotFound, "not_found", "%s is not a member of %s", user, conv)
	}
	if _, err := c.svc.Remove(r.Context(), service(app), conv, []string{user}); err != nil {
		return chatErr(err)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// deleteConv deletes a group or channel, its members and its log, for
// good (chat.Service.DeleteConversation). It needs the admin scope: unlike
// the other routes here it destroys messages.
func (c *ChatAPI) deleteConv(w http.ResponseWriter, r *http.Request) error {
	app, conv, err := c.convRequest(r, identity.ScopeAdmin)
	if err != nil {
		return err
	}
	if err := c.svc.DeleteConversation(r.Context(), service(app), conv); err != nil {
		return chatErr(err)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (c *ChatAPI) userConvs(w http.ResponseWriter, r *http.Request) error {
	app, err := c.auth.forApp(r, identity.ScopeUsers)
	if err != nil {
		return err
	}
	user := r.PathValue("user")
	if err := c.activeUserOrDisabled(r, app, user); err != nil {
		return err
	}
	after, limit, err := pageParams(r, 100, 500)
	if err != nil {
		return err
	}
	res, err := c.svc.Convs(r.Context(), chat.Sender{App: app, User: user}, afterStart(after), limit)
	if err != nil {
		return chatErr(err)
	}
	next := ""
	if res.More && len(res.Convs) > 0 {
		next = res.Convs[len(res.Convs)-1].Conv
	}
	WriteJSON(w, http.StatusOK, map[string]any{"conversations": append([]protocol.ConvInfo{}, res.Convs...), "more": res.More, "next": next})
	return nil
}

// activeUserOrDisabled checks only that the user exists: a disabled
// user's conversations can still be listed.
func (c *ChatAPI) activeUserOrDisabled(r *http.Request, app, user string) error {
	if !protocol.ValidID(user) {
		return Errorf(http.StatusBadRequest, "bad_request", "user ID %q is not valid", user)
	}
	_, err := c.auth.svc.GetUser(r.Context(), app, user)
	return mapErr(err)
}

// sendBody is the body of both send routes.
type sendBody struct {
	// From sends as this user instead of as the service (conversation
	// route only; needs the "users" scope).
	From string          `json:"from"`
	Type string          `json:"type"`
	Body json.RawMessage `json:"body"`
	CMID string          `json:"cmid"`
	// ReplyTo, Mentions and MentionAll are as in the MQTT send
	// (docs/PROTOCOL.md, "Replies and mentions"; messageops.go).
	ReplyTo    *protocol.Ref `json:"reply_to"`
	Mentions   []string      `json:"mentions"`
	MentionAll bool          `json:"mention_all"`
	// Attachment is the ID of an upload the message refers to
	// (docs/PROTOCOL.md, "Attachments").
	Attachment string `json:"attachment"`
}

// request is the chat send of b to conv (or to the user peer).
func (b *sendBody) request(conv, peer string) chat.SendRequest {
	return chat.SendRequest{Conv: conv, To: peer, CMID: b.CMID, Type: b.Type, Body: b.Body,
		ReplyTo: b.ReplyTo, Mentions: b.Mentions, MentionAll: b.MentionAll, Attachment: b.Attachment}
}

func (b *sendBody) fill() error {
	if len(b.Body) == 0 {
		return Errorf(http.StatusBadRequest, "bad_request", "body: a message body (any JSON value) is required")
	}
	if b.Type == "" {
		b.Type = "text"
	}
	if b.CMID == "" {
		b.CMID = newCMID()
	}
	return nil
}

// newCMID returns a random client message ID for a send without one.
func newCMID() string {
	var b [15]byte
	_, _ = rand.Read(b[:])
	return "h" + base32.HexEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:])
}

func (c *ChatAPI) sendConv(w http.ResponseWriter, r *http.Request) error {
	app := r.PathValue("app")
	// Authorize before reading the body: which scope is needed depends on
	// "from", so first require a key of the app with either.
	if _, err := c.auth.forApp(r, identity.ScopePublish, identity.ScopeUsers); err != nil {
		return err
	}
	conv, err := convParam(r)
	if err != nil {
		return err
	}
	var b sendBody
	if err := c.decode(w, r, &b); err != nil {
		return err
	}
	if err := b.fill(); err != nil {
		return err
	}
	from := service(app)
	if b.From != "" {
		if _, err := c.auth.forApp(r, identity.ScopeUsers); err != nil {
			return err
		}
		if err := c.activeUser(r, app, b.From); err != nil {
			return err
		}
		from = chat.Sender{App: app, User: b.From}
	} else if _, err := c.auth.forApp(r, identity.ScopePublish); err != nil {
		return err
	}
	return c.send(w, r, from, b.request(conv, ""))
}

func (c *ChatAPI) sendDirect(w http.ResponseWriter, r *http.Request) error {
	app, err := c.auth.forApp(r, identity.ScopeUsers)
	if err != nil {
		return err
	}
	user, peer := r.PathValue("user"), r.PathValue("peer")
	if !protocol.ValidID(user) || !protocol.ValidID(peer) || user == peer {
		return Errorf(http.StatusBadRequest, "bad_request", "user and peer must be two different valid user IDs")
	}
	var b sendBody
	if err := c.decode(w, r, &b); err != nil {
		return err
	}
	if b.From != "" {
		return Errorf(http.StatusBadRequest, "bad_request", "from: the sender of a direct message is the user in the path")
	}
	if err := b.fill(); err != nil {
		return err
	}
	if err := c.activeUser(r, app, user); err != nil {
		return err
	}
	return c.send(w, r, chat.Sender{App: app, User: user}, b.request("", peer))
}

func (c *ChatAPI) send(w http.ResponseWriter, r *http.Request, from chat.Sender, req chat.SendRequest) error {
	ack, err := c.svc.Send(r.Context(), from, req)
	if err != nil {
		return chatErr(err)
	}
	status := http.StatusCreated
	if ack.Duplicate {
		status = http.StatusOK
	}
	WriteJSON(w, status, ack)
	return nil
}
