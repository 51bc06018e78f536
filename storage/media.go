package storage

// Media persistence contracts: the records of uploaded files and of
// uploads in progress. The bytes themselves live in files under the data
// directory (the media package owns them); these records say who uploaded
// what, which conversations may read it, and how far a resumable upload
// has come.

import "context"

// File is the record of one stored upload. Its content is the blob named by
// SHA256; several records may share a blob (the same bytes uploaded twice).
type File struct {
	App      string   `json:"app"`
	ID       string   `json:"id"`
	Uploader string   `json:"uploader"`
	Convs    []string `json:"convs,omitempty"`  // conversations whose members may read it
	Linked   bool     `json:"linked,omitempty"` // a message refers to it; never collected as an orphan
	// Seqs holds, per conversation of Convs, the seq of the latest message
	// that referred to the file there (absent if unknown): a member who
	// may not read that message (history visible from the join) may not
	// read the file either.
	Seqs   map[string]uint64 `json:"seqs,omitempty"`
	Size   int64             `json:"size"`
	Type   string            `json:"type"` // sniffed MIME type
	Name   string            `json:"name,omitempty"`
	SHA256 string            `json:"sha256"` // hex
	Width  int               `json:"width,omitempty"`
	Height int               `json:"height,omitempty"`
	// Thumb is the MIME type of the thumbnail blob, "" if there is none.
	Thumb       string `json:"thumb,omitempty"`
	ThumbWidth  int    `json:"thumb_width,omitempty"`
	ThumbHeight int    `json:"thumb_height,omitempty"`
	Created     int64  `json:"created"` // unix ms
}

// Upload is a resumable upload in progress. How many bytes have arrived is
// the length of its partial file, not part of the record.
type Upload struct {
	App     string `json:"app"`
	ID      string `json:"id"`
	User    string `json:"user"`
	Conv    string `json:"conv,omitempty"`
	Name    string `json:"name,omitempty"`
	Size    int64  `json:"size"`
	SHA256  string `json:"sha256,omitempty"` // expected hex digest, if the client gave one
	Created int64  `json:"created"`          // unix ms
}

// MediaStore stores file and upload records.
type MediaStore interface {
	// PutFile writes f durably (creating or replacing it).
	PutFile(ctx context.Context, f File) error
	// GetFile returns ErrNotFound if there is no such file.
	GetFile(ctx context.Context, app, id string) (File, error)
	// LinkFile adds conv to the file's conversations (if it is not there)
	// and marks it linked, atomically; with seq > 0 it also records seq
	// as the latest message of conv that referred to it (keeping a higher
	// one). ErrNotFound if there is no such file. The write is durable
	// once the next Sync (or synced write) returns.
	LinkFile(ctx context.Context, app, id, conv string, seq uint64) (File, error)
	// DeleteOrphan removes the record if it is not linked, atomically with
	// that check (a LinkFile racing with it either wins, and the record
	// stays, or finds no record). It reports whether it deleted it (a
	// missing record is not an error) and how many records of any app
	// still refer to the same blob.
	DeleteOrphan(ctx context.Context, app, id string) (deleted bool, remaining int, err error)
	// BlobRefs is how many file records refer to the blob sha256.
	BlobRefs(ctx context.Context, sha256 string) (int, error)
	// WalkFiles calls fn for every file record until fn returns an error.
	// fn must not call the store.
	WalkFiles(ctx context.Context, fn func(File) error) error
	// WalkOrphans calls fn for every file that is not linked (no message
	// refers to it), with when it was stored, until fn returns an error.
	// fn may call the store.
	WalkOrphans(ctx context.Context, fn func(app, id string, created int64) error) error

	// PutUpload, GetUpload and DeleteUpload keep upload records
	// (ErrNotFound for a missing one on Get); WalkUploads visits them all.
	PutUpload(ctx context.Context, u Upload) error
	GetUpload(ctx context.Context, app, id string) (Upload, error)
	DeleteUpload(ctx context.Context, app, id string) error
	WalkUploads(ctx context.Context, fn func(Upload) error) error
}
