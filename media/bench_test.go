package media_test

import (
	"bytes"
	"context"
	"testing"

	"github.com/warblerim/warbler/media"
)

// BenchmarkPutPhoto stores a 12-megapixel JPEG: digest, sniffing,
// dimensions and the 320 px thumbnail (decode, box filter, encode). Each
// iteration changes one byte so that the thumbnail is made again.
func BenchmarkPutPhoto(b *testing.B) {
	s, _ := newService(b, media.Options{})
	data := jpegBytes(b, 4000, 3000)
	ctx := context.Background()
	who := media.Who{App: "demo", User: "alice"}
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		data[len(data)-3] = byte(i) // inside the JPEG's last scan; still decodes
		if _, err := s.Put(ctx, who, media.Meta{Size: -1}, bytes.NewReader(data)); err != nil {
			b.Fatal(err)
		}
	}
}
