package api

// This file serves attachments to users, authenticated with their access
// token ("Authorization: Bearer TOKEN"; downloads also accept
// ?access_token=TOKEN, for <img src>):
//
//	POST   /v1/files?conv=&name=&sha256=   upload a whole file in the body   201 file
//	POST   /v1/uploads                     start a resumable upload (JSON)   201 upload
//	HEAD   /v1/uploads/{id}                Upload-Offset: bytes received     200
//	GET    /v1/uploads/{id}                the same as JSON                  200 upload
//	PATCH  /v1/uploads/{id}                append a piece (Upload-Offset or
//	PUT    /v1/uploads/{id}                Content-Range)                    204, or 201 file when complete
//	DELETE /v1/uploads/{id}                abandon it                        204
//	GET    /v1/files/{id}                  the content (Range supported)     200/206
//	GET    /v1/files/{id}/thumb            an image's thumbnail              200
//	GET    /v1/files/{id}/info             the file as JSON                  200 file
//
// "file" is the attachment description of protocol.Attachment. Errors:
// 413 too_large past the app's limit, 404 for a file or upload the caller
// may not see (including another conversation's), 409 offset_mismatch
// (with Upload-Offset telling where to resume) or busy, 422 hash_mismatch.

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/warblerim/warbler/identity"
	"github.com/warblerim/warbler/media"
	"github.com/warblerim/warbler/protocol"
)

// MediaOptions configure the attachment routes.
type MediaOptions struct {
	Service  *media.Service
	Identity *identity.Service
}

// MediaAPI serves the attachment routes. Create it with NewMediaAPI.
type MediaAPI struct {
	svc  *media.Service
	auth authz
}

// NewMediaAPI returns the attachment routes.
func NewMediaAPI(o MediaOptions) *MediaAPI {
	return &MediaAPI{svc: o.Service, auth: authz{svc: o.Identity}}
}

// Register mounts the routes on mux. The routes that move file content
// are streams (see StreamMux): they bound their bodies by the app's upload
// limit and time out only when the transfer stalls.
func (m *MediaAPI) Register(mux Mux) {
	stream := mux.Handle
	if sm, ok := mux.(StreamMux); ok {
		stream = sm.HandleStream
	}
	stream("POST /v1/files", HandlerFunc(m.put))
	mux.Handle("POST /v1/uploads", HandlerFunc(m.create))
	mux.Handle("HEAD /v1/uploads/{id}", HandlerFunc(m.offset))
	mux.Handle("GET /v1/uploads/{id}", HandlerFunc(m.offset))
	stream("PATCH /v1/uploads/{id}", HandlerFunc(m.append))
	stream("PUT /v1/uploads/{id}", HandlerFunc(m.append))
	mux.Handle("DELETE /v1/uploads/{id}", HandlerFunc(m.cancel))
	stream("GET /v1/files/{id}", HandlerFunc(m.download))
	stream("GET /v1/files/{id}/thumb", HandlerFunc(m.thumb))
	mux.Handle("GET /v1/files/{id}/info", HandlerFunc(m.info))
}

func (m *MediaAPI) who(r *http.Request, queryToken bool) (media.Who, error) {
	if queryToken && BearerToken(r) == "" {
		if t := r.URL.Query().Get("access_token"); t != "" {
			r.Header.Set("Authorization", "Bearer "+t)
		}
	}
	c, err := m.auth.user(r)
	if err != nil {
		return media.Who{}, err
	}
	return media.Who{App: c.App, User: c.User}, nil
}

// mediaErr maps media errors to HTTP errors.
func mediaErr(w http.ResponseWriter, err error) error {
	var pe *protocol.Error
	if errors.As(err, &pe) {
		switch pe.Code {
		case media.CodeOffsetMismatch, media.CodeBusy:
			return &Error{Status: http.StatusConflict, Code: pe.Code, Message: pe.Message}
		case media.CodeHashMismatch:
			return &Error{Status: http.StatusUnprocessableEntity, Code: pe.Code, Message: pe.Message}
		}
	}
	return chatErr(err)
}

func (m *MediaAPI) put(w http.ResponseWriter, r *http.Request) error {
	who, err := m.who(r, false)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	meta := media.Meta{Size: r.ContentLength, Conv: q.Get("conv"), Name: q.Get("name"), SHA256: q.Get("sha256")}
	if meta.Size < 0 {
		meta.Size = -1
	}
	if limit := m.svc.MaxSize(who.App); meta.Size > limit {
		w.Header().Set("Connection", "close")
		return mediaErr(w, media.TooLarge(limit))
	}
	f, err := m.svc.Put(r.Context(), who, meta, idleReader{r.Body, http.NewResponseController(w)})
	if err != nil {
		return mediaErr(w, err)
	}
	w.Header().Set("Location", "/v1/files/"+f.ID)
	WriteJSON(w, http.StatusCreated, media.Describe(f))
	return nil
}

type uploadView struct {
	ID     string `json:"id"`
	URL    string `json:"url"`
	Size   int64  `json:"size"`
	Offset int64  `json:"offset"`
	Name   string `json:"name,omitempty"`
	Conv   string `json:"conv,omitempty"`
	SHA256 string `json:"sha256,omitempty"`
}

func (m *MediaAPI) create(w http.ResponseWriter, r *http.Request) error {
	who, err := m.who(r, false)
	if err != nil {
		return err
	}
	body, err := readBody(w, r, 4<<10)
	if err != nil {
		return err
	}
	meta, err := media.ParseCreate(body)
	if err != nil {
		return mediaErr(w, err)
	}
	u, err := m.svc.Create(r.Context(), who, meta)
	if err != nil {
		return mediaErr(w, err)
	}
	loc := "/v1/uploads/" + u.ID
	w.Header().Set("Location", loc)
	w.Header().Set("Upload-Offset", "0")
	w.Header().Set("Upload-Length", strconv.FormatInt(u.Size, 10))
	WriteJSON(w, http.StatusCreated, uploadView{ID: u.ID, URL: loc, Size: u.Size, Name: u.Name, Conv: u.Conv, SHA256: u.SHA256})
	return nil
}

func (m *MediaAPI) offset(w http.ResponseWriter, r *http.Request) error {
	who, err := m.who(r, false)
	if err != nil {
		return err
	}
	u, off, err := m.svc.Offset(r.Context(), who, r.PathValue("id"))
	if err != nil {
		return mediaErr(w, err)
	}
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Upload-Offset", strconv.FormatInt(off, 10))
	w.Header().Set("Upload-Length", strconv.FormatInt(u.Size, 10))
	if r.Method == http.MethodHead {
		w.WriteHeader(http.StatusOK)
		return nil
	}
	WriteJSON(w, http.StatusOK, uploadView{ID: u.ID, URL: "/v1/uploads/" + u.ID, Size: u.Size, Offset: off, Name: u.Name, Conv: u.Conv, SHA256: u.SHA256})
	return nil
}

func (m *MediaAPI) append(w http.ResponseWriter, r *http.Request) error {
	who, err := m.who(r, false)
	if err != nil {
		return err
	}
	c, err := media.ParseChunk(r.Header.Get("Upload-Offset"), r.Header.Get("Content-Range"))
	if err != nil {
		return mediaErr(w, err)
	}
	off, f, err := m.svc.Append(r.Context(), who, r.PathValue("id"), c, idleReader{r.Body, http.NewResponseController(w)})
	if off > 0 || err == nil {
		w.Header().Set("Upload-Offset", strconv.FormatInt(off, 10))
	}
	if err != nil {
		return mediaErr(w, err)
	}
	if f == nil {
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	w.Header().Set("Location", "/v1/files/"+f.ID)
	WriteJSON(w, http.StatusCreated, media.Describe(*f))
	return nil
}

func (m *MediaAPI) cancel(w http.ResponseWriter, r *http.Request) error {
	who, err := m.who(r, false)
	if err != nil {
		return err
	}
	if err := m.svc.Cancel(r.Context(), who, r.PathValue("id")); err != nil {
		return mediaErr(w, err)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (m *MediaAPI) info(w http.ResponseWriter, r *http.Request) error {
	who, err := m.who(r, true)
	if err != nil {
		return err
	}
	f, err := m.svc.Info(r.Context(), who, r.PathValue("id"))
	if err != nil {
		return mediaErr(w, err)
	}
	WriteJSON(w, http.StatusOK, media.Describe(f))
	return nil
}

// download serves the content with the sniffed type. The content is the
// user's, not the server's: it is sandboxed (a CSP that runs nothing) and
// only images are shown inline; everything else is a download.
func (m *MediaAPI) download(w http.ResponseWriter, r *http.Request) error {
	who, err := m.who(r, true)
	if err != nil {
		return err
	}
	f, rd, err := m.svc.Open(r.Context(), who, r.PathValue("id"))
	if err != nil {
		return mediaErr(w, err)
	}
	defer rd.Close()
	rc := http.NewResponseController(w)
	defer func() { _ = rc.SetWriteDeadline(time.Time{}) }()
	serveBlob(idleWriter{w, rc}, r, f.Type, f.Name, f.SHA256, f.Created, rd)
	return nil
}

func (m *MediaAPI) thumb(w http.ResponseWriter, r *http.Request) error {
	who, err := m.who(r, true)
	if err != nil {
		return err
	}
	f, rd, err := m.svc.OpenThumb(r.Context(), who, r.PathValue("id"))
	if err != nil {
		return mediaErr(w, err)
	}
	defer rd.Close()
	rc := http.NewResponseController(w)
	defer func() { _ = rc.SetWriteDeadline(time.Time{}) }()
	serveBlob(idleWriter{w, rc}, r, f.Thumb, "", f.SHA256+".thumb", f.Created, rd)
	return nil
}

func serveBlob(w http.ResponseWriter, r *http.Request, typ, name, etag string, created int64, rd io.ReadSeeker) {
	h := w.Header()
	h.Set("Content-Type", typ)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", "default-src 'none'; sandbox")
	h.Set("Cache-Control", "private, max-age=3600")
	h.Set("ETag", `"`+etag+`"`)
	disp := "attachment"
	if strings.HasPrefix(typ, "image/") && typ != "image/svg+xml" {
		disp = "inline"
	}
	if name != "" {
		disp += fmt.Sprintf("; filename*=UTF-8''%s", url.PathEscape(name))
	}
	h.Set("Content-Disposition", disp)
	http.ServeContent(w, r, "", time.UnixMilli(created), rd)
}

// uploadIdle is how long a piece of an upload may go without a byte
// before the request is given up: a connection that went away without a
// word (half-open) would otherwise hold the upload busy.
const uploadIdle = 60 * time.Second

// idleReader extends the connection's read deadline before every read.
type idleReader struct {
	r  io.Reader
	rc *http.ResponseController
}

func (i idleReader) Read(p []byte) (int, error) {
	_ = i.rc.SetReadDeadline(time.Now().Add(uploadIdle))
	return i.r.Read(p)
}

// idleWriter extends the connection's write deadline before every write,
// so that a download times out when the reader stalls, not when it is
// merely large.
type idleWriter struct {
	http.ResponseWriter
	rc *http.ResponseController
}

func (i idleWriter) Write(p []byte) (int, error) {
	_ = i.rc.SetWriteDeadline(time.Now().Add(uploadIdle))
	return i.ResponseWriter.Write(p)
}

// readBody reads a small request body (at most limit bytes; 413 past it).
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, Errorf(http.StatusRequestEntityTooLarge, "too_large", "request body exceeds %d bytes", limit)
		}
		return nil, Errorf(http.StatusBadRequest, "bad_request", "reading the body: %v", err)
	}
	return b, nil
}
