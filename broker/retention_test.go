package broker

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/warblerim/warbler/internal/mqtttest"
	"github.com/warblerim/warbler/protocol"
)

// TestAppRetention sets an app's retention over the HTTP API and checks
// that the chat log's garbage collection keeps only what it allows.
func TestAppRetention(t *testing.T) {
	s := startServer(t, nil)
	if code, body := adminCall(t, s, "PATCH", "/v1/apps/demo", map[string]any{"settings": map[string]any{
		"iot_rules": []map[string]string{{"pattern": "w/{app}/iot/%u/#", "access": "readwrite"}}, "retention_messages": 3,
	}}); code != 200 {
		t.Fatalf("patch app: %d %s", code, body)
	}
	if code, _ := adminCall(t, s, "PATCH", "/v1/apps/demo", map[string]any{"settings": map[string]any{"retention_days": -1}}); code != 400 {
		t.Fatalf("negative retention accepted: %d", code)
	}
	creds(t, s, "bob", "phone") // bob must exist to be written to
	alice := chatConnect(t, s, mqtttest.DialTCP(t, s.Addrs().MQTT), "alice", "phone")
	for i := 1; i <= 5; i++ {
		alice.request(t, map[string]any{"to": "bob", "cmid": fmt.Sprint("r", i), "type": "text", "body": i})
	}
	if _, err := s.Chat().RunRetention(context.Background()); err != nil {
		t.Fatal(err)
	}
	code, body := adminCall(t, s, "GET", "/v1/apps/demo/users/alice/direct/bob/messages", nil)
	var page struct{ Messages []protocol.Message }
	if err := json.Unmarshal(body, &page); err != nil || code != 200 {
		t.Fatalf("history: %d %s", code, body)
	}
	var seqs []uint64
	for _, m := range page.Messages {
		seqs = append(seqs, m.Seq)
	}
	if fmt.Sprint(seqs) != "[3 4 5]" {
		t.Fatalf("after retention the log holds %v, want [3 4 5]", seqs)
	}
}
