package bridge

import (
	"context"

	"github.com/warblerim/warbler/identity"
)

// IdentityDirectory is the Directory over the identity service's device
// registry (PUT /v1/apps/{app}/users/{user}/devices/{device} with
// platform and push_token).
//
// The registry keeps no registration time, APNs topic or locale per
// token, so TokenAt is zero (an APNs 410 always prunes), the topic is the
// app's default and the locale empty.
type IdentityDirectory struct {
	Service *identity.Service
}

// Devices returns the user's devices that have a push token.
func (d IdentityDirectory) Devices(ctx context.Context, app, user string) ([]Device, error) {
	devs, err := d.Service.ListDevices(ctx, app, user)
	if err != nil {
		return nil, err
	}
	out := make([]Device, 0, len(devs))
	for _, x := range devs {
		if x.PushToken != "" {
			out = append(out, Device{ID: x.ID, Platform: x.Platform, Token: x.PushToken})
		}
	}
	return out, nil
}

// PruneToken clears the device's token if it is still token. The check
// and the write are two steps: a device that registers a new token in
// between can lose it (until its next registration).
func (d IdentityDirectory) PruneToken(ctx context.Context, app, user, device, token string) error {
	dev, err := d.Service.GetDevice(ctx, app, user, device)
	if err != nil || dev.PushToken != token {
		return err
	}
	empty := ""
	_, err = d.Service.PutDevice(ctx, app, user, identity.DeviceSpec{ID: device, PushToken: &empty})
	return err
}
