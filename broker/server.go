// Package broker assembles a Warbler server: it builds the embedded MQTT
// broker (mochi-mqtt) with hardened limits, binds the MQTT, TLS, WebSocket and
// HTTP listeners, opens the store, installs the hooks that add identity, access
// control and chat to plain MQTT, and owns the lifecycle from start to a
// graceful stop.
//
// A Server is made by New, which binds every port and opens the data
// directory (so a taken port or an unusable directory fails there, with a
// clear error), started by Start, and stopped by Shutdown. Run does all three
// for the command line, stopping on SIGINT or SIGTERM.
package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/warblerim/warbler/api"
	"github.com/warblerim/warbler/chat"
	"github.com/warblerim/warbler/hooks"
	"github.com/warblerim/warbler/identity"
	"github.com/warblerim/warbler/internal/mqttstop"
	"github.com/warblerim/warbler/storage/badgerstore"
	"github.com/warblerim/warbler/web"
	"github.com/warblerim/warbler/webhook"
)

// Options are the programmatic extras of a Server that do not belong in the
// configuration file.
type Options struct {
	// Logger receives the server's logs; nil uses slog.Default().
	Logger *slog.Logger
	// Hooks are added to the broker after Warbler's own hooks. Tests use it
	// to install an allow-all authenticator before identity is configured.
	Hooks []mqtt.Hook
	// Now is the wall clock of identity (token lifetimes, TOTP steps,
	// lockouts); time.Now if nil. Tests use it to make the clock jump.
	Now func() time.Time
}

// Addrs are the bound addresses of a running server; "" when a listener is
// disabled.
type Addrs struct {
	MQTT    string `json:"mqtt,omitempty"`
	MQTTTLS string `json:"mqtt_tls,omitempty"`
	WS      string `json:"ws,omitempty"`
	WSS     string `json:"wss,omitempty"`
	HTTP    string `json:"http,omitempty"`
	// Anonymous is the listener of clients without credentials, if enabled.
	Anonymous string `json:"anonymous,omitempty"`
}

// Server is one running Warbler node.
type Server struct {
	cfg     Config
	log     *slog.Logger
	now     func() time.Time // identity's clock (Options.Now)
	mqtt    *mqtt.Server
	db      *badgerstore.DB
	metrics *Metrics
	addrs   Addrs

	streams []*streamListener
	ws      []*wsListener
	httpSrv []*httpListener
	mux     *api.Router
	// webClient serves the embedded browser client (package web).
	webClient http.Handler

	identity   *identity.Service
	principals *hooks.Principals
	hooks      []mqtt.Hook // every hook added to the broker, in order (addHook)
	auth       *hooks.Auth
	acl        *hooks.ACL
	chat       *chat.Service
	masterKey  string // path of the master key file
	pushState
	campaignState
	limits   *hooks.Limits
	overload *hooks.Overload
	mediaState
	// webhooks is set by wireWebhooks; the chat and push hooks publish to
	// it.
	webhooks *webhook.Service
	searchState

	started  atomic.Bool
	stopping atomic.Bool
	stopOnce sync.Once
	stopErr  error
	closers  []func() error // run in reverse order at shutdown, after the broker stops
}

type httpListener struct {
	name string
	ln   net.Listener
	srv  *http.Server
	up   atomic.Bool
}

// New builds a server from cfg: it opens the store and binds every listener,
// but accepts no connection until Start. On error everything opened so far
// is closed again.
func New(cfg Config, opts Options) (_ *Server, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	s := &Server{cfg: cfg, log: log, now: opts.Now, webClient: web.Handler(), mux: api.NewRouter(api.RouterOptions{
		MaxBodyBytes: cfg.HTTP.MaxBody, ReadTimeout: cfg.HTTP.ReadTimeout.D(), WriteTimeout: cfg.HTTP.WriteTimeout.D(),
		Logger: log.With("component", "api"),
	})}
	s.pushSem = make(chan struct{}, pushWorkers)
	defer func() {
		if err != nil {
			_ = s.closeAll()
		}
	}()

	s.db, err = badgerstore.Open(cfg.Data, badgerstore.Options{Logger: log.With("component", "store")})
	if err != nil {
		return nil, err
	}
	s.closers = append(s.closers, s.db.Close)

	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = cfg.MQTT.MaxPacketSize
	caps.MaximumClientWritesPending = cfg.MQTT.MaxWritesPending
	caps.MaximumInflight = cfg.MQTT.MaxInflight
	caps.ReceiveMaximum = cfg.MQTT.ReceiveMaximum
	caps.MaximumSessionExpiryInterval = uint32(cfg.MQTT.MaxSessionExpiry.D() / time.Second)
	caps.MaximumMessageExpiryInterval = int64(cfg.MQTT.MaxMessageExpiry.D() / time.Second)
	if cfg.MQTT.MaxConnections > 0 {
		caps.MaximumClients = cfg.MQTT.MaxConnections
	}
	caps.Compatibilities.NoInheritedPropertiesOnAck = true
	s.mqtt = mqtt.New(&mqtt.Options{
		Capabilities: caps,
		InlineClient: true,
		// The broker logs every ordinary disconnect as a warning; keep its
		// own chatter at error level unless debugging.
		Logger:                 brokerLogger(log, cfg.Log.Level),
		SysTopicResendInterval: 10,
	})

	s.metrics = newMetrics(func() (int64, int64, int64, int64, int64) {
		i := s.mqtt.Info
		return atomic.LoadInt64(&i.BytesReceived), atomic.LoadInt64(&i.BytesSent),
			atomic.LoadInt64(&i.Inflight), atomic.LoadInt64(&i.Retained), atomic.LoadInt64(&i.Subscriptions)
	})
	if err := s.addHook(newMetricsHook(s.metrics), nil); err != nil {
		return nil, err
	}
	if err := s.addHook(&keepaliveHook{max: uint16(cfg.MQTT.MaxKeepalive.D() / time.Second)}, nil); err != nil {
		return nil, err
	}
	if err := s.addHook(hooks.NewSessions(s.db.KV("q/"), log.With("component", "sessions")), nil); err != nil {
		return nil, err
	}
	for _, h := range opts.Hooks {
		if err := s.addHook(h, nil); err != nil {
			return nil, fmt.Errorf("add hook %s: %w", h.ID(), err)
		}
	}

	if err := s.wireIdentity(); err != nil {
		return nil, err
	}
	if err := s.wireLimits(); err != nil {
		return nil, err
	}
	if err := s.wireWebhooks(); err != nil {
		return nil, err
	}
	if err := s.wireOverload(); err != nil {
		return nil, err
	}
	if err := s.wireChat(); err != nil {
		return nil, err
	}
	if err := s.wireMedia(); err != nil {
		return nil, err
	}
	if err := s.wireSearch(); err != nil {
		return nil, err
	}
	if err := s.wireCampaigns(); err != nil {
		return nil, err
	}
	if err := s.bindListeners(); err != nil {
		return nil, err
	}
	s.routes()
	s.limitListeners()
	return s, nil
}

// brokerLogger returns the logger handed to the embedded broker.
func brokerLogger(l *slog.Logger, level string) *slog.Logger {
	if level == "debug" {
		return l.With("component", "mqtt")
	}
	return slog.New(minLevel{l.Handler(), slog.LevelError}).With("component", "mqtt")
}

type minLevel struct {
	slog.Handler
	min slog.Level
}

func (m minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= m.min && m.Handler.Enabled(ctx, l)
}

func (m minLevel) WithAttrs(a []slog.Attr) slog.Handler {
	return minLevel{m.Handler.WithAttrs(a), m.min}
}

func (m minLevel) WithGroup(g string) slog.Handler { return minLevel{m.Handler.WithGroup(g), m.min} }

func (s *Server) guardOptions() guardOptions {
	return guardOptions{
		maxPacket:      s.cfg.MQTT.MaxPacketSize,
		connectTimeout: s.cfg.MQTT.ConnectTimeout.D(),
		writeTimeout:   s.cfg.MQTT.WriteTimeout.D(),
		afterPanic:     s.afterPanic,
		metrics:        s.metrics,
		log:            s.log.With("component", "listener"),
	}
}

func (s *Server) bindListeners() error {
	var tlsCfg *tls.Config
	if s.cfg.TLS.Enabled() {
		cert, err := tls.LoadX509KeyPair(s.cfg.TLS.CertFile, s.cfg.TLS.KeyFile)
		if err != nil {
			return fmt.Errorf("tls: load certificate: %w", err)
		}
		tlsCfg = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	listen := func(name, addr string, tc *tls.Config) (net.Listener, error) {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("listen %s on %s: %w", name, addr, err)
		}
		if tc != nil {
			ln = tls.NewListener(ln, tc)
		}
		s.closers = append(s.closers, func() error { _ = ln.Close(); return nil })
		return ln, nil
	}
	addStream := func(id, proto, addr string, tc *tls.Config) (string, error) {
		ln, err := listen(id, addr, tc)
		if err != nil {
			return "", err
		}
		l := &streamListener{id: id, proto: proto, ln: ln, guard: s.guardOptions(), log: s.log,
			onAccept: s.metrics.Accepted.Inc, stopped: make(chan struct{})}
		s.streams = append(s.streams, l)
		return ln.Addr().String(), s.mqtt.AddListener(l)
	}
	addWS := func(id string) (*wsListener, error) {
		l := newWSListener(id, s.cfg.MQTT.WSPath, s.cfg.MQTT.AllowedOrigins, s.guardOptions(), s.log.With("component", "websocket"))
		s.ws = append(s.ws, l)
		return l, s.mqtt.AddListener(l)
	}
	addHTTP := func(name, addr string, tc *tls.Config, h http.Handler) (string, error) {
		ln, err := listen(name, addr, tc)
		if err != nil {
			return "", err
		}
		srv := &http.Server{
			Handler:           h,
			ReadHeaderTimeout: s.cfg.HTTP.ReadHeaderTimeout.D(),
			IdleTimeout:       s.cfg.HTTP.IdleTimeout.D(),
			MaxHeaderBytes:    64 << 10,
			ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		}
		s.httpSrv = append(s.httpSrv, &httpListener{name: name, ln: ln, srv: srv})
		return ln.Addr().String(), nil
	}

	var err error
	if a := s.cfg.MQTT.Addr; a != "" {
		if s.addrs.MQTT, err = addStream("mqtt", "tcp", a, nil); err != nil {
			return err
		}
	}
	if a := s.cfg.MQTT.Anonymous.Addr; a != "" {
		if s.addrs.Anonymous, err = addStream("anonymous", "tcp", a, nil); err != nil {
			return err
		}
	}
	if a := s.cfg.MQTT.TLSAddr; a != "" && tlsCfg != nil {
		if s.addrs.MQTTTLS, err = addStream("mqtt-tls", "tls", a, tlsCfg); err != nil {
			return err
		}
	}
	if a := s.cfg.MQTT.WSAddr; a != "" {
		l, err := addWS("ws")
		if err != nil {
			return err
		}
		if s.addrs.WS, err = addHTTP("ws", a, nil, wsOnly(l, s.cfg.MQTT.WSPath)); err != nil {
			return err
		}
	}
	if a := s.cfg.MQTT.WSSAddr; a != "" && tlsCfg != nil {
		l, err := addWS("wss")
		if err != nil {
			return err
		}
		if s.addrs.WSS, err = addHTTP("wss", a, tlsCfg, wsOnly(l, s.cfg.MQTT.WSPath)); err != nil {
			return err
		}
	}
	if a := s.cfg.HTTP.Addr; a != "" {
		l, err := addWS("http-ws")
		if err != nil {
			return err
		}
		s.mux.Handle(s.cfg.MQTT.WSPath, l)
		var tc *tls.Config
		if s.cfg.HTTP.TLS {
			tc = tlsCfg
		}
		if s.addrs.HTTP, err = addHTTP("http", a, tc, s.mux); err != nil {
			return err
		}
	}
	return nil
}

// wsOnly serves the WebSocket endpoint at path and 404 elsewhere.
func wsOnly(l *wsListener, path string) http.Handler {
	mux := http.NewServeMux()
	mux.Handle(path, l)
	return mux
}

func (s *Server) routes() {
	s.mux.HandleFunc("GET /healthz", s.handleHealthz)
	s.mux.HandleFunc("GET /readyz", s.handleReadyz)
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics.Registry, promhttp.HandlerOpts{
		ErrorHandling: promhttp.ContinueOnError,
	}))
	s.mux.HandleFunc("GET /{$}", s.handleIndex)
	api.RegisterOpenAPI(s.mux)
	s.mux.Handle("GET /assets/", s.webClient)
	if s.cfg.HTTP.Pprof {
		s.mux.Handle("/debug/pprof/", loopbackOnly(http.HandlerFunc(debugIndex)))
		s.mux.Handle("/debug/pprof/profile", loopbackOnly(http.HandlerFunc(pprof.Profile)))
		s.mux.Handle("/debug/pprof/trace", loopbackOnly(http.HandlerFunc(pprof.Trace)))
	}
}

// debugIndex is Go's profiler index, plus POST /debug/pprof/freeosmemory,
// which runs a garbage collection and returns all the memory it can to the
// operating system (debug.FreeOSMemory), so that the resident set read
// right after it is the process's floor: what it holds, not what the
// runtime keeps for reuse. The soak test reads memory that way.
func debugIndex(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/debug/pprof/freeosmemory" {
		if r.Method != http.MethodPost {
			http.Error(w, "POST only", http.StatusMethodNotAllowed)
			return
		}
		debug.FreeOSMemory()
		w.WriteHeader(http.StatusNoContent)
		return
	}
	pprof.Index(w, r)
}

// addHook adds a hook to the broker and remembers it, so that afterPanic
// can still run every hook's OnDisconnect.
func (s *Server) addHook(h mqtt.Hook, config any) error {
	if err := s.mqtt.AddHook(h, config); err != nil {
		return err
	}
	s.hooks = append(s.hooks, h)
	return nil
}

// afterPanic finishes what the broker leaves undone when a connection's
// handler panics (the packet guard and the hooks' own recovers make that
// rare; it is always a bug): the broker's connection handler unwinds
// without the end of its normal disconnect, so the client would stay in
// the client list and every hook that counts or tracks connections (app
// connection quotas, principals, pending uplinks) would never hear of its
// end. Here the client is found by its connection, its will is published,
// every hook gets OnDisconnect, and a session that ends with the
// connection is removed, as the broker does after a read error.
func (s *Server) afterPanic(conn net.Conn, err error) {
	var cl *mqtt.Client
	for _, c := range s.mqtt.Clients.GetAll() {
		if c.Net.Conn == conn {
			cl = c
			break
		}
	}
	if cl == nil {
		return // it panicked before the CONNECT was handled
	}
	cl.Stop(err)
	if w := cl.Properties.Will; w.Flag > 0 && w.TopicName != "" {
		cl.Properties.Will = mqtt.Will{}
		_ = s.mqtt.Publish(w.TopicName, w.Payload, w.Retain, w.Qos)
	}
	expire := (cl.Properties.ProtocolVersion == 5 && cl.Properties.Props.SessionExpiryInterval == 0) ||
		(cl.Properties.ProtocolVersion < 5 && cl.Properties.Clean)
	for _, h := range s.hooks {
		if h.Provides(mqtt.OnDisconnect) {
			func() {
				defer func() {
					if r := recover(); r != nil {
						s.log.Error("hook panicked in OnDisconnect after a connection panic", "hook", h.ID(), "panic", fmt.Sprint(r))
					}
				}()
				h.OnDisconnect(cl, err, expire)
			}()
		}
	}
	if expire && !cl.IsTakenOver() {
		cl.ClearInflights()
		s.mqtt.UnsubscribeClient(cl)
		s.mqtt.Clients.Delete(cl.ID)
	}
}

// loopbackOnly refuses requests that do not come from a loopback address.
func loopbackOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
			http.Error(w, "forbidden", http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// Mux is the router of the main HTTP listener; other packages mount their
// routes on it before Start. Every route under /v1 must be described in
// the OpenAPI document (see docs/API.md).
func (s *Server) Mux() *api.Router { return s.mux }

// MQTT returns the embedded broker, for hooks that publish with its inline
// client.
func (s *Server) MQTT() *mqtt.Server { return s.mqtt }

// Identity returns the identity service.
func (s *Server) Identity() *identity.Service { return s.identity }

// Chat returns the chat service.
func (s *Server) Chat() *chat.Service { return s.chat }

// DB returns the server's store.
func (s *Server) DB() *badgerstore.DB { return s.db }

// Metrics returns the server's Prometheus collectors.
func (s *Server) Metrics() *Metrics { return s.metrics }

// Addrs returns the bound addresses.
func (s *Server) Addrs() Addrs { return s.addrs }

// Config returns the configuration the server was built with.
func (s *Server) Config() Config { return s.cfg }

// Start begins accepting connections on every listener. It returns once
// every listener accepts.
func (s *Server) Start() error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("broker: already started")
	}
	if err := s.mqtt.Serve(); err != nil {
		return fmt.Errorf("start broker: %w", err)
	}
	for _, h := range s.httpSrv {
		h.up.Store(true)
		go func() {
			err := h.srv.Serve(h.ln)
			h.up.Store(false)
			if err != nil && !errors.Is(err, http.ErrServerClosed) && !s.stopping.Load() {
				s.log.Error("http listener stopped", "listener", h.name, "error", err)
			}
		}()
	}
	// mochi starts listeners in goroutines; wait until each loop runs.
	deadline := time.Now().Add(5 * time.Second)
	for !s.listenersUp() {
		if time.Now().After(deadline) {
			return errors.New("broker: listeners did not start within 5s")
		}
		time.Sleep(time.Millisecond)
	}
	a := s.addrs
	s.log.Info("warbler listening", "mqtt", a.MQTT, "mqtt_tls", a.MQTTTLS, "ws", a.WS, "wss", a.WSS,
		"http", a.HTTP, "anonymous", a.Anonymous, "ws_path", s.cfg.MQTT.WSPath, "data", s.cfg.Data)
	return nil
}

func (s *Server) listenersUp() bool {
	if !s.started.Load() || s.stopping.Load() {
		return false
	}
	for _, l := range s.streams {
		if !l.serving.Load() {
			return false
		}
	}
	for _, l := range s.ws {
		select {
		case <-l.ready:
		default:
			return false
		}
	}
	for _, h := range s.httpSrv {
		if !h.up.Load() {
			return false
		}
	}
	return true
}

// Shutdown stops the server gracefully: it stops accepting, disconnects
// clients with "server shutting down", waits (until ctx ends) for their
// handlers to finish, stops background work and closes the store. It is
// safe to call more than once; later calls return the first result.
func (s *Server) Shutdown(ctx context.Context) error {
	s.stopOnce.Do(func() {
		s.stopping.Store(true)
		s.log.Info("shutting down")
		var wg sync.WaitGroup
		for _, h := range s.httpSrv {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_ = h.srv.Shutdown(ctx)
			}()
		}
		if s.started.Load() {
			s.stopBroker(ctx)
		}
		wg.Wait()
		for _, h := range s.httpSrv {
			_ = h.srv.Close()
		}
		s.stopErr = s.closeAll()
		if s.stopErr == nil {
			s.log.Info("stopped cleanly")
		}
	})
	return s.stopErr
}

// stopBroker stops the listeners, disconnects every client with "server
// shutting down" and waits (until ctx ends) for their handlers to finish
// before closing the broker. The order matters: the broker's own Close waits
// on a WaitGroup that its connection handlers Add to, so it must only run
// once no handler can start.
func (s *Server) stopBroker(ctx context.Context) {
	for _, l := range s.streams {
		l.stopAccepting()
	}
	for _, l := range s.ws {
		l.stopAccepting()
	}
	for _, l := range s.streams {
		<-l.stopped
	}
	sweep := func() {
		clients := s.mqtt.Clients.GetAll()
		// A client that stopped reading leaves its write loop blocked in a
		// socket write while holding the client lock, which DisconnectClient
		// needs: bound every pending and future write first, so that no
		// client can hold the shutdown up for longer than that.
		for _, cl := range clients {
			if !cl.Net.Inline && cl.Net.Conn != nil {
				_ = cl.Net.Conn.SetWriteDeadline(time.Now().Add(time.Second))
			}
		}
		for _, cl := range clients {
			if !cl.Net.Inline && !cl.Closed() {
				_ = s.mqtt.DisconnectClient(cl, packets.ErrServerShuttingDown)
			}
		}
		// Whatever is still open never completed CONNECT (or is racing
		// with it): close it rather than wait for its connect deadline.
		for _, l := range s.streams {
			l.conns.closeAll()
		}
		for _, l := range s.ws {
			l.open.closeAll()
		}
	}
	sweep()
	done := make(chan struct{})
	go func() {
		// Our listeners count their connection handlers (each runs one
		// client to the end), so this waits for every client.
		for _, l := range s.streams {
			l.wg.Wait()
		}
		for _, l := range s.ws {
			l.conns.Wait()
		}
		close(done)
	}()
	// A client that was mid-CONNECT during the first sweep is caught by a
	// later one.
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
wait:
	for {
		select {
		case <-done:
			break wait
		case <-tick.C:
			sweep()
		case <-ctx.Done():
			s.log.Warn("shutdown: clients still closing at deadline")
			break wait
		}
	}
	_ = mqttstop.Close(s.mqtt) // not s.mqtt.Close: see package mqttstop
}

func (s *Server) closeAll() error {
	var errs []error
	for i := len(s.closers) - 1; i >= 0; i-- {
		if err := s.closers[i](); err != nil {
			errs = append(errs, err)
		}
	}
	s.closers = nil
	return errors.Join(errs...)
}

// AddCloser registers f to run at shutdown after the broker has stopped and
// before the store closes; closers run in reverse order of registration.
func (s *Server) AddCloser(f func() error) { s.closers = append(s.closers, f) }

// Run builds and starts a server, then waits for SIGINT or SIGTERM (or ctx)
// and shuts it down, allowing it grace to finish in-flight work.
func Run(ctx context.Context, cfg Config, opts Options) error {
	// Listen for signals before anything starts, so that a signal sent as
	// soon as the server logs that it listens is never fatal.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sig)
	s, err := New(cfg, opts)
	if err != nil {
		return err
	}
	if err := s.Start(); err != nil {
		_ = s.Shutdown(context.Background())
		return err
	}
	select {
	case got := <-sig:
		s.log.Info("signal received", "signal", got.String())
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return s.Shutdown(sctx)
}
