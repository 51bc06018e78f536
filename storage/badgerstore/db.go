// Package badgerstore implements Warbler's storage interfaces on an embedded
// Badger database in one directory. It is the single-node backend that runs
// with no configuration: every store of the server shares one *DB.
//
// Key space. Every store owns a key prefix and never reads or writes outside
// it, so stores can be added without coordination:
//
//	i/   identity: apps, users, devices, credentials, keys, tokens
//	c/   chat: conversations, members, cursors, dedupe entries
//	l/   limits: bans of client IDs, users and addresses
//	m/   chat: the per-conversation message log
//	p/   push bridge: queue and ledger
//	q/   broker: retained messages and persistent MQTT sessions
//	w/   webhooks and service events
//	s/   server-wide settings and secrets
//
// Durability. The database runs with SyncWrites off and callers that promise
// durability call Sync (or use a group committer that does), so that many
// concurrent writers share one fsync instead of paying one each.
package badgerstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"

	"github.com/warblerim/warbler/storage"
)

// Options tunes the database. The zero value is fit for a small machine.
type Options struct {
	// InMemory runs Badger without files; for unit tests of pure logic only.
	InMemory bool
	// Logger receives Badger's warnings and errors; nil discards them.
	Logger *slog.Logger
}

// DB is an open Badger database shared by all stores of one server.
type DB struct {
	db  *badger.DB
	dir string
}

// Open opens (creating if needed) the database in dir. It fails with a clear
// error if the directory cannot be created or written, or if another process
// holds it.
func Open(dir string, o Options) (*DB, error) {
	var bo badger.Options
	if o.InMemory {
		bo = badger.DefaultOptions("").WithInMemory(true)
	} else {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("data dir %s: %w", dir, err)
		}
		probe := filepath.Join(dir, ".write-probe")
		if err := os.WriteFile(probe, nil, 0o600); err != nil {
			return nil, fmt.Errorf("data dir %s is not writable: %w", dir, err)
		}
		_ = os.Remove(probe)
		bo = badger.DefaultOptions(filepath.Join(dir, "db"))
	}
	bo = bo.WithLogger(badgerLogger{o.Logger}).
		WithSyncWrites(false).
		WithMemTableSize(8 << 20).
		WithNumMemtables(2).
		WithBlockCacheSize(16 << 20).
		WithIndexCacheSize(8 << 20).
		WithNumCompactors(2).
		WithNumLevelZeroTables(2).
		WithNumLevelZeroTablesStall(4).
		WithValueLogFileSize(64 << 20).
		WithChecksumVerificationMode(options.OnTableRead) // a corrupt table refuses to open
	db, err := badger.Open(bo)
	if err != nil {
		return nil, fmt.Errorf("open store in %s: %w", dir, err)
	}
	return &DB{db: db, dir: dir}, nil
}

// Badger returns the underlying database for stores in this package.
func (d *DB) Badger() *badger.DB { return d.db }

// Sync flushes all writes made so far to stable storage.
func (d *DB) Sync() error { return d.db.Sync() }

// Close syncs and closes the database. It is safe to call once.
func (d *DB) Close() error {
	if d == nil || d.db == nil {
		return errors.New("badgerstore: not open")
	}
	return d.db.Close()
}

// maxConflictRetries bounds the retries of a read-modify-write transaction
// that lost a race to another writer.
const maxConflictRetries = 16

// update runs fn in a read-write transaction, retrying it when it loses a
// race to another writer (at most maxConflictRetries times, then
// storage.ErrConflict), and, if sync is set, syncs the database before
// returning, so that a nil error means the change survives a crash.
func (d *DB) update(ctx context.Context, sync bool, fn func(txn *badger.Txn) error) error {
	for range maxConflictRetries {
		if err := ctx.Err(); err != nil {
			return err
		}
		err := d.db.Update(fn)
		if errors.Is(err, badger.ErrConflict) {
			continue
		}
		if err != nil {
			return err
		}
		if sync {
			if err := d.Sync(); err != nil {
				return fmt.Errorf("sync: %w", err)
			}
		}
		return nil
	}
	return storage.ErrConflict
}

// Check reports whether the database accepts reads; used by readiness probes.
func (d *DB) Check() error {
	if d.db.IsClosed() {
		return errors.New("store closed")
	}
	return d.db.View(func(*badger.Txn) error { return nil })
}

type badgerLogger struct{ l *slog.Logger }

func (b badgerLogger) Errorf(f string, a ...any) {
	if b.l != nil {
		b.l.Error(fmt.Sprintf(f, a...), "component", "badger")
	}
}
func (b badgerLogger) Warningf(f string, a ...any) {
	if b.l != nil {
		b.l.Warn(fmt.Sprintf(f, a...), "component", "badger")
	}
}
func (badgerLogger) Infof(string, ...any)  {}
func (badgerLogger) Debugf(string, ...any) {}
