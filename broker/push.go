package broker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/warblerim/warbler/api"
	"github.com/warblerim/warbler/bridge"
	"github.com/warblerim/warbler/chat"
	"github.com/warblerim/warbler/identity"
	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage"
	"github.com/warblerim/warbler/storage/badgerstore"
)

// pushWorkers bounds the chat messages being handed to the push bridge at
// once. A handoff does a device lookup per recipient and one synced write,
// so it runs off the delivery path; when every worker is busy the delivery
// goroutine waits (backpressure), it never drops a notification.
const pushWorkers = 64

// wireBridge starts the push bridge (APNs and FCM) with the server's
// master key, the identity device registry, live presence from the broker
// and read positions from the chat store, and mounts its HTTP routes.
func (s *Server) wireBridge(masterKeyPath string, chatStore storage.ChatStore) error {
	key, err := os.ReadFile(masterKeyPath)
	if err != nil {
		return fmt.Errorf("push bridge: %w", err)
	}
	br, err := bridge.New(bridge.Options{
		Store:     badgerstore.NewPushStore(s.db, badgerstore.PushOptions{}),
		MasterKey: key,
		Directory: bridge.IdentityDirectory{Service: s.identity},
		Presence:  presence{s},
		Positions: positions{store: chatStore, chat: s.chat},
		OnFinish:  s.pushFinished,
		Logger:    s.log.With("component", "push"),
	})
	if err != nil {
		return err
	}
	if err := br.Start(context.Background()); err != nil {
		return fmt.Errorf("push bridge: %w", err)
	}
	s.bridge = br
	s.chatStore = chatStore
	s.metrics.Registry.MustRegister(br.Collector(), prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "warbler_push_handoff_errors_total", Help: "Stored chat messages the push bridge could not queue (logged)."},
		func() float64 { return float64(s.pushErrs.Load()) }))
	api.NewPushAPI(api.PushOptions{Bridge: br, Identity: s.identity}).Register(s.mux)
	s.closers = append(s.closers, func() error {
		s.pushWG.Wait() // handoffs in progress finish first
		return br.Close()
	})
	return nil
}

// onStored hands a stored chat message to the push bridge.
func (s *Server) onStored(app string, msg protocol.Message, recipients []string) {
	if s.bridge == nil || len(recipients) == 0 {
		return
	}
	s.pushSem <- struct{}{}
	s.pushWG.Add(1)
	go func() {
		defer func() { <-s.pushSem; s.pushWG.Done() }()
		if _, err := s.bridge.MessageStored(context.Background(), app, msg, recipients, pushOptions(msg)...); err != nil {
			s.pushErrs.Add(1)
			s.log.Error("push: could not queue notifications", "app", app, "conv", msg.Conv, "seq", msg.Seq, "error", err)
		}
	}()
}

// presence answers from the broker's live connections: a device is online
// when a client with its client ID is connected now.
type presence struct{ s *Server }

func (p presence) Online(app, user, device string) bool {
	cl, ok := p.s.mqtt.Clients.Get(protocol.ClientID(app, user, device))
	return ok && !cl.Closed()
}

// positions reads the chat state a notification is reconciled with.
type positions struct {
	store storage.ChatStore
	chat  *chat.Service
}

func (p positions) ReadSeq(ctx context.Context, app, user, conv string) (uint64, error) {
	m, err := p.store.GetMember(ctx, app, conv, user)
	if errors.Is(err, storage.ErrNotFound) {
		return 0, nil
	}
	return m.Read, err
}

func (p positions) DeliveredSeq(ctx context.Context, app, user, device, conv string) (uint64, error) {
	c, err := p.store.Cursors(ctx, app, user, device)
	return c[conv], err
}

// Unread sums the unread counts of the user's conversations (the first
// 500), which is what the badge shows. Each count reads the log after the
// user's read position, up to chat's scan bound, so a user whose
// conversations are all read costs no log reads.
func (p positions) Unread(ctx context.Context, app, user string) (int, error) {
	res, err := p.chat.Convs(ctx, chat.Sender{App: app, User: user}, "", 500)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, c := range res.Convs {
		n += int(c.Unread)
	}
	return n, nil
}

// devices registers push tokens sent with the MQTT "push" request.
type devices struct{ id *identity.Service }

func (d devices) RegisterPush(ctx context.Context, app, user, device string, r chat.PushRegistration) (any, error) {
	spec := identity.DeviceSpec{ID: device, Platform: r.Platform, PushToken: &r.Token}
	if r.Topic != "" {
		spec.PushTopic = &r.Topic
	}
	if r.Locale != "" {
		spec.Locale = &r.Locale
	}
	dev, err := d.id.PutDevice(ctx, app, user, spec)
	if err != nil {
		var inv *identity.InvalidError
		if errors.As(err, &inv) {
			return nil, protocol.Errorf(protocol.CodeBadRequest, "%v", err)
		}
		return nil, protocol.Errorf(protocol.CodeInternal, "could not store the registration")
	}
	return map[string]any{"device": dev.ID, "platform": dev.Platform, "push": dev.PushToken != ""}, nil
}

// pushState is the Server's share of the push wiring.
type pushState struct {
	bridge   *bridge.Bridge
	pushSem  chan struct{}
	pushWG   sync.WaitGroup
	pushErrs atomic.Uint64
}
