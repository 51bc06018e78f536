// Package storage defines the persistence contracts of Warbler: the small
// interfaces that the domain packages (identity, chat, bridge) use to keep
// their state, and the errors those interfaces return.
//
// The interfaces say nothing about the engine behind them. The embedded,
// single-node implementation lives in storage/badgerstore; a replicated
// backend (NATS JetStream) can be added beside it without touching the
// domain code. Implementations must be safe for concurrent use, and a write
// that returns nil must be durable: on disk, surviving kill -9.
package storage

import "errors"

var (
	// ErrNotFound is returned when a requested record does not exist.
	ErrNotFound = errors.New("storage: not found")
	// ErrExists is returned when a record that must be new already exists.
	ErrExists = errors.New("storage: already exists")
	// ErrConflict is returned when a conditional write lost a race.
	ErrConflict = errors.New("storage: conflict")
)
