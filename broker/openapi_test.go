package broker

import (
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/warblerim/warbler/api"
)

// TestOpenAPIMatchesRoutes fetches /v1/openapi.json from a running server
// and checks it against the routes the server registered: every /v1 route
// is documented, every documented operation is a route, path parameters
// are declared, and every $ref resolves.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	s := startServer(t, nil)
	resp, err := http.Get("http://" + s.Addrs().HTTP + "/v1/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		t.Fatalf("GET /v1/openapi.json: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var doc map[string]any
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("document is not JSON: %v", err)
	}
	if v, _ := doc["openapi"].(string); !strings.HasPrefix(v, "3.") {
		t.Fatalf("openapi = %q, want 3.x", v)
	}

	registered := map[string]bool{}
	for _, r := range s.Mux().Routes() {
		if r.Path != "/v1" && !strings.HasPrefix(r.Path, "/v1/") {
			continue
		}
		if r.Method == "" {
			t.Errorf("route %s has no method: every /v1 route names one", r)
			continue
		}
		registered[r.Method+" "+api.OpenAPIPath(r.Path)] = true
	}
	documented := map[string]bool{}
	paths, _ := doc["paths"].(map[string]any)
	for p, item := range paths {
		ops, _ := item.(map[string]any)
		for m := range ops {
			if slices.Contains(api.OpenAPIMethods, m) {
				documented[strings.ToUpper(m)+" "+p] = true
			}
		}
	}
	for r := range registered {
		if !documented[r] {
			t.Errorf("route %s is registered but not in the OpenAPI document (add it to api/openapi/<group>.yaml)", r)
		}
	}
	for r := range documented {
		if !registered[r] {
			t.Errorf("%s is in the OpenAPI document but no such route is registered", r)
		}
	}
	if len(registered) < 40 {
		t.Errorf("only %d /v1 routes registered; the route recorder misses some", len(registered))
	}
	checkOpenAPIDoc(t, doc)
}

var pathParam = regexp.MustCompile(`\{([^}]+)\}`)

// checkOpenAPIDoc checks what a generator or validator would trip over:
// references that do not resolve, path parameters that are not declared,
// operations without responses or with a duplicate operationId.
func checkOpenAPIDoc(t *testing.T, doc map[string]any) {
	t.Helper()
	resolve := func(ref string) (map[string]any, bool) {
		if !strings.HasPrefix(ref, "#/") {
			return nil, false
		}
		var cur any = doc
		for _, part := range strings.Split(ref[2:], "/") {
			m, ok := cur.(map[string]any)
			if !ok {
				return nil, false
			}
			if cur, ok = m[part]; !ok {
				return nil, false
			}
		}
		m, ok := cur.(map[string]any)
		return m, ok
	}
	var walk func(where string, v any)
	walk = func(where string, v any) {
		switch x := v.(type) {
		case map[string]any:
			if ref, ok := x["$ref"].(string); ok {
				if _, ok := resolve(ref); !ok {
					t.Errorf("%s: $ref %q does not resolve", where, ref)
				}
			}
			for k, c := range x {
				walk(where+"."+k, c)
			}
		case []any:
			for _, c := range x {
				walk(where, c)
			}
		}
	}
	walk("", doc)

	params := func(list any) map[string]bool {
		out := map[string]bool{}
		items, _ := list.([]any)
		for _, it := range items {
			p, _ := it.(map[string]any)
			if ref, ok := p["$ref"].(string); ok {
				p, _ = resolve(ref)
			}
			if p["in"] == "path" {
				if p["required"] != true {
					t.Errorf("path parameter %v is not required", p["name"])
				}
				out[p["name"].(string)] = true
			}
		}
		return out
	}
	ids := map[string]string{}
	paths, _ := doc["paths"].(map[string]any)
	for p, item := range paths {
		ops, _ := item.(map[string]any)
		common := params(ops["parameters"])
		for m, op := range ops {
			if !slices.Contains(api.OpenAPIMethods, m) {
				continue
			}
			o, _ := op.(map[string]any)
			name := strings.ToUpper(m) + " " + p
			declared := params(o["parameters"])
			for k := range common {
				declared[k] = true
			}
			for _, sub := range pathParam.FindAllStringSubmatch(p, -1) {
				if !declared[sub[1]] {
					t.Errorf("%s: path parameter {%s} is not declared", name, sub[1])
				}
				delete(declared, sub[1])
			}
			for k := range declared {
				t.Errorf("%s: declares path parameter %q that is not in the path", name, k)
			}
			if rs, _ := o["responses"].(map[string]any); len(rs) == 0 {
				t.Errorf("%s: no responses", name)
			}
			id, _ := o["operationId"].(string)
			if id == "" {
				t.Errorf("%s: no operationId", name)
			} else if other, dup := ids[id]; dup {
				t.Errorf("%s: operationId %q is also used by %s", name, id, other)
			}
			ids[id] = name
		}
	}
}
