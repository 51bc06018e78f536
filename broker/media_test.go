package broker

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/warblerim/warbler/internal/mqtttest"
	"github.com/warblerim/warbler/protocol"
)

// The media tests upload and download over real HTTP against the whole
// server, and send the messages that refer to uploads over MQTT.

type httpResult struct {
	status int
	header http.Header
	body   []byte
}

func (r httpResult) json(t *testing.T) map[string]any {
	t.Helper()
	var v map[string]any
	if err := json.Unmarshal(r.body, &v); err != nil {
		t.Fatalf("status %d, body %q: %v", r.status, r.body, err)
	}
	return v
}

func (r httpResult) errCode(t *testing.T) string {
	t.Helper()
	var v struct{ Error struct{ Code string } }
	if err := json.Unmarshal(r.body, &v); err != nil {
		t.Fatalf("status %d, body %q is not a JSON error", r.status, r.body)
	}
	return v.Error.Code
}

func userToken(t *testing.T, s *Server, user string) string {
	t.Helper()
	_, _, tok := creds(t, s, user, "http")
	return tok
}

func doHTTP(t *testing.T, s *Server, method, path, token string, hdr map[string]string, body io.Reader) httpResult {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+s.Addrs().HTTP+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	if b, ok := body.(*bytes.Reader); ok {
		req.ContentLength = int64(b.Len())
	}
	ctx, cancel := context.WithTimeout(context.Background(), mqtttest.Timeout)
	defer cancel()
	resp, err := http.DefaultClient.Do(req.WithContext(ctx))
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading: %v", method, path, err)
	}
	return httpResult{status: resp.StatusCode, header: resp.Header, body: b}
}

func testPNG(t *testing.T, w, h int) []byte {
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			img.Set(x, y, color.NRGBA{uint8(x * 7), uint8(y * 3), 90, 255})
		}
	}
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func testJPEG(t *testing.T, w, h int) []byte {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			img.Set(x, y, color.RGBA{uint8(x), uint8(y), uint8(x ^ y), 255})
		}
	}
	var b bytes.Buffer
	if err := jpeg.Encode(&b, img, &jpeg.Options{Quality: 90}); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// requestErr is request for a request that must fail: it returns the
// error's code.
func (d *chatDevice) requestErr(t *testing.T, req map[string]any) string {
	t.Helper()
	b, _ := json.Marshal(req)
	corr := []byte(strconv.FormatInt(d.corr.Add(1), 10))
	ctx, cancel := context.WithTimeout(context.Background(), mqtttest.Timeout)
	defer cancel()
	// The PUBACK of a refused send carries a failure reason code (which
	// paho reports as an error); the error reply follows either way.
	_, _ = d.Client.Client.Publish(ctx, &paho.Publish{
		Topic: protocol.Uplink("demo", d.user, d.device), QoS: 1, Payload: b,
		Properties: &paho.PublishProperties{ResponseTopic: protocol.DeviceTopic("demo", d.user, d.device), CorrelationData: corr},
	})
	for {
		m := d.Expect(t)
		if m.Properties == nil || string(m.Properties.CorrelationData) != string(corr) {
			d.held = append(d.held, m)
			continue
		}
		var rep protocol.Reply
		if err := json.Unmarshal(m.Payload, &rep); err != nil || rep.Kind != "error" || rep.Error == nil {
			t.Fatalf("request %v should fail, got %s", req, m.Payload)
		}
		return rep.Error.Code
	}
}

func TestImageMessageOverHTTPAndMQTT(t *testing.T) {
	s := startServer(t, nil)
	tcp := func() net.Conn { return mqtttest.DialTCP(t, s.Addrs().MQTT) }
	alice := chatConnect(t, s, tcp(), "alice", "phone")
	bob := chatConnect(t, s, tcp(), "bob", "phone")
	carol := chatConnect(t, s, tcp(), "carol", "phone")
	aliceTok, bobTok, carolTok := userToken(t, s, "alice"), userToken(t, s, "bob"), userToken(t, s, "carol")
	alice.request(t, map[string]any{"op": "create", "kind": "group", "conv": "pics", "members": []string{"bob"}})

	// A PNG uploaded in one request for the group.
	img := testPNG(t, 640, 480)
	r := doHTTP(t, s, "POST", "/v1/files?conv=pics&name=beach.png", aliceTok, map[string]string{"Content-Type": "application/octet-stream"}, bytes.NewReader(img))
	if r.status != http.StatusCreated {
		t.Fatalf("upload: %d %s", r.status, r.body)
	}
	up := r.json(t)
	id := up["id"].(string)
	if up["type"] != "image/png" || up["width"] != 640.0 || up["height"] != 480.0 || up["thumb"] != "/v1/files/"+id+"/thumb" || up["name"] != "beach.png" {
		t.Fatalf("upload answer %v", up)
	}
	// Its thumbnail is a PNG of 320x240.
	th := doHTTP(t, s, "GET", "/v1/files/"+id+"/thumb", bobTok, nil, nil)
	if th.status != 200 || th.header.Get("Content-Type") != "image/png" {
		t.Fatalf("thumb: %d %v", th.status, th.header)
	}
	if cfg, err := png.DecodeConfig(bytes.NewReader(th.body)); err != nil || cfg.Width != 320 || cfg.Height != 240 {
		t.Fatalf("thumb decodes to %+v, %v", cfg, err)
	}

	// The image message: bob gets the server's description of the file.
	ack := alice.request(t, map[string]any{"conv": "pics", "cmid": "i1", "type": "image", "attachment": id, "body": map[string]any{"text": "the beach"}})
	m := bob.expectMsg(t, "pics", uint64(ack["seq"].(float64)))
	a := m.Attachment
	if a == nil || a.ID != id || a.Width != 640 || a.Height != 480 || a.Thumb != "/v1/files/"+id+"/thumb" || a.ThumbWidth != 320 || a.Type != "image/png" || a.Size != int64(len(img)) {
		t.Fatalf("bob got %+v", a)
	}
	// The same is in the log for late syncers.
	hist := bob.request(t, map[string]any{"op": "history", "conv": "pics"})
	if !strings.Contains(fmt.Sprint(hist["messages"]), id) {
		t.Fatalf("history lacks the attachment: %v", hist)
	}
	// bob downloads it (with the token in the query, as an <img> would).
	dl := doHTTP(t, s, "GET", a.URL+"?access_token="+bobTok, "", nil, nil)
	if dl.status != 200 || !bytes.Equal(dl.body, img) || dl.header.Get("Content-Type") != "image/png" || dl.header.Get("X-Content-Type-Options") != "nosniff" {
		t.Fatalf("download: %d %v (%d bytes)", dl.status, dl.header, len(dl.body))
	}
	// carol is not in the group: for her the file does not exist.
	for _, p := range []string{a.URL, a.Thumb, a.URL + "/info"} {
		if r := doHTTP(t, s, "GET", p, carolTok, nil, nil); r.status != http.StatusNotFound || r.errCode(t) != "not_found" {
			t.Fatalf("carol GET %s: %d %s", p, r.status, r.body)
		}
	}
	if r := doHTTP(t, s, "GET", a.URL, "", nil, nil); r.status != http.StatusUnauthorized {
		t.Fatalf("no token: %d", r.status)
	}
	// ... nor may she upload for it, or send alice's file elsewhere.
	if r := doHTTP(t, s, "POST", "/v1/files?conv=pics", carolTok, nil, bytes.NewReader(img)); r.status != http.StatusNotFound {
		t.Fatalf("carol uploads for pics: %d %s", r.status, r.body)
	}
	if c := carol.requestErr(t, map[string]any{"to": "alice", "cmid": "x1", "type": "image", "attachment": id, "body": map[string]any{}}); c != protocol.CodeNotFound {
		t.Fatalf("carol sends alice's file: %s", c)
	}
	// bob forwards the picture to carol: the file is shared with their
	// conversation, so carol may now download it.
	fwd := bob.request(t, map[string]any{"op": "forward", "to": "carol", "cmid": "f1", "src": map[string]any{"conv": "pics", "id": ack["id"], "seq": ack["seq"]}})
	if fm := carol.expectMsg(t, fwd["conv"].(string), uint64(fwd["seq"].(float64))); fm.Attachment == nil || fm.Attachment.ID != id {
		t.Fatalf("forwarded message %+v", fm)
	}
	if r := doHTTP(t, s, "GET", a.URL, carolTok, nil, nil); r.status != 200 || !bytes.Equal(r.body, img) {
		t.Fatalf("carol after the forward: %d", r.status)
	}
	dave := chatConnect(t, s, tcp(), "dave", "phone")
	daveTok := userToken(t, s, "dave")
	if r := doHTTP(t, s, "GET", a.URL, daveTok, nil, nil); r.status != http.StatusNotFound {
		t.Fatalf("dave: %d", r.status)
	}
	if c := dave.requestErr(t, map[string]any{"to": "carol", "cmid": "d1", "type": "file", "attachment": id, "body": map[string]any{}}); c != protocol.CodeNotFound {
		t.Fatalf("dave sends a file he cannot read: %s", c)
	}

	// A backend sending as alice over HTTP may attach her file; sending
	// as itself it needs none (its body may point elsewhere).
	sb, _ := json.Marshal(map[string]any{"from": "alice", "type": "image", "attachment": id, "body": map[string]any{"text": "via the API"}})
	hr := doHTTP(t, s, "POST", "/v1/apps/demo/conversations/pics/messages", adminKey(t, s), nil, bytes.NewReader(sb))
	if hr.status != http.StatusCreated {
		t.Fatalf("HTTP send with an attachment: %d %s", hr.status, hr.body)
	}
	if hm := bob.expectMsg(t, "pics", uint64(hr.json(t)["seq"].(float64))); hm.Attachment == nil || hm.Attachment.ID != id {
		t.Fatalf("HTTP-sent image %+v", hm)
	}
	sb, _ = json.Marshal(map[string]any{"type": "image", "body": map[string]any{"url": "https://cdn.example.com/x.png"}})
	if hr := doHTTP(t, s, "POST", "/v1/apps/demo/conversations/pics/messages", adminKey(t, s), nil, bytes.NewReader(sb)); hr.status != http.StatusCreated {
		t.Fatalf("service image without an attachment: %d %s", hr.status, hr.body)
	}

	// Attachment types need an attachment; an image needs an image.
	if c := alice.requestErr(t, map[string]any{"conv": "pics", "cmid": "x2", "type": "file", "body": map[string]any{}}); c != protocol.CodeBadRequest {
		t.Fatalf("file without attachment: %s", c)
	}
	txt := doHTTP(t, s, "POST", "/v1/files?name=notes.png", aliceTok, nil, strings.NewReader("plain words\n"))
	if txt.status != 201 || !strings.HasPrefix(txt.json(t)["type"].(string), "text/plain") {
		t.Fatalf("text upload: %d %s", txt.status, txt.body)
	}
	if c := alice.requestErr(t, map[string]any{"conv": "pics", "cmid": "x3", "type": "image", "attachment": txt.json(t)["id"], "body": map[string]any{}}); c != protocol.CodeBadRequest {
		t.Fatalf("image message with a text file: %s", c)
	}

	// A JPEG gets a JPEG thumbnail.
	jr := doHTTP(t, s, "POST", "/v1/files", aliceTok, nil, bytes.NewReader(testJPEG(t, 300, 900)))
	if jr.status != 201 {
		t.Fatalf("jpeg upload %d %s", jr.status, jr.body)
	}
	jt := doHTTP(t, s, "GET", "/v1/files/"+jr.json(t)["id"].(string)+"/thumb", aliceTok, nil, nil)
	if cfg, err := jpeg.DecodeConfig(bytes.NewReader(jt.body)); err != nil || cfg.Width != 107 || cfg.Height != 320 {
		t.Fatalf("jpeg thumb %+v %v (%d %s)", cfg, err, jt.status, jt.header.Get("Content-Type"))
	}
}

func TestUploadSizeLimit(t *testing.T) {
	s := startServer(t, func(c *Config) { c.Media.MaxUpload = 1000 })
	tok := userToken(t, s, "alice")
	r := doHTTP(t, s, "POST", "/v1/files", tok, nil, bytes.NewReader(make([]byte, 1001)))
	if r.status != http.StatusRequestEntityTooLarge || r.errCode(t) != "too_large" {
		t.Fatalf("over the limit: %d %s", r.status, r.body)
	}
	// Without a Content-Length (chunked), the limit holds all the same.
	r = doHTTP(t, s, "POST", "/v1/files", tok, nil, io.LimitReader(zeros{}, 5000))
	if r.status != http.StatusRequestEntityTooLarge {
		t.Fatalf("chunked over the limit: %d %s", r.status, r.body)
	}
	r = doHTTP(t, s, "POST", "/v1/uploads", tok, nil, strings.NewReader(`{"size":1001}`))
	if r.status != http.StatusRequestEntityTooLarge || r.errCode(t) != "too_large" {
		t.Fatalf("resumable over the limit: %d %s", r.status, r.body)
	}
	if r := doHTTP(t, s, "POST", "/v1/files", tok, nil, bytes.NewReader(make([]byte, 1000))); r.status != http.StatusCreated {
		t.Fatalf("at the limit: %d %s", r.status, r.body)
	}
	// The app's own setting wins over the server's default.
	raise := map[string]any{"settings": map[string]any{"max_upload_bytes": 5000}}
	b, _ := json.Marshal(raise)
	if r := doHTTP(t, s, "PATCH", "/v1/apps/demo", adminKey(t, s), nil, bytes.NewReader(b)); r.status != 200 {
		t.Fatalf("set max_upload_bytes: %d %s", r.status, r.body)
	}
	if r := doHTTP(t, s, "POST", "/v1/files", tok, nil, bytes.NewReader(make([]byte, 4000))); r.status != http.StatusCreated {
		t.Fatalf("under the app's limit: %d %s", r.status, r.body)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// TestInterruptedUploadResumes sends half of a resumable upload over a raw
// connection and drops it, learns the offset with HEAD and sends the rest.
func TestInterruptedUploadResumes(t *testing.T) {
	s := startServer(t, nil)
	tok := userToken(t, s, "alice")
	data := testJPEG(t, 500, 400)
	sum := sha256.Sum256(data)
	hexsum := hex.EncodeToString(sum[:])
	r := doHTTP(t, s, "POST", "/v1/uploads", tok, nil, strings.NewReader(fmt.Sprintf(`{"size":%d,"sha256":%q,"name":"big.jpg"}`, len(data), hexsum)))
	if r.status != http.StatusCreated || r.header.Get("Upload-Offset") != "0" {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	loc := r.header.Get("Location")

	// Half the body of a PATCH that announced all of it, then the
	// connection drops.
	half := len(data) / 2
	conn, err := net.Dial("tcp", s.Addrs().HTTP)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "PATCH %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nUpload-Offset: 0\r\nContent-Length: %d\r\n\r\n", loc, tok, len(data))
	if _, err := conn.Write(data[:half]); err != nil {
		t.Fatal(err)
	}
	conn.Close()

	// The server keeps what arrived; HEAD tells where to go on. (It may
	// still be writing when the first HEAD comes: wait for the offset to
	// reach what was sent, within a deadline.)
	var off int
	deadline := time.Now().Add(mqtttest.Timeout)
	for {
		h := doHTTP(t, s, "HEAD", loc, tok, nil, nil)
		if h.status != 200 {
			t.Fatalf("HEAD: %d", h.status)
		}
		off, _ = strconv.Atoi(h.header.Get("Upload-Offset"))
		if off == half || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if off != half {
		t.Fatalf("offset after the drop %d, sent %d", off, half)
	}
	// A piece at the wrong offset is refused with where to resume. (Until
	// the server has seen the first connection close, the upload is busy:
	// a client retries that.)
	for {
		r = doHTTP(t, s, "PATCH", loc, tok, map[string]string{"Upload-Offset": "0"}, bytes.NewReader(data))
		if r.status != http.StatusConflict || r.errCode(t) != "busy" || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if r.status != http.StatusConflict || r.errCode(t) != "offset_mismatch" || r.header.Get("Upload-Offset") != strconv.Itoa(half) {
		t.Fatalf("wrong offset: %d %v %s", r.status, r.header, r.body)
	}
	// Bob cannot see alice's upload.
	if h := doHTTP(t, s, "HEAD", loc, userToken(t, s, "bob"), nil, nil); h.status != http.StatusNotFound {
		t.Fatalf("bob HEAD: %d", h.status)
	}
	// The rest, by Content-Range this time.
	r = doHTTP(t, s, "PUT", loc, tok, map[string]string{"Content-Range": fmt.Sprintf("bytes %d-%d/%d", off, len(data)-1, len(data))}, bytes.NewReader(data[off:]))
	if r.status != http.StatusCreated {
		t.Fatalf("rest: %d %s", r.status, r.body)
	}
	f := r.json(t)
	if f["sha256"] != hexsum || f["size"] != float64(len(data)) || f["width"] != 500.0 || f["height"] != 400.0 {
		t.Fatalf("file %v", f)
	}
	dl := doHTTP(t, s, "GET", f["url"].(string), tok, nil, nil)
	got := sha256.Sum256(dl.body)
	if dl.status != 200 || got != sum {
		t.Fatalf("download %d, %d bytes, hash match %v", dl.status, len(dl.body), got == sum)
	}
	// The upload is gone once finished.
	if h := doHTTP(t, s, "HEAD", loc, tok, nil, nil); h.status != http.StatusNotFound {
		t.Fatalf("HEAD after completion: %d", h.status)
	}
}

func adminKey(t *testing.T, s *Server) string {
	t.Helper()
	key, err := os.ReadFile(filepath.Join(s.Config().Data, "admin.key"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(key))
}

// TestLargeUploadStreams moves a file past the API's 1 MiB body cap in
// and out: upload and download routes are streams, bounded by the upload
// limit instead.
func TestLargeUploadStreams(t *testing.T) {
	s := startServer(t, nil)
	tok := userToken(t, s, "alice")
	data := make([]byte, 3<<20)
	for i := range data {
		data[i] = byte(i * 7 / 5)
	}
	r := doHTTP(t, s, "POST", "/v1/files?name=blob.bin", tok, nil, bytes.NewReader(data))
	if r.status != http.StatusCreated {
		t.Fatalf("upload: %d %s", r.status, r.body)
	}
	dl := doHTTP(t, s, "GET", r.json(t)["url"].(string), tok, map[string]string{"Accept-Encoding": "gzip"}, nil)
	if dl.status != 200 || !bytes.Equal(dl.body, data) || !strings.HasPrefix(dl.header.Get("Content-Disposition"), "attachment") {
		t.Fatalf("download: %d, %d bytes, %v", dl.status, len(dl.body), dl.header)
	}
	rg := doHTTP(t, s, "GET", r.json(t)["url"].(string), tok, map[string]string{"Range": "bytes=100-199"}, nil)
	if rg.status != http.StatusPartialContent || !bytes.Equal(rg.body, data[100:200]) {
		t.Fatalf("range: %d, %d bytes", rg.status, len(rg.body))
	}
}

// TestAttachmentHistoryFromJoin: in a group whose history is visible from
// the join, a member who joined later cannot download a file sent before,
// until a message they can read refers to it again.
func TestAttachmentHistoryFromJoin(t *testing.T) {
	s := startServer(t, nil)
	tcp := func() net.Conn { return mqtttest.DialTCP(t, s.Addrs().MQTT) }
	alice := chatConnect(t, s, tcp(), "alice", "phone")
	dave := chatConnect(t, s, tcp(), "dave", "phone")
	aliceTok, daveTok := userToken(t, s, "alice"), userToken(t, s, "dave")
	alice.request(t, map[string]any{"op": "create", "kind": "group", "conv": "club", "members": []string{}})
	alice.request(t, map[string]any{"op": "settings", "conv": "club", "settings": map[string]any{"history": "join"}})
	up := doHTTP(t, s, "POST", "/v1/files?name=old.png", aliceTok, nil, bytes.NewReader(testPNG(t, 20, 20)))
	id := up.json(t)["id"].(string)
	alice.request(t, map[string]any{"conv": "club", "cmid": "p1", "type": "image", "attachment": id, "body": map[string]any{}})
	alice.request(t, map[string]any{"op": "add", "conv": "club", "members": []string{"dave"}})
	if r := doHTTP(t, s, "GET", "/v1/files/"+id, daveTok, nil, nil); r.status != http.StatusNotFound {
		t.Fatalf("dave reads a file sent before he joined: %d", r.status)
	}
	ack := alice.request(t, map[string]any{"conv": "club", "cmid": "p2", "type": "image", "attachment": id, "body": map[string]any{"text": "again"}})
	dave.expectMsg(t, "club", uint64(ack["seq"].(float64)))
	if r := doHTTP(t, s, "GET", "/v1/files/"+id, daveTok, nil, nil); r.status != http.StatusOK {
		t.Fatalf("dave after it was sent again: %d %s", r.status, r.body)
	}
}
