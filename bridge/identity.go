package bridge

import (
	"context"

	"github.com/warblerim/warbler/identity"
)

// IdentityDirectory is the Directory over the identity service's device
// registry: devices register their platform, push token, APNs topic and
// locale with PUT /v1/apps/{app}/users/{user}/devices/{device} or the MQTT
// "push" request, and the registry records when each token was set.
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
			out = append(out, Device{ID: x.ID, Platform: x.Platform, Token: x.PushToken,
				TokenAt: x.PushTokenAt, Topic: x.PushTopic, Locale: x.Locale})
		}
	}
	return out, nil
}

// PruneToken clears the device's token if it is still token, in one step:
// a device that registered a new token meanwhile keeps it.
func (d IdentityDirectory) PruneToken(ctx context.Context, app, user, device, token string) error {
	_, err := d.Service.ClearPushToken(ctx, app, user, device, token)
	return err
}
