package api

import (
	"bufio"
	"compress/gzip"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
)

// DefaultGzipMinBytes is the smallest response body the Router compresses:
// below it the gzip header and the CPU cost outweigh the saving.
const DefaultGzipMinBytes = 1024

// acceptsGzip reports whether an Accept-Encoding header value allows gzip
// (listed, or through "*", without q=0).
func acceptsGzip(h string) bool {
	ok := false
	for part := range strings.SplitSeq(h, ",") {
		name, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		name = strings.ToLower(strings.TrimSpace(name))
		if name != "gzip" && name != "*" {
			continue
		}
		q := 1.0
		for p := range strings.SplitSeq(params, ";") {
			k, v, _ := strings.Cut(strings.TrimSpace(p), "=")
			if strings.EqualFold(strings.TrimSpace(k), "q") {
				if f, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil {
					q = f
				}
			}
		}
		if name == "gzip" {
			return q > 0 // an explicit gzip entry wins over "*"
		}
		ok = q > 0
	}
	return ok
}

// compressedType reports whether a Content-Type is already compressed, so
// that gzip would only cost time.
func compressedType(ct string) bool {
	ct, _, _ = strings.Cut(strings.ToLower(ct), ";")
	ct = strings.TrimSpace(ct)
	switch {
	case strings.HasPrefix(ct, "image/") && ct != "image/svg+xml",
		strings.HasPrefix(ct, "video/"), strings.HasPrefix(ct, "audio/"):
		return true
	}
	switch ct {
	case "application/gzip", "application/zip", "application/zstd", "application/x-7z-compressed",
		"application/octet-stream", "font/woff", "font/woff2":
		return true
	}
	return false
}

var gzipPool = sync.Pool{New: func() any { w, _ := gzip.NewWriterLevel(nil, gzip.DefaultCompression); return w }}

// gzipWriter compresses a response once it knows the body is worth it: it
// holds back up to min bytes, then decides from the headers the handler
// set (Content-Encoding, Content-Type, the status) and the size.
type gzipWriter struct {
	w       http.ResponseWriter
	min     int
	status  int
	buf     []byte
	decided bool
	gz      *gzip.Writer // nil when passing through
	// abandoned is set when the handler panicked.
	abandoned bool
}

func newGzipWriter(w http.ResponseWriter, min int) *gzipWriter {
	return &gzipWriter{w: w, min: min}
}

func (g *gzipWriter) Header() http.Header { return g.w.Header() }

// Unwrap lets http.ResponseController reach the connection.
func (g *gzipWriter) Unwrap() http.ResponseWriter { return g.w }

func (g *gzipWriter) WriteHeader(status int) {
	if g.status != 0 || g.decided {
		return
	}
	if status < 200 { // informational: pass on, the real one follows
		g.w.WriteHeader(status)
		return
	}
	g.status = status
}

func (g *gzipWriter) Write(b []byte) (int, error) {
	if g.status == 0 {
		g.status = http.StatusOK
	}
	if !g.decided {
		if len(g.buf)+len(b) < g.min {
			g.buf = append(g.buf, b...)
			return len(b), nil
		}
		g.decide(true)
		if err := g.flushBuf(); err != nil {
			return 0, err
		}
	}
	if g.gz != nil {
		return g.gz.Write(b)
	}
	return g.w.Write(b)
}

// decide picks gzip or pass-through and writes the header. big reports
// whether the body reached the minimum size.
func (g *gzipWriter) decide(big bool) {
	g.decided = true
	h := g.w.Header()
	if g.status == 0 {
		g.status = http.StatusOK
	}
	if ct := h.Get("Content-Type"); ct == "" && len(g.buf) > 0 {
		h.Set("Content-Type", http.DetectContentType(g.buf))
	}
	if big && h.Get("Content-Encoding") == "" && !compressedType(h.Get("Content-Type")) &&
		g.status != http.StatusNoContent && g.status != http.StatusNotModified && h.Get("Content-Range") == "" {
		h.Set("Content-Encoding", "gzip")
		h.Del("Content-Length")
		h.Del("Accept-Ranges")
		gz := gzipPool.Get().(*gzip.Writer)
		gz.Reset(g.w)
		g.gz = gz
	}
	g.w.WriteHeader(g.status)
}

func (g *gzipWriter) flushBuf() error {
	if len(g.buf) == 0 {
		return nil
	}
	var err error
	if g.gz != nil {
		_, err = g.gz.Write(g.buf)
	} else {
		_, err = g.w.Write(g.buf)
	}
	g.buf = nil
	return err
}

// Flush sends what is buffered, compressing from here on if the body is
// already large enough.
func (g *gzipWriter) Flush() {
	if !g.decided {
		g.decide(len(g.buf) >= g.min)
		_ = g.flushBuf()
	}
	if g.gz != nil {
		_ = g.gz.Flush()
	}
	if f, ok := g.w.(http.Flusher); ok {
		f.Flush()
	}
}

// Hijack is refused: a compressed response cannot change protocols.
func (g *gzipWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return nil, nil, http.ErrNotSupported
}

// abandon drops what is held back and turns Close into a no-op: the
// handler panicked and the Router answers instead.
func (g *gzipWriter) abandon() {
	g.buf = nil
	if !g.decided {
		g.decided = true
		g.status = 0
	}
	g.abandoned = true
}

// Close ends the response: a body that stayed below the minimum goes out
// as is; a compressed one gets its gzip trailer.
func (g *gzipWriter) Close() {
	if g.abandoned {
		if g.gz != nil {
			g.gz.Reset(nil)
			gzipPool.Put(g.gz)
			g.gz = nil
		}
		return
	}
	if !g.decided {
		if g.status == 0 && len(g.buf) == 0 {
			return // the handler wrote nothing: let the server answer 200
		}
		g.decide(false)
		_ = g.flushBuf()
	}
	if g.gz != nil {
		_ = g.gz.Close()
		g.gz.Reset(nil)
		gzipPool.Put(g.gz)
		g.gz = nil
	}
}
