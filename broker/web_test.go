package broker

import (
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/warblerim/warbler/web"
)

// TestWebClientServed checks that the HTTP listener serves the embedded web
// client at "/" with its assets and security headers, next to the API, and
// still answers a JSON-only request at "/" with the server summary.
func TestWebClientServed(t *testing.T) {
	s := startServer(t, nil)
	base := "http://" + s.Addrs().HTTP
	get := func(path, accept string) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequest("GET", base+path, nil)
		if accept != "" {
			req.Header.Set("Accept", accept)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res, string(b)
	}

	res, page := get("/", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8")
	if res.StatusCode != 200 || !strings.Contains(page, "<title>Warbler</title>") {
		t.Fatalf("GET /: %d\n%.200s", res.StatusCode, page)
	}
	if got := res.Header.Get("Content-Security-Policy"); got != web.ContentSecurityPolicy {
		t.Fatalf("CSP = %q", got)
	}
	m := regexp.MustCompile(`src="(/assets/[^"]+\.js)"`).FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no script in the page:\n%s", page)
	}
	if res, js := get(m[1], ""); res.StatusCode != 200 || !strings.Contains(js, "mqtt") {
		t.Fatalf("GET %s: %d, %d bytes", m[1], res.StatusCode, len(js))
	}

	res, body := get("/", "application/json")
	var info map[string]any
	if err := json.Unmarshal([]byte(body), &info); err != nil || info["name"] != "warbler" || info["ws_path"] != "/mqtt" {
		t.Fatalf("GET / as JSON: %d %s", res.StatusCode, body)
	}
	if res, _ := get("/nope", ""); res.StatusCode != 404 {
		t.Fatalf("GET /nope: %d, want 404", res.StatusCode)
	}
}
