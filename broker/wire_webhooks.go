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
	// PerEndpoint bounds the requests in flight to one endpoint (4), so
	// that a slow receiver cannot hold every worker.
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
		Workers: 16, PerEndpoint: 4, Timeout: Duration(10 * time.Second), MaxAttempts: 15,
		RetryBase: Duration(5 * time.Second), RetryMax: Duration(time.Hour),
		DisableAfter: Duration(72 * time.Hour), Retention: Duration(72 * time.Hour), MaxEndpoints: 16,
	}
}

// Validate reports the first webhook setting that cannot work.
func (c *WebhooksConfig) Validate() error {
	if _, err := c.allow(); err != nil {
		return err
	}
	if c.Workers < 1 || c.PerEndpoint < 1 || c.MaxAttempts < 1 || c.MaxEndpoints < 1 {
		return errors.New("config: webhooks.workers, per_endpoint, max_attempts and max_endpoints must be positive")
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
	if s.webhooks != nil {
		s.webhooks.Publish(app, webhook.EventMessageCreated, map[string]any{"message": msg})
	}
}

// chatQuiet is the chat service's OnQuiet: message.updated for edits,
// recalls and reactions, message.created for the rest (call events).
func (s *Server) chatQuiet(app string, msg protocol.Message, _ []string) {
	if s.webhooks == nil {
		return
	}
	typ := webhook.EventMessageCreated
	switch msg.Type {
	case protocol.TypeEdit, protocol.TypeRecall, protocol.TypeReaction:
		typ = webhook.EventMessageUpdated
	}
	s.webhooks.Publish(app, typ, map[string]any{"message": msg})
}

// chatSystem is the chat service's OnSystem: conversation.updated.
func (s *Server) chatSystem(app string, msg protocol.Message, _ []string) {
	if s.webhooks == nil {
		return
	}
	var ev struct {
		Event string `json:"event"`
	}
	_ = json.Unmarshal(msg.Body, &ev) // system bodies are the server's own
	s.webhooks.Publish(app, webhook.EventConversationUpdated, map[string]any{"conv": msg.Conv, "change": ev.Event, "message": msg})
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
