package chat

import (
	"context"
	"errors"

	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage"
)

// Attachments resolves the uploads messages refer to; the media service
// implements it.
type Attachments interface {
	// Attach checks that user may send file id to conv (of which the chat
	// service has found them a member), links the file to conv so that
	// its members may read it, and returns the description that goes
	// into the message. Errors are *protocol.Error.
	Attach(ctx context.Context, app, user, conv, id string) (*protocol.Attachment, error)
	// Sent tells, once the message has its seq (and before its append
	// is durable), which message of conv refers to file id, so that
	// members who may not read that message may not read the file.
	Sent(ctx context.Context, app, conv, id string, seq uint64)
}

// attach resolves the attachment of a message to conv; nil if it has none.
// A user's messages of the attachment types (image, file, audio, video)
// need one when the server stores files, and an image's file must be an
// image. Backend services, which cannot upload, may send those types
// without one (their body may point at a file elsewhere).
func (s *Service) attach(ctx context.Context, from Sender, conv, typ, id string) (*protocol.Attachment, error) {
	if id == "" {
		if s.o.Attachments != nil && protocol.IsAttachmentType(typ) && !from.Service {
			return nil, protocol.Errorf(protocol.CodeBadRequest, "attachment: required for messages of type %s (upload the file first)", typ)
		}
		return nil, nil
	}
	if s.o.Attachments == nil {
		return nil, protocol.Errorf(protocol.CodeBadRequest, "attachment: this server does not store files")
	}
	if !protocol.ValidID(id) {
		return nil, protocol.Errorf(protocol.CodeBadRequest, "attachment: %s", protocol.ErrBadID)
	}
	a, err := s.o.Attachments.Attach(ctx, from.App, from.User, conv, id)
	if err != nil {
		return nil, s.internal("attach file", err)
	}
	if typ == protocol.TypeImage && (len(a.Type) < 6 || a.Type[:6] != "image/") {
		return nil, protocol.Errorf(protocol.CodeBadRequest, "attachment: file %s is %s, not an image", id, a.Type)
	}
	return a, nil
}

// IsMember reports whether user is a member of conv (from the cached
// view), for services that check access against conversations.
func (s *Service) IsMember(ctx context.Context, app, conv, user string) (bool, error) {
	v, err := s.view(ctx, app, conv)
	if errors.Is(err, storage.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return v.role(user) != "", nil
}
