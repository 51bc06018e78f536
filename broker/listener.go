package broker

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/listeners"
)

// streamListener is a broker listener over any stream socket (TCP or TLS).
// Unlike the broker's own TCP listener it
//
//   - is bound before the server starts, so port 0 works and a taken port is
//     reported at start-up, not in a background goroutine;
//   - keeps accepting after transient accept errors (EMFILE, ENFILE,
//     ECONNABORTED), backing off up to a second instead of stopping for good;
//   - wraps every connection in a guardConn (connect deadline, packet size,
//     trial decoding) and runs it under recover, so no single connection can
//     take the process down.
type streamListener struct {
	id       string
	proto    string
	ln       net.Listener
	guard    guardOptions
	log      *slog.Logger
	closed   atomic.Bool
	serving  atomic.Bool
	stopped  chan struct{}  // closed when Serve returns
	wg       sync.WaitGroup // connection handlers; Add only inside Serve
	onAccept func()
	conns    connSet
}

// connSet tracks open sockets so that shutdown can close those that never
// completed CONNECT (the broker only knows connected clients).
type connSet struct {
	mu sync.Mutex
	m  map[net.Conn]struct{}
}

func (s *connSet) add(c net.Conn) {
	s.mu.Lock()
	if s.m == nil {
		s.m = map[net.Conn]struct{}{}
	}
	s.m[c] = struct{}{}
	s.mu.Unlock()
}

func (s *connSet) remove(c net.Conn) {
	s.mu.Lock()
	delete(s.m, c)
	s.mu.Unlock()
}

// closeAll closes every tracked socket.
func (s *connSet) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.m {
		_ = c.Close()
	}
}

// guardOptions are the per-connection protections shared by all listeners.
type guardOptions struct {
	maxPacket      uint32
	connectTimeout time.Duration
	writeTimeout   time.Duration
	metrics        *Metrics
	log            *slog.Logger
	// afterPanic, if set, finishes the disconnect of the client on conn
	// (the wrapped connection) whose handler panicked.
	afterPanic func(conn net.Conn, err error)
}

func (o guardOptions) wrap(c net.Conn) net.Conn {
	g := newGuardConn(c, o.maxPacket, o.connectTimeout, func(reason string) {
		o.metrics.Malformed.Inc()
		o.log.Info("closing connection: malformed input", "remote", c.RemoteAddr().String(), "reason", reason)
	})
	g.writeTimeout = o.writeTimeout
	g.onSlow = func() {
		o.metrics.SlowConsumers.Inc()
		o.log.Info("closing connection: a write did not finish in time (the client stopped reading)",
			"remote", c.RemoteAddr().String(), "write_timeout", o.writeTimeout.String())
	}
	return g
}

// establish runs the broker's connection handler for c, containing any panic
// to this one connection.
func (o guardOptions) establish(listener string, c net.Conn, establish listeners.EstablishFn) {
	w := o.wrap(c)
	defer func() {
		if r := recover(); r != nil {
			o.metrics.Malformed.Inc()
			o.metrics.Panics.Inc()
			o.log.Error("connection handler panicked; connection closed", "listener", listener,
				"remote", c.RemoteAddr().String(), "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			_ = c.Close()
			if o.afterPanic != nil {
				o.afterPanic(w, fmt.Errorf("connection handler panicked: %v", r))
			}
		}
	}()
	if err := establish(listener, w); err != nil {
		o.log.Debug("connection ended", "listener", listener, "remote", c.RemoteAddr().String(), "error", err)
	}
}

func (l *streamListener) ID() string       { return l.id }
func (l *streamListener) Address() string  { return l.ln.Addr().String() }
func (l *streamListener) Protocol() string { return l.proto }

// Init implements listeners.Listener; the socket is already bound.
func (l *streamListener) Init(*slog.Logger) error { return nil }

// Serve accepts connections until Close.
func (l *streamListener) Serve(establish listeners.EstablishFn) {
	l.serving.Store(true)
	defer close(l.stopped)
	defer l.serving.Store(false)
	var backoff time.Duration
	for {
		conn, err := l.ln.Accept()
		if err != nil {
			if l.closed.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors, or a connection reset before accept:
			// wait and go on, as net/http does.
			if backoff == 0 {
				backoff = 5 * time.Millisecond
			} else if backoff *= 2; backoff > time.Second {
				backoff = time.Second
			}
			l.guard.metrics.AcceptErrors.Inc()
			l.log.Warn("accept failed; retrying", "listener", l.id, "error", err, "retry_in", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		if l.onAccept != nil {
			l.onAccept()
		}
		l.wg.Add(1)
		l.conns.add(conn)
		go func() {
			defer l.wg.Done()
			defer l.conns.remove(conn)
			l.guard.establish(l.id, conn, establish)
		}()
	}
}

// stopAccepting closes the socket; clients already connected stay.
func (l *streamListener) stopAccepting() {
	if l.closed.CompareAndSwap(false, true) {
		_ = l.ln.Close()
	}
}

// Close stops accepting and closes the listener's clients.
func (l *streamListener) Close(closeClients listeners.CloseFn) {
	l.stopAccepting()
	closeClients(l.id)
}
