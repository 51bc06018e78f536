package broker

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/warblerim/warbler/api"
	"github.com/warblerim/warbler/hooks"
	"github.com/warblerim/warbler/storage/badgerstore"
)

// LimitsConfig is the "limits" section: what one client, one address and
// one app may take of the server, and when a client is banned. EMQX's
// limiter and flapping detection are the model; the defaults let any
// well-behaved client through and stop a single misbehaving one. A rate
// of 0 switches that limit off; so does a count of 0, except where noted.
//
// Addresses in Exempt (loopback by default, so that a local reverse proxy,
// the CLI and the benchmarks are not limited as one client) skip the
// per-address limits, the connection rates and address flapping. They are
// never exempt from bans.
type LimitsConfig struct {
	// MaxConnections caps open MQTT sockets (TCP, TLS and WebSocket),
	// counted from accept, so sockets that have not sent CONNECT count.
	// -1 derives it from the process's open-file limit, keeping a tenth
	// (at least 256) of the descriptors for the store and the HTTP API, so
	// that a flood is refused by the cap rather than by EMFILE elsewhere;
	// 0 (the default) means no cap. mqtt.max_connections, if set, caps
	// authenticated clients as well.
	MaxConnections int `yaml:"max_connections"`
	// MaxConnectionsPerIP caps open MQTT sockets per address (1000; IPv6
	// per /64).
	MaxConnectionsPerIP int `yaml:"max_connections_per_ip"`
	// ConnectRate paces accepted sockets over all addresses (1000/s, burst
	// ConnectBurst 1000): past it the listeners stop accepting for a moment
	// and new connections wait in the kernel's backlog.
	ConnectRate  float64 `yaml:"connect_rate"`
	ConnectBurst int     `yaml:"connect_burst"`
	// ConnectRatePerIP limits new sockets per address (20/s, burst
	// ConnectBurstPerIP 100); past it a socket is closed at accept.
	ConnectRatePerIP  float64 `yaml:"connect_rate_per_ip"`
	ConnectBurstPerIP int     `yaml:"connect_burst_per_ip"`
	// Exempt lists addresses or CIDR ranges exempt from the per-address
	// limits (["127.0.0.0/8", "::1/128"]); [] exempts none.
	Exempt []string `yaml:"exempt"`

	// PublishRate limits each client's messages per second (500, burst
	// PublishBurst 1000); PublishBytesRate its payload bytes per second
	// (5 MiB, burst PublishBytesBurst 10 MiB). Chat sends are limited by
	// chat.send_rate instead.
	PublishRate       float64 `yaml:"publish_rate"`
	PublishBurst      int     `yaml:"publish_burst"`
	PublishBytesRate  float64 `yaml:"publish_bytes_rate"`
	PublishBytesBurst int     `yaml:"publish_bytes_burst"`
	// PublishDelay is how long a publish over its client's rates may wait
	// for them, the client's reads paused meanwhile, before it is refused
	// (1s). A client that sends faster than its rate is thus slowed to it,
	// like EMQX's limiter; 0 refuses at once.
	PublishDelay Duration `yaml:"publish_delay"`
	// DisconnectAfter is how many publishes in a row may be refused before
	// the client is disconnected with 0x96 "message rate too high" (100).
	DisconnectAfter int `yaml:"disconnect_after"`
	// MaxSubscriptions caps each client's subscriptions (256).
	MaxSubscriptions int `yaml:"max_subscriptions"`
	// MaxTopicLength caps topics and filters in bytes (1024). Their depth
	// is capped by mqtt.max_topic_levels.
	MaxTopicLength int `yaml:"max_topic_length"`
	// MaxPayload caps a message's payload in bytes (0: only
	// mqtt.max_packet_size applies).
	MaxPayload int `yaml:"max_payload"`
	// MaxUserProperties caps the MQTT 5 user properties of any packet
	// (64); the broker copies a message's to every subscriber.
	MaxUserProperties int `yaml:"max_user_properties"`
	// Apps override the client limits above for the clients of one app,
	// by app ID. An app's connection cap and overall message rate are its
	// quotas (max_connections, msgs_per_sec), set through the API.
	Apps map[string]AppLimitsConfig `yaml:"apps"`

	Flapping FlappingConfig   `yaml:"flapping"`
	HTTP     HTTPLimitsConfig `yaml:"http"`
	Overload OverloadConfig   `yaml:"overload"`
}

// OverloadConfig says when the whole server sheds load (see hooks.Overload):
// past MaxInflightSends uplink requests waiting for the disk (20000), or a
// live heap (what survives garbage collection) over MaxHeapMB MiB (0: off),
// new connections get CONNACK 0x89 "server busy" and chat requests PUBACK
// 0x97 "server busy", until the backlog is down to ResumeInflightSends
// (default three quarters of the maximum) and the heap below ResumeHeapMB
// (default 90% of the maximum). 0 switches a signal off.
type OverloadConfig struct {
	MaxInflightSends    int `yaml:"max_inflight_sends"`
	ResumeInflightSends int `yaml:"resume_inflight_sends"`
	MaxHeapMB           int `yaml:"max_heap_mb"`
	ResumeHeapMB        int `yaml:"resume_heap_mb"`
}

// policy turns the configuration into the shedder's policy.
func (c OverloadConfig) policy() hooks.OverloadPolicy {
	return hooks.OverloadPolicy{
		MaxInflightSends: c.MaxInflightSends, ResumeInflightSends: c.ResumeInflightSends,
		MaxHeap: uint64(c.MaxHeapMB) << 20, ResumeHeap: uint64(c.ResumeHeapMB) << 20,
	}
}

// AppLimitsConfig overrides client limits for one app; 0 inherits.
type AppLimitsConfig struct {
	MaxPayload        int     `yaml:"max_payload"`
	PublishRate       float64 `yaml:"publish_rate"`
	PublishBurst      int     `yaml:"publish_burst"`
	PublishBytesRate  float64 `yaml:"publish_bytes_rate"`
	PublishBytesBurst int     `yaml:"publish_bytes_burst"`
	MaxSubscriptions  int     `yaml:"max_subscriptions"`
}

// FlappingConfig configures flapping detection. A client ID that connects
// successfully more than MaxConnects times (15) within Window (1m) is
// banned for Ban (5m), as with EMQX's flapping detection; so is an address
// that sends more than MaxConnectsPerIP CONNECTs (300), successful or not,
// within Window. Only successful connects count for a client ID, so that
// nobody can get someone else's client ID banned. 0 switches a kind off.
type FlappingConfig struct {
	MaxConnects      int      `yaml:"max_connects"`
	MaxConnectsPerIP int      `yaml:"max_connects_per_ip"`
	Window           Duration `yaml:"window"`
	Ban              Duration `yaml:"ban"`
}

// HTTPLimitsConfig limits the HTTP API (everything on the HTTP listener
// but the WebSocket endpoint): RatePerIP requests per second per address
// (100, burst 200) and RatePerKey per bearer credential (50, burst 100).
// Exempt addresses skip the per-address limit only.
type HTTPLimitsConfig struct {
	RatePerIP   float64 `yaml:"rate_per_ip"`
	BurstPerIP  int     `yaml:"burst_per_ip"`
	RatePerKey  float64 `yaml:"rate_per_key"`
	BurstPerKey int     `yaml:"burst_per_key"`
}

// DefaultLimits returns the default limits.
func DefaultLimits() LimitsConfig {
	return LimitsConfig{
		MaxConnectionsPerIP: 1000,
		ConnectRate:         1000, ConnectBurst: 1000,
		ConnectRatePerIP: 20, ConnectBurstPerIP: 100,
		Exempt:      []string{"127.0.0.0/8", "::1/128"},
		PublishRate: 500, PublishBurst: 1000,
		PublishBytesRate: 5 << 20, PublishBytesBurst: 10 << 20,
		PublishDelay:      Duration(time.Second),
		DisconnectAfter:   100,
		MaxSubscriptions:  256,
		MaxTopicLength:    1024,
		MaxUserProperties: 64,
		Flapping: FlappingConfig{MaxConnects: 15, MaxConnectsPerIP: 300,
			Window: Duration(time.Minute), Ban: Duration(5 * time.Minute)},
		HTTP:     HTTPLimitsConfig{RatePerIP: 100, BurstPerIP: 200, RatePerKey: 50, BurstPerKey: 100},
		Overload: OverloadConfig{MaxInflightSends: 20000},
	}
}

// Validate reports the first limit that cannot work.
func (c *LimitsConfig) Validate() error {
	for name, v := range map[string]float64{
		"connect_rate": c.ConnectRate, "connect_rate_per_ip": c.ConnectRatePerIP, "publish_rate": c.PublishRate,
		"publish_bytes_rate": c.PublishBytesRate, "http.rate_per_ip": c.HTTP.RatePerIP, "http.rate_per_key": c.HTTP.RatePerKey,
	} {
		if v < 0 {
			return fmt.Errorf("config: limits.%s must not be negative", name)
		}
	}
	if c.MaxConnections < -1 || c.MaxConnectionsPerIP < 0 || c.DisconnectAfter < 0 || c.MaxSubscriptions < 0 ||
		c.MaxPayload < 0 || c.MaxUserProperties < 0 || c.Flapping.MaxConnects < 0 || c.Flapping.MaxConnectsPerIP < 0 {
		return errors.New("config: limits: counts must not be negative")
	}
	if o := c.Overload; o.MaxInflightSends < 0 || o.ResumeInflightSends < 0 || o.MaxHeapMB < 0 || o.ResumeHeapMB < 0 {
		return errors.New("config: limits.overload: values must not be negative")
	}
	if o := c.Overload; (o.ResumeInflightSends > 0 && o.ResumeInflightSends >= o.MaxInflightSends) ||
		(o.ResumeHeapMB > 0 && o.ResumeHeapMB >= o.MaxHeapMB) {
		return errors.New("config: limits.overload: a resume level must be below its maximum")
	}
	if c.PublishDelay.D() < 0 || c.PublishDelay.D() > time.Minute {
		return errors.New("config: limits.publish_delay must be 0 to 1m")
	}
	if c.MaxTopicLength < 0 || c.MaxTopicLength > 65535 {
		return fmt.Errorf("config: limits.max_topic_length %d must be 0 to 65535", c.MaxTopicLength)
	}
	if c.PublishBytesRate > 0 && c.PublishBytesBurst > 0 && c.PublishBytesBurst < 64<<10 {
		return fmt.Errorf("config: limits.publish_bytes_burst %d is below 64 KiB; larger messages could never pass", c.PublishBytesBurst)
	}
	if _, err := parseExempt(c.Exempt); err != nil {
		return err
	}
	if (c.Flapping.MaxConnects > 0 || c.Flapping.MaxConnectsPerIP > 0) && (c.Flapping.Window.D() <= 0 || c.Flapping.Ban.D() <= 0) {
		return errors.New("config: limits.flapping.window and limits.flapping.ban must be positive")
	}
	for app, a := range c.Apps {
		if a.MaxPayload < 0 || a.PublishRate < 0 || a.PublishBytesRate < 0 || a.MaxSubscriptions < 0 {
			return fmt.Errorf("config: limits.apps.%s: values must not be negative", app)
		}
	}
	return nil
}

func parseExempt(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range list {
		if !strings.Contains(s, "/") {
			a, err := netip.ParseAddr(s)
			if err != nil {
				return nil, fmt.Errorf("config: limits.exempt: %q is not an address or CIDR range", s)
			}
			out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("config: limits.exempt: %q is not an address or CIDR range", s)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// rate turns a configured rate and burst into a token bucket's shape; a
// missing burst is one second's worth.
func rate(per float64, burst int) hooks.Rate {
	if per <= 0 {
		return hooks.Rate{}
	}
	b := float64(burst)
	if b <= 0 {
		b = max(per, 1)
	}
	return hooks.Rate{Per: per, Burst: b}
}

// policy turns the configuration into the hook's policy.
func (c *LimitsConfig) policy(maxTopicLevels int) hooks.LimitsPolicy {
	exempt, _ := parseExempt(c.Exempt)
	p := hooks.LimitsPolicy{
		MaxConnections:      c.MaxConnections,
		MaxConnectionsPerIP: c.MaxConnectionsPerIP,
		ConnectRate:         rate(c.ConnectRate, c.ConnectBurst),
		ConnectRatePerIP:    rate(c.ConnectRatePerIP, c.ConnectBurstPerIP),
		Exempt:              exempt,
		PublishRate:         rate(c.PublishRate, c.PublishBurst),
		PublishBytes:        rate(c.PublishBytesRate, c.PublishBytesBurst),
		PublishDelay:        c.PublishDelay.D(),
		DisconnectAfter:     c.DisconnectAfter,
		MaxSubscriptions:    c.MaxSubscriptions,
		MaxTopicLength:      c.MaxTopicLength,
		MaxTopicLevels:      maxTopicLevels,
		MaxPayload:          c.MaxPayload,
		MaxUserProperties:   c.MaxUserProperties,
		Apps:                map[string]hooks.AppPolicy{},
		Flapping: hooks.FlappingPolicy{MaxConnects: c.Flapping.MaxConnects, MaxConnectsPerIP: c.Flapping.MaxConnectsPerIP,
			Window: c.Flapping.Window.D(), BanFor: c.Flapping.Ban.D()},
	}
	if c.MaxConnections < 0 {
		p.MaxConnections = fdBudget()
	}
	for app, a := range c.Apps {
		p.Apps[app] = hooks.AppPolicy{MaxPayload: a.MaxPayload, MaxSubscriptions: a.MaxSubscriptions,
			PublishRate: rate(a.PublishRate, a.PublishBurst), PublishBytes: rate(a.PublishBytesRate, a.PublishBytesBurst)}
	}
	return p
}

// fdBudget is the default socket cap: the open-file limit less a reserve
// for the store, logs and HTTP, so that a connection flood is refused by
// the cap rather than by EMFILE in some unrelated part of the server. (Go
// raises the soft limit to the hard limit at start.) 0 if unknown.
func fdBudget() int {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil || r.Cur == 0 || r.Cur > 1<<30 {
		return 0
	}
	n := int(r.Cur)
	return max(64, n-max(256, n/10))
}

// wireLimits installs the limits hook (after identity, whose principals and
// app quotas it reads, and before chat, so that its OnPublish runs first),
// the ban routes, and the limits metrics.
func (s *Server) wireLimits() error {
	l, err := hooks.NewLimits(hooks.LimitsOptions{
		Policy:     s.cfg.Limits.policy(s.cfg.MQTT.MaxTopicLevels),
		Server:     s.mqtt,
		Bans:       badgerstore.NewBanStore(s.db),
		Principals: s.principals,
		Quotas:     s.identity.AppQuotas,
		Logger:     s.log.With("component", "limits"),
	})
	if err != nil {
		return err
	}
	s.closers = append(s.closers, l.Stop)
	if err := s.addHook(l, nil); err != nil {
		return err
	}
	s.limits = l
	api.NewBansAPI(api.BansOptions{Bans: l, Identity: s.identity}).Register(s.mux)
	s.metrics.Registry.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "warbler_mqtt_sockets", Help: "Open MQTT sockets admitted by the limits, connected or not."},
			func() float64 { return float64(l.Sockets()) }),
		&gaugeMap{desc: prometheus.NewDesc("warbler_bans", "Bans in force, by kind.", []string{"kind"}, nil), read: l.BanCounts},
	)
	return nil
}

// limitListeners puts the bound MQTT listeners behind the limits, and the
// HTTP listener behind the API rate limiter; it runs once they are bound.
func (s *Server) limitListeners() {
	for _, l := range s.streams {
		l.ln = s.limits.Listener(l.ln)
	}
	hc := s.cfg.Limits.HTTP
	rl := api.NewRateLimiter(api.RateLimitOptions{
		PerIP: rate(hc.RatePerIP, hc.BurstPerIP), PerKey: rate(hc.RatePerKey, hc.BurstPerKey),
		Exempt: s.limits.Exempt, Banned: s.limits.BannedIP,
	})
	wsPath := s.cfg.MQTT.WSPath
	for _, h := range s.httpSrv {
		switch h.name {
		case "ws", "wss":
			h.srv.Handler = s.limits.WebSocket(h.srv.Handler)
		case "http":
			ws, rest := s.limits.WebSocket(h.srv.Handler), rl.Wrap(h.srv.Handler)
			h.srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == wsPath {
					ws.ServeHTTP(w, r)
					return
				}
				rest.ServeHTTP(w, r)
			})
		}
	}
	s.metrics.Registry.MustRegister(countersFunc("warbler_limited_total",
		"Connections, sockets, messages, subscriptions and HTTP requests refused by limits and bans, by reason.", "reason",
		func() map[string]uint64 {
			m := s.limits.Limited()
			for k, v := range rl.Limited() {
				m[k] = v
			}
			return m
		}))
}

// Limits returns the limits hook, which also sets and lifts bans.
func (s *Server) Limits() *hooks.Limits { return s.limits }

// gaugeMap exports a map of gauges (read at scrape time) as one labelled
// family.
type gaugeMap struct {
	desc *prometheus.Desc
	read func() map[string]int
}

func (g *gaugeMap) Describe(ch chan<- *prometheus.Desc) { ch <- g.desc }
func (g *gaugeMap) Collect(ch chan<- prometheus.Metric) {
	for k, v := range g.read() {
		ch <- prometheus.MustNewConstMetric(g.desc, prometheus.GaugeValue, float64(v), k)
	}
}
