package api

// This file serves the operations on stored messages to backend services:
//
//	PATCH  /v1/apps/{app}/conversations/{conv}/messages/{seq}         "publish"/"users"  edit {body, from?}
//	POST   /v1/apps/{app}/conversations/{conv}/messages/{seq}/recall  "publish"/"users"  recall {from?}
//
// As for sending, the service acts with the "publish" scope, as the owner
// of every conversation: it may recall any message at any time (moderation)
// and edit the messages it sent. With "from" (and the "users" scope) the
// request is made as that member, under the same rules as over MQTT: the
// sender edits, and recalls within the app's recall window; admins and
// owners of groups recall any time. Both append an event to the log and
// rewrite the stored message (see docs/PROTOCOL.md, "Message operations");
// the answer is the event's position. An optional "id" guards against
// acting on another message than the one meant. Replies, mentions and
// @all are fields of the send routes (conversations.go).

import (
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/warblerim/warbler/chat"
	"github.com/warblerim/warbler/identity"
	"github.com/warblerim/warbler/protocol"
)

func (c *ChatAPI) registerMessageOps(mux Mux) {
	mux.Handle("PATCH /v1/apps/{app}/conversations/{conv}/messages/{seq}", HandlerFunc(c.editMessage))
	mux.Handle("POST /v1/apps/{app}/conversations/{conv}/messages/{seq}/recall", HandlerFunc(c.recallMessage))
}

type messageOpBody struct {
	From string          `json:"from"`
	ID   string          `json:"id"`
	Body json.RawMessage `json:"body"`
}

// messageOp authorizes a message operation, reads its body and returns who
// acts, on which conversation and seq.
func (c *ChatAPI) messageOp(w http.ResponseWriter, r *http.Request) (chat.Sender, string, uint64, messageOpBody, error) {
	var b messageOpBody
	app := r.PathValue("app")
	if _, err := c.auth.forApp(r, identity.ScopePublish, identity.ScopeUsers); err != nil {
		return chat.Sender{}, "", 0, b, err
	}
	conv, err := convParam(r)
	if err != nil {
		return chat.Sender{}, "", 0, b, err
	}
	seq, err := strconv.ParseUint(r.PathValue("seq"), 10, 64)
	if err != nil || seq == 0 {
		return chat.Sender{}, "", 0, b, Errorf(http.StatusBadRequest, "bad_request", "seq: a positive integer")
	}
	if r.ContentLength != 0 {
		if err := c.decode(w, r, &b); err != nil {
			return chat.Sender{}, "", 0, b, err
		}
	}
	if b.ID != "" && !protocol.ValidID(b.ID) {
		return chat.Sender{}, "", 0, b, Errorf(http.StatusBadRequest, "bad_request", "id: %s", protocol.ErrBadID)
	}
	from := service(app)
	if b.From != "" {
		if _, err := c.auth.forApp(r, identity.ScopeUsers); err != nil {
			return chat.Sender{}, "", 0, b, err
		}
		if err := c.activeUser(r, app, b.From); err != nil {
			return chat.Sender{}, "", 0, b, err
		}
		from = chat.Sender{App: app, User: b.From}
	} else if _, err := c.auth.forApp(r, identity.ScopePublish); err != nil {
		return chat.Sender{}, "", 0, b, err
	}
	return from, conv, seq, b, nil
}

func (c *ChatAPI) editMessage(w http.ResponseWriter, r *http.Request) error {
	from, conv, seq, b, err := c.messageOp(w, r)
	if err != nil {
		return err
	}
	if len(b.Body) == 0 {
		return Errorf(http.StatusBadRequest, "bad_request", "body: the new message body (any JSON value) is required")
	}
	res, err := c.svc.Edit(r.Context(), from, conv, b.ID, seq, b.Body)
	if err != nil {
		return chatErr(err)
	}
	WriteJSON(w, http.StatusOK, res)
	return nil
}

func (c *ChatAPI) recallMessage(w http.ResponseWriter, r *http.Request) error {
	from, conv, seq, b, err := c.messageOp(w, r)
	if err != nil {
		return err
	}
	if len(b.Body) != 0 {
		return Errorf(http.StatusBadRequest, "bad_request", "body: a recall takes no message body")
	}
	res, err := c.svc.Recall(r.Context(), from, conv, b.ID, seq)
	if err != nil {
		return chatErr(err)
	}
	WriteJSON(w, http.StatusOK, res)
	return nil
}
