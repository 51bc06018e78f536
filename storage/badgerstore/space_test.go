package badgerstore

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/warblerim/warbler/storage"
)

// setReserve makes the guard of db demand reserve free bytes (the real
// reading of the test's filesystem is kept) and take a fresh reading on
// its next use.
func setReserve(db *DB, reserve uint64) {
	g := db.space
	g.mu.Lock()
	g.base, g.compact, g.checked = reserve, 0, time.Time{}
	g.mu.Unlock()
}

// A store whose filesystem has less free space than the reserve refuses
// chat appends and other writes with ErrNoSpace, stays usable, and takes
// writes again once the reserve is met.
func TestSpaceGuardRefusesAndResumes(t *testing.T) {
	db, s := openChat(t)
	if err := s.Append(bg, "app", storage.AppendBatch{Entries: entries("a", 1, 1)}); err != nil {
		t.Fatal(err)
	}

	setReserve(db, 1<<62) // more than any disk has
	err := s.Append(bg, "app", storage.AppendBatch{Entries: entries("a", 2, 1)})
	if !errors.Is(err, ErrNoSpace) {
		t.Fatalf("append below the reserve: %v, want ErrNoSpace", err)
	}
	if err := db.update(bg, true, func(*badger.Txn) error { return nil }); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("update below the reserve: %v, want ErrNoSpace", err)
	}
	if st := db.SpaceStats(); !st.Refusing || st.Refused < 2 || st.Reserve != 1<<62 {
		t.Fatalf("stats while refusing: %+v", st)
	}

	setReserve(db, 0)
	if err := s.Append(bg, "app", storage.AppendBatch{Entries: entries("a", 2, 1)}); err != nil {
		t.Fatalf("append after space came back: %v", err)
	}
	if n, _ := s.LastSeq(bg, "app", "a"); n != 2 {
		t.Fatalf("last seq %d, want 2", n)
	}
	if st := db.SpaceStats(); st.Refusing {
		t.Fatalf("still refusing: %+v", st)
	}
}

// The reserve derived from Open's options covers a new memtable log, the
// L0 table of its flush, and (for a small store) the whole tree's
// compaction.
func TestSpaceGuardReserve(t *testing.T) {
	db, _ := openChat(t)
	if err := db.CheckSpace(); err != nil {
		t.Skipf("the test filesystem is itself low on space: %v", err)
	}
	const mib = 1 << 20
	if st := db.SpaceStats(); st.Reserve < 26*mib || st.Reserve > 68*mib {
		t.Fatalf("reserve %d MiB, want 26 to 68 MiB", st.Reserve/mib)
	}
}

// The active memtable log is given all its blocks, so appends into it
// cannot fault on a full disk.
func TestSpaceGuardPreallocatesWAL(t *testing.T) {
	db, s := openChat(t)
	if err := s.Append(bg, "app", storage.AppendBatch{Entries: entries("a", 1, 1)}); err != nil {
		t.Fatal(err)
	}
	mems, _ := filepath.Glob(filepath.Join(db.Badger().Opts().Dir, "*.mem"))
	if len(mems) == 0 {
		t.Fatal("no memtable log")
	}
	newest := mems[len(mems)-1]
	fi, err := os.Stat(newest)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if alloc := st.Blocks * 512; alloc < fi.Size() {
		if db.space.walDone < 0 {
			t.Skipf("filesystem without fallocate: %s has %d of %d bytes allocated", newest, alloc, fi.Size())
		}
		t.Fatalf("%s: %d of %d bytes allocated", newest, alloc, fi.Size())
	}
}

// BenchmarkSpaceAdmit is the guard's cost on the write path: a mutex and
// a comparison, with a statfs every spaceCheckInterval.
func BenchmarkSpaceAdmit(b *testing.B) {
	db, _ := openChat(b)
	for b.Loop() {
		if err := db.space.admit(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSpaceStatfs is the cost of one fresh reading.
func BenchmarkSpaceStatfs(b *testing.B) {
	db, _ := openChat(b)
	g := db.space
	for b.Loop() {
		g.mu.Lock()
		g.check()
		g.mu.Unlock()
	}
}
