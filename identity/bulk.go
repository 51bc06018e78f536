package identity

import (
	"context"
	"errors"
	"fmt"

	"github.com/warblerim/warbler/storage"
)

// MaxBulkUsers is the most users one CreateUsers call creates.
const MaxBulkUsers = 1000

// ErrNoBulk is returned by CreateUsers when the store has no bulk path.
var ErrNoBulk = errors.New("identity: the store cannot create users in bulk")

// CreateUsers creates up to MaxBulkUsers users of an enabled app in one
// durable write: all of them or, if any ID is taken (storage.ErrExists)
// or invalid, none. Bulk users have no password; they sign in with tokens
// issued by a service. The app's MaxUsers quota is enforced for the batch
// as a whole.
func (s *Service) CreateUsers(ctx context.Context, app string, specs []UserSpec) ([]storage.User, error) {
	idx, ok := s.store.(storage.UserIndex)
	if !ok {
		return nil, ErrNoBulk
	}
	e, err := s.activeApp(app)
	if err != nil {
		return nil, err
	}
	if len(specs) == 0 || len(specs) > MaxBulkUsers {
		return nil, invalid("users", "send 1 to %d users", MaxBulkUsers)
	}
	now := s.now().UTC()
	users := make([]storage.User, len(specs))
	for i, sp := range specs {
		if !validUserID(sp.ID) {
			return nil, invalid(fmt.Sprintf("users[%d].id", i), "not a valid user ID; IDs starting with '_' are reserved")
		}
		if sp.Password != "" {
			return nil, invalid(fmt.Sprintf("users[%d].password", i), "bulk users have no password")
		}
		if err := checkUserFields(sp.DisplayName, sp.Tags, sp.Attrs); err != nil {
			return nil, err
		}
		users[i] = storage.User{App: app, ID: sp.ID, DisplayName: sp.DisplayName, Tags: sp.Tags, Attrs: sp.Attrs,
			CreatedAt: now, UpdatedAt: now}
	}
	if max := e.app.Quotas.MaxUsers; max > 0 {
		n, err := s.store.CountUsers(ctx, app)
		if err != nil {
			return nil, err
		}
		if n+len(users) > max {
			return nil, ErrQuota
		}
	}
	if err := idx.CreateUsers(ctx, users); err != nil {
		return nil, err
	}
	return users, nil
}

// EditLabels changes a user's tags and attributes atomically: edit gets
// copies of the current ones and returns the new ones, which are checked
// against the limits on user fields. Concurrent edits of one user are
// applied one after the other, so two callers adding different tags both
// keep theirs.
func (s *Service) EditLabels(ctx context.Context, app, id string, edit func(tags []string, attrs map[string]string) ([]string, map[string]string, error)) (storage.User, error) {
	if _, err := s.GetUser(ctx, app, id); err != nil {
		return storage.User{}, err
	}
	return s.store.UpdateUser(ctx, app, id, func(u *storage.User) error {
		attrs := make(map[string]string, len(u.Attrs))
		for k, v := range u.Attrs {
			attrs[k] = v
		}
		tags, attrs, err := edit(append([]string(nil), u.Tags...), attrs)
		if err != nil {
			return err
		}
		if err := checkUserFields(u.DisplayName, tags, attrs); err != nil {
			return err
		}
		if len(attrs) == 0 {
			attrs = nil
		}
		u.Tags, u.Attrs, u.UpdatedAt = tags, attrs, s.now().UTC()
		return nil
	})
}
