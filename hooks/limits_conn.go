package hooks

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// This file is the socket side of the limits: admission of each new MQTT
// socket by address, before a byte of MQTT is read. A socket counts toward
// its address's and the server's connection caps from accept until it
// closes, so sockets that never complete CONNECT (idle, slowloris) are
// counted too; the packet guard's connect deadline closes them.

// admission tracks the open sockets per address and in total.
type admission struct {
	mu        sync.Mutex
	ips       map[ipKey]*ipState
	total     int
	global    bucket // accepted sockets, all addresses together
	lastSweep time.Time
}

type ipState struct {
	conns int
	rate  bucket
	open  map[*connTicket]struct{}
}

// connTicket is one admitted socket; release gives its place back.
type connTicket struct {
	l      *Limits
	remote string
	addr   netip.Addr
	key    ipKey
	exempt bool
	closer io.Closer // closes the socket (nil for WebSocket)
	done   atomic.Bool
}

func (t *connTicket) release() {
	if t == nil || !t.done.CompareAndSwap(false, true) {
		return
	}
	a := &t.l.adm
	a.mu.Lock()
	defer a.mu.Unlock()
	a.total--
	if st := a.ips[t.key]; st != nil {
		if !t.exempt {
			st.conns--
		}
		delete(st.open, t)
	}
}

// admit decides whether a new socket from remote may stay open. It checks,
// in order: a ban of the address, the global cap, and (unless the address is
// exempt) the per-address cap and connection rate.
func (l *Limits) admit(remote string, closer io.Closer) (*connTicket, reason) {
	now := l.now()
	addr, ok := parseRemote(remote)
	if ok {
		if b, banned := l.bans.ip(addr, now); banned {
			l.note(reasonBannedIP, "remote", remote, "ban", b.Value)
			return nil, reasonBannedIP
		}
	}
	exempt := !ok || l.exempt(addr)
	t := &connTicket{l: l, remote: remote, addr: addr, key: keyOf(addr), exempt: exempt, closer: closer}
	p := l.policy
	a := &l.adm
	a.mu.Lock()
	defer a.mu.Unlock()
	if p.MaxConnections > 0 && a.total >= p.MaxConnections {
		l.note(reasonMaxConnections, "remote", remote, "limit", p.MaxConnections)
		return nil, reasonMaxConnections
	}
	a.sweep(p, now)
	st := a.ips[t.key]
	if st == nil {
		st = &ipState{rate: newBucket(p.ConnectRatePerIP, now), open: map[*connTicket]struct{}{}}
		a.ips[t.key] = st
	}
	if !exempt {
		if p.MaxConnectionsPerIP > 0 && st.conns >= p.MaxConnectionsPerIP {
			l.note(reasonIPConnections, "remote", remote, "limit", p.MaxConnectionsPerIP)
			return nil, reasonIPConnections
		}
		if ok, _ := st.rate.take(p.ConnectRatePerIP, now, 1); !ok {
			l.note(reasonIPConnectRate, "remote", remote, "rate", p.ConnectRatePerIP.Per)
			return nil, reasonIPConnectRate
		}
		st.conns++
	}
	st.open[t] = struct{}{}
	a.total++
	return t, 0
}

// sweep forgets addresses with no socket open and a full rate bucket, at
// most every ten seconds, so the map holds only recent addresses.
func (a *admission) sweep(p LimitsPolicy, now time.Time) {
	if now.Sub(a.lastSweep) < 10*time.Second {
		return
	}
	a.lastSweep = now
	for k, st := range a.ips {
		if len(st.open) == 0 && st.rate.full(p.ConnectRatePerIP, now) {
			delete(a.ips, k)
		}
	}
}

// pace waits, if the server-wide connection rate is used up, until the
// next socket may be admitted. It runs in a listener's accept loop, so the
// listener stops accepting meanwhile and new connections wait in the
// kernel's backlog, as with EMQX's max_conn_rate; exempt addresses do not
// wait. It gives up waiting when stop is closed.
func (l *Limits) pace(remote string, stop <-chan struct{}) {
	r := l.policy.ConnectRate
	if !r.On() {
		return
	}
	if addr, ok := parseRemote(remote); !ok || l.exempt(addr) {
		return
	}
	for {
		l.adm.mu.Lock()
		ok, wait := l.adm.global.take(r, l.now(), 1)
		l.adm.mu.Unlock()
		if ok {
			return
		}
		l.count(reasonConnectRate)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-stop:
			t.Stop()
			return
		}
	}
}

// closeSockets closes the open sockets that match, and returns how many
// it closed.
func (l *Limits) closeSockets(match func(*connTicket) bool) int {
	var cs []io.Closer
	l.adm.mu.Lock()
	for _, st := range l.adm.ips {
		for t := range st.open {
			if t.closer != nil && match(t) {
				cs = append(cs, t.closer)
			}
		}
	}
	l.adm.mu.Unlock()
	for _, c := range cs {
		_ = c.Close()
	}
	return len(cs)
}

// Sockets returns the number of admitted sockets open now.
func (l *Limits) Sockets() int {
	l.adm.mu.Lock()
	defer l.adm.mu.Unlock()
	return l.adm.total
}

// Listener wraps a listener of MQTT sockets so that each accepted socket is
// admitted first: a refused one is closed at once, before TLS or MQTT
// work is spent on it, and the caller's Accept never sees it.
func (l *Limits) Listener(ln net.Listener) net.Listener {
	return &limitedListener{Listener: ln, l: l, stop: make(chan struct{})}
}

type limitedListener struct {
	net.Listener
	l    *Limits
	stop chan struct{}
	once sync.Once
}

func (ll *limitedListener) Accept() (net.Conn, error) {
	for {
		c, err := ll.Listener.Accept()
		if err != nil {
			return nil, err
		}
		// Refuse first (bans, caps, the address's rate), so that refused
		// sockets cost no share of the server-wide rate; then pace.
		remote := c.RemoteAddr().String()
		lc := &limitedConn{Conn: c}
		t, why := ll.l.admit(remote, lc)
		if why != 0 {
			_ = c.Close()
			continue
		}
		lc.t = t
		ll.l.pace(remote, ll.stop)
		return lc, nil
	}
}

func (ll *limitedListener) Close() error {
	ll.once.Do(func() { close(ll.stop) })
	return ll.Listener.Close()
}

// limitedConn gives its admission back when it is closed.
type limitedConn struct {
	net.Conn
	t *connTicket
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.t.release()
	return err
}

// WebSocket wraps the handler of an MQTT-over-WebSocket endpoint so that
// each request is admitted like a socket, for as long as the handler runs
// (which, for an upgraded connection, is the connection's life). A banned
// address gets 403, one over a cap or rate 429 with Retry-After, both with
// a JSON error body.
func (l *Limits) WebSocket(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t, why := l.admit(r.RemoteAddr, nil)
		if why != 0 {
			status, code := http.StatusTooManyRequests, "rate_limited"
			if why == reasonBannedIP {
				status, code = http.StatusForbidden, "banned"
			} else {
				w.Header().Set("Retry-After", strconv.Itoa(1))
			}
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			_, _ = fmt.Fprintf(w, `{"error":{"code":%q,"message":%q}}`+"\n", code, "connection refused: "+why.String())
			return
		}
		defer t.release()
		h.ServeHTTP(w, r)
	})
}
