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
//	f/   media: file records, blob references, uploads in progress
//	x/   search index: postings, indexed messages, cursors
//	w/   webhooks and service events
//	s/   server-wide settings and secrets
//
// Durability. The database runs with SyncWrites off and callers that promise
// durability call Sync (or use a group committer that does), so that many
// concurrent writers share one fsync instead of paying one each.
//
// Disk space. Badger writes its logs and tables through shared mappings of
// files it sizes with ftruncate, which leaves them sparse; on a full
// filesystem a store into such a page is answered with SIGBUS, which kills
// the process instead of failing the write. The space guard (spaceGuard)
// refuses writes while free space is below what Badger may still need.
package badgerstore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
	"github.com/dgraph-io/badger/v4/pb"
	"github.com/dgraph-io/badger/v4/table"
	"github.com/dgraph-io/ristretto/v2/z"
	"google.golang.org/protobuf/proto"

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

	walMu     sync.Mutex
	syncedWAL map[int]bool // rotated memtable log files already synced by Sync

	space *spaceGuard // nil in memory
}

// Open opens (creating if needed) the database in dir. It fails with a clear
// error if the directory cannot be created or written, if another process
// holds it, or if a file of the store is damaged (see verifyStore): a
// damaged store is never opened, because Badger would otherwise serve what
// it could read and silently drop the rest.
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
	if !o.InMemory {
		if err := verifyStore(bo); err != nil {
			return nil, fmt.Errorf("store in %s is damaged; restore the data dir from a backup: %w", dir, err)
		}
	}
	db, err := badger.Open(bo)
	if err != nil {
		return nil, fmt.Errorf("open store in %s: %w", dir, err)
	}
	d := &DB{db: db, dir: dir, syncedWAL: map[int]bool{}}
	if !o.InMemory {
		d.space = newSpaceGuard(db, o.Logger)
		guards.Store(db, d.space)
		// The memtable Badger opened with may be new and sparse: give it
		// its blocks now, before the first write lands in it.
		d.walMu.Lock()
		err = syncRotatedWALs(bo.Dir, d.syncedWAL, d.space)
		d.walMu.Unlock()
		if err != nil {
			_ = db.Close()
			guards.Delete(db)
			return nil, fmt.Errorf("open store in %s: %w", dir, err)
		}
	}
	return d, nil
}

// Badger returns the underlying database for stores in this package.
func (d *DB) Badger() *badger.DB { return d.db }

// Sync flushes all writes made so far to stable storage. Badger's own Sync
// only syncs the memtable log file in use at that moment; a write that
// landed in a file rotated out since is synced here too (see log_commit.go).
func (d *DB) Sync() error {
	opts := d.db.Opts()
	if opts.InMemory || opts.SyncWrites {
		return nil
	}
	if err := d.db.Sync(); err != nil {
		return err
	}
	d.walMu.Lock()
	defer d.walMu.Unlock()
	return syncRotatedWALs(opts.Dir, d.syncedWAL, d.space)
}

// Close syncs and closes the database. It is safe to call once.
func (d *DB) Close() error {
	if d == nil || d.db == nil {
		return errors.New("badgerstore: not open")
	}
	guards.Delete(d.db)
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
		if err := d.space.admit(); err != nil {
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

// CheckSpace reports whether the store accepts writes: nil, or ErrNoSpace
// (wrapped, with the numbers) while the filesystem of the data directory
// has less free space than the reserve. Code that writes through Badger()
// directly should call it first; the chat committer and every store method
// of this package already do.
func (d *DB) CheckSpace() error { return d.space.admit() }

// SpaceStats returns the space guard's state, for metrics: whether writes
// are being refused, the free space and reserve at the last check, and how
// many writes were refused since Open. Zero for an in-memory store.
func (d *DB) SpaceStats() SpaceStats { return d.space.stats() }

// CacheBytes returns how much of the block cache (decompressed table
// blocks, at most 16 MiB) and the index cache (table indexes and Bloom
// filters, at most 8 MiB) is in use. Both live in the Go heap and fill as
// the store's tables grow, over minutes to hours, so a heap that grows
// while they fill is not leaking.
func (d *DB) CacheBytes() (block, index int64) {
	used := func(m interface {
		CostAdded() uint64
		CostEvicted() uint64
	}) int64 {
		if a, e := m.CostAdded(), m.CostEvicted(); a > e {
			return int64(a - e)
		}
		return 0
	}
	if m := d.db.BlockCacheMetrics(); m != nil {
		block = used(m)
	}
	if m := d.db.IndexCacheMetrics(); m != nil {
		index = used(m)
	}
	return block, index
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

// verifyStore checks every file Badger would trust on open, before Badger
// opens them, because Badger v4.9.6 does not fail cleanly on damage:
//
//   - A sorted table (*.sst) with a flipped or cut-off byte makes Badger
//     panic in a goroutine of its own while it opens the table (a nil
//     dereference in VerifyChecksum, a slice bound in initIndex), which no
//     caller can recover. Here each table is opened the way Badger opens
//     it, with every block's checksum verified, in this goroutine, where
//     the panic becomes an error.
//   - A memtable's write-ahead log (*.mem) holds the newest writes, already
//     acknowledged. On replay Badger stops at the first entry whose length
//     or CRC is wrong and throws away everything after it, as if it were
//     the torn tail of a crash. A process crash cannot tear a log that is
//     written through a shared mapping, so damage followed by more data is
//     corruption of acknowledged messages, and the store is refused. A log
//     cut short at an entry boundary cannot be told from one Badger itself
//     shortened after a replay, and is not detected.
//   - The MANIFEST lists the live tables as a sequence of change sets, each
//     with its length and CRC. Badger truncates it at the first bad change
//     set and then deletes every table the shortened list does not name:
//     a cut or flipped MANIFEST would destroy history on the next start.
//     Badger fsyncs each change set, so only a power loss in the middle of
//     an append can tear the last one; that too is refused, for an
//     operator to look at, rather than guessed at.
//
// The value log (*.vlog) is not checked: Warbler's values are small enough
// to live in the tables and write-ahead logs.
func verifyStore(bo badger.Options) error {
	ents, err := os.ReadDir(bo.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil // first start
	}
	if err != nil {
		return err
	}
	// Only the tables the MANIFEST names hold data: a table written when
	// the process died, before its MANIFEST entry, is an orphan (often
	// empty or half written) that Badger deletes, so it is not checked.
	live := map[string]bool{}
	if _, err := os.Stat(filepath.Join(bo.Dir, "MANIFEST")); err == nil {
		if live, err = verifyManifest(filepath.Join(bo.Dir, "MANIFEST")); err != nil {
			return err
		}
	}
	for _, e := range ents {
		path := filepath.Join(bo.Dir, e.Name())
		switch {
		case live[e.Name()]:
			err = verifyTable(path, bo)
		case strings.HasSuffix(e.Name(), ".mem"):
			err = verifyWAL(path)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// verifyTable opens one sorted table read-only with full checksum
// verification and turns a panic inside Badger's table code into an error.
func verifyTable(path string, bo badger.Options) (err error) {
	mf, err := z.OpenMmapFile(path, os.O_RDONLY, 0)
	if err != nil && !errors.Is(err, z.NewFile) {
		return fmt.Errorf("table %s: %w", path, err)
	}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("table %s is corrupt: %v", path, r)
		}
	}()
	t, err := table.OpenTable(mf, table.Options{
		ReadOnly:             true,
		ChkMode:              options.OnTableAndBlockRead,
		BlockSize:            bo.BlockSize,
		BloomFalsePositive:   bo.BloomFalsePositive,
		Compression:          bo.Compression,
		ZSTDCompressionLevel: bo.ZSTDCompressionLevel,
	})
	if err != nil {
		_ = mf.Close(-1)
		return fmt.Errorf("table %s is corrupt: %w", path, err)
	}
	return t.Close(-1)
}

// walHeaderSize is the size of the key ID and IV that start every Badger
// log file, before the first entry.
const walHeaderSize = 20

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// verifyWAL walks the entries of one write-ahead log as Badger's replay
// does (header: meta, user meta, uvarint key length, value length and
// expiry; then key, value and a big-endian CRC-32C of all of it) up to the
// first all-zero header, which ends the log, and fails if an entry is bad
// while nonzero bytes follow it.
func verifyWAL(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("write-ahead log %s: %w", path, err)
	}
	off := walHeaderSize
	for off < len(b) {
		n, ok := walEntry(b[off:])
		if n == 0 {
			return nil // the all-zero header after the last entry
		}
		if !ok {
			for _, c := range b[off:] {
				if c != 0 {
					return fmt.Errorf("write-ahead log %s is corrupt at offset %d, with data after it", path, off)
				}
			}
			return nil // a torn last entry with nothing after it
		}
		off += n
	}
	return nil
}

// walEntry decodes the entry at the start of b and returns its encoded
// length and whether it is whole with a correct CRC; 0 for an empty header.
func walEntry(b []byte) (int, bool) {
	if len(b) < 2 {
		return 0, true
	}
	i := 2
	var lens [3]uint64
	for k := range lens {
		v, n := binary.Uvarint(b[i:])
		if n <= 0 {
			return 1, false
		}
		lens[k], i = v, i+n
	}
	if b[0] == 0 && b[1] == 0 && lens[0] == 0 && lens[1] == 0 && lens[2] == 0 {
		return 0, true
	}
	klen, vlen := lens[0], lens[1]
	if klen == 0 || klen > 1<<16 || vlen > uint64(len(b)) || uint64(i)+klen+vlen+4 > uint64(len(b)) {
		return 1, false
	}
	end := i + int(klen+vlen)
	if crc32.Checksum(b[:end], castagnoli) != binary.BigEndian.Uint32(b[end:end+4]) {
		return 1, false
	}
	return end + 4, true
}

// verifyManifest checks the MANIFEST's magic and the length and CRC-32C of
// every change set (each preceded by a big-endian length and CRC), and
// returns the file names of the tables it leaves live.
func verifyManifest(path string) (map[string]bool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("manifest %s: %w", path, err)
	}
	if len(b) < 8 || string(b[:4]) != "Bdgr" {
		return nil, fmt.Errorf("manifest %s is corrupt: bad header", path)
	}
	live := map[string]bool{}
	for off := 8; off < len(b); {
		if len(b)-off < 8 {
			return nil, fmt.Errorf("manifest %s is truncated at offset %d", path, off)
		}
		n := int(binary.BigEndian.Uint32(b[off:]))
		sum := binary.BigEndian.Uint32(b[off+4:])
		off += 8
		if n > len(b)-off {
			return nil, fmt.Errorf("manifest %s is truncated or corrupt at offset %d", path, off-8)
		}
		if crc32.Checksum(b[off:off+n], castagnoli) != sum {
			return nil, fmt.Errorf("manifest %s is corrupt at offset %d (checksum mismatch)", path, off-8)
		}
		var cs pb.ManifestChangeSet
		if err := proto.Unmarshal(b[off:off+n], &cs); err != nil {
			return nil, fmt.Errorf("manifest %s is corrupt at offset %d: %w", path, off-8, err)
		}
		for _, c := range cs.Changes {
			name := table.IDToFilename(c.Id)
			live[name] = c.Op == pb.ManifestChange_CREATE
		}
		off += n
	}
	return live, nil
}

// ErrNoSpace is returned (wrapped, with the numbers) by writes refused
// because the data directory's filesystem is low on free space.
var ErrNoSpace = errors.New("badgerstore: not enough free disk space")

// SpaceStats is the space guard's state, for metrics.
type SpaceStats struct {
	Refusing bool   // writes are being refused now
	Free     uint64 // bytes available to the server at the last check
	Reserve  uint64 // free bytes below which writes are refused
	Refused  uint64 // writes refused since Open
}

// spaceCheckInterval bounds how long a free-space reading is trusted.
// Within it a write costs a mutex and a subtraction; the reading is also
// renewed early once the bytes written since exceed the headroom it had.
const spaceCheckInterval = 100 * time.Millisecond

// guards maps each open *badger.DB to its DB's guard, so that code holding
// only the Badger handle (the chat committer) finds the same guard, with
// the same counters and log state.
var guards sync.Map

func guardFor(db *badger.DB) *spaceGuard {
	if g, ok := guards.Load(db); ok {
		return g.(*spaceGuard)
	}
	return nil
}

// spaceGuard keeps Badger from writing into disk blocks that do not exist.
//
// Why it is needed. Badger v4.9.6 creates each memtable write-ahead log
// (NNNNN.mem, 2 × MemTableSize), each table (*.sst) and each value log
// file with ftruncate and then writes them through a shared mapping. The
// files are sparse: their blocks are allocated by the page faults of the
// writes. On a full filesystem such a fault raises SIGBUS, and the Go
// runtime turns that into "fatal error: fault": the process dies, and no
// write ever sees an error.
//
// What it does, in two parts:
//
//   - Admission. Every write of this package (the chat committer's batch,
//     DB.update) first asks admit, which refuses with ErrNoSpace while the
//     free space of the data directory's filesystem (statfs f_bavail) is
//     below the reserve. Refused writes are answered as failed writes: a
//     chat send gets a PUBACK ≥ 0x80 (MQTT 5) or none (MQTT 3.1.1).
//     Writing resumes by itself once free space is back above the reserve
//     plus an eighth (the margin keeps the state from flapping, and the
//     log from repeating, when free space hovers at the reserve).
//   - Preallocation. After each sync the newest memtable log is given all
//     its blocks with fallocate (keeping its size), so appends into it
//     never fault, even if another process fills the disk after the check.
//     Only writes between a memtable rotation and the next sync go into a
//     sparse file; the reserve covers them.
//
// The reserve is what Badger may still allocate on its own after a write
// is admitted: a new memtable log when the memtable fills (2 × MemTableSize),
// the L0 table its flush writes (MemTableSize plus an index and Bloom filter,
// counted as a quarter more), and the tables of a compaction, which are
// written before the ones they replace are deleted. A compaction rewrites
// at most L0 at its stall size plus the base level (NumLevelZeroTablesStall
// × MemTableSize + BaseLevelSize), and never more than the whole tree, so
// that share is min(LSM size, that bound). With the options of Open (8 MiB
// memtables, L0 stall at 4 tables, 10 MiB base level) the reserve is 26 MiB
// for a small store, rising to 68 MiB from an LSM tree of 42 MiB up.
//
// Limits. A write through Badger() that does not call DB.CheckSpace is not
// guarded. Space taken by another process after a write was admitted can
// still starve Badger's own flushes and compactions. Values of
// ValueThreshold (1 MiB) or more go to the value log, which is not
// preallocated; Warbler's values are far smaller.
type spaceGuard struct {
	db      *badger.DB
	dir     string
	log     *slog.Logger
	base    uint64 // the reserve without its compaction share
	compact uint64 // the most one compaction writes

	mu        sync.Mutex
	checked   time.Time
	allowance int64 // free − reserve at the last check, less bytes written since
	free      uint64
	reserve   uint64
	refusing  bool
	err       error // what admit returns while refusing

	walMu   sync.Mutex
	walDone int // the newest memtable log already given its blocks

	refused atomic.Uint64
}

func newSpaceGuard(db *badger.DB, log *slog.Logger) *spaceGuard {
	o := db.Opts()
	m := uint64(o.MemTableSize)
	return &spaceGuard{
		db:      db,
		dir:     o.Dir,
		log:     log,
		base:    2*m + m + m/4,
		compact: uint64(o.NumLevelZeroTablesStall)*m + uint64(o.BaseLevelSize),
		walDone: -1,
	}
}

// admit returns nil if a write may go ahead, else the refusal. A nil
// guard (an in-memory store) admits everything.
func (g *spaceGuard) admit() error {
	if g == nil {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if time.Since(g.checked) >= spaceCheckInterval || (!g.refusing && g.allowance < 0) {
		g.check()
	}
	if g.refusing {
		g.refused.Add(1)
		return g.err
	}
	return nil
}

// consume counts n bytes just written against the headroom of the last
// reading, so that a burst of writes renews the reading before it can
// use up the reserve.
func (g *spaceGuard) consume(n int) {
	if g == nil || n <= 0 {
		return
	}
	g.mu.Lock()
	g.allowance -= int64(n)
	g.mu.Unlock()
}

// check takes a fresh reading and switches between admitting and refusing,
// logging each switch once. Called with g.mu held.
func (g *spaceGuard) check() {
	g.checked = time.Now()
	var st syscall.Statfs_t
	if err := syscall.Statfs(g.dir, &st); err != nil {
		// No reading: keep the current state; the write itself will fail
		// if the directory is really gone.
		g.allowance = 0
		return
	}
	lsm, _ := g.db.Size()
	g.free = st.Bavail * uint64(st.Bsize)
	g.reserve = g.base + min(uint64(max(lsm, 0)), g.compact)
	g.allowance = int64(g.free) - int64(g.reserve)
	switch {
	case !g.refusing && g.free < g.reserve:
		g.refuse(fmt.Errorf("%w: %d bytes free in %s, %d reserved for the store's own flushes and compactions",
			ErrNoSpace, g.free, g.dir, g.reserve))
	case g.refusing && g.free >= g.reserve+g.reserve/8:
		g.refusing, g.err = false, nil
		if g.log != nil {
			g.log.Info("disk space is back: store accepts writes again", "dir", g.dir,
				"free_bytes", g.free, "reserve_bytes", g.reserve, "refused", g.refused.Load())
		}
	}
}

// refuse starts refusing writes with err. Called with g.mu held.
func (g *spaceGuard) refuse(err error) {
	if !g.refusing && g.log != nil {
		g.log.Error("disk space low: store refuses writes until space is freed", "dir", g.dir,
			"free_bytes", g.free, "reserve_bytes", g.reserve, "err", err)
	}
	g.refusing, g.err = true, err
	g.allowance = -1
}

// preallocWAL gives the memtable log with file number fid all the blocks
// of its current size, unless it already has them. Running out of space
// here starts refusing writes (and is retried on the next call); it is not
// a failed sync, because nothing already written is at risk. A filesystem
// without fallocate leaves the log sparse, guarded by the reserve alone.
func (g *spaceGuard) preallocWAL(dir string, fid int) {
	if g == nil || fid < 0 {
		return
	}
	g.walMu.Lock()
	defer g.walMu.Unlock()
	if fid <= g.walDone {
		return
	}
	f, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("%05d.mem", fid)), os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return // flushed and deleted meanwhile
	}
	if err == nil {
		var fi os.FileInfo
		if fi, err = f.Stat(); err == nil {
			const keepSize = 1 // FALLOC_FL_KEEP_SIZE: allocate, never resize
			err = syscall.Fallocate(int(f.Fd()), keepSize, 0, fi.Size())
		}
		f.Close()
	}
	switch {
	case err == nil:
		g.walDone = fid
	case errors.Is(err, syscall.ENOSPC):
		g.mu.Lock()
		g.refuse(fmt.Errorf("%w: no room to preallocate the memtable log %05d.mem in %s", ErrNoSpace, fid, dir))
		g.mu.Unlock()
	default:
		g.walDone = fid
		if g.log != nil {
			g.log.Warn("cannot preallocate the memtable log; relying on the free-space reserve alone",
				"file", fmt.Sprintf("%05d.mem", fid), "err", err)
		}
	}
}

func (g *spaceGuard) stats() SpaceStats {
	if g == nil {
		return SpaceStats{}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return SpaceStats{Refusing: g.refusing, Free: g.free, Reserve: g.reserve, Refused: g.refused.Load()}
}
