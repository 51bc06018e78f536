package storage

import "context"

// ChatRecords keeps the chat service's small keyed records that are neither
// conversations nor messages: group settings and member mutes, invite
// tokens, join requests, contacts and blocks, privacy settings and last-seen
// times. Keys are chosen by the chat package (printable, '/'-separated, no
// app); values are opaque bytes. A write that returns nil is durable.
//
// One interface of four methods rather than one per record type keeps the
// contract small for a second backend; the chat package owns the meaning of
// every key.
type ChatRecords interface {
	// GetRecord returns the value at key, or ErrNotFound.
	GetRecord(ctx context.Context, app, key string) ([]byte, error)
	// PutRecord stores val at key; a nil val deletes the key (a missing key
	// is not an error).
	PutRecord(ctx context.Context, app, key string, val []byte) error
	// UpdateRecord replaces the value at key with what fn returns, atomically
	// with respect to every other write of the store: fn gets the current
	// value (nil and false if there is none) and returns the new one, or nil
	// to delete the key. fn may run more than once and must not call the
	// store; an error from it aborts the update and is returned as is.
	UpdateRecord(ctx context.Context, app, key string, fn func(old []byte, found bool) ([]byte, error)) error
	// ScanRecords calls fn for the keys that start with prefix, in key
	// order, from start (a full key, inclusive; "" for the beginning), at
	// most limit of them (0 for all), until fn returns an error. fn must
	// not keep val or call the store.
	ScanRecords(ctx context.Context, app, prefix, start string, limit int, fn func(key string, val []byte) error) error
}
