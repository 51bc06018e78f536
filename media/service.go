package media

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage"
)

// Error codes of media operations, besides the protocol's own (bad_request,
// too_large, not_found, not_member, forbidden, internal). The HTTP API maps
// them to statuses.
const (
	// CodeOffsetMismatch: a piece of a resumable upload does not start
	// where the upload stands (the message says where); HTTP 409.
	CodeOffsetMismatch = "offset_mismatch"
	// CodeBusy: another request is writing the same upload; HTTP 409.
	CodeBusy = "busy"
	// CodeHashMismatch: the content does not have the announced SHA-256;
	// the upload is discarded; HTTP 422.
	CodeHashMismatch = "hash_mismatch"
)

// DefaultMaxSize is the upload size limit when the app sets none.
const DefaultMaxSize = 100 << 20

// Members answers whether a user is a member of a conversation and may
// read a given message of it; the chat service implements it.
type Members interface {
	IsMember(ctx context.Context, app, conv, user string) (bool, error)
	CanRead(ctx context.Context, app, user, conv string, seq uint64) (bool, error)
}

// Options configure a Service. Store, Dir and Members are required.
type Options struct {
	Store storage.MediaStore
	// Dir holds the blobs and the partial files of uploads in progress.
	Dir     string
	Members Members
	// MaxSize returns an app's upload limit in bytes; nil or a result <= 0
	// means DefaultMaxSize.
	MaxSize func(app string) int64
	// OrphanTTL is how long an upload may stay unreferenced by any message
	// (and an unfinished resumable upload may stay unfinished) before the
	// sweeper removes it. Default 24 h.
	OrphanTTL time.Duration
	// ThumbSize is the box a thumbnail fits in, in pixels (default 320).
	ThumbSize int
	// MaxPixels bounds the images the server decodes for a thumbnail
	// (default 40 million pixels); larger ones get dimensions only.
	MaxPixels int
	Now       func() time.Time
	Logger    *slog.Logger
}

// Who is the authenticated user making a request.
type Who struct{ App, User string }

// Service stores uploads and answers downloads. It is safe for concurrent
// use by one process; blob writes and removals are serialised in it.
type Service struct {
	o     Options
	store storage.MediaStore
	log   *slog.Logger

	blobMu sync.Mutex // a blob's arrival and its removal

	busyMu sync.Mutex
	busy   map[string]bool // uploads with a request writing them

	stored, swept atomic.Uint64
}

// Stats are the Service's counters.
type Stats struct {
	Stored uint64 // uploads stored as files
	Swept  uint64 // orphaned files removed
}

// Stats returns the Service's counters.
func (s *Service) Stats() Stats { return Stats{Stored: s.stored.Load(), Swept: s.swept.Load()} }

// New returns a Service and creates its directories.
func New(o Options) (*Service, error) {
	if o.Store == nil || o.Dir == "" || o.Members == nil {
		return nil, errors.New("media: Options.Store, Dir and Members are required")
	}
	if o.OrphanTTL <= 0 {
		o.OrphanTTL = 24 * time.Hour
	}
	if o.ThumbSize <= 0 {
		o.ThumbSize = 320
	}
	if o.MaxPixels <= 0 {
		o.MaxPixels = 40 << 20
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	for _, d := range []string{"blobs", "uploads", "tmp"} {
		if err := os.MkdirAll(filepath.Join(o.Dir, d), 0o700); err != nil {
			return nil, fmt.Errorf("media dir: %w", err)
		}
	}
	return &Service{o: o, store: o.Store, log: o.Logger, busy: map[string]bool{}}, nil
}

// MaxSize is the upload limit of app.
func (s *Service) MaxSize(app string) int64 {
	if s.o.MaxSize != nil {
		if n := s.o.MaxSize(app); n > 0 {
			return n
		}
	}
	return DefaultMaxSize
}

// TooLarge is the error of an upload past limit bytes.
func TooLarge(limit int64) error {
	return protocol.Errorf(protocol.CodeTooLarge, "upload exceeds the limit of %d bytes", limit)
}

func errNoFile(id string) error {
	return protocol.Errorf(protocol.CodeNotFound, "file %s does not exist or you may not read it", id)
}

func (s *Service) internal(what string, err error) error {
	var pe *protocol.Error
	if errors.As(err, &pe) {
		return pe
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return protocol.Errorf(protocol.CodeUnavailable, "%s: timed out; retry", what)
	}
	s.log.Error("media storage failure", "op", what, "err", err)
	return protocol.Errorf(protocol.CodeInternal, "%s failed; retry", what)
}

var b32 = base32.StdEncoding.WithPadding(base32.NoPadding)

func newID() string {
	var b [15]byte
	_, _ = rand.Read(b[:])
	return strings.ToLower(b32.EncodeToString(b[:]))
}

// checkConv refuses a conversation the uploader is not a member of.
func (s *Service) checkConv(ctx context.Context, who Who, conv string) error {
	if conv == "" {
		return nil
	}
	ok, err := s.o.Members.IsMember(ctx, who.App, conv, who.User)
	if err != nil {
		return s.internal("check membership", err)
	}
	if !ok {
		return protocol.Errorf(protocol.CodeNotMember, "conversation %s does not exist or you are not a member", conv)
	}
	return nil
}

// Put stores a whole upload read from r (a single request). m.Size, if not
// -1, is the announced length: a body longer than the limit is refused
// before it is read, and one that does not match is refused after.
func (s *Service) Put(ctx context.Context, who Who, m Meta, r io.Reader) (storage.File, error) {
	m, err := CheckMeta(m)
	if err != nil {
		return storage.File{}, err
	}
	limit := s.MaxSize(who.App)
	if m.Size > limit {
		return storage.File{}, TooLarge(limit)
	}
	if err := s.checkConv(ctx, who, m.Conv); err != nil {
		return storage.File{}, err
	}
	tmp, err := os.CreateTemp(filepath.Join(s.o.Dir, "tmp"), "put-*")
	if err != nil {
		return storage.File{}, s.internal("create temp file", err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	n, err := io.Copy(tmp, io.LimitReader(r, limit+1))
	if err != nil {
		var pe *protocol.Error
		if errors.As(err, &pe) {
			return storage.File{}, err
		}
		return storage.File{}, protocol.Errorf(protocol.CodeBadRequest, "reading the body: %v", err)
	}
	if n > limit {
		return storage.File{}, TooLarge(limit)
	}
	if n == 0 {
		return storage.File{}, badRequest("the upload is empty")
	}
	if m.Size >= 0 && n != m.Size {
		return storage.File{}, badRequest("got %d bytes, announced %d", n, m.Size)
	}
	return s.finish(ctx, who, m, tmp)
}

// finish turns a complete temp file into a stored file: digest, sniffed
// type, image dimensions and thumbnail, blob in place, record written.
func (s *Service) finish(ctx context.Context, who Who, m Meta, f *os.File) (storage.File, error) {
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return storage.File{}, s.internal("read upload", err)
	}
	h := sha256.New()
	head := make([]byte, 512)
	hn, _ := io.ReadFull(f, head)
	head = head[:hn]
	h.Write(head)
	size, err := io.Copy(h, f)
	if err != nil {
		return storage.File{}, s.internal("read upload", err)
	}
	size += int64(hn)
	sum := hex.EncodeToString(h.Sum(nil))
	if m.SHA256 != "" && m.SHA256 != sum {
		return storage.File{}, protocol.Errorf(CodeHashMismatch, "content has SHA-256 %s, announced %s", sum, m.SHA256)
	}
	rec := storage.File{
		App: who.App, ID: newID(), Uploader: who.User, Size: size, Name: m.Name,
		Type: http.DetectContentType(head), SHA256: sum, Created: s.o.Now().UnixMilli(),
	}
	if m.Conv != "" {
		rec.Convs = []string{m.Conv}
	}
	if err := f.Sync(); err != nil {
		return storage.File{}, s.internal("sync upload", err)
	}

	s.blobMu.Lock()
	defer s.blobMu.Unlock()
	blob := s.blobPath(sum)
	if _, err := os.Stat(blob); err != nil {
		if err := os.MkdirAll(filepath.Dir(blob), 0o700); err != nil {
			return storage.File{}, s.internal("store blob", err)
		}
		if err := os.Rename(f.Name(), blob); err != nil {
			return storage.File{}, s.internal("store blob", err)
		}
		syncDir(filepath.Dir(blob))
	}
	if err := s.describeImage(&rec, blob); err != nil {
		s.log.Warn("media: no thumbnail", "file", rec.ID, "type", rec.Type, "err", err)
	}
	if err := s.store.PutFile(ctx, rec); err != nil {
		return storage.File{}, s.internal("store file record", err)
	}
	s.stored.Add(1)
	return rec, nil
}

// blobPath is where the content with digest sum lives: blobs/ab/cd/abcd....
func (s *Service) blobPath(sum string) string {
	return filepath.Join(s.o.Dir, "blobs", sum[:2], sum[2:4], sum)
}

func (s *Service) thumbPath(sum string) string { return s.blobPath(sum) + ".thumb" }

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
}

// Info returns the record of a file who may read.
func (s *Service) Info(ctx context.Context, who Who, id string) (storage.File, error) {
	if !protocol.ValidID(id) {
		return storage.File{}, errNoFile(id)
	}
	f, err := s.store.GetFile(ctx, who.App, id)
	if errors.Is(err, storage.ErrNotFound) {
		return f, errNoFile(id)
	}
	if err != nil {
		return f, s.internal("read file record", err)
	}
	ok, err := s.canRead(ctx, who, f)
	if err != nil {
		return f, err
	}
	if !ok {
		return storage.File{}, errNoFile(id)
	}
	return f, nil
}

// canRead: the uploader, and members of the conversations the file was
// uploaded for or sent to who may read the message that sent it there.
func (s *Service) canRead(ctx context.Context, who Who, f storage.File) (bool, error) {
	if f.App != who.App {
		return false, nil
	}
	if f.Uploader == who.User {
		return true, nil
	}
	for _, c := range f.Convs {
		var ok bool
		var err error
		if seq := f.Seqs[c]; seq > 0 {
			ok, err = s.o.Members.CanRead(ctx, who.App, who.User, c, seq)
		} else {
			ok, err = s.o.Members.IsMember(ctx, who.App, c, who.User)
		}
		if err != nil {
			return false, s.internal("check membership", err)
		}
		if ok {
			return true, nil
		}
	}
	return false, nil
}

// Open returns a file who may read and its content; the caller closes it.
func (s *Service) Open(ctx context.Context, who Who, id string) (storage.File, *os.File, error) {
	f, err := s.Info(ctx, who, id)
	if err != nil {
		return f, nil, err
	}
	r, err := os.Open(s.blobPath(f.SHA256))
	if err != nil {
		return f, nil, s.internal("open blob", err)
	}
	return f, r, nil
}

// OpenThumb returns the thumbnail of an image who may read; not_found if
// the file has none.
func (s *Service) OpenThumb(ctx context.Context, who Who, id string) (storage.File, *os.File, error) {
	f, err := s.Info(ctx, who, id)
	if err != nil {
		return f, nil, err
	}
	if f.Thumb == "" {
		return f, nil, protocol.Errorf(protocol.CodeNotFound, "file %s has no thumbnail", id)
	}
	r, err := os.Open(s.thumbPath(f.SHA256))
	if err != nil {
		return f, nil, s.internal("open thumbnail", err)
	}
	return f, r, nil
}

// Attach is called by the chat service when user sends a message to conv
// (of which the chat service has found them a member) that refers to file
// id. The user must be able to read the file (they uploaded it, or it was
// shared with a conversation they are in: forwarding); the file is then
// linked to conv, so its members may read it and the sweeper keeps it. The
// link is written without a sync of its own: the message's durable append
// that follows syncs it.
func (s *Service) Attach(ctx context.Context, app, user, conv, id string) (*protocol.Attachment, error) {
	f, err := s.Info(ctx, Who{App: app, User: user}, id)
	if err != nil {
		var pe *protocol.Error
		if errors.As(err, &pe) && pe.Code == protocol.CodeNotFound {
			return nil, protocol.Errorf(protocol.CodeNotFound, "attachment: file %s does not exist or you may not use it", id)
		}
		return nil, err
	}
	if f, err = s.store.LinkFile(ctx, app, id, conv, 0); err != nil {
		if errors.Is(err, storage.ErrNotFound) {
			return nil, protocol.Errorf(protocol.CodeNotFound, "attachment: file %s does not exist", id)
		}
		return nil, s.internal("link file", err)
	}
	return Describe(f), nil
}

// Sent records the seq of the message that referred to file id in conv
// (see Attach), once the chat service has assigned it: from then on a
// member of conv may read the file only if they may read that message.
// It is not synced (the message's append syncs it); if it is lost in a
// crash, membership of conv alone decides.
func (s *Service) Sent(ctx context.Context, app, conv, id string, seq uint64) {
	if _, err := s.store.LinkFile(ctx, app, id, conv, seq); err != nil {
		s.log.Warn("media: could not record the message of an attachment", "file", id, "conv", conv, "seq", seq, "err", err)
	}
}

// Describe is the attachment of f as it appears in messages.
func Describe(f storage.File) *protocol.Attachment {
	a := &protocol.Attachment{
		ID: f.ID, URL: "/v1/files/" + f.ID, Type: f.Type, Size: f.Size, SHA256: f.SHA256, Name: f.Name,
		Width: f.Width, Height: f.Height,
	}
	if f.Thumb != "" {
		a.Thumb, a.ThumbWidth, a.ThumbHeight = "/v1/files/"+f.ID+"/thumb", f.ThumbWidth, f.ThumbHeight
	}
	return a
}
