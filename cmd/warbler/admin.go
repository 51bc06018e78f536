package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// The administration commands talk to a running server's HTTP API with the
// admin key that the server wrote to DATA/admin.key on its first start.

func init() {
	register(&command{name: "app create", args: "NAME [--id ID]", summary: "create an app", run: runAppCreate})
	register(&command{name: "app list", args: "", summary: "list apps", run: runAppList})
	register(&command{name: "user create", args: "--app APP USER [--password PASS] [--name NAME] [--tag T]...", summary: "create a user", run: runUserCreate})
	register(&command{name: "token", args: "--app APP --user USER [--device DEV] [--ttl DUR]", summary: "issue MQTT credentials for a user's device (JSON)", run: runToken})
	register(&command{name: "history", args: "--app APP (--user U --with PEER | --conv ID) [--after SEQ]", summary: "print a conversation's messages as JSON lines, oldest first", run: runHistory})
}

// apiFlags are the flags shared by every command that calls the API.
type apiFlags struct {
	server, data, key *string
}

func addAPIFlags(env *cliEnv, fs *flag.FlagSet) apiFlags {
	def := env.getenv("WARBLER_SERVER")
	if def == "" {
		def = "http://127.0.0.1:8080"
	}
	data := env.getenv("WARBLER_DATA")
	if data == "" {
		data = "./data"
	}
	return apiFlags{
		server: fs.String("server", def, "server `URL` (or WARBLER_SERVER)"),
		data:   fs.String("data", data, "data `dir` of the server, to read admin.key from (or WARBLER_DATA)"),
		key:    fs.String("key", env.getenv("WARBLER_ADMIN_KEY"), "admin or app API `key` (or WARBLER_ADMIN_KEY; default: DATA/admin.key)"),
	}
}

type apiClient struct {
	base string
	key  string
	hc   *http.Client
}

func (f apiFlags) client() (*apiClient, error) {
	key := *f.key
	if key == "" {
		p := filepath.Join(*f.data, "admin.key")
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("no API key: %v (start the server once, or pass --data or --key)", err)
		}
		key = strings.TrimSpace(string(b))
	}
	u, err := url.Parse(*f.server)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, usageError{fmt.Sprintf("--server %q is not an http(s) URL", *f.server)}
	}
	return &apiClient{base: strings.TrimRight(*f.server, "/"), key: key, hc: &http.Client{Timeout: 30 * time.Second}}, nil
}

// call sends a JSON request and decodes the JSON answer into out (if not
// nil). An error response becomes an error carrying the server's message.
func (c *apiClient) call(method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(context.Background(), method, c.base+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.key)
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach the server at %s: %w", c.base, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		var e struct {
			Error struct{ Code, Message string } `json:"error"`
		}
		if json.Unmarshal(b, &e) == nil && e.Error.Code != "" {
			return fmt.Errorf("%s (%s, HTTP %d)", e.Error.Message, e.Error.Code, resp.StatusCode)
		}
		return fmt.Errorf("HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(b)))
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

// printJSON writes v indented.
func printJSON(env *cliEnv, v any) error {
	enc := json.NewEncoder(env.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func runAppCreate(env *cliEnv, args []string) error {
	c := commands["app create"]
	fs := newFlagSet(env, c)
	af := addAPIFlags(env, fs)
	id := fs.String("id", "", "app `ID` (default: derived by the server)")
	pos, err := parseAnywhere(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError{"need exactly one NAME"}
	}
	cl, err := af.client()
	if err != nil {
		return err
	}
	body := map[string]any{"name": pos[0]}
	if *id != "" {
		body["id"] = *id
	}
	var out json.RawMessage
	if err := cl.call("POST", "/v1/apps", body, &out); err != nil {
		return err
	}
	return printJSON(env, out)
}

func runAppList(env *cliEnv, args []string) error {
	fs := newFlagSet(env, commands["app list"])
	af := addAPIFlags(env, fs)
	if _, err := parseAnywhere(fs, args); err != nil {
		return err
	}
	cl, err := af.client()
	if err != nil {
		return err
	}
	var out json.RawMessage
	if err := cl.call("GET", "/v1/apps", nil, &out); err != nil {
		return err
	}
	return printJSON(env, out)
}

// multi is a repeatable string flag.
type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }

func runUserCreate(env *cliEnv, args []string) error {
	c := commands["user create"]
	fs := newFlagSet(env, c)
	af := addAPIFlags(env, fs)
	app := fs.String("app", "", "`app` ID (required)")
	password := fs.String("password", "", "password for signing in over HTTP (optional)")
	name := fs.String("name", "", "display `name`")
	var tags multi
	fs.Var(&tags, "tag", "a `tag` (repeatable)")
	pos, err := parseAnywhere(fs, args)
	if err != nil {
		return err
	}
	if *app == "" || len(pos) != 1 {
		return usageError{"need --app and exactly one USER"}
	}
	cl, err := af.client()
	if err != nil {
		return err
	}
	body := map[string]any{"id": pos[0]}
	if *password != "" {
		body["password"] = *password
	}
	if *name != "" {
		body["display_name"] = *name
	}
	if len(tags) > 0 {
		body["tags"] = tags
	}
	var out json.RawMessage
	if err := cl.call("POST", "/v1/apps/"+url.PathEscape(*app)+"/users", body, &out); err != nil {
		return err
	}
	return printJSON(env, out)
}

func runToken(env *cliEnv, args []string) error {
	c := commands["token"]
	fs := newFlagSet(env, c)
	af := addAPIFlags(env, fs)
	app := fs.String("app", "", "`app` ID (required)")
	user := fs.String("user", "", "`user` ID (required)")
	device := fs.String("device", "", "`device` ID (default: a new device)")
	ttl := fs.Duration("ttl", 0, "token lifetime, e.g. 1h or 24h (default: the server's)")
	pos, err := parseAnywhere(fs, args)
	if err != nil {
		return err
	}
	if *app == "" || *user == "" || len(pos) > 0 {
		return usageError{"need --app and --user"}
	}
	if *ttl < 0 || (*ttl > 0 && *ttl < time.Second) {
		return usageError{"--ttl must be at least 1s"}
	}
	cl, err := af.client()
	if err != nil {
		return err
	}
	body := map[string]any{"user": *user}
	if *device != "" {
		body["device"] = *device
	}
	if *ttl > 0 {
		body["ttl"] = int64(ttl.Seconds())
	}
	var out json.RawMessage
	if err := cl.call("POST", "/v1/apps/"+url.PathEscape(*app)+"/tokens", body, &out); err != nil {
		return err
	}
	return printJSON(env, out)
}

func runHistory(env *cliEnv, args []string) error {
	c := commands["history"]
	fs := newFlagSet(env, c)
	af := addAPIFlags(env, fs)
	app := fs.String("app", "", "`app` ID (required)")
	user := fs.String("user", "", "`user` of a direct conversation (with --with)")
	with := fs.String("with", "", "the other `user` of the direct conversation")
	conv := fs.String("conv", "", "conversation `ID` (instead of --user/--with)")
	after := fs.Uint64("after", 0, "print messages with seq greater than `SEQ`")
	pos, err := parseAnywhere(fs, args)
	if err != nil {
		return err
	}
	direct := *user != "" || *with != ""
	if *app == "" || len(pos) > 0 || direct == (*conv != "") || (direct && (*user == "" || *with == "")) {
		return usageError{"need --app and either --conv, or --user with --with"}
	}
	cl, err := af.client()
	if err != nil {
		return err
	}
	path := "/v1/apps/" + url.PathEscape(*app) + "/conversations/" + url.PathEscape(*conv) + "/messages"
	if direct {
		path = "/v1/apps/" + url.PathEscape(*app) + "/users/" + url.PathEscape(*user) + "/direct/" + url.PathEscape(*with) + "/messages"
	}
	next := *after
	for {
		var page struct {
			Messages  []json.RawMessage `json:"messages"`
			More      bool              `json:"more"`
			NextAfter uint64            `json:"next_after"`
		}
		if err := cl.call("GET", path+"?limit=500&after="+strconv.FormatUint(next, 10), nil, &page); err != nil {
			return err
		}
		for _, m := range page.Messages {
			var buf bytes.Buffer
			if err := json.Compact(&buf, m); err != nil {
				return err
			}
			fmt.Fprintln(env.stdout, buf.String())
		}
		if !page.More || page.NextAfter <= next {
			return nil
		}
		next = page.NextAfter
	}
}
