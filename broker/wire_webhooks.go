package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/warblerim/warbler/api"
	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage"
	"github.com/warblerim/warbler/storage/badgerstore"
	"github.com/warblerim/warbler/webhook"
)

// WebhooksConfig configures webhook delivery (see package webhook).
type WebhooksConfig struct {
	// AllowPrivate lets endpoints reach loopback, private, link-local and
	// other internal addresses. Off by default: an app could otherwise use
	// the server to probe its own network (SSRF).
	AllowPrivate bool `yaml:"allow_private"`
	// AllowCIDRs lists internal ranges endpoints may reach even so, e.g.
	// ["10.20.0.0/16"].
	AllowCIDRs []string `yaml:"allow_cidrs"`
	// Workers bounds the requests in flight over all endpoints (16).
	Workers int `yaml:"workers"`
	// PerEndpoint bounds the requests in flight to one endpoint (0: no
	// bound but Workers), so that a slow receiver cannot hold every
	// worker; deliveries over it wait in the queue for 200 ms, which costs
	// a single busy endpoint throughput (see webhook.Options).
	PerEndpoint int `yaml:"per_endpoint"`
	// Timeout bounds one request up to the response headers (10s).
	Timeout Duration `yaml:"timeout"`
	// MaxAttempts is how often a delivery is tried before it fails (15).
	MaxAttempts int `yaml:"max_attempts"`
	// RetryBase and RetryMax shape the exponential backoff between
	// attempts, jittered (5s, 1h).
	RetryBase Duration `yaml:"retry_base"`
	RetryMax  Duration `yaml:"retry_max"`
	// DisableAfter turns off an endpoint whose every attempt failed for
	// this long (72h); 0 never does.
	DisableAfter Duration `yaml:"disable_after"`
	// Retention is how long finished deliveries stay in the log (72h).
	Retention Duration `yaml:"retention"`
	// MaxEndpoints bounds the endpoints of one app (16).
	MaxEndpoints int `yaml:"max_endpoints"`
}

// DefaultWebhooks returns the webhook defaults.
func DefaultWebhooks() WebhooksConfig {
	return WebhooksConfig{
		Workers: 16, Timeout: Duration(10 * time.Second), MaxAttempts: 15,
		RetryBase: Duration(5 * time.Second), RetryMax: Duration(time.Hour),
		DisableAfter: Duration(72 * time.Hour), Retention: Duration(72 * time.Hour), MaxEndpoints: 16,
	}
}

// Validate reports the first webhook setting that cannot work.
func (c *WebhooksConfig) Validate() error {
	if _, err := c.allow(); err != nil {
		return err
	}
	if c.Workers < 1 || c.PerEndpoint < 0 || c.MaxAttempts < 1 || c.MaxEndpoints < 1 {
		return errors.New("config: webhooks.workers, max_attempts and max_endpoints must be positive, per_endpoint not negative")
	}
	if c.Timeout.D() <= 0 || c.RetryBase.D() <= 0 || c.RetryMax.D() < c.RetryBase.D() || c.Retention.D() <= 0 || c.DisableAfter.D() < 0 {
		return errors.New("config: webhooks.timeout, retry_base and retention must be positive, retry_max at least retry_base, disable_after not negative")
	}
	return nil
}

func (c *WebhooksConfig) allow() ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range c.AllowCIDRs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("config: webhooks.allow_cidrs: %q is not a CIDR range (e.g. 10.20.0.0/16)", s)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// wireWebhooks starts the webhook service and mounts its routes; the chat
// service and the push bridge publish events to it (chatStored,
// chatSystem, chatPresence, webhookPushFinished). It runs
// before wireChat, so that the chat and push hooks find it, and so that
// it stops after them: events they publish while stopping still reach the
// queue.
func (s *Server) wireWebhooks() error {
	c := s.cfg.Webhooks
	allow, err := c.allow()
	if err != nil {
		return err
	}
	key, err := os.ReadFile(s.masterKey)
	if err != nil {
		return fmt.Errorf("webhooks: %w", err)
	}
	disable := c.DisableAfter.D()
	if disable == 0 {
		disable = -1
	}
	svc, err := webhook.New(webhook.Options{
		Store:     badgerstore.NewWebhookStore(s.db, badgerstore.WebhookOptions{Retention: c.Retention.D()}),
		MasterKey: key,
		Guard:     &webhook.Guard{AllowPrivate: c.AllowPrivate, Allow: allow},
		Workers:   c.Workers, PerEndpoint: c.PerEndpoint, Timeout: c.Timeout.D(), MaxAttempts: c.MaxAttempts,
		RetryBase: c.RetryBase.D(), RetryMax: c.RetryMax.D(), DisableAfter: disable, MaxEndpoints: c.MaxEndpoints,
		Logger: s.log.With("component", "webhooks"),
	})
	if err != nil {
		return err
	}
	if err := svc.Start(context.Background()); err != nil {
		return err
	}
	s.webhooks = svc
	s.closers = append(s.closers, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return svc.Close(ctx)
	})
	s.OnPushFinished(s.webhookPushFinished)
	api.NewWebhookAPI(api.WebhookOptions{Service: svc, Identity: s.identity}).Register(s.mux)
	s.metrics.Registry.MustRegister(svc.Collector())
	return nil
}

// chatPresence is the chat service's OnPresence: user.online when a
// user's first connection to this process opens, user.offline when their
// last one closes. In a scaled-out deployment each process reports its own
// connections.
func (s *Server) chatPresence(app, user, device string, online bool, at int64) {
	s.recordLogin(app, user, online)
	if s.webhooks == nil {
		return
	}
	if online {
		s.webhooks.Publish(app, webhook.EventUserOnline, map[string]any{"user": user, "device": device})
		return
	}
	s.webhooks.Publish(app, webhook.EventUserOffline, map[string]any{"user": user, "device": device, "last_seen": at})
}

// chatStored is the chat service's OnStored: the push bridge and the
// message.created webhook.
func (s *Server) chatStored(app string, msg protocol.Message, recipients []string) {
	s.onStored(app, msg, recipients)
	s.publishLogged(app, msg)
}

// chatQuiet is the chat service's OnQuiet: message.updated for edits,
// recalls and reactions, message.created for the rest (call events).
func (s *Server) chatQuiet(app string, msg protocol.Message, _ []string) { s.publishLogged(app, msg) }

// chatSystem is the chat service's OnSystem: conversation.updated.
func (s *Server) chatSystem(app string, msg protocol.Message, _ []string) { s.publishLogged(app, msg) }

// logEvent is the webhook event of a stored message: conversation.updated
// for a system event, message.updated for an edit, recall or reaction,
// message.created for everything else.
func logEvent(msg protocol.Message) (string, any) {
	switch msg.Type {
	case protocol.TypeSystem:
		var ev struct {
			Event string `json:"event"`
		}
		_ = json.Unmarshal(msg.Body, &ev) // system bodies are the server's own
		return webhook.EventConversationUpdated, map[string]any{"conv": msg.Conv, "change": ev.Event, "message": msg}
	case protocol.TypeEdit, protocol.TypeRecall, protocol.TypeReaction:
		return webhook.EventMessageUpdated, map[string]any{"message": msg}
	}
	return webhook.EventMessageCreated, map[string]any{"message": msg}
}

func (s *Server) publishLogged(app string, msg protocol.Message) {
	if s.webhooks == nil {
		return
	}
	typ, data := logEvent(msg)
	s.webhooks.PublishLogged(app, typ, data, webhook.LogEventID(app, msg.ID, typ), time.UnixMilli(msg.TS),
		storage.WebhookMark{App: app, Conv: msg.Conv, Seq: msg.Seq})
}

// webhookCatchUp queues the webhook events of messages that were stored
// but whose events never reached the queue: the hand-off between the two
// is in memory, so a crash can lose it. The queue records, per
// conversation, up to which seq the events are queued; for every
// conversation of an app with endpoints subscribed to message or
// conversation events, the entries after that mark (and stored after the
// endpoint was created) are queued now, with the IDs they would have had.
// It runs at start, before clients connect.
func (s *Server) webhookCatchUp(store storage.ChatStore) {
	if s.webhooks == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	type appConv struct{ app, conv string }
	type sub struct {
		since time.Time // the earliest subscribed endpoint's creation
		ok    bool
	}
	var convs []appConv
	apps := map[string]sub{}
	err := store.WalkConversations(ctx, func(app, conv string) error {
		a, seen := apps[app]
		if !seen {
			a.since, a.ok = s.webhooks.Subscribed(app, webhook.EventMessageCreated, webhook.EventMessageUpdated, webhook.EventConversationUpdated)
			apps[app] = a
		}
		if a.ok {
			convs = append(convs, appConv{app, conv})
		}
		return nil
	})
	if err != nil {
		s.log.Error("webhooks: catch-up: cannot list conversations", "error", err)
		return
	}
	queued := 0
	marks := map[string]map[string]uint64{}
	for _, c := range convs {
		m, ok := marks[c.app]
		if !ok {
			if m, err = s.webhooks.Marks(ctx, c.app); err != nil {
				s.log.Error("webhooks: catch-up: cannot read marks", "app", c.app, "error", err)
				return
			}
			marks[c.app] = m
		}
		head, err := store.LastSeq(ctx, c.app, c.conv)
		if err != nil || head <= m[c.conv] {
			continue
		}
		// A page at a time, each queued with its mark.
		for next := m[c.conv] + 1; next <= head; {
			es, err := store.Range(ctx, c.app, c.conv, next, true, 256)
			if err != nil || len(es) == 0 {
				break
			}
			var evs []webhook.Logged
			for _, e := range es {
				next = e.Seq + 1
				if e.TS < apps[c.app].since.UnixMilli() {
					continue
				}
				var msg protocol.Message
				if json.Unmarshal(e.Data, &msg) != nil {
					continue
				}
				typ, data := logEvent(msg)
				evs = append(evs, webhook.Logged{Type: typ, ID: webhook.LogEventID(c.app, msg.ID, typ), At: time.UnixMilli(msg.TS), Data: data})
			}
			n, err := s.webhooks.CatchUp(ctx, c.app, evs, storage.WebhookMark{App: c.app, Conv: c.conv, Seq: es[len(es)-1].Seq})
			if err != nil {
				s.log.Error("webhooks: catch-up failed", "app", c.app, "conv", c.conv, "error", err)
				break
			}
			queued += n
		}
	}
	if queued > 0 {
		s.log.Warn("webhooks: queued the events of messages stored before a crash", "events", queued)
	}
}

// webhookPushFinished observes push outcomes (OnPushFinished): push.failed.
func (s *Server) webhookPushFinished(r storage.PushRecord) {
	if s.webhooks == nil || r.State != storage.PushFailed {
		return
	}
	s.webhooks.Publish(r.App, webhook.EventPushFailed, map[string]any{
		"id": r.ID, "user": r.User, "device": r.Device, "provider": r.Provider, "conv": r.Conv, "seq": r.Seq,
		"msg_id": r.MsgID, "reason": r.Reason, "status": r.Status, "attempts": r.Attempts,
	})
}
