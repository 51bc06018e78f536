package media

import (
	"strings"
	"testing"
)

// FuzzParseCreate: the JSON that starts a resumable upload never panics,
// and whatever it accepts is valid.
func FuzzParseCreate(f *testing.F) {
	f.Add([]byte(`{"size":10,"sha256":"` + strings.Repeat("ab", 32) + `","name":"a/b.png","conv":"g1"}`))
	f.Add([]byte(`{"size":-1}`))
	f.Add([]byte(`{"size":1,"name":"\u0000"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseCreate(b)
		if err != nil {
			return
		}
		if m.Size <= 0 || len(m.Name) > maxNameBytes || strings.ContainsAny(m.Name, `/\`) || (m.SHA256 != "" && len(m.SHA256) != 64) {
			t.Fatalf("accepted %q as %+v", b, m)
		}
		if _, err := CheckMeta(m); err != nil {
			t.Fatalf("accepted meta fails its own check: %+v %v", m, err)
		}
	})
}

// FuzzParseChunk: the Upload-Offset and Content-Range headers never panic,
// and an accepted position is consistent.
func FuzzParseChunk(f *testing.F) {
	f.Add("0", "")
	f.Add("", "bytes 0-99/200")
	f.Add("100", "bytes 100-199/*")
	f.Add("5", "bytes 6-7/8")
	f.Add("", "bytes 9-3/2")
	f.Fuzz(func(t *testing.T, off, cr string) {
		c, err := ParseChunk(off, cr)
		if err != nil {
			return
		}
		if c.Offset < 0 || (c.End >= 0 && c.End <= c.Offset) || (c.Total >= 0 && c.End > c.Total) {
			t.Fatalf("ParseChunk(%q, %q) = %+v", off, cr, c)
		}
	})
}

func TestParseChunk(t *testing.T) {
	for _, tc := range []struct {
		off, cr string
		want    Chunk
		ok      bool
	}{
		{"0", "", Chunk{0, -1, -1}, true},
		{"", "bytes 10-19/100", Chunk{10, 20, 100}, true},
		{"10", "bytes 10-19/*", Chunk{10, 20, -1}, true},
		{"11", "bytes 10-19/100", Chunk{}, false},
		{"", "bytes 10-19/15", Chunk{}, false},
		{"", "", Chunk{}, false},
		{"-1", "", Chunk{}, false},
		{"+1", "", Chunk{}, false},
		{"", "items 1-2/3", Chunk{}, false},
	} {
		got, err := ParseChunk(tc.off, tc.cr)
		if (err == nil) != tc.ok || tc.ok && got != tc.want {
			t.Errorf("ParseChunk(%q, %q) = %+v, %v", tc.off, tc.cr, got, err)
		}
	}
}
