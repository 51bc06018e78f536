package api

import (
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"
)

// Mux is what a route group registers on. *http.ServeMux and *Router both
// satisfy it; the server hands every group its Router, so that each route
// is recorded (and checked against the OpenAPI document).
type Mux interface {
	Handle(pattern string, h http.Handler)
}

// Route is one registered route: the method and path of its pattern, as in
// "GET /v1/apps/{app}". Method is "" for a pattern without one.
type Route struct {
	Method string
	Path   string
}

func (r Route) String() string { return strings.TrimSpace(r.Method + " " + r.Path) }

// RouterOptions configure a Router. Zero values pick the defaults.
type RouterOptions struct {
	// MaxBodyBytes caps every request body under /v1 (MaxBodyBytes, 1 MiB,
	// if 0). Route groups apply their own, usually smaller, limits on top.
	MaxBodyBytes int64
	// ReadTimeout bounds reading a /v1 request's body (30 s if 0).
	ReadTimeout time.Duration
	// WriteTimeout bounds writing a /v1 response (60 s if 0).
	WriteTimeout time.Duration
	// GzipMinBytes is the smallest response body worth compressing
	// (DefaultGzipMinBytes if 0).
	GzipMinBytes int
	// Logger receives handler panics; nil discards them.
	Logger *slog.Logger
}

// Router is the HTTP front of a Warbler server: an http.ServeMux that
// records every route registered on it, with the API's conventions applied
// to every request:
//
//   - an unknown path answers 404 and a known path with another method 405
//     (with an Allow header), both as JSON errors;
//   - a body under /v1 larger than MaxBodyBytes answers 413;
//   - /v1 requests get read and write deadlines;
//   - /v1 responses are gzip-compressed when the client accepts it and the
//     body is large enough and not compressed already;
//   - a handler that panics under /v1 answers 500 "internal" (or, if it had
//     begun its answer, has its connection cut), and the panic is logged.
//
// Register routes with Handle before the server starts.
type Router struct {
	mux    *http.ServeMux
	o      RouterOptions
	mu     sync.Mutex
	routes []Route
	stream sync.Map // patterns registered with HandleStream
}

// NewRouter returns an empty Router.
func NewRouter(o RouterOptions) *Router {
	if o.MaxBodyBytes <= 0 {
		o.MaxBodyBytes = MaxBodyBytes
	}
	if o.ReadTimeout <= 0 {
		o.ReadTimeout = 30 * time.Second
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = 60 * time.Second
	}
	if o.GzipMinBytes <= 0 {
		o.GzipMinBytes = DefaultGzipMinBytes
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Router{mux: http.NewServeMux(), o: o}
}

// Handle registers h for pattern, as http.ServeMux.Handle does, and records
// the route. Like ServeMux it panics on a malformed or conflicting pattern.
func (rt *Router) Handle(pattern string, h http.Handler) {
	rt.mux.Handle(pattern, h)
	method, path := "", pattern
	if m, p, ok := strings.Cut(pattern, " "); ok {
		method, path = m, strings.TrimSpace(p)
	}
	rt.mu.Lock()
	rt.routes = append(rt.routes, Route{Method: method, Path: path})
	rt.mu.Unlock()
}

// StreamMux is a Mux that can also register streaming routes (see
// Router.HandleStream). Route groups that move files check for it.
type StreamMux interface {
	Mux
	HandleStream(pattern string, h http.Handler)
}

// HandleStream registers a route whose request or response body is a
// stream of any size (file uploads and downloads): the Router's body cap,
// deadlines and compression do not apply to it, and h must bound the body
// and keep its own idle deadlines.
func (rt *Router) HandleStream(pattern string, h http.Handler) {
	rt.Handle(pattern, h)
	rt.stream.Store(pattern, true)
}

// HandleFunc registers f for pattern.
func (rt *Router) HandleFunc(pattern string, f func(http.ResponseWriter, *http.Request)) {
	rt.Handle(pattern, http.HandlerFunc(f))
}

// Routes returns the registered routes, sorted by path and method.
func (rt *Router) Routes() []Route {
	rt.mu.Lock()
	out := slices.Clone(rt.routes)
	rt.mu.Unlock()
	slices.SortFunc(out, func(a, b Route) int {
		if c := strings.Compare(a.Path, b.Path); c != 0 {
			return c
		}
		return strings.Compare(a.Method, b.Method)
	})
	return out
}

// isAPI reports whether the request is for the /v1 API.
func isAPI(r *http.Request) bool {
	return r.URL.Path == "/v1" || strings.HasPrefix(r.URL.Path, "/v1/")
}

// ServeHTTP implements http.Handler.
func (rt *Router) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, pattern := rt.mux.Handler(r)
	if pattern == "" {
		rt.noRoute(w, r)
		return
	}
	if _, stream := rt.stream.Load(pattern); !isAPI(r) || stream {
		rt.mux.ServeHTTP(w, r)
		return
	}
	rc := http.NewResponseController(w)
	now := time.Now()
	_ = rc.SetReadDeadline(now.Add(rt.o.ReadTimeout))
	_ = rc.SetWriteDeadline(now.Add(rt.o.WriteTimeout))
	// The server resets the read deadline for the next request on the
	// connection, but not the write deadline.
	defer func() { _ = rc.SetWriteDeadline(time.Time{}) }()
	if r.ContentLength > rt.o.MaxBodyBytes {
		w.Header().Set("Connection", "close")
		WriteError(w, Errorf(http.StatusRequestEntityTooLarge, "too_large", "request body exceeds %d bytes", rt.o.MaxBodyBytes))
		return
	}
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = http.MaxBytesReader(w, r.Body, rt.o.MaxBodyBytes)
	}
	w.Header().Add("Vary", "Accept-Encoding")
	tw := &trackWriter{ResponseWriter: w}
	w = tw
	var gw *gzipWriter
	if r.Method != http.MethodHead && acceptsGzip(r.Header.Get("Accept-Encoding")) {
		gw = newGzipWriter(w, rt.o.GzipMinBytes)
		defer gw.Close()
		w = gw
	}
	// Runs before gw.Close, so that a panic's half-made answer is dropped.
	defer func() {
		p := recover()
		if p == nil {
			return
		}
		if p == http.ErrAbortHandler {
			panic(p)
		}
		rt.o.Logger.Error("api: handler panic", "method", r.Method, "path", r.URL.Path, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
		if gw != nil {
			gw.abandon()
		}
		if tw.wrote {
			panic(http.ErrAbortHandler) // the answer has begun: cut the connection
		}
		tw.Header().Del("Content-Encoding")
		WriteError(tw, Errorf(http.StatusInternalServerError, "internal", "internal error"))
	}()
	rt.mux.ServeHTTP(w, r)
}

// trackWriter records whether the answer has begun.
type trackWriter struct {
	http.ResponseWriter
	wrote bool
}

func (t *trackWriter) WriteHeader(code int) {
	if code >= 200 {
		t.wrote = true
	}
	t.ResponseWriter.WriteHeader(code)
}

func (t *trackWriter) Write(b []byte) (int, error) {
	t.wrote = true
	return t.ResponseWriter.Write(b)
}

// Flush implements http.Flusher.
func (t *trackWriter) Flush() {
	if f, ok := t.ResponseWriter.(http.Flusher); ok {
		t.wrote = true
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection.
func (t *trackWriter) Unwrap() http.ResponseWriter { return t.ResponseWriter }

// noRoute answers a request that matches no pattern: the mux's own answer
// (404, or 405 with an Allow header) rewritten as a JSON error.
func (rt *Router) noRoute(w http.ResponseWriter, r *http.Request) {
	h, _ := rt.mux.Handler(r)
	cw := &captureWriter{header: http.Header{}}
	h.ServeHTTP(cw, r)
	switch cw.status {
	case http.StatusMethodNotAllowed:
		allow := cw.header.Get("Allow")
		w.Header().Set("Allow", allow)
		WriteError(w, Errorf(http.StatusMethodNotAllowed, "method_not_allowed", "%s is not allowed on %s; allowed: %s", r.Method, r.URL.Path, allow))
	case http.StatusNotFound, 0:
		WriteError(w, Errorf(http.StatusNotFound, "not_found", "no route for %s %s", r.Method, r.URL.Path))
	default:
		for k, v := range cw.header {
			w.Header()[k] = v
		}
		w.WriteHeader(cw.status)
		_, _ = w.Write(cw.body)
	}
}

// captureWriter records the mux's answer to an unmatched request.
type captureWriter struct {
	header http.Header
	status int
	body   []byte
}

func (c *captureWriter) Header() http.Header { return c.header }
func (c *captureWriter) WriteHeader(s int) {
	if c.status == 0 {
		c.status = s
	}
}
func (c *captureWriter) Write(b []byte) (int, error) {
	if c.status == 0 {
		c.status = http.StatusOK
	}
	if len(c.body) < 4096 {
		c.body = append(c.body, b[:min(len(b), 4096-len(c.body))]...)
	}
	return len(b), nil
}
