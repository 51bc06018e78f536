package media_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/warblerim/warbler/media"
	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage/badgerstore"
)

// members is a fixed membership table: conversation -> users.
type members map[string][]string

func (m members) CanRead(ctx context.Context, app, user, conv string, _ uint64) (bool, error) {
	return m.IsMember(ctx, app, conv, user)
}

func (m members) IsMember(_ context.Context, _, conv, user string) (bool, error) {
	for _, u := range m[conv] {
		if u == user {
			return true, nil
		}
	}
	return false, nil
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newService(t testing.TB, o media.Options) (*media.Service, string) {
	t.Helper()
	db, err := badgerstore.Open(t.TempDir(), badgerstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	dir := t.TempDir()
	o.Store, o.Dir = badgerstore.NewMediaStore(db), dir
	if o.Members == nil {
		o.Members = members{"g1": {"alice", "bob"}, "g2": {"carol"}}
	}
	s, err := media.New(o)
	if err != nil {
		t.Fatal(err)
	}
	return s, dir
}

func pngBytes(t testing.TB, w, h int) []byte {
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			img.Set(x, y, color.NRGBA{uint8(x), uint8(y), 200, 255})
		}
	}
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func jpegBytes(t testing.TB, w, h int) []byte {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			img.Set(x, y, color.RGBA{uint8(x), 100, uint8(y), 255})
		}
	}
	var b bytes.Buffer
	if err := jpeg.Encode(&b, img, nil); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func code(err error) string {
	var pe *protocol.Error
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

func TestPutSniffsDedupesAndThumbnails(t *testing.T) {
	s, dir := newService(t, media.Options{ThumbSize: 100})
	ctx := context.Background()
	alice := media.Who{App: "demo", User: "alice"}
	data := pngBytes(t, 300, 150)
	f, err := s.Put(ctx, alice, media.Meta{Size: -1, Name: "../../etc/cat.png", Conv: "g1"}, bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	if f.Type != "image/png" || f.Size != int64(len(data)) || f.SHA256 != hex.EncodeToString(sum[:]) || f.Name != "cat.png" {
		t.Fatalf("file %+v", f)
	}
	if f.Width != 300 || f.Height != 150 || f.Thumb != "image/png" || f.ThumbWidth != 100 || f.ThumbHeight != 50 {
		t.Fatalf("image facts %+v", f)
	}
	_, th, err := s.OpenThumb(ctx, alice, f.ID)
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(th)
	th.Close()
	if err != nil || img.Bounds().Dx() != 100 || img.Bounds().Dy() != 50 {
		t.Fatalf("thumbnail: %v %v", err, img.Bounds())
	}

	// The same bytes again: a new record, one blob.
	f2, err := s.Put(ctx, media.Who{App: "demo", User: "bob"}, media.Meta{Size: int64(len(data))}, bytes.NewReader(data))
	if err != nil || f2.ID == f.ID || f2.SHA256 != f.SHA256 || f2.Thumb == "" {
		t.Fatalf("second put: %+v %v", f2, err)
	}
	blobs := 0
	filepath.Walk(filepath.Join(dir, "blobs"), func(p string, fi os.FileInfo, _ error) error {
		if fi != nil && !fi.IsDir() && !strings.HasSuffix(p, ".thumb") {
			blobs++
		}
		return nil
	})
	if blobs != 1 {
		t.Fatalf("%d blobs for one content", blobs)
	}

	// Not an image, whatever the name says.
	f3, err := s.Put(ctx, alice, media.Meta{Size: -1, Name: "x.png"}, strings.NewReader("just text\n"))
	if err != nil || !strings.HasPrefix(f3.Type, "text/plain") || f3.Thumb != "" || f3.Width != 0 {
		t.Fatalf("text: %+v %v", f3, err)
	}
	// A JPEG gets a JPEG thumbnail.
	f4, err := s.Put(ctx, alice, media.Meta{Size: -1}, bytes.NewReader(jpegBytes(t, 80, 240)))
	if err != nil || f4.Type != "image/jpeg" || f4.Thumb != "image/jpeg" || f4.ThumbWidth != 33 || f4.ThumbHeight != 100 {
		t.Fatalf("jpeg: %+v %v", f4, err)
	}
}

func TestAccessAndLimits(t *testing.T) {
	s, _ := newService(t, media.Options{MaxSize: func(string) int64 { return 1000 }})
	ctx := context.Background()
	alice, bob, carol := media.Who{App: "demo", User: "alice"}, media.Who{App: "demo", User: "bob"}, media.Who{App: "demo", User: "carol"}
	if _, err := s.Put(ctx, alice, media.Meta{Size: -1}, bytes.NewReader(make([]byte, 1001))); code(err) != protocol.CodeTooLarge {
		t.Fatalf("over the limit: %v", err)
	}
	if _, err := s.Put(ctx, carol, media.Meta{Size: -1, Conv: "g1"}, strings.NewReader("x")); code(err) != protocol.CodeNotMember {
		t.Fatalf("upload for another conversation: %v", err)
	}
	f, err := s.Put(ctx, alice, media.Meta{Size: -1}, strings.NewReader("hello"))
	if err != nil {
		t.Fatal(err)
	}
	// Not shared yet: only alice reads it.
	if _, err := s.Info(ctx, bob, f.ID); code(err) != protocol.CodeNotFound {
		t.Fatalf("bob before sharing: %v", err)
	}
	// Carol may not attach it: she cannot read it.
	if _, err := s.Attach(ctx, "demo", "carol", "g2", f.ID); code(err) != protocol.CodeNotFound {
		t.Fatalf("carol attaches alice's file: %v", err)
	}
	a, err := s.Attach(ctx, "demo", "alice", "g1", f.ID)
	if err != nil || a.URL != "/v1/files/"+f.ID || a.Size != 5 {
		t.Fatalf("attach: %+v %v", a, err)
	}
	if _, err := s.Info(ctx, bob, f.ID); err != nil {
		t.Fatalf("bob after sharing: %v", err)
	}
	if _, err := s.Info(ctx, carol, f.ID); code(err) != protocol.CodeNotFound {
		t.Fatalf("carol: %v", err)
	}
	if _, err := s.Info(ctx, media.Who{App: "other", User: "alice"}, f.ID); code(err) != protocol.CodeNotFound {
		t.Fatalf("other app: %v", err)
	}
}

func TestResumableUpload(t *testing.T) {
	s, _ := newService(t, media.Options{})
	ctx := context.Background()
	alice := media.Who{App: "demo", User: "alice"}
	data := jpegBytes(t, 400, 300)
	sum := sha256.Sum256(data)
	u, err := s.Create(ctx, alice, media.Meta{Size: int64(len(data)), SHA256: hex.EncodeToString(sum[:])})
	if err != nil {
		t.Fatal(err)
	}
	half := len(data) / 2
	// A piece whose reader fails half way: what arrived is kept.
	off, f, err := s.Append(ctx, alice, u.ID, media.Chunk{Offset: 0, End: -1, Total: -1}, &failingReader{data: data[:half]})
	if err == nil || f != nil || off != int64(half) {
		t.Fatalf("broken piece: off %d file %v err %v", off, f, err)
	}
	if _, got, _ := s.Offset(ctx, alice, u.ID); got != int64(half) {
		t.Fatalf("offset %d, want %d", got, half)
	}
	if _, _, err := s.Offset(ctx, media.Who{App: "demo", User: "bob"}, u.ID); code(err) != protocol.CodeNotFound {
		t.Fatalf("bob sees alice's upload: %v", err)
	}
	if _, _, err := s.Append(ctx, alice, u.ID, media.Chunk{Offset: 0, End: -1, Total: -1}, bytes.NewReader(data)); code(err) != media.CodeOffsetMismatch {
		t.Fatalf("wrong offset: %v", err)
	}
	off, f, err = s.Append(ctx, alice, u.ID, media.Chunk{Offset: int64(half), End: int64(len(data)), Total: int64(len(data))}, bytes.NewReader(data[half:]))
	if err != nil || f == nil || off != int64(len(data)) || f.SHA256 != hex.EncodeToString(sum[:]) || f.Width != 400 {
		t.Fatalf("completing piece: %d %+v %v", off, f, err)
	}
	if _, _, err := s.Offset(ctx, alice, u.ID); code(err) != protocol.CodeNotFound {
		t.Fatalf("finished upload still there: %v", err)
	}

	// A digest that does not match discards the upload.
	u2, err := s.Create(ctx, alice, media.Meta{Size: 3, SHA256: strings.Repeat("0", 64)})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Append(ctx, alice, u2.ID, media.Chunk{Offset: 0, End: -1, Total: -1}, strings.NewReader("abc")); code(err) != media.CodeHashMismatch {
		t.Fatalf("bad digest: %v", err)
	}
	// A piece past the size is refused and leaves the offset alone.
	u3, _ := s.Create(ctx, alice, media.Meta{Size: 3})
	if _, _, err := s.Append(ctx, alice, u3.ID, media.Chunk{Offset: 0, End: -1, Total: -1}, strings.NewReader("abcd")); code(err) != protocol.CodeBadRequest {
		t.Fatalf("long piece: %v", err)
	}
	if _, got, _ := s.Offset(ctx, alice, u3.ID); got != 0 {
		t.Fatalf("offset after refused piece: %d", got)
	}
}

type failingReader struct {
	data []byte
}

func (r *failingReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, errors.New("connection reset")
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

func TestSweepRemovesOrphans(t *testing.T) {
	c := &clock{t: time.Unix(1_800_000_000, 0)}
	s, dir := newService(t, media.Options{OrphanTTL: time.Hour, Now: c.now})
	ctx := context.Background()
	alice := media.Who{App: "demo", User: "alice"}
	orphan, _ := s.Put(ctx, alice, media.Meta{Size: -1}, strings.NewReader("orphan"))
	kept, _ := s.Put(ctx, alice, media.Meta{Size: -1}, strings.NewReader("kept"))
	if _, err := s.Attach(ctx, "demo", "alice", "g1", kept.ID); err != nil {
		t.Fatal(err)
	}
	u, _ := s.Create(ctx, alice, media.Meta{Size: 10})
	if st, _ := s.Sweep(ctx); st != (media.SweepStats{}) {
		t.Fatalf("swept young uploads: %+v", st)
	}
	c.add(2 * time.Hour)
	st, err := s.Sweep(ctx)
	if err != nil || st.Files != 1 || st.Blobs != 1 || st.Uploads != 1 {
		t.Fatalf("sweep: %+v %v", st, err)
	}
	if _, err := s.Info(ctx, alice, orphan.ID); code(err) != protocol.CodeNotFound {
		t.Fatalf("orphan still there: %v", err)
	}
	if _, r, err := s.Open(ctx, alice, kept.ID); err != nil {
		t.Fatalf("linked file swept: %v", err)
	} else {
		r.Close()
	}
	if _, _, err := s.Offset(ctx, alice, u.ID); code(err) != protocol.CodeNotFound {
		t.Fatalf("stale upload still there: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "uploads", "demo."+u.ID)); !os.IsNotExist(err) {
		t.Fatalf("partial file left: %v", err)
	}
}
