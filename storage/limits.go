package storage

import (
	"context"
	"time"
)

// This file holds bans: the records that keep a client ID, a user or an
// address range away from the broker. The limits hook (package hooks)
// checks them before authentication and sets them automatically when it
// detects a flapping client; operators set and lift them through the admin
// API. They are kept in a store so that they survive a restart.

// The kinds of ban.
const (
	// BanClientID bans one MQTT client ID, exactly.
	BanClientID = "clientid"
	// BanUser bans every device of one user; the value is "{app}:{user}".
	BanUser = "user"
	// BanIP bans an address or a CIDR range; the value is in canonical
	// form ("203.0.113.7", "2001:db8::/32").
	BanIP = "ip"
)

// Ban is one ban. A ban is identified by its kind and value: setting a ban
// that exists replaces it.
type Ban struct {
	Kind  string `json:"kind"`
	Value string `json:"value"`
	// Reason is free text for operators ("flapping: 15 connects in 1m0s").
	Reason string `json:"reason,omitempty"`
	// By says who set the ban: "admin" or "flapping".
	By        string    `json:"by"`
	CreatedAt time.Time `json:"created_at"`
	// ExpiresAt is when the ban lapses; the zero time means never.
	ExpiresAt time.Time `json:"expires_at,omitzero"`
}

// Expired reports whether the ban has lapsed at now.
func (b Ban) Expired(now time.Time) bool { return !b.ExpiresAt.IsZero() && !now.Before(b.ExpiresAt) }

// BanStore keeps bans. Writes are durable when they return.
type BanStore interface {
	// PutBan creates or replaces the ban of b.Kind and b.Value.
	PutBan(ctx context.Context, b Ban) error
	// DeleteBan removes a ban; ErrNotFound if there is none.
	DeleteBan(ctx context.Context, kind, value string) error
	// ListBans returns every stored ban, lapsed ones included, in no
	// particular order.
	ListBans(ctx context.Context) ([]Ban, error)
}
