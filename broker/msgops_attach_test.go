package broker

import (
	"bytes"
	"encoding/json"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/warblerim/warbler/internal/mqtttest"
	"github.com/warblerim/warbler/protocol"
)

// A recalled image message keeps nothing of the file it showed: the
// stored copy, which history and sync return to devices that were
// offline, has no attachment description (name, size, hash, thumbnail)
// left, as it has no body.
func TestRecallDropsAttachment(t *testing.T) {
	s := startServer(t, nil)
	tcp := func() net.Conn { return mqtttest.DialTCP(t, s.Addrs().MQTT) }
	alice := chatConnect(t, s, tcp(), "alice", "phone")
	bob := chatConnect(t, s, tcp(), "bob", "phone")
	alice.request(t, map[string]any{"op": "create", "kind": "group", "conv": "pics", "members": []string{"bob"}})

	r := doHTTP(t, s, "POST", "/v1/files?conv=pics&name=private-scan.png", userToken(t, s, "alice"),
		map[string]string{"Content-Type": "application/octet-stream"}, bytes.NewReader(testPNG(t, 64, 48)))
	if r.status != http.StatusCreated {
		t.Fatalf("upload: %d %s", r.status, r.body)
	}
	id := r.json(t)["id"].(string)
	ack := alice.request(t, map[string]any{"conv": "pics", "cmid": "i1", "type": "image", "attachment": id, "body": map[string]any{"text": "oops"}})
	seq := uint64(ack["seq"].(float64))
	if m := bob.expectMsg(t, "pics", seq); m.Attachment == nil {
		t.Fatalf("image message without its attachment: %+v", m)
	}
	alice.request(t, map[string]any{"op": "recall", "conv": "pics", "id": ack["id"], "seq": ack["seq"]})

	hist := bob.request(t, map[string]any{"op": "history", "conv": "pics"})
	raw, _ := json.Marshal(hist["messages"])
	var msgs []protocol.Message
	if err := json.Unmarshal(raw, &msgs); err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		if m.Seq != seq {
			continue
		}
		if !m.Recalled || m.Body != nil || m.Attachment != nil {
			t.Fatalf("recalled message in history: %+v (attachment %+v)", m, m.Attachment)
		}
	}
	if strings.Contains(string(raw), id) || strings.Contains(string(raw), "private-scan") {
		t.Fatalf("history still names the recalled file: %s", raw)
	}
}
