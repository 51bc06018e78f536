package broker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/warblerim/warbler/api"
	"github.com/warblerim/warbler/chat"
	"github.com/warblerim/warbler/hooks"
	"github.com/warblerim/warbler/identity"
	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage"
	"github.com/warblerim/warbler/storage/badgerstore"
)

// wireIdentity bootstraps identity (keys in the data directory, the demo
// app on first start) and installs the authentication and ACL hooks and the
// identity HTTP routes.
func (s *Server) wireIdentity() error {
	s.idStore = badgerstore.NewIdentityStore(s.db)
	b, err := identity.Bootstrap(context.Background(), s.cfg.Data, identity.Options{
		Store: s.idStore, Now: s.now,
	})
	if err != nil {
		return err
	}
	s.identity = b.Service
	s.masterKey = b.MasterKeyPath
	if b.FirstStart {
		s.log.Info("first start: created the admin key and the demo app", "admin_key_file", b.AdminKeyPath)
	}
	s.principals = hooks.NewPrincipals()
	var anon *hooks.AnonymousOptions
	if a := s.cfg.MQTT.Anonymous; a.Addr != "" {
		rules := make([]storage.TopicRule, len(a.Rules))
		for i, r := range a.Rules {
			rules[i] = storage.TopicRule{Pattern: r.Pattern, Access: r.Access}
		}
		anon = &hooks.AnonymousOptions{Listeners: []string{"anonymous"}, App: a.App, Rules: rules}
	}
	s.auth, err = hooks.NewAuth(hooks.AuthOptions{
		Identity: b.Service, Principals: s.principals, Anonymous: anon, RestoreSessions: true, Server: s.mqtt,
		Logger: s.log.With("component", "auth"),
	})
	if err != nil {
		return err
	}
	acl, err := hooks.NewACL(hooks.ACLOptions{Principals: s.principals})
	if err != nil {
		return err
	}
	s.acl = acl
	if err := s.addHook(s.auth, nil); err != nil {
		return err
	}
	if err := s.addHook(s.acl, nil); err != nil {
		return err
	}
	api.NewIdentityAPI(api.IdentityOptions{Service: b.Service, MQTTAddr: s.publicMQTTAddr}).Register(s.mux)

	reg := s.metrics.Registry
	reg.MustRegister(
		countersFunc("warbler_auth_refusals_total", "CONNECTs refused by authentication, by reason.", "reason", s.auth.Refusals),
		countersFunc("warbler_acl_denials_total", "Topic accesses denied by the ACL, by reason.", "reason", s.acl.Denials),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "warbler_principals", Help: "Authenticated clients known to the ACL, connected or with a kept session."},
			func() float64 { return float64(s.principals.Len()) }),
	)
	return nil
}

// wireChat installs the durable chat log, the chat service and its hook,
// and the chat HTTP routes.
func (s *Server) wireChat() error {
	store := badgerstore.NewChat(s.db, badgerstore.ChatOptions{})
	s.closers = append(s.closers, store.Close)
	s.webhookCatchUp(store)
	hook := hooks.NewChat()
	svc, err := chat.New(chat.Options{
		Store: store, Deliverer: hook, Logger: s.log.With("component", "chat"),
		Limits:       protocol.Limits{MaxBody: s.cfg.Chat.MaxBody},
		MaxGroupSize: s.cfg.Chat.MaxGroupSize,
		SendRate:     s.cfg.Chat.SendRate,
		SendBurst:    s.cfg.Chat.SendBurst,
		Devices:      devices{s.identity},
		Opens:        campaignOpens{s},
		OnStored:     s.chatStored,
		OnSystem:     s.chatSystem,
		OnQuiet:      s.chatQuiet,
		OnPresence:   s.chatPresence,
		RecallWindow: func(app string) time.Duration { return s.identity.AppRecallWindow(context.Background(), app) },
		Attachments:  s.attachments(),
		Search:       lateSearch{s},
		Indexer:      lateSearch{s},
		Retention: func(app string) chat.Retention {
			days, msgs := s.identity.AppRetention(context.Background(), app)
			return chat.Retention{MaxAge: time.Duration(days) * 24 * time.Hour, MaxMessages: msgs}
		},
		UserExists: func(ctx context.Context, app, user string) (bool, error) {
			_, err := s.identity.GetUser(ctx, app, user)
			if errors.Is(err, identity.ErrNotFound) {
				return false, nil
			}
			return err == nil, err
		},

		ChannelBroadcast: s.cfg.Chat.ChannelBroadcast,
	})
	if err != nil {
		return err
	}
	if err := s.addHook(hook, &hooks.ChatOptions{Server: s.mqtt, Service: svc, Logger: s.log.With("component", "chat"), Overload: s.overload}); err != nil {
		return fmt.Errorf("chat hook: %w", err)
	}
	if s.cfg.Chat.ChannelBroadcast && s.acl != nil {
		s.acl.SetChannelAllowed(func(p *hooks.Principal, ch string) bool { return svc.MayReadBroadcast(p.App, ch, p.User) })
	}
	if err := s.wireBroadcast(svc); err != nil {
		return fmt.Errorf("broadcast hook: %w", err)
	}
	s.chat = svc
	if err := s.wireBridge(s.masterKey, store); err != nil {
		return err
	}
	stop := svc.StartRetention(10 * time.Minute)
	s.closers = append(s.closers, func() error { stop(); return nil })
	s.closers = append(s.closers, func() error { svc.StopCalls(); return nil })
	api.NewChatAPI(api.ChatOptions{Service: svc, Identity: s.identity}).Register(s.mux)

	s.metrics.Registry.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "warbler_chat_messages_stored_total", Help: "Chat messages durably stored."},
			func() float64 { return float64(svc.Stats().Sent) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "warbler_chat_duplicates_total", Help: "Sends answered from the dedupe record (retries)."},
			func() float64 { return float64(svc.Stats().Duplicates) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "warbler_chat_quota_denied_total", Help: "Sends refused by the per-user quota."},
			func() float64 { return float64(svc.Stats().QuotaDenied) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "warbler_chat_live_dropped_total", Help: "Live chat deliveries dropped at a full client queue (the device catches up by sync)."},
			func() float64 { return float64(hook.Stats().Dropped) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "warbler_chat_sync_hints_total", Help: "Sync hints sent to devices that lost a live delivery."},
			func() float64 { return float64(hook.Stats().Hints) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "warbler_chat_requests_failed_total", Help: "Uplink publishes answered with an error."},
			func() float64 { return float64(hook.Stats().Failed) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "warbler_chat_backpressure_waits_total", Help: "Times a connection reached its limit of pending sends and was made to wait."},
			func() float64 { return float64(hook.Stats().Waits) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "warbler_chat_panics_total", Help: "Recovered panics in the chat hook (each one a bug)."},
			func() float64 { return float64(hook.Stats().Panics) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "warbler_store_group_commits_total", Help: "Durable group commits (one sync each) of the message log."},
			func() float64 { return float64(store.Stats().Batches) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "warbler_store_commit_requests_total", Help: "Requests written by the group committer."},
			func() float64 { return float64(store.Stats().Requests) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "warbler_store_writes_refused", Help: "1 while the data dir's free space is below the reserve and writes are refused."},
			func() float64 {
				if s.db.SpaceStats().Refusing {
					return 1
				}
				return 0
			}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "warbler_store_free_bytes", Help: "Free space of the data dir at the last check."},
			func() float64 { return float64(s.db.SpaceStats().Free) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "warbler_store_no_space_refusals_total", Help: "Writes refused for lack of disk space."},
			func() float64 { return float64(s.db.SpaceStats().Refused) }),
		&gaugeMap{desc: prometheus.NewDesc("warbler_store_cache_bytes", "Bytes of the store's block and index caches in use (bounded; in the Go heap).", []string{"cache"}, nil),
			read: func() map[string]int {
				b, i := s.db.CacheBytes()
				return map[string]int{"block": int(b), "index": int(i)}
			}},
	)
	return nil
}

// publicMQTTAddr is the MQTT address handed to clients with their
// credentials: mqtt.public_addr if set, else the bound address with an
// unspecified host replaced by 127.0.0.1.
func (s *Server) publicMQTTAddr() string {
	if s.cfg.MQTT.PublicAddr != "" {
		return s.cfg.MQTT.PublicAddr
	}
	host, port, err := net.SplitHostPort(s.addrs.MQTT)
	if err != nil {
		return s.addrs.MQTT
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

// countersFunc exports a map of counters (read at scrape time) as one
// labelled counter family.
func countersFunc(name, help, label string, read func() map[string]uint64) prometheus.Collector {
	return &mapCollector{desc: prometheus.NewDesc(name, help, []string{label}, nil), read: read}
}

type mapCollector struct {
	desc *prometheus.Desc
	read func() map[string]uint64
}

func (c *mapCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }
func (c *mapCollector) Collect(ch chan<- prometheus.Metric) {
	for k, v := range c.read() {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(v), k)
	}
}
