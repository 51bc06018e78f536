package broker

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/warblerim/warbler/internal/mqtttest"
	"github.com/warblerim/warbler/protocol"
)

// apnsRequest is what the local APNs server saw.
type apnsRequest struct {
	path, topic, auth, pushType string
	proto                       int
	body                        map[string]any
}

// localAPNs is an HTTP/2 TLS server speaking the APNs wire protocol.
func localAPNs(t *testing.T) (*httptest.Server, chan apnsRequest) {
	got := make(chan apnsRequest, 16)
	ts := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body map[string]any
		_ = json.NewDecoder(r.Body).Decode(&body)
		got <- apnsRequest{path: r.URL.Path, topic: r.Header.Get("apns-topic"), auth: r.Header.Get("authorization"),
			pushType: r.Header.Get("apns-push-type"), proto: r.ProtoMajor, body: body}
		w.Header().Set("apns-id", r.Header.Get("apns-id"))
		w.WriteHeader(http.StatusOK)
	}))
	ts.EnableHTTP2 = true
	ts.StartTLS()
	t.Cleanup(ts.Close)
	return ts, got
}

func adminCall(t *testing.T, s *Server, method, path string, body any) (int, []byte) {
	t.Helper()
	key, err := os.ReadFile(filepath.Join(s.Config().Data, "admin.key"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest(method, "http://"+s.Addrs().HTTP+path, bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(key)))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, out
}

// TestPushToOfflineDevice runs the whole path: credentials set over HTTP, a
// device registering its token over MQTT, a chat message to it while it is
// offline producing one APNs notification at the local APNs server, and
// none while it is online.
func TestPushToOfflineDevice(t *testing.T) {
	apns, got := localAPNs(t)
	s := startServer(t, nil)

	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: apns.Certificate().Raw})
	if code, body := adminCall(t, s, "PUT", "/v1/apps/demo/push/credentials/apns", map[string]any{
		"auth_key": string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
		"key_id":   "KEY0000001", "team_id": "TEAM000001", "topic": "com.example.chat",
		"endpoint": apns.URL, "root_cas": string(caPEM),
	}); code != http.StatusOK {
		t.Fatalf("set credentials: %d %s", code, body)
	}

	// bob's phone registers its token over MQTT, then goes offline.
	const token = "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9"
	phone := chatConnect(t, s, mqtttest.DialTCP(t, s.Addrs().MQTT), "bob", "phone")
	if r := phone.request(t, map[string]any{"op": "push", "platform": "ios", "token": token}); r["push"] != true {
		t.Fatalf("push registration: %v", r)
	}
	alice := chatConnect(t, s, mqtttest.DialTCP(t, s.Addrs().MQTT), "alice", "laptop")

	// Online: the live delivery is enough, no notification.
	ack := alice.request(t, map[string]any{"to": "bob", "cmid": "online", "type": "text", "body": map[string]string{"text": "you are here"}})
	phone.expectMsg(t, ack["conv"].(string), 1)
	// The hand-off to the bridge, which asks whether the phone is online,
	// runs after the ack and off the delivery path: wait for it, or on a
	// busy machine it may see the phone already gone and queue this
	// message too (then coalesced with the next one, or pushed).
	waitPushHandoffs(t, s)
	if err := phone.Client.Disconnect(&paho.Disconnect{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(mqtttest.Timeout)
	for (presence{s}).Online("demo", "bob", "phone") {
		if time.Now().After(deadline) {
			t.Fatal("bob's phone still online")
		}
		time.Sleep(5 * time.Millisecond)
	}

	// Offline: exactly this message is pushed.
	alice.request(t, map[string]any{"to": "bob", "cmid": "offline", "type": "text", "body": map[string]string{"text": "where are you?"}})
	select {
	case r := <-got:
		if r.proto != 2 || r.path != "/3/device/"+token || r.topic != "com.example.chat" || !strings.HasPrefix(r.auth, "bearer ey") || r.pushType != "alert" {
			t.Fatalf("APNs request %+v", r)
		}
		if fmt.Sprint(r.body["seq"]) != "2" || r.body["conv"] != protocol.DirectConvID("alice", "bob") {
			t.Fatalf("notification payload %v: want the offline message (seq 2), not the one seen online", r.body)
		}
	case <-time.After(time.Minute):
		t.Fatal("no notification reached the local APNs server")
	}
	// The ledger records the provider's answer once it is back; the online
	// message left no entry.
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(10 * time.Millisecond) {
		code, body := adminCall(t, s, "GET", "/v1/apps/demo/push/ledger?user=bob", nil)
		if code == 200 && strings.Count(string(body), `"state":"accepted"`) == 1 && strings.Count(string(body), `"id"`) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ledger: %d %s", code, body)
		}
	}
}

// waitPushHandoffs waits until no stored message is being handed to the push
// bridge. The chat service starts the hand-off of a message before it acks
// it, so after an ack this waits for that message's hand-off to finish.
func waitPushHandoffs(t *testing.T, s *Server) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); len(s.pushSem) > 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d push hand-offs still running after a minute", len(s.pushSem))
		}
	}
}
