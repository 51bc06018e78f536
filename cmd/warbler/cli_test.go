package main

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/warblerim/warbler/internal/mqtttest"
)

// cli runs the warbler binary with args against a running server and
// returns its standard output; a non-zero exit fails the test unless
// wantErr is set, in which case standard error is returned.
func cli(t *testing.T, p *proc, data string, wantErr bool, args ...string) string {
	t.Helper()
	cmd := exec.Command(warblerBin, args...)
	cmd.Env = append(os.Environ(), "WARBLER_SERVER=http://"+p.addrs["http"], "WARBLER_DATA="+data)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if wantErr {
		if err == nil {
			t.Fatalf("warbler %v succeeded, want an error; output %s", args, out)
		}
		return stderr.String()
	}
	if err != nil {
		t.Fatalf("warbler %v: %v\n%s", args, err, stderr.String())
	}
	return string(out)
}

// TestNewcomerFlow is the README's walk-through, as a newcomer types it:
// create users and a token with the CLI, subscribe with mosquitto_sub using
// the printed values, send a chat message with mosquitto_pub, and read the
// conversation back with warbler history.
func TestNewcomerFlow(t *testing.T) {
	msub, mpub := mqtttest.RequireTool(t, "mosquitto_sub"), mqtttest.RequireTool(t, "mosquitto_pub")
	data := t.TempDir()
	p := startProc(t, exec.Command(warblerBin, loopbackArgs(data)...))

	// Flags after positional arguments, as people type them.
	var user map[string]any
	if err := json.Unmarshal([]byte(cli(t, p, data, false, "user", "create", "alice", "--app", "demo", "--password", "correct horse")), &user); err != nil || user["id"] != "alice" {
		t.Fatalf("user create: %v %v", user, err)
	}
	cli(t, p, data, false, "user", "create", "--app", "demo", "bob")
	var bob, alice struct {
		ClientID string `json:"client_id"`
		Username string
		Password string
		MQTT     string
		Topics   map[string]string
	}
	for who, dst := range map[string]any{"bob": &bob, "alice": &alice} {
		out := cli(t, p, data, false, "token", "--app", "demo", "--user", who, "--device", "d1", "--ttl", "1h")
		if err := json.Unmarshal([]byte(out), dst); err != nil {
			t.Fatalf("token output: %v\n%s", err, out)
		}
	}
	if bob.ClientID != "demo:bob:d1" || bob.Username != "demo:bob" || bob.Topics["downlink"] != "w/demo/u/bob" ||
		bob.Topics["uplink"] != "w/demo/up/bob/d1" || bob.Topics["device"] != "w/demo/d/bob/d1" || bob.MQTT != p.addrs["mqtt"] {
		t.Fatalf("token fields: %+v (server mqtt %s)", bob, p.addrs["mqtt"])
	}
	host, port, _ := strings.Cut(bob.MQTT, ":")

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sub := exec.CommandContext(ctx, msub, "-h", host, "-p", port, "-V", "mqttv5", "-i", bob.ClientID,
		"-u", bob.Username, "-P", bob.Password, "-t", bob.Topics["downlink"], "-C", "1")
	out, err := sub.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var subErr strings.Builder
	sub.Stderr = &subErr
	if err := sub.Start(); err != nil {
		t.Fatal(err)
	}
	// mosquitto_sub gives no sign of its SUBACK on a pipe; publish until the
	// first message arrives, each with its own cmid. Only the first
	// delivery is read (-C 1).
	got := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		if sc.Scan() {
			got <- sc.Text()
		}
		close(got)
	}()
	var line string
	for i := 0; line == ""; i++ {
		env := `{"to":"bob","cmid":"hello-` + string(rune('a'+i)) + `","type":"text","body":{"text":"hi bob"}}`
		if b, err := exec.CommandContext(ctx, mpub, "-h", host, "-p", port, "-V", "mqttv5", "-q", "1",
			"-i", alice.ClientID, "-u", alice.Username, "-P", alice.Password, "-t", alice.Topics["uplink"], "-m", env).CombinedOutput(); err != nil {
			t.Fatalf("mosquitto_pub: %v %s", err, b)
		}
		select {
		case line = <-got:
			if line == "" {
				t.Fatalf("mosquitto_sub ended: %s", subErr.String())
			}
		case <-time.After(500 * time.Millisecond):
			if i > 20 {
				t.Fatalf("bob's downlink got nothing; mosquitto_sub: %s", subErr.String())
			}
		}
	}
	_ = sub.Wait()
	var msg struct {
		Kind, Conv, CMID, Type string
		Seq                    uint64
		From                   struct{ User, Device string }
		Body                   struct{ Text string }
	}
	if err := json.Unmarshal([]byte(line), &msg); err != nil {
		t.Fatalf("downlink payload %q: %v", line, err)
	}
	if msg.Kind != "msg" || msg.From.User != "alice" || msg.From.Device != "d1" || msg.Body.Text != "hi bob" || msg.Seq == 0 || msg.Type != "text" {
		t.Fatalf("delivered %+v", msg)
	}

	// History prints the conversation oldest first, one envelope a line,
	// exactly as delivered.
	hist := strings.Split(strings.TrimSpace(cli(t, p, data, false, "history", "--app", "demo", "--user", "alice", "--with", "bob")), "\n")
	if len(hist) == 0 || !strings.Contains(hist[msg.Seq-1], `"cmid":"`+msg.CMID+`"`) {
		t.Fatalf("history %q lacks the delivered message %q", hist, line)
	}
	for i, h := range hist {
		var m struct{ Seq uint64 }
		if err := json.Unmarshal([]byte(h), &m); err != nil || m.Seq != uint64(i+1) {
			t.Fatalf("history line %d: seq %d (%v)", i, m.Seq, err)
		}
	}
	if after := cli(t, p, data, false, "history", "--app", "demo", "--conv", msg.Conv, "--after", "1"); strings.Count(after, "\n") != len(hist)-1 {
		t.Fatalf("history --after 1 printed %q", after)
	}

	// Clear errors.
	if e := cli(t, p, data, true, "token", "--app", "demo", "--user", "nobody"); !strings.Contains(e, "not found") && !strings.Contains(e, "not_found") {
		t.Fatalf("token for an unknown user: %q", e)
	}
	if e := cli(t, p, data, true, "history", "--app", "demo", "--conv", "nosuch"); !strings.Contains(e, "not_found") {
		t.Fatalf("history of a missing conversation: %q", e)
	}
	if e := cli(t, p, filepath.Join(data, "elsewhere"), true, "app", "list"); !strings.Contains(e, "admin.key") {
		t.Fatalf("missing admin key: %q", e)
	}
}
