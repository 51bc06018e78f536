package web

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// sourceHash computes what scripts/source-hash.mjs records at build time:
// SHA-256 over "path\0sha256(content)\n" for every input file, by path.
func sourceHash(t *testing.T) string {
	t.Helper()
	var files []string
	for _, in := range []string{"index.html", "package.json", "package-lock.json", "tsconfig.json", "vite.config.ts", "src"} {
		err := filepath.WalkDir(in, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !d.IsDir() {
				files = append(files, filepath.ToSlash(p))
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	sort.Strings(files)
	h := sha256.New()
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		c := sha256.Sum256(b)
		fmt.Fprintf(h, "%s\x00%s\n", f, hex.EncodeToString(c[:]))
	}
	return hex.EncodeToString(h.Sum(nil))
}

// TestDistMatchesSources fails when web/dist was not rebuilt after a change
// to the client's sources: run `make web` and commit dist/.
func TestDistMatchesSources(t *testing.T) {
	rec, err := fs.ReadFile(Dist(), "SOURCES.sha256")
	if err != nil {
		t.Fatalf("dist/SOURCES.sha256: %v (run make web)", err)
	}
	if got, want := strings.TrimSpace(string(rec)), sourceHash(t); got != want {
		t.Fatalf("web/dist is stale: built from sources %s, the sources now hash to %s; run `make web` and commit web/dist", got, want)
	}
}

// TestHandler checks that the page and every asset it names are served,
// with the security headers.
func TestHandler(t *testing.T) {
	srv := httptest.NewServer(Handler())
	defer srv.Close()
	res, err := http.Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	body := readAll(t, res)
	if res.StatusCode != 200 || !strings.HasPrefix(res.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("GET /: %d %s", res.StatusCode, res.Header.Get("Content-Type"))
	}
	if res.Header.Get("Content-Security-Policy") != ContentSecurityPolicy || res.Header.Get("X-Frame-Options") != "DENY" {
		t.Fatalf("GET /: security headers missing: %v", res.Header)
	}
	refs := regexp.MustCompile(`(?:src|href)="(/assets/[^"]+)"`).FindAllStringSubmatch(body, -1)
	if len(refs) < 2 {
		t.Fatalf("index.html names %d assets, want a script and a stylesheet:\n%s", len(refs), body)
	}
	for _, m := range refs {
		res, err := http.Get(srv.URL + m[1])
		if err != nil {
			t.Fatal(err)
		}
		b := readAll(t, res)
		if res.StatusCode != 200 || len(b) == 0 || !strings.Contains(res.Header.Get("Cache-Control"), "immutable") {
			t.Fatalf("GET %s: %d, %d bytes, Cache-Control %q", m[1], res.StatusCode, len(b), res.Header.Get("Cache-Control"))
		}
	}
	res, err = http.Get(srv.URL + "/assets/nope.js")
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, res)
	if res.StatusCode != 404 {
		t.Fatalf("missing asset: %d, want 404", res.StatusCode)
	}
}

// TestGzip checks that scripts go out gzipped to clients that accept it,
// and plain to the others, with the same content.
func TestGzip(t *testing.T) {
	srv := httptest.NewServer(Handler())
	defer srv.Close()
	res, err := http.Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	js := regexp.MustCompile(`src="(/assets/[^"]+\.js)"`).FindStringSubmatch(readAll(t, res))[1]
	get := func(enc string) (*http.Response, []byte) {
		req, _ := http.NewRequest("GET", srv.URL+js, nil)
		req.Header.Set("Accept-Encoding", enc) // set by hand: the transport does not decompress
		res, err := http.DefaultTransport.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		return res, []byte(readAll(t, res))
	}
	plainRes, plain := get("identity")
	if plainRes.Header.Get("Content-Encoding") != "" || len(plain) == 0 {
		t.Fatalf("identity: Content-Encoding %q, %d bytes", plainRes.Header.Get("Content-Encoding"), len(plain))
	}
	for _, enc := range []string{"gzip", "br, gzip;q=0.8", "*"} {
		res, body := get(enc)
		if res.Header.Get("Content-Encoding") != "gzip" || !strings.HasPrefix(res.Header.Get("Content-Type"), "text/javascript") {
			t.Fatalf("%q: Content-Encoding %q, Content-Type %q", enc, res.Header.Get("Content-Encoding"), res.Header.Get("Content-Type"))
		}
		zr, err := gzip.NewReader(bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		unz, err := io.ReadAll(zr)
		if err != nil || !bytes.Equal(unz, plain) {
			t.Fatalf("%q: gunzipped content differs (%v)", enc, err)
		}
		if len(body) > len(plain)/2 {
			t.Errorf("%q: %d bytes gzipped of %d", enc, len(body), len(plain))
		}
	}
	if res, _ := get("gzip;q=0"); res.Header.Get("Content-Encoding") != "" {
		t.Fatalf("gzip;q=0 got gzip")
	}
}

func readAll(t *testing.T, res *http.Response) string {
	t.Helper()
	defer res.Body.Close()
	var sb strings.Builder
	buf := make([]byte, 32<<10)
	for {
		n, err := res.Body.Read(buf)
		sb.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return sb.String()
}
