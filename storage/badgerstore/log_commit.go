package badgerstore

// The group committer: the single writer of the chat key space ("c/" and
// "m/"). Callers hand it a request and wait (do), or hand it a request with
// a callback and carry on (submit, for pipelined appends; callbacks run on
// the committer goroutine in request order); one goroutine gathers every
// request that is pending, applies them in one Badger transaction (or a
// few, if they are large), makes the result durable once, and releases all
// the waiters. N concurrent senders therefore share one fsync instead of
// paying one each, and because it is the only writer of these keys, a
// request's read-check-write (is the seq next? is the user a member?) can
// never race another request.
//
// # What "durable" takes with Badger v4.9.6
//
// The database runs with SyncWrites off. A commit then lands in the active
// memtable's write-ahead log, an mmapped file, so it survives a process
// crash but not a power loss until the pages reach the disk. DB.Sync
// (db.go:708) msyncs the WAL of the memtable that is active *when Sync
// runs*, plus the value log. That is not enough on its own: when a memtable
// fills, the write goroutine rotates it (ensureRoomForWrite, db.go:1044)
// into the immutable list without syncing its WAL, and it stays there,
// unsynced, until the flusher has written it out as an SST (which is
// msynced, table.go:258). If a rotation happens between our commit and our
// Sync, our entries sit in the rotated WAL and Sync syncs the new, empty
// one. So after DB.Sync the committer also fsyncs every WAL file that has
// become immutable since it last looked (NNNNN.mem below the newest number:
// memtable file numbers only grow). fsync through a second descriptor
// writes back pages dirtied through the mapping, because they are dirty in
// the same page cache. A WAL that vanished meanwhile was flushed to a
// synced SST and deleted. Each immutable WAL is fsynced once, so the steady
// state costs one directory read per batch.
//
// With SyncWrites on, Badger msyncs the memtable it just wrote to before a
// commit returns (writeToLSM, db.go:861), which is correct without the
// extra step; the committer then skips its own sync. One group-committed
// transaction is one write request, so that costs one msync per batch too.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"encoding/json"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/warblerim/warbler/storage"
)

// ErrClosed is returned by writes after the chat store was closed.
var ErrClosed = errors.New("badgerstore: chat store closed")

// writeOp is one key write (or delete) produced by a request.
type writeOp struct {
	key, val []byte
	ttl      time.Duration
	del      bool
}

func (w writeOp) size() int { return len(w.key) + len(w.val) + 64 }

// commitReq is one caller's atomic unit of work.
type commitReq struct {
	// prepare reads what it needs through w (which sees the writes of
	// requests earlier in the same batch) and returns the writes to make.
	// An error fails this request only. It may run more than once.
	prepare func(w *wtxn) ([]writeOp, error)
	// after runs in the committer once the writes are durable, before the
	// caller is released.
	after func()
	err   error
	// Exactly one of done and cb is set: do waits on done, submit's
	// caller is called back with cb.
	done chan struct{}
	cb   func(error)
}

// finish releases the request's caller.
func (r *commitReq) finish() {
	if r.cb != nil {
		r.cb(r.err)
		return
	}
	close(r.done)
}

// CommitStats counts the committer's work since it started.
type CommitStats struct {
	Requests uint64 // requests processed
	Batches  uint64 // group commits (each one durable sync)
	Txns     uint64 // Badger transactions committed
}

type committer struct {
	db       *badger.DB
	reqs     chan *commitReq
	quit     chan struct{}
	stopped  chan struct{}
	mu       sync.RWMutex // guards closed against in-flight submits
	closed   bool
	maxBatch int
	maxBytes int

	syncedWAL map[int]bool // immutable memtable WALs already fsynced

	// space refuses batches while the disk is low on free space (see
	// spaceGuard in db.go); nil for a database not opened by Open.
	space *spaceGuard

	// The read cache (see wtxn); used by the committer goroutine only.
	cache, overlay map[string]cval

	// synced, if set, runs on the committer goroutine after each batch
	// that left nothing committed and not yet durable (every batch, until
	// a sync fails).
	synced func()

	// failed is set for good when a sync fails. After a failed fsync the
	// state of the files is unknown (the kernel may have dropped the dirty
	// pages), so the store refuses every later write rather than build on
	// entries that may not exist after a restart.
	failed error

	requests, batches, txns atomic.Uint64
}

func newCommitter(db *badger.DB, maxBatch, maxBytes int) *committer {
	c := &committer{
		db:        db,
		reqs:      make(chan *commitReq, maxBatch),
		quit:      make(chan struct{}),
		stopped:   make(chan struct{}),
		maxBatch:  maxBatch,
		maxBytes:  maxBytes,
		syncedWAL: map[int]bool{},
		space:     guardFor(db),
	}
	go c.run()
	return c
}

// do submits one request and waits until it is durable or failed. Once
// queued, a request is always carried out, whatever ctx says: the caller
// waits for the outcome rather than leave a write of unknown fate.
func (c *committer) do(ctx context.Context, prepare func(*wtxn) ([]writeOp, error), after func()) error {
	r := &commitReq{prepare: prepare, after: after, done: make(chan struct{})}
	if err := c.enqueue(ctx, r); err != nil {
		return err
	}
	<-r.done
	return r.err
}

// submit queues one request without waiting: cb is called with its outcome
// on the committer goroutine, after those of every request queued before
// it. If submit returns an error, nothing was queued and cb is not called.
func (c *committer) submit(ctx context.Context, prepare func(*wtxn) ([]writeOp, error), after func(), cb func(error)) error {
	return c.enqueue(ctx, &commitReq{prepare: prepare, after: after, cb: cb})
}

func (c *committer) enqueue(ctx context.Context, r *commitReq) error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return ErrClosed
	}
	select {
	case c.reqs <- r:
		return nil
	default:
	}
	select {
	case c.reqs <- r:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// close stops accepting requests, finishes the queued ones, and returns
// when the committer goroutine has exited.
func (c *committer) close() {
	c.mu.Lock()
	if !c.closed {
		c.closed = true
		close(c.quit)
	}
	c.mu.Unlock()
	<-c.stopped
}

func (c *committer) run() {
	defer close(c.stopped)
	batch := make([]*commitReq, 0, c.maxBatch)
	for {
		var first *commitReq
		select {
		case first = <-c.reqs:
		case <-c.quit:
			// No submit can be in progress (close holds the lock to set
			// closed), so what is in the channel now is all there is.
			for {
				select {
				case r := <-c.reqs:
					c.process(append(batch[:0], r))
				default:
					return
				}
			}
		}
		batch = append(batch[:0], first)
	gather:
		for len(batch) < c.maxBatch {
			select {
			case r := <-c.reqs:
				batch = append(batch, r)
			default:
				break gather
			}
		}
		c.process(batch)
	}
}

// process applies one batch: prepare each request against the open
// transaction, commit whenever the transaction gets large, sync once, then
// release everyone.
func (c *committer) process(batch []*commitReq) {
	c.requests.Add(uint64(len(batch)))
	if c.failed != nil {
		for _, r := range batch {
			r.err = c.failed
			r.finish()
		}
		return
	}
	// A batch refused for want of space fails as a whole, before anything
	// is written; unlike a failed sync it leaves the store usable, and
	// batches are admitted again once space is freed.
	if err := c.space.admit(); err != nil {
		for _, r := range batch {
			r.err = err
			r.finish()
		}
		return
	}
	var (
		w         = c.begin()
		inTxn     []*commitReq
		bytes     int
		written   int
		committed []*commitReq
	)
	defer func() { c.space.consume(written) }()
	commit := func() {
		if len(inTxn) == 0 {
			w.discard()
			return
		}
		err := w.commit()
		c.txns.Add(1)
		written += bytes
		if err != nil {
			err = mapCommitErr(err)
			for _, r := range inTxn {
				r.err = err
			}
		} else {
			committed = append(committed, inTxn...)
		}
		inTxn, bytes = nil, 0
	}
	for _, r := range batch {
		ws, err := r.prepare(w)
		if err != nil {
			r.err = err
			continue
		}
		sz := 0
		for _, op := range ws {
			sz += op.size()
		}
		if bytes+sz > c.maxBytes && len(inTxn) > 0 {
			commit()
			w = c.begin()
			// Reads must be redone against the state that now includes
			// the commit above.
			if ws, err = r.prepare(w); err != nil {
				r.err = err
				continue
			}
		}
		if err := w.apply(ws); err != nil {
			// The transaction may now hold part of r's writes: throw it
			// away with everything in it. This only happens for a single
			// request larger than Badger's transaction limit or a write
			// error, both of which fail loudly.
			w.discard()
			err = fmt.Errorf("chat store write: %w", err)
			r.err = err
			for _, o := range inTxn {
				o.err = err
			}
			inTxn, bytes = nil, 0
			w = c.begin()
			continue
		}
		inTxn = append(inTxn, r)
		bytes += sz
	}
	commit()
	if len(committed) > 0 {
		c.batches.Add(1)
		if err := c.syncDurable(); err != nil {
			err = fmt.Errorf("chat store sync (store now refuses writes): %w", err)
			c.failed = err
			for _, r := range committed {
				r.err = err
			}
		} else {
			for _, r := range committed {
				if r.after != nil {
					r.after()
				}
			}
		}
	}
	if c.failed == nil && c.synced != nil {
		c.synced()
	}
	for _, r := range batch {
		r.finish()
	}
}

// The committer's read cache. Appends read the conversation's head and
// the author's member record (for the read mark) on every message; as the
// only writer of these keys, the committer can answer those reads from
// memory. It keeps the committed value of each key it has read (bounded;
// arbitrary entries are dropped when full), and each open transaction
// keeps its own writes on top (the overlay). A commit writes through to
// the keys already cached and adds no others: the log entries themselves,
// written once and never read back by the committer, would otherwise fill
// the cache with message bodies (tens of MB at the bound) for nothing.
// Keys written with a TTL are never cached: their expiry is Badger's to
// apply.

// cacheMax bounds the committer's read cache, in keys.
const cacheMax = 1 << 16

type cval struct {
	val   []byte
	found bool
	ttl   bool // written with a TTL: drop from the cache on commit
}

// wtxn is the committer's open transaction as prepare sees it.
type wtxn struct {
	c       *committer
	txn     *badger.Txn
	overlay map[string]cval
}

func (c *committer) begin() *wtxn {
	if c.overlay == nil {
		c.overlay = map[string]cval{}
		c.cache = map[string]cval{}
	}
	clear(c.overlay)
	return &wtxn{c: c, txn: c.db.NewTransaction(true), overlay: c.overlay}
}

// get returns the value of key as this transaction sees it.
func (w *wtxn) get(key []byte) ([]byte, bool, error) {
	if v, ok := w.overlay[string(key)]; ok && !v.ttl {
		return v.val, v.found, nil
	} else if !ok {
		if v, ok := w.c.cache[string(key)]; ok {
			return v.val, v.found, nil
		}
	}
	it, err := w.txn.Get(key)
	if errors.Is(err, badger.ErrKeyNotFound) {
		w.c.remember(key, cval{})
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	val, err := it.ValueCopy(nil)
	if err != nil {
		return nil, false, err
	}
	if it.ExpiresAt() == 0 {
		w.c.remember(key, cval{val: val, found: true})
	}
	return val, true, nil
}

// remember caches a committed value read outside the overlay.
func (c *committer) remember(key []byte, v cval) {
	if _, ok := c.overlay[string(key)]; ok {
		return
	}
	c.trimCache()
	c.cache[string(key)] = v
}

func (c *committer) trimCache() {
	for k := range c.cache {
		if len(c.cache) < cacheMax {
			return
		}
		delete(c.cache, k)
	}
}

// getJSON reads key into v; storage.ErrNotFound if absent.
func (w *wtxn) getJSON(key []byte, v any) error {
	b, ok, err := w.get(key)
	if err != nil {
		return err
	}
	if !ok {
		return storage.ErrNotFound
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("corrupt record %q: %w", key, err)
	}
	return nil
}

// getU64 reads an 8-byte value; 0 if absent.
func (w *wtxn) getU64(key []byte) (uint64, error) {
	b, ok, err := w.get(key)
	if err != nil || !ok {
		return 0, err
	}
	return getU64(b), nil
}

func (w *wtxn) apply(ws []writeOp) error {
	for _, op := range ws {
		var err error
		if op.del {
			err = w.txn.Delete(op.key)
		} else {
			e := badger.NewEntry(op.key, op.val)
			if op.ttl > 0 {
				e = e.WithTTL(op.ttl)
			}
			err = w.txn.SetEntry(e)
		}
		if err != nil {
			return err
		}
		w.overlay[string(op.key)] = cval{val: op.val, found: !op.del, ttl: op.ttl > 0}
	}
	return nil
}

// commit commits the transaction and writes its writes through to the
// cached keys.
func (w *wtxn) commit() error {
	if err := w.txn.Commit(); err != nil {
		clear(w.overlay)
		return err
	}
	for k, v := range w.overlay {
		if _, ok := w.c.cache[k]; !ok {
			continue // never read: not worth keeping (see above)
		}
		if v.ttl {
			delete(w.c.cache, k)
			continue
		}
		w.c.cache[k] = v
	}
	clear(w.overlay)
	return nil
}

func (w *wtxn) discard() {
	w.txn.Discard()
	clear(w.overlay)
}

func mapCommitErr(err error) error {
	if errors.Is(err, badger.ErrConflict) {
		return fmt.Errorf("chat store commit: %w", storage.ErrConflict)
	}
	return fmt.Errorf("chat store commit: %w", err)
}

// syncDurable makes every transaction committed so far durable. See the
// file comment for why DB.Sync alone is not enough.
func (c *committer) syncDurable() error {
	opts := c.db.Opts()
	if opts.InMemory || opts.SyncWrites {
		return nil
	}
	if err := c.db.Sync(); err != nil {
		return err
	}
	return c.syncRotatedWALs(opts.Dir)
}

// syncRotatedWALs fsyncs each memtable WAL that has become immutable (a
// newer one exists) and has not been fsynced since.
func (c *committer) syncRotatedWALs(dir string) error {
	return syncRotatedWALs(dir, c.syncedWAL, c.space)
}

// syncRotatedWALs fsyncs each memtable WAL file in dir that has become
// immutable (a newer one exists) and is not in synced, and records it
// there; entries of files that no longer exist are dropped. DB.Sync alone
// only syncs the current memtable's file. It then has space preallocate
// the newest (active) WAL, which it found on the way.
func syncRotatedWALs(dir string, synced map[int]bool, space *spaceGuard) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var fids []int
	maxFid := -1
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".mem")
		if !ok {
			continue
		}
		fid, err := strconv.Atoi(name)
		if err != nil {
			continue
		}
		fids = append(fids, fid)
		maxFid = max(maxFid, fid)
	}
	present := make(map[int]bool, len(fids))
	for _, fid := range fids {
		present[fid] = true
		if fid == maxFid || synced[fid] {
			continue
		}
		f, err := os.Open(filepath.Join(dir, fmt.Sprintf("%05d.mem", fid)))
		if errors.Is(err, os.ErrNotExist) {
			continue // flushed to a synced SST and deleted meanwhile
		}
		if err != nil {
			return err
		}
		err = f.Sync()
		f.Close()
		if err != nil {
			return err
		}
		synced[fid] = true
	}
	for fid := range synced {
		if !present[fid] {
			delete(synced, fid)
		}
	}
	space.preallocWAL(dir, maxFid)
	return nil
}

func (c *committer) stats() CommitStats {
	return CommitStats{Requests: c.requests.Load(), Batches: c.batches.Load(), Txns: c.txns.Load()}
}
