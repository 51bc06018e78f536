package media

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"

	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage"
)

// Create starts a resumable upload of m.Size bytes. Its pieces are then
// sent with Append, in order, each starting where the upload stands
// (Offset tells); the piece that completes it turns it into a file.
func (s *Service) Create(ctx context.Context, who Who, m Meta) (storage.Upload, error) {
	m, err := CheckMeta(m)
	if err != nil {
		return storage.Upload{}, err
	}
	if m.Size <= 0 {
		return storage.Upload{}, badRequest("size: required, a positive number of bytes")
	}
	if limit := s.MaxSize(who.App); m.Size > limit {
		return storage.Upload{}, TooLarge(limit)
	}
	if err := s.checkConv(ctx, who, m.Conv); err != nil {
		return storage.Upload{}, err
	}
	u := storage.Upload{
		App: who.App, ID: newID(), User: who.User, Conv: m.Conv, Name: m.Name, Size: m.Size,
		SHA256: m.SHA256, Created: s.o.Now().UnixMilli(),
	}
	f, err := os.OpenFile(s.partPath(u.App, u.ID), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return u, s.internal("create upload", err)
	}
	_ = f.Close()
	if err := s.store.PutUpload(ctx, u); err != nil {
		_ = os.Remove(s.partPath(u.App, u.ID))
		return u, s.internal("store upload", err)
	}
	return u, nil
}

func (s *Service) partPath(app, id string) string {
	return filepath.Join(s.o.Dir, "uploads", app+"."+id)
}

func errNoUpload(id string) error {
	return protocol.Errorf(protocol.CodeNotFound, "upload %s does not exist", id)
}

// Offset returns an upload of who and how many of its bytes have arrived.
func (s *Service) Offset(ctx context.Context, who Who, id string) (storage.Upload, int64, error) {
	if !protocol.ValidID(id) {
		return storage.Upload{}, 0, errNoUpload(id)
	}
	u, err := s.store.GetUpload(ctx, who.App, id)
	if errors.Is(err, storage.ErrNotFound) || err == nil && u.User != who.User {
		return storage.Upload{}, 0, errNoUpload(id)
	}
	if err != nil {
		return u, 0, s.internal("read upload", err)
	}
	st, err := os.Stat(s.partPath(u.App, u.ID))
	if err != nil {
		return u, 0, s.internal("read upload", err)
	}
	return u, st.Size(), nil
}

// Append writes a piece of an upload that starts at byte c.Offset, which
// must be where the upload stands. The piece is r's content (at most
// c.End-c.Offset bytes if the range is given). Whatever arrives is kept,
// even if r fails half way (a dropped connection): the client asks for
// the offset and sends the rest. Append returns the new offset, and the
// file once the last byte has arrived (the upload is then gone).
func (s *Service) Append(ctx context.Context, who Who, id string, c Chunk, r io.Reader) (int64, *storage.File, error) {
	if !s.lock(who.App + "/" + id) {
		return 0, nil, protocol.Errorf(CodeBusy, "another request is writing upload %s", id)
	}
	defer s.unlock(who.App + "/" + id)
	u, off, err := s.Offset(ctx, who, id)
	if err != nil {
		return 0, nil, err
	}
	if c.Total >= 0 && c.Total != u.Size {
		return off, nil, badRequest("Content-Range total %d is not the upload's size %d", c.Total, u.Size)
	}
	if c.Offset != off {
		return off, nil, protocol.Errorf(CodeOffsetMismatch, "the upload stands at offset %d, not %d", off, c.Offset)
	}
	room := u.Size - off
	want := room
	if c.End >= 0 {
		want = c.End - c.Offset
		if want > room {
			return off, nil, TooLarge(u.Size)
		}
	}
	f, err := os.OpenFile(s.partPath(u.App, u.ID), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return off, nil, s.internal("open upload", err)
	}
	n, cerr := io.Copy(f, io.LimitReader(r, want))
	if cerr == nil && c.End < 0 {
		// The piece may not run past the upload's size.
		var one [1]byte
		if k, _ := io.ReadFull(r, one[:]); k > 0 {
			_ = f.Truncate(off)
			_ = f.Close()
			return off, nil, badRequest("the piece runs past the upload's size of %d bytes", u.Size)
		}
	}
	serr := f.Sync()
	_ = f.Close()
	off += n
	if serr != nil {
		return off, nil, s.internal("write upload", serr)
	}
	if cerr != nil {
		var pe *protocol.Error
		if errors.As(cerr, &pe) {
			return off, nil, pe
		}
		return off, nil, badRequest("reading the body ended early at offset %d: %v", off, cerr)
	}
	if c.End >= 0 && n < want {
		return off, nil, badRequest("the body has %d bytes, the range announced %d", n, want)
	}
	if off < u.Size {
		return off, nil, nil
	}
	part, err := os.Open(s.partPath(u.App, u.ID))
	if err != nil {
		return off, nil, s.internal("open upload", err)
	}
	defer part.Close()
	rec, err := s.finish(ctx, Who{App: u.App, User: u.User}, Meta{Size: u.Size, SHA256: u.SHA256, Name: u.Name, Conv: u.Conv}, part)
	if err != nil {
		var pe *protocol.Error
		if errors.As(err, &pe) && pe.Code == CodeHashMismatch {
			s.discard(ctx, u)
		}
		return off, nil, err
	}
	s.discard(ctx, u)
	return off, &rec, nil
}

// Cancel abandons an upload of who.
func (s *Service) Cancel(ctx context.Context, who Who, id string) error {
	u, _, err := s.Offset(ctx, who, id)
	if err != nil {
		return err
	}
	s.discard(ctx, u)
	return nil
}

// discard removes an upload's record and partial file (its blob, if it
// was finished, stays).
func (s *Service) discard(ctx context.Context, u storage.Upload) {
	if err := s.store.DeleteUpload(context.WithoutCancel(ctx), u.App, u.ID); err != nil {
		s.log.Warn("media: could not delete upload record", "upload", u.ID, "err", err)
	}
	_ = os.Remove(s.partPath(u.App, u.ID))
}

func (s *Service) lock(k string) bool {
	s.busyMu.Lock()
	defer s.busyMu.Unlock()
	if s.busy[k] {
		return false
	}
	s.busy[k] = true
	return true
}

func (s *Service) unlock(k string) {
	s.busyMu.Lock()
	delete(s.busy, k)
	s.busyMu.Unlock()
}
