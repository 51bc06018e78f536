package chat

import (
	"crypto/rand"
	"encoding/binary"
	"sync"
	"time"
)

// idGen makes message IDs: 128 bits laid out as 48 bits of unix
// milliseconds, 16 bits of node, 64 bits of counter, written as 26
// characters of Crockford base32. IDs of one node sort in creation order
// (the clock is never allowed to step back, and the counter breaks ties
// within a millisecond); IDs of different nodes sort by time to the
// millisecond. Uniqueness across processes rests on distinct node numbers.
// No external dependency: it is ULID's layout with a node field.
type idGen struct {
	mu     sync.Mutex
	node   uint16
	lastMS int64
	ctr    uint64
}

func newIDGen(node uint16) *idGen { return &idGen{node: node} }

const crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

func (g *idGen) next(now time.Time) string {
	g.mu.Lock()
	ms := now.UnixMilli()
	if ms <= g.lastMS {
		ms = g.lastMS
		g.ctr++
	} else {
		// A fresh random start per millisecond keeps IDs unguessable in
		// sequence and still leaves 2^63 increments of room.
		var b [8]byte
		_, _ = rand.Read(b[:])
		g.ctr = binary.BigEndian.Uint64(b[:]) >> 1
		g.lastMS = ms
	}
	hi := uint64(ms)<<16 | uint64(g.node)
	lo := g.ctr
	g.mu.Unlock()

	var raw [16]byte
	binary.BigEndian.PutUint64(raw[:8], hi)
	binary.BigEndian.PutUint64(raw[8:], lo)
	// 26 characters x 5 bits = 130 bits: two leading zero bits, then the
	// 128 bits big-endian, so string order is numeric order.
	var out [26]byte
	for i := 25; i >= 0; i-- {
		bit := (25 - i) * 5 // position of the lowest bit of this character
		var v uint64
		for j := 0; j < 5; j++ {
			if b := bit + j; b < 128 {
				byteIdx := 15 - b/8
				v |= uint64(raw[byteIdx]>>(b%8)&1) << j
			}
		}
		out[i] = crockford[v]
	}
	return string(out[:])
}
