package api

import (
	"encoding/json"
	"strings"
	"testing"
	"testing/fstest"
)

// TestOpenAPIMerges checks that the embedded fragments merge into one
// JSON document.
func TestOpenAPIMerges(t *testing.T) {
	b, err := OpenAPI()
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	paths, _ := doc["paths"].(map[string]any)
	if _, ok := paths["/v1/apps/{app}/users/{user}"]; !ok {
		t.Errorf("identity paths are missing from the merged document")
	}
}

// TestOpenAPIMergeConflicts checks that two fragments cannot describe the
// same operation, nor define one component differently.
func TestOpenAPIMergeConflicts(t *testing.T) {
	base := &fstest.MapFile{Data: []byte("openapi: 3.1.0\ninfo: {title: t, version: '1'}\npaths: {}\n")}
	for name, c := range map[string]struct {
		a, b string
		want string
	}{
		"same operation": {"paths: {/x: {get: {responses: {}}}}", "paths: {/x: {get: {responses: {}}}}", "GET /x is already described"},
		"other method":   {"paths: {/x: {get: {responses: {}}}}", "paths: {/x: {post: {responses: {}}}}", ""},
		"component":      {"components: {schemas: {A: {type: string}}}", "components: {schemas: {A: {type: object}}}", "components.schemas.A"},
		"same component": {"components: {schemas: {A: {type: string}}}", "components: {schemas: {A: {type: string}}}", ""},
		"stray key":      {"paths: {}", "info: {title: x}", "not \"info\""},
	} {
		fsys := fstest.MapFS{"openapi/base.yaml": base, "openapi/a.yaml": {Data: []byte(c.a)}, "openapi/b.yaml": {Data: []byte(c.b)}}
		_, err := MergeOpenAPI(fsys)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v", name, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: error %v, want one with %q", name, err, c.want)
		}
	}
}
