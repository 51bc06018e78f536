package media

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"io"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/warblerim/warbler/protocol"
)

// Meta is what a client says about an upload: all of it optional except
// Size for a resumable upload. None of it is trusted for the file's type,
// which is sniffed from the content.
type Meta struct {
	// Size is the length in bytes; -1 when unknown (a single-shot upload
	// without Content-Length).
	Size int64 `json:"size"`
	// SHA256 is the expected hex digest; the upload fails if the content
	// does not match it.
	SHA256 string `json:"sha256,omitempty"`
	// Name is the file name to show, without any directory.
	Name string `json:"name,omitempty"`
	// Conv is the conversation the file is for: its members may read it
	// from the start (the uploader must be a member).
	Conv string `json:"conv,omitempty"`
}

const maxNameBytes = 255

// ParseCreate decodes the JSON body that starts a resumable upload:
// {"size": N, "sha256": "hex", "name": "photo.jpg", "conv": "ID"}. Size is
// required and positive; unknown fields, trailing data and invalid values
// are refused with a bad_request *protocol.Error.
func ParseCreate(body []byte) (Meta, error) {
	var m struct {
		Size   *int64 `json:"size"`
		SHA256 string `json:"sha256"`
		Name   string `json:"name"`
		Conv   string `json:"conv"`
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return Meta{}, badRequest("invalid JSON body: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Meta{}, badRequest("unexpected data after the JSON body")
	}
	if m.Size == nil || *m.Size <= 0 {
		return Meta{}, badRequest("size: required, a positive number of bytes")
	}
	return CheckMeta(Meta{Size: *m.Size, SHA256: m.SHA256, Name: m.Name, Conv: m.Conv})
}

// CheckMeta validates and normalises m: the digest is lower-cased, the
// name cleaned (see CleanName) and the conversation ID checked.
func CheckMeta(m Meta) (Meta, error) {
	if m.SHA256 != "" {
		m.SHA256 = strings.ToLower(m.SHA256)
		if b, err := hex.DecodeString(m.SHA256); err != nil || len(b) != 32 {
			return Meta{}, badRequest("sha256: must be 64 hexadecimal digits")
		}
	}
	name, err := CleanName(m.Name)
	if err != nil {
		return Meta{}, err
	}
	m.Name = name
	if m.Conv != "" && !protocol.ValidID(m.Conv) {
		return Meta{}, badRequest("conv: %s", protocol.ErrBadID)
	}
	return m, nil
}

// CleanName returns the last path element of a client's file name (either
// slash), refusing invalid UTF-8, control characters and names longer than
// 255 bytes. "" stays "".
func CleanName(name string) (string, error) {
	if i := strings.LastIndexAny(name, `/\`); i >= 0 {
		name = name[i+1:]
	}
	name = strings.TrimSpace(name)
	if name == "." || name == ".." {
		name = ""
	}
	if len(name) > maxNameBytes || !utf8.ValidString(name) {
		return "", badRequest("name: at most %d bytes of UTF-8", maxNameBytes)
	}
	for _, r := range name {
		if unicode.IsControl(r) || r == utf8.RuneError {
			return "", badRequest("name: control characters are not allowed")
		}
	}
	return name, nil
}

// Chunk is where a piece of a resumable upload goes, from its request
// headers.
type Chunk struct {
	Offset int64 // first byte of the piece
	End    int64 // last byte + 1, or -1 if not given
	Total  int64 // the whole upload's size, or -1 if not given
}

// ParseChunk reads the position of a piece of a resumable upload from the
// Upload-Offset header (a decimal byte offset, as in tus) or the
// Content-Range header ("bytes START-END/TOTAL" or "bytes START-END/*",
// END inclusive). One of them is required; if both are given they must
// agree.
func ParseChunk(uploadOffset, contentRange string) (Chunk, error) {
	c := Chunk{Offset: -1, End: -1, Total: -1}
	if uploadOffset != "" {
		n, err := parseUint(uploadOffset)
		if err != nil {
			return Chunk{}, badRequest("Upload-Offset: %v", err)
		}
		c.Offset = n
	}
	if contentRange != "" {
		cr, err := parseContentRange(contentRange)
		if err != nil {
			return Chunk{}, err
		}
		if c.Offset >= 0 && c.Offset != cr.Offset {
			return Chunk{}, badRequest("Upload-Offset %d and Content-Range start %d disagree", c.Offset, cr.Offset)
		}
		c = cr
	}
	if c.Offset < 0 {
		return Chunk{}, badRequest("Upload-Offset or Content-Range: one is required")
	}
	return c, nil
}

func parseContentRange(s string) (Chunk, error) {
	rest, ok := strings.CutPrefix(strings.TrimSpace(s), "bytes ")
	if !ok {
		return Chunk{}, badRequest("Content-Range: expected \"bytes START-END/TOTAL\"")
	}
	rng, total, ok := strings.Cut(rest, "/")
	if !ok {
		return Chunk{}, badRequest("Content-Range: expected \"bytes START-END/TOTAL\"")
	}
	a, b, ok := strings.Cut(rng, "-")
	if !ok {
		return Chunk{}, badRequest("Content-Range: expected \"bytes START-END/TOTAL\"")
	}
	start, err := parseUint(a)
	if err != nil {
		return Chunk{}, badRequest("Content-Range start: %v", err)
	}
	last, err := parseUint(b)
	if err != nil {
		return Chunk{}, badRequest("Content-Range end: %v", err)
	}
	if last < start || last == 1<<63-1 {
		return Chunk{}, badRequest("Content-Range: end before start")
	}
	c := Chunk{Offset: start, End: last + 1, Total: -1}
	if total != "*" {
		t, err := parseUint(total)
		if err != nil {
			return Chunk{}, badRequest("Content-Range total: %v", err)
		}
		if c.End > t {
			return Chunk{}, badRequest("Content-Range: range ends past the total")
		}
		c.Total = t
	}
	return c, nil
}

// parseUint parses a non-negative decimal of at most 18 digits (so that
// sums of two stay far from overflow).
func parseUint(s string) (int64, error) {
	s = strings.TrimSpace(s)
	if s == "" || len(s) > 18 {
		return 0, errNumber
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, errNumber
		}
	}
	return strconv.ParseInt(s, 10, 64)
}

var errNumber = badRequest("must be a decimal number of bytes")

func badRequest(format string, a ...any) *protocol.Error {
	return protocol.Errorf(protocol.CodeBadRequest, format, a...)
}
