package api

// The OpenAPI document. Each group of routes describes itself in a
// fragment, api/openapi/<group>.yaml, which holds the OpenAPI "paths" of
// its routes and the "components" they use. base.yaml holds the rest of
// the document (info, security schemes, the shared Error schema and
// responses). The fragments are embedded in the binary and merged once
// into one OpenAPI 3.1 document, served at GET /v1/openapi.json.
//
// Merging refuses the same path and method in two fragments, and the same
// component name defined differently, so that two groups cannot silently
// shadow each other. A test checks the merged document against the routes
// the server really registers, both ways.

import (
	"embed"
	"encoding/json"
	"fmt"
	"io/fs"
	"net/http"
	"path"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"

	"gopkg.in/yaml.v3"
)

//go:embed openapi/*.yaml
var openapiFS embed.FS

// OpenAPIMethods are the HTTP methods that name operations in an OpenAPI
// path item.
var OpenAPIMethods = []string{"get", "put", "post", "delete", "options", "head", "patch", "trace"}

var openapiDoc = sync.OnceValues(func() ([]byte, error) {
	doc, err := MergeOpenAPI(openapiFS)
	if err != nil {
		return nil, err
	}
	return json.MarshalIndent(doc, "", "  ")
})

// OpenAPI returns the merged OpenAPI document as JSON.
func OpenAPI() ([]byte, error) { return openapiDoc() }

// MergeOpenAPI merges openapi/base.yaml and every other openapi/*.yaml
// of fsys (in name order) into one document.
func MergeOpenAPI(fsys fs.FS) (map[string]any, error) {
	names, err := fs.Glob(fsys, "openapi/*.yaml")
	if err != nil {
		return nil, err
	}
	sort.Strings(names)
	i := slices.Index(names, "openapi/base.yaml")
	if i < 0 {
		return nil, fmt.Errorf("openapi: base.yaml is missing")
	}
	rest := slices.Concat(names[:i], names[i+1:])
	names = append([]string{"openapi/base.yaml"}, rest...)
	var doc map[string]any
	for _, name := range names {
		b, err := fs.ReadFile(fsys, name)
		if err != nil {
			return nil, err
		}
		var frag map[string]any
		if err := yaml.Unmarshal(b, &frag); err != nil {
			return nil, fmt.Errorf("openapi: %s: %w", name, err)
		}
		if doc == nil {
			doc = frag
			continue
		}
		if err := mergeFragment(doc, frag, path.Base(name)); err != nil {
			return nil, err
		}
	}
	return doc, nil
}

// mergeFragment adds frag's paths and components to doc.
func mergeFragment(doc, frag map[string]any, name string) error {
	for k := range frag {
		if k != "paths" && k != "components" {
			return fmt.Errorf("openapi: %s: a fragment holds only paths and components, not %q", name, k)
		}
	}
	paths := child(doc, "paths")
	fp, _ := frag["paths"].(map[string]any)
	for p, item := range fp {
		ops, ok := item.(map[string]any)
		if !ok {
			return fmt.Errorf("openapi: %s: path %s is not an object", name, p)
		}
		have := child(paths, p)
		for m, op := range ops {
			old, dup := have[m]
			switch {
			case dup && slices.Contains(OpenAPIMethods, m):
				return fmt.Errorf("openapi: %s: %s %s is already described by another fragment", name, strings.ToUpper(m), p)
			case dup && !reflect.DeepEqual(old, op):
				// Path-level keys (parameters, summary) may be repeated
				// by the groups sharing a path, but must agree.
				return fmt.Errorf("openapi: %s: %s of %s differs from another fragment's", name, m, p)
			}
			have[m] = op
		}
	}
	comps := child(doc, "components")
	fc, _ := frag["components"].(map[string]any)
	for section, v := range fc {
		entries, ok := v.(map[string]any)
		if !ok {
			return fmt.Errorf("openapi: %s: components.%s is not an object", name, section)
		}
		have := child(comps, section)
		for n, def := range entries {
			if old, dup := have[n]; dup && !reflect.DeepEqual(old, def) {
				return fmt.Errorf("openapi: %s: components.%s.%s is already defined differently", name, section, n)
			}
			have[n] = def
		}
	}
	return nil
}

// child returns m[k] as an object, creating it if absent.
func child(m map[string]any, k string) map[string]any {
	if c, ok := m[k].(map[string]any); ok {
		return c
	}
	c := map[string]any{}
	m[k] = c
	return c
}

// OpenAPIPath converts a ServeMux pattern path to an OpenAPI path:
// "{value...}" becomes "{value}" and "{$}" is dropped.
func OpenAPIPath(p string) string {
	p = strings.ReplaceAll(p, "...}", "}")
	return strings.TrimSuffix(p, "{$}")
}

// RegisterOpenAPI mounts GET /v1/openapi.json, which needs no credentials.
func RegisterOpenAPI(mux Mux) {
	mux.Handle("GET /v1/openapi.json", HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		b, err := OpenAPI()
		if err != nil {
			return err
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "public, max-age=300")
		_, err = w.Write(b)
		return err
	}))
}
