package broker

import (
	"fmt"
	"net/http"
	"runtime/debug"
	"strings"
	"time"

	"github.com/warblerim/warbler/api"
)

// handleHealthz is the liveness probe: 200 once every listener accepts
// connections, 503 before that and while shutting down.
func (s *Server) handleHealthz(w http.ResponseWriter, r *http.Request) {
	if !s.listenersUp() {
		api.WriteJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "starting", "listeners": s.addrs})
		return
	}
	api.WriteJSON(w, http.StatusOK, map[string]any{"status": "ok", "listeners": s.addrs})
}

// handleReadyz is the readiness probe: listeners up and the store answering.
func (s *Server) handleReadyz(w http.ResponseWriter, r *http.Request) {
	checks := map[string]string{"listeners": "ok", "store": "ok"}
	ok := true
	if !s.listenersUp() {
		checks["listeners"], ok = "down", false
	}
	if err := s.db.Check(); err != nil {
		checks["store"], ok = err.Error(), false
	} else if sp := s.db.SpaceStats(); sp.Refusing {
		checks["store"], ok = fmt.Sprintf("refusing writes: %d bytes free, %d reserved", sp.Free, sp.Reserve), false
	}
	status, code := "ready", http.StatusOK
	if !ok {
		status, code = "not_ready", http.StatusServiceUnavailable
	}
	api.WriteJSON(w, code, map[string]any{"status": status, "checks": checks,
		"connections": s.metrics.Connected(), "time": time.Now().UTC().Format(time.RFC3339)})
}

// handleIndex serves the web chat client (package web) at the root path.
// A request that asks for JSON only (Accept: application/json) gets a
// summary of the server instead.
func (s *Server) handleIndex(w http.ResponseWriter, r *http.Request) {
	if a := r.Header.Get("Accept"); !strings.Contains(a, "application/json") || strings.Contains(a, "text/html") {
		s.webClient.ServeHTTP(w, r)
		return
	}
	api.WriteJSON(w, http.StatusOK, map[string]any{
		"name":    "warbler",
		"version": Version(),
		"mqtt":    s.addrs.MQTT,
		"ws_path": s.cfg.MQTT.WSPath,
		"docs":    "docs/PROTOCOL.md",
	})
}

// version is set at build time with -ldflags "-X github.com/warblerim/warbler/broker.version=v1.2.3".
var version = ""

// Version returns the build's version: the -ldflags value, else the module
// version or VCS revision recorded by the Go toolchain, else "dev".
func Version() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			return bi.Main.Version
		}
		for _, kv := range bi.Settings {
			if kv.Key == "vcs.revision" && len(kv.Value) >= 12 {
				return "dev-" + kv.Value[:12]
			}
		}
	}
	return "dev"
}
