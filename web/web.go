// Package web is Warbler's browser chat client, built into static files and
// embedded in the binary. Handler serves it; the broker mounts it at "/" on
// the HTTP listener, next to the API and the same-origin MQTT-over-WebSocket
// endpoint (/mqtt) that the client connects to.
//
// The client's sources (TypeScript, built with Vite) live beside this file;
// dist/ holds the build and is committed, so that building Warbler needs no
// Node.js. After changing the sources, run `make web` (npm ci and npm run
// build) and commit dist/ with them. dist/SOURCES.sha256 records the hash of
// the sources the build was made from, and TestDistMatchesSources fails when
// it is stale.
//
// The client speaks only the public protocol (docs/PROTOCOL.md) and HTTP
// API, so it is also the reference for other browser clients.
package web

import (
	"bytes"
	"compress/gzip"
	"embed"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"
)

//go:embed dist
var dist embed.FS

// Dist returns the built client: index.html and assets/.
func Dist() fs.FS {
	sub, err := fs.Sub(dist, "dist")
	if err != nil {
		panic(err) // the embedded directory always exists
	}
	return sub
}

// ContentSecurityPolicy is sent with the page: scripts, styles and
// connections (fetch and the WebSocket) only from the page's own origin.
// img-src also allows data: and blob: for thumbnails made in the browser,
// and worker-src blob: for the timer worker of the MQTT library, which keeps
// the keep-alive ticking in a background tab.
const ContentSecurityPolicy = "default-src 'self'; script-src 'self'; style-src 'self'; " +
	"img-src 'self' data: blob:; connect-src 'self'; worker-src 'self' blob:; object-src 'none'; base-uri 'none'; " +
	"form-action 'self'; frame-ancestors 'none'"

// Handler serves index.html for "/" (and any path that is not an asset)
// and the hashed files under /assets/, which never change and are cached
// for a year. Scripts and styles are compressed once per process, at their
// first request, and sent gzipped to clients that accept it. Mount it for
// "GET /{$}" and "GET /assets/".
func Handler() http.Handler {
	root := Dist()
	index, err := fs.ReadFile(root, "index.html")
	if err != nil {
		panic("web: dist/index.html missing from the build: " + err.Error())
	}
	assets := http.FileServerFS(root)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		if strings.HasPrefix(r.URL.Path, "/assets/") {
			h.Set("Cache-Control", "public, max-age=31536000, immutable")
			h.Set("Vary", "Accept-Encoding")
			if b, ok := gzipped()[strings.TrimPrefix(r.URL.Path, "/")]; ok && acceptsGzip(r) {
				h.Set("Content-Type", mime.TypeByExtension(path.Ext(r.URL.Path)))
				h.Set("Content-Encoding", "gzip")
				http.ServeContent(w, r, "", time0, bytes.NewReader(b))
				return
			}
			assets.ServeHTTP(w, r)
			return
		}
		h.Set("Content-Type", "text/html; charset=utf-8")
		h.Set("Cache-Control", "no-cache")
		h.Set("Content-Security-Policy", ContentSecurityPolicy)
		h.Set("X-Frame-Options", "DENY")
		if r.Method == http.MethodHead {
			return
		}
		_, _ = w.Write(index)
	})
}

var time0 = time.Time{}

// gzipped holds the compressed scripts and styles, made on first use.
var gzipped = sync.OnceValue(func() map[string][]byte { return gzipAssets(Dist()) })

// gzipAssets compresses the scripts and styles under assets/.
func gzipAssets(root fs.FS) map[string][]byte {
	out := map[string][]byte{}
	_ = fs.WalkDir(root, "assets", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !(strings.HasSuffix(p, ".js") || strings.HasSuffix(p, ".css")) {
			return nil
		}
		b, err := fs.ReadFile(root, p)
		if err != nil {
			return nil
		}
		var buf bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
		_, _ = zw.Write(b)
		_ = zw.Close()
		out[p] = buf.Bytes()
		return nil
	})
	return out
}

// acceptsGzip reports whether the request's Accept-Encoding allows gzip
// (listed, or "*", with a q-value other than 0).
func acceptsGzip(r *http.Request) bool {
	for _, part := range strings.Split(r.Header.Get("Accept-Encoding"), ",") {
		name, params, _ := strings.Cut(part, ";")
		if name = strings.TrimSpace(name); name != "gzip" && name != "*" {
			continue
		}
		if k, v, ok := strings.Cut(strings.TrimSpace(params), "="); ok && strings.TrimSpace(k) == "q" {
			if q, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil && q == 0 {
				return false
			}
		}
		return true
	}
	return false
}
