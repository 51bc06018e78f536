package identity

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage"
)

// Limits on user fields.
const (
	MaxDisplayName = 128
	MaxTags        = 32
	MaxTagLen      = 64
	MaxAttrs       = 32
	MaxAttrKeyLen  = 64
	MaxAttrValLen  = 1024
	MaxPushToken   = 4096
	MaxPageSize    = 200
)

// Device platforms.
var Platforms = []string{"ios", "android", "web", "desktop", "iot"}

// UserSpec describes a new user. Password is optional: a user without one
// signs in only with tokens issued by a service or minted by the app.
type UserSpec struct {
	ID          string
	DisplayName string
	Password    string
	Tags        []string
	Attrs       map[string]string
}

func checkUserFields(name string, tags []string, attrs map[string]string) error {
	if err := checkText("display_name", name, MaxDisplayName, true); err != nil {
		return err
	}
	if len(tags) > MaxTags {
		return invalid("tags", "at most %d tags", MaxTags)
	}
	for _, t := range tags {
		if err := checkText("tags", t, MaxTagLen, false); err != nil {
			return err
		}
	}
	if len(attrs) > MaxAttrs {
		return invalid("attrs", "at most %d attributes", MaxAttrs)
	}
	for k, v := range attrs {
		if err := checkText("attrs", k, MaxAttrKeyLen, false); err != nil {
			return err
		}
		if err := checkText("attrs", v, MaxAttrValLen, true); err != nil {
			return err
		}
	}
	return nil
}

// CreateUser creates a user of an enabled app, enforcing the app's
// MaxUsers quota. The ID must be a valid identifier not starting with '_'.
func (s *Service) CreateUser(ctx context.Context, app string, spec UserSpec) (storage.User, error) {
	e, err := s.activeApp(app)
	if err != nil {
		return storage.User{}, err
	}
	if !validUserID(spec.ID) {
		return storage.User{}, invalid("id", "%v; IDs starting with '_' are reserved", protocol.ErrBadID)
	}
	if err := checkUserFields(spec.DisplayName, spec.Tags, spec.Attrs); err != nil {
		return storage.User{}, err
	}
	var cred *storage.Credential
	if spec.Password != "" {
		if err := checkPassword(spec.Password); err != nil {
			return storage.User{}, err
		}
		cred = &storage.Credential{App: app, User: spec.ID, PasswordHash: s.hasher.hash(spec.Password)}
	}
	if max := e.app.Quotas.MaxUsers; max > 0 {
		n, err := s.store.CountUsers(ctx, app)
		if err != nil {
			return storage.User{}, err
		}
		if n >= max {
			return storage.User{}, ErrQuota
		}
	}
	now := s.now().UTC()
	u := storage.User{
		App: app, ID: spec.ID, DisplayName: spec.DisplayName, Tags: spec.Tags, Attrs: spec.Attrs,
		CreatedAt: now, UpdatedAt: now,
	}
	if err := s.store.CreateUser(ctx, u, cred); err != nil {
		return storage.User{}, err
	}
	return u, nil
}

// GetUser returns a user. An invalid ID is simply not found.
func (s *Service) GetUser(ctx context.Context, app, id string) (storage.User, error) {
	if !protocol.ValidID(app) || !validUserID(id) {
		return storage.User{}, ErrNotFound
	}
	return s.store.GetUser(ctx, app, id)
}

// ListUsers returns up to limit (at most MaxPageSize) users of app with IDs
// after the cursor after, and the cursor of the next page ("" at the end).
func (s *Service) ListUsers(ctx context.Context, app, after string, limit int) ([]storage.User, string, error) {
	if limit <= 0 || limit > MaxPageSize {
		limit = MaxPageSize
	}
	if after != "" && !protocol.ValidID(after) {
		return nil, "", invalid("after", "not a valid cursor")
	}
	us, err := s.store.ListUsers(ctx, app, after, limit+1)
	if err != nil {
		return nil, "", err
	}
	next := ""
	if len(us) > limit {
		us = us[:limit]
		next = us[limit-1].ID
	}
	return us, next, nil
}

// UserPatch lists the fields to change; nil fields are kept.
type UserPatch struct {
	DisplayName *string
	Tags        *[]string
	Attrs       *map[string]string
	Disabled    *bool
	// Password sets a new password, or removes it if empty. Either way the
	// user's existing sessions are revoked.
	Password *string
}

// UpdateUser changes a user. Disabling revokes every token of the user.
func (s *Service) UpdateUser(ctx context.Context, app, id string, p UserPatch) (storage.User, error) {
	cur, err := s.GetUser(ctx, app, id)
	if err != nil {
		return storage.User{}, err
	}
	name, tags, attrs := cur.DisplayName, cur.Tags, cur.Attrs
	if p.DisplayName != nil {
		name = *p.DisplayName
	}
	if p.Tags != nil {
		tags = *p.Tags
	}
	if p.Attrs != nil {
		attrs = *p.Attrs
	}
	if err := checkUserFields(name, tags, attrs); err != nil {
		return storage.User{}, err
	}
	var hash string
	if p.Password != nil && *p.Password != "" {
		if err := checkPassword(*p.Password); err != nil {
			return storage.User{}, err
		}
		hash = s.hasher.hash(*p.Password)
	}
	// Revoke before recording a disable and re-enable after recording an
	// enable, so that a failure in between leaves the user locked out
	// rather than half-enabled.
	rev := s.userRevState(app, id)
	wasDisabled := rev.disabled
	if p.Disabled != nil && *p.Disabled {
		rev.disabled = true
		if err := s.setUserRev(ctx, app, id, rev); err != nil {
			return storage.User{}, err
		}
	}
	u, err := s.store.UpdateUser(ctx, app, id, func(u *storage.User) error {
		u.DisplayName, u.Tags, u.Attrs = name, tags, attrs
		if p.Disabled != nil {
			u.Disabled = *p.Disabled
		}
		u.UpdatedAt = s.now().UTC()
		return nil
	})
	if err != nil {
		return storage.User{}, err
	}
	if p.Disabled != nil && !*p.Disabled && wasDisabled {
		rev.disabled = false
		if err := s.setUserRev(ctx, app, id, rev); err != nil {
			return storage.User{}, err
		}
	}
	if p.Disabled != nil && *p.Disabled && !wasDisabled {
		s.fireRevoke(RevokeEvent{App: app, User: id, Reason: "user_disabled"})
	}
	if p.Password != nil {
		if _, err := s.store.UpdateCredential(ctx, app, id, func(c *storage.Credential) error {
			c.PasswordHash = hash
			c.Failures, c.LockedUntil = 0, time.Time{}
			return nil
		}); err != nil {
			return storage.User{}, err
		}
		if err := s.RevokeSessions(ctx, app, id); err != nil {
			return storage.User{}, err
		}
	}
	return u, nil
}

// DisableUser disables a user and revokes all of their tokens. The record
// is kept, so the ID is never reused by someone else.
func (s *Service) DisableUser(ctx context.Context, app, id string) (storage.User, error) {
	t := true
	return s.UpdateUser(ctx, app, id, UserPatch{Disabled: &t})
}

// RevokeSessions revokes every token issued to a user up to now; the user
// may sign in again at once (tokens issued within the current second are
// revoked too, so clients should retry a refused new token after a second).
func (s *Service) RevokeSessions(ctx context.Context, app, user string) error {
	rev := s.userRevState(app, user)
	rev.nb = s.now().Unix() + 1
	if err := s.setUserRev(ctx, app, user, rev); err != nil {
		return err
	}
	s.fireRevoke(RevokeEvent{App: app, User: user, Reason: "sessions_revoked"})
	return nil
}

// DeviceSpec describes a device to register or update. PushToken replaces
// the stored token when non-nil ("" clears it).
type DeviceSpec struct {
	ID        string
	Platform  string
	PushToken *string // nil leaves the token as is; "" removes it
	PushTopic *string // APNs topic (bundle ID); nil leaves it as is
	Locale    *string // BCP 47 language tag; nil leaves it as is
}

// PutDevice registers or updates a device of a user.
func (s *Service) PutDevice(ctx context.Context, app, user string, d DeviceSpec) (storage.Device, error) {
	if _, err := s.activeApp(app); err != nil {
		return storage.Device{}, err
	}
	if !validDeviceID(d.ID) {
		return storage.Device{}, invalid("device", "%v", protocol.ErrBadID)
	}
	if d.Platform != "" && !slices.Contains(Platforms, d.Platform) {
		return storage.Device{}, invalid("platform", "must be one of %v", Platforms)
	}
	if d.PushToken != nil {
		if err := checkText("push_token", *d.PushToken, MaxPushToken, true); err != nil {
			return storage.Device{}, err
		}
	}
	if d.PushTopic != nil {
		if err := checkText("push_topic", *d.PushTopic, 255, true); err != nil {
			return storage.Device{}, err
		}
	}
	if d.Locale != nil {
		if err := checkText("locale", *d.Locale, 35, true); err != nil {
			return storage.Device{}, err
		}
	}
	if _, err := s.GetUser(ctx, app, user); err != nil {
		return storage.Device{}, err
	}
	// Read-modify-write of a device record is serialized, so that a token
	// cleared by ClearPushToken can never overwrite one registered at the
	// same moment.
	s.devMu.Lock()
	defer s.devMu.Unlock()
	now := s.now().UTC()
	dev, err := s.store.GetDevice(ctx, app, user, d.ID)
	if errors.Is(err, ErrNotFound) {
		dev = storage.Device{App: app, User: user, ID: d.ID, CreatedAt: now}
	} else if err != nil {
		return storage.Device{}, err
	}
	if d.Platform != "" {
		dev.Platform = d.Platform
	}
	if d.PushToken != nil && *d.PushToken != dev.PushToken {
		dev.PushToken = *d.PushToken
		dev.PushTokenAt = now
	}
	if d.PushTopic != nil {
		dev.PushTopic = *d.PushTopic
	}
	if d.Locale != nil {
		dev.Locale = *d.Locale
	}
	dev.LastSeen = now
	return dev, s.store.PutDevice(ctx, dev)
}

// ClearPushToken removes a device's push token if it is still token: a
// provider said the token is dead, but a device that registered a new token
// meanwhile keeps it. It reports whether the token was removed.
func (s *Service) ClearPushToken(ctx context.Context, app, user, device, token string) (bool, error) {
	s.devMu.Lock()
	defer s.devMu.Unlock()
	dev, err := s.store.GetDevice(ctx, app, user, device)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	if err != nil || dev.PushToken != token {
		return false, err
	}
	dev.PushToken, dev.PushTokenAt = "", s.now().UTC()
	return true, s.store.PutDevice(ctx, dev)
}

// ListDevices returns the devices of a user.
func (s *Service) ListDevices(ctx context.Context, app, user string) ([]storage.Device, error) {
	if _, err := s.GetUser(ctx, app, user); err != nil {
		return nil, err
	}
	return s.store.ListDevices(ctx, app, user)
}

// ensureDevice returns device, generating an ID if it is empty, and makes
// sure the device is registered with a fresh last-seen time.
func (s *Service) ensureDevice(ctx context.Context, app, user, device string) (string, error) {
	if device == "" {
		device = "d" + randomString(6)
	}
	if !validDeviceID(device) {
		return "", invalid("device", "%v", protocol.ErrBadID)
	}
	_, err := s.PutDevice(ctx, app, user, DeviceSpec{ID: device})
	return device, err
}

// DeleteDevice forgets a device of a user, with its push registration: no
// notification goes to it any more. Access tokens already issued for it
// stay valid until they expire (revoke the user's sessions to end them);
// signing in or registering again creates it anew.
func (s *Service) DeleteDevice(ctx context.Context, app, user, id string) error {
	if !protocol.ValidID(app) || !validUserID(user) || !validDeviceID(id) {
		return ErrNotFound
	}
	s.devMu.Lock()
	defer s.devMu.Unlock()
	return s.store.DeleteDevice(ctx, app, user, id)
}

// GetDevice returns one device of a user.
func (s *Service) GetDevice(ctx context.Context, app, user, id string) (storage.Device, error) {
	if !protocol.ValidID(app) || !validUserID(user) || !validDeviceID(id) {
		return storage.Device{}, ErrNotFound
	}
	return s.store.GetDevice(ctx, app, user, id)
}
