package broker

import (
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/warblerim/warbler/internal/wsstream"
)

// wsListener is the broker side of MQTT over WebSocket. It is an
// http.Handler, so the same endpoint can be mounted on the dedicated
// WebSocket port and on the main HTTP server (which lets a page served by
// Warbler connect same-origin), and a listeners.Listener, so the broker
// tracks and closes its clients like any other.
//
// It differs from the broker's own WebSocket listener in three ways that
// matter for a public server: the Origin header is checked against an
// allowlist (same-origin by default) and refused with 403; a frame larger
// than the maximum packet size closes the socket with status 1009 before it
// is read; and every connection goes through the same packet guard and
// panic containment as TCP.
type wsListener struct {
	id        string
	path      string
	guard     guardOptions
	log       *slog.Logger
	upgrader  websocket.Upgrader
	origins   map[string]bool
	anyOrigin bool

	mu        sync.Mutex // guards establish, and orders conns.Add before Close
	establish listeners.EstablishFn
	ready     chan struct{}
	closed    atomic.Bool
	conns     sync.WaitGroup // upgraded connections still being served
	open      connSet
}

func newWSListener(id, path string, allowed []string, g guardOptions, log *slog.Logger) *wsListener {
	l := &wsListener{id: id, path: path, guard: g, log: log, origins: map[string]bool{}, ready: make(chan struct{})}
	for _, o := range allowed {
		if o == "*" {
			l.anyOrigin = true
		}
		l.origins[strings.ToLower(strings.TrimRight(o, "/"))] = true
	}
	l.upgrader = websocket.Upgrader{
		HandshakeTimeout: 10 * time.Second,
		Subprotocols:     []string{"mqtt", "mqttv3.1"},
		CheckOrigin:      l.checkOrigin,
		ReadBufferSize:   4096,
		WriteBufferSize:  4096,
	}
	return l
}

// checkOrigin allows non-browser clients (no Origin), same-origin pages, and
// the configured origins.
func (l *wsListener) checkOrigin(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" || l.anyOrigin {
		return true
	}
	if l.origins[strings.ToLower(strings.TrimRight(origin, "/"))] {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil {
		return false
	}
	return strings.EqualFold(u.Host, r.Host)
}

func (l *wsListener) ID() string       { return l.id }
func (l *wsListener) Address() string  { return l.path }
func (l *wsListener) Protocol() string { return "ws" }

// Init implements listeners.Listener.
func (l *wsListener) Init(*slog.Logger) error { return nil }

// Serve records the broker's connection handler; connections arrive through
// ServeHTTP.
func (l *wsListener) Serve(establish listeners.EstablishFn) {
	l.mu.Lock()
	l.establish = establish
	l.mu.Unlock()
	close(l.ready)
}

// Close stops new upgrades and closes the listener's clients.
func (l *wsListener) Close(closeClients listeners.CloseFn) {
	l.stopAccepting()
	closeClients(l.id)
}

// stopAccepting refuses further upgrades; connected clients stay.
func (l *wsListener) stopAccepting() {
	l.mu.Lock()
	l.closed.Store(true)
	l.mu.Unlock()
}

// ServeHTTP upgrades a request to a WebSocket and hands it to the broker.
func (l *wsListener) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if l.closed.Load() {
		http.Error(w, `{"error":{"code":"unavailable","message":"server is shutting down"}}`, http.StatusServiceUnavailable)
		return
	}
	if !websocket.IsWebSocketUpgrade(r) {
		l.guard.metrics.WSRejected.WithLabelValues("not_upgrade").Inc()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		_, _ = io.WriteString(w, `{"error":{"code":"not_websocket","message":"this endpoint speaks MQTT over WebSocket (subprotocol mqtt)"}}`+"\n")
		return
	}
	if !l.checkOrigin(r) {
		l.guard.metrics.WSRejected.WithLabelValues("origin").Inc()
		l.log.Info("websocket origin refused", "origin", r.Header.Get("Origin"), "host", r.Host, "remote", r.RemoteAddr)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusForbidden)
		_, _ = io.WriteString(w, `{"error":{"code":"origin_not_allowed","message":"this origin may not open a WebSocket here"}}`+"\n")
		return
	}
	select {
	case <-l.ready:
	case <-r.Context().Done():
		return
	}
	c, err := l.upgrader.Upgrade(w, r, nil)
	if err != nil {
		l.guard.metrics.WSRejected.WithLabelValues("handshake").Inc()
		return // the upgrader has written the error response
	}
	defer c.Close()
	l.guard.metrics.Accepted.Inc()
	// A frame may hold several packets, but never more than one maximum
	// packet plus framing; larger frames are closed with 1009.
	c.SetReadLimit(int64(l.guard.maxPacket) + 1024)
	l.mu.Lock()
	if l.closed.Load() {
		l.mu.Unlock()
		return
	}
	l.conns.Add(1)
	establish := l.establish
	l.mu.Unlock()
	defer l.conns.Done()
	raw := c.NetConn()
	l.open.add(raw)
	defer l.open.remove(raw)
	l.guard.establish(l.id, wsstream.New(c), establish)
}
