package api

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// routerEnv is a Router with a few routes on a real HTTP server.
func routerEnv(t *testing.T) (*Router, string) {
	t.Helper()
	rt := NewRouter(RouterOptions{MaxBodyBytes: 1000})
	big := strings.Repeat(`{"k":"some repetitive text"},`, 200)
	rt.Handle("GET /v1/big", HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		WriteJSON(w, http.StatusOK, json.RawMessage("["+big+"{}]"))
		return nil
	}))
	rt.Handle("GET /v1/small", HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		WriteJSON(w, http.StatusOK, map[string]int{"n": 1})
		return nil
	}))
	rt.Handle("GET /v1/png", HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.Header().Set("Content-Type", "image/png")
		_, err := w.Write(bytes.Repeat([]byte{1}, 5000))
		return err
	}))
	rt.Handle("GET /v1/empty", HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.WriteHeader(http.StatusNoContent)
		return nil
	}))
	rt.Handle("POST /v1/echo", HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		var v any
		if err := DecodeJSON(w, r, 1<<20, &v); err != nil {
			return err
		}
		WriteJSON(w, http.StatusOK, v)
		return nil
	}))
	rt.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") })
	srv := httptest.NewServer(rt)
	t.Cleanup(srv.Close)
	return rt, srv.URL
}

// rawGet sends a request with the given Accept-Encoding, without the
// transport's transparent decompression.
func rawDo(t *testing.T, method, url, acceptEncoding string, body io.Reader) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	if acceptEncoding != "" {
		req.Header.Set("Accept-Encoding", acceptEncoding)
	}
	tr := &http.Transport{DisableCompression: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

func errCode(t *testing.T, b []byte) string {
	t.Helper()
	var e struct {
		Error struct{ Code, Message string }
	}
	if err := json.Unmarshal(b, &e); err != nil || e.Error.Code == "" || e.Error.Message == "" {
		t.Fatalf("not a JSON error: %q", b)
	}
	return e.Error.Code
}

func TestRouterRecordsRoutes(t *testing.T) {
	rt, _ := routerEnv(t)
	var got []string
	for _, r := range rt.Routes() {
		got = append(got, r.String())
	}
	want := "GET /healthz,GET /v1/big,POST /v1/echo,GET /v1/empty,GET /v1/png,GET /v1/small"
	if strings.Join(got, ",") != want {
		t.Fatalf("routes %v, want %s", got, want)
	}
}

func TestRouterJSONErrorsForUnknownRoutes(t *testing.T) {
	_, url := routerEnv(t)
	resp, b := rawDo(t, "GET", url+"/v1/nope", "", nil)
	if resp.StatusCode != 404 || errCode(t, b) != "not_found" || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("unknown route: %d %q", resp.StatusCode, b)
	}
	resp, b = rawDo(t, "DELETE", url+"/v1/big", "", nil)
	if resp.StatusCode != 405 || errCode(t, b) != "method_not_allowed" || !strings.Contains(resp.Header.Get("Allow"), "GET") {
		t.Fatalf("wrong method: %d %q Allow=%q", resp.StatusCode, b, resp.Header.Get("Allow"))
	}
	resp, b = rawDo(t, "GET", url+"/elsewhere", "", nil)
	if resp.StatusCode != 404 || errCode(t, b) != "not_found" {
		t.Fatalf("unknown non-API path: %d %q", resp.StatusCode, b)
	}
}

func TestRouterGzip(t *testing.T) {
	_, url := routerEnv(t)
	// Large JSON, client accepts gzip: compressed, and decompresses to the
	// same bytes as the uncompressed answer.
	resp, zb := rawDo(t, "GET", url+"/v1/big", "gzip, deflate", nil)
	if resp.Header.Get("Content-Encoding") != "gzip" || !strings.Contains(resp.Header.Get("Vary"), "Accept-Encoding") {
		t.Fatalf("big body: Content-Encoding %q Vary %q", resp.Header.Get("Content-Encoding"), resp.Header.Get("Vary"))
	}
	zr, err := gzip.NewReader(bytes.NewReader(zb))
	if err != nil {
		t.Fatal(err)
	}
	unz, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	resp, plain := rawDo(t, "GET", url+"/v1/big", "", nil)
	if resp.Header.Get("Content-Encoding") != "" || !bytes.Equal(unz, plain) || !json.Valid(plain) {
		t.Fatalf("plain answer differs from the decompressed one (%d vs %d bytes)", len(plain), len(unz))
	}
	if len(zb) >= len(plain)/2 {
		t.Errorf("gzip saved little: %d of %d bytes", len(zb), len(plain))
	}
	for _, c := range []struct{ path, ae, why string }{
		{"/v1/big", "gzip;q=0", "refused by q=0"},
		{"/v1/big", "br", "not offered"},
		{"/v1/small", "gzip", "tiny body"},
		{"/v1/png", "gzip", "already compressed type"},
		{"/v1/empty", "gzip", "no body"},
		{"/healthz", "gzip", "not the API"},
	} {
		resp, b := rawDo(t, "GET", url+c.path, c.ae, nil)
		if resp.Header.Get("Content-Encoding") != "" {
			t.Errorf("%s (%s): compressed", c.path, c.why)
		}
		if resp.StatusCode >= 300 || (c.path != "/v1/empty" && len(b) == 0) {
			t.Errorf("%s (%s): %d with %d bytes", c.path, c.why, resp.StatusCode, len(b))
		}
	}
	if resp, _ := rawDo(t, "GET", url+"/v1/big", "*", nil); resp.Header.Get("Content-Encoding") != "gzip" {
		t.Errorf("Accept-Encoding * did not get gzip")
	}
}

func TestRouterBodyLimit(t *testing.T) {
	_, url := routerEnv(t)
	// Declared too large: refused before the handler reads it.
	resp, b := rawDo(t, "POST", url+"/v1/echo", "", strings.NewReader(`"`+strings.Repeat("x", 2000)+`"`))
	if resp.StatusCode != 413 || errCode(t, b) != "too_large" {
		t.Fatalf("oversized body: %d %q", resp.StatusCode, b)
	}
	// Chunked (no length): cut off by the reader at the router's limit,
	// though the handler's own limit is larger.
	body := io.MultiReader(strings.NewReader(`"`+strings.Repeat("x", 2000)+`"`), strings.NewReader(""))
	resp, b = rawDo(t, "POST", url+"/v1/echo", "", io.NopCloser(body))
	if resp.StatusCode != 413 || errCode(t, b) != "too_large" {
		t.Fatalf("oversized chunked body: %d %q", resp.StatusCode, b)
	}
	resp, b = rawDo(t, "POST", url+"/v1/echo", "", strings.NewReader(`{"a":`))
	if resp.StatusCode != 400 || errCode(t, b) != "bad_json" {
		t.Fatalf("bad JSON: %d %q", resp.StatusCode, b)
	}
	resp, b = rawDo(t, "POST", url+"/v1/echo", "", strings.NewReader(`{"a":1}`))
	if resp.StatusCode != 200 || string(bytes.TrimSpace(b)) != `{"a":1}` {
		t.Fatalf("small body: %d %q", resp.StatusCode, b)
	}
}

func TestAcceptsGzip(t *testing.T) {
	for h, want := range map[string]bool{
		"": false, "gzip": true, "GZIP": true, "deflate, gzip;q=0.5": true, "gzip;q=0": false, "gzip; q=0.0": false,
		"*": true, "*;q=0": false, "*, gzip;q=0": false, "br": false, "x-gzip": false,
	} {
		if got := acceptsGzip(h); got != want {
			t.Errorf("acceptsGzip(%q) = %v, want %v", h, got, want)
		}
	}
}

func TestRouterRecoversPanics(t *testing.T) {
	rt := NewRouter(RouterOptions{})
	rt.Handle("GET /v1/panic", HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.Header().Set("Content-Type", "text/plain")
		panic("handler bug")
	}))
	rt.Handle("GET /v1/panic-held", HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		_, _ = w.Write([]byte("partial")) // held back by gzip (below the minimum)
		panic("handler bug")
	}))
	rt.Handle("GET /v1/panic-late", HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		_, _ = w.Write(bytes.Repeat([]byte("x"), 64<<10))
		panic("late bug")
	}))
	srv := httptest.NewServer(rt)
	t.Cleanup(srv.Close)
	for _, ae := range []string{"", "gzip"} {
		resp, b := rawDo(t, "GET", srv.URL+"/v1/panic", ae, nil)
		if resp.StatusCode != 500 || resp.Header.Get("Content-Encoding") != "" || errCode(t, b) != "internal" {
			t.Fatalf("panic (Accept-Encoding %q): %d %q", ae, resp.StatusCode, b)
		}
	}
	if resp, b := rawDo(t, "GET", srv.URL+"/v1/panic-held", "gzip", nil); resp.StatusCode != 500 || errCode(t, b) != "internal" {
		t.Fatalf("panic with a held-back answer: %d %q", resp.StatusCode, b)
	}
	// Once the answer has begun, the connection is cut: the client sees a
	// truncated body, never a 200 that looks complete.
	req, _ := http.NewRequest("GET", srv.URL+"/v1/panic-late", nil)
	resp, err := http.DefaultClient.Do(req)
	if err == nil {
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	if err == nil {
		t.Fatalf("a late panic ended in a complete answer")
	}
	// The server still serves.
	if resp, b := rawDo(t, "GET", srv.URL+"/v1/panic", "", nil); resp.StatusCode != 500 || errCode(t, b) != "internal" {
		t.Fatalf("after a panic: %d", resp.StatusCode)
	}
}

// FuzzAcceptsGzip feeds arbitrary Accept-Encoding values to the parser:
// it must not panic, must refuse a value that names neither gzip nor "*",
// and must refuse gzip that the value itself gives q=0.
func FuzzAcceptsGzip(f *testing.F) {
	for _, s := range []string{"gzip", "gzip;q=0", "*;q=0.5, gzip;q=0", "deflate, br", "GZIP ; Q=1", ";;,,=", "*"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		got := acceptsGzip(h)
		l := strings.ToLower(h)
		if got && !strings.Contains(l, "gzip") && !strings.Contains(l, "*") {
			t.Fatalf("acceptsGzip(%q) = true without gzip or *", h)
		}
		if got && acceptsGzip(h+", gzip;q=0") {
			// An explicit gzip;q=0 wins unless an earlier gzip entry decided.
			if !strings.Contains(l, "gzip") {
				t.Fatalf("acceptsGzip(%q) ignores a later gzip;q=0", h+", gzip;q=0")
			}
		}
	})
}
