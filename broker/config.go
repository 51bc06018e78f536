package broker

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Config is everything the server can be told. The zero value is not useful:
// start from Default and overlay a YAML file (LoadFile), environment
// variables (ApplyEnv) and flags, in that order of increasing precedence.
//
// Every address accepts port 0, which binds a free port; the bound addresses
// are logged at start and returned by Server.Addrs.
type Config struct {
	// Data is the data directory: the store, the master and admin keys.
	Data string `yaml:"data"`

	MQTT MQTTConfig `yaml:"mqtt"`
	HTTP HTTPConfig `yaml:"http"`
	Chat ChatConfig `yaml:"chat"`
	// Media configures attachments (see MediaConfig in wire_media.go).
	Media MediaConfig `yaml:"media"`
	TLS   TLSConfig   `yaml:"tls"`
	Log   LogConfig   `yaml:"log"`
	// Limits are the per-client, per-address and per-app limits, bans and
	// flapping detection (see LimitsConfig in limits.go).
	Limits LimitsConfig `yaml:"limits"`
	// Webhooks configures webhook delivery (see WebhooksConfig in
	// wire_webhooks.go).
	Webhooks WebhooksConfig `yaml:"webhooks"`
}

// MQTTConfig configures the MQTT listeners and the limits of the embedded
// broker. Each limit exists because the broker's own default is unsafe for a
// public server; the comments say what each one defends against.
type MQTTConfig struct {
	// Addr is the plain MQTT/TCP listener, ":1883" by default; "" disables it.
	Addr string `yaml:"addr"`
	// TLSAddr is the MQTT over TLS listener (":8883"), used only when a
	// certificate is configured.
	TLSAddr string `yaml:"tls_addr"`
	// WSAddr is the dedicated MQTT-over-WebSocket listener (":8083"),
	// serving WSPath. The HTTP listener serves the same path too.
	WSAddr string `yaml:"ws_addr"`
	// WSSAddr is MQTT over secure WebSocket (":8084"), only with a certificate.
	WSSAddr string `yaml:"wss_addr"`
	// WSPath is the URL path of the WebSocket endpoint, "/mqtt".
	WSPath string `yaml:"ws_path"`
	// AllowedOrigins lists the browser origins (scheme://host[:port]) allowed
	// to open a WebSocket. Empty means same-origin only: the Origin's host
	// must equal the request's Host. Requests without an Origin header (not
	// from a browser) are allowed. "*" allows any origin.
	AllowedOrigins []string `yaml:"allowed_origins"`

	// MaxPacketSize bounds every inbound packet (256 KiB). A larger length
	// claim closes the connection before anything is allocated.
	MaxPacketSize uint32 `yaml:"max_packet_size"`
	// ConnectTimeout is how long a new socket may take to deliver a complete
	// CONNECT (10 s); idle and slowloris sockets are closed after it.
	ConnectTimeout Duration `yaml:"connect_timeout"`
	// MaxWritesPending is the per-connection outbound queue (256 packets).
	// The broker allocates it up front, so it sets the memory cost of each
	// connection; a subscriber that falls this far behind loses live
	// deliveries and catches up from the durable log.
	MaxWritesPending int32 `yaml:"max_writes_pending"`
	// WriteTimeout bounds every write to a client (10 s): a client that
	// stops reading is disconnected once its socket buffers are full and a
	// write has waited this long. Until then a publisher sending to it at
	// QoS 1 or 2 waits too (the broker numbers the message under the
	// client's lock), so this is the most one stalled subscriber can hold
	// anyone up, once. 0 waits forever.
	WriteTimeout Duration `yaml:"write_timeout"`
	// MaxInflight caps unacknowledged QoS 1/2 messages per session (1024).
	MaxInflight uint16 `yaml:"max_inflight"`
	// ReceiveMaximum is the inbound QoS 1/2 quota per client (256).
	ReceiveMaximum uint16 `yaml:"receive_maximum"`
	// MaxSessionExpiry caps how long a disconnected session is kept (7 days);
	// the broker's default keeps MQTT 3 persistent sessions forever.
	MaxSessionExpiry Duration `yaml:"max_session_expiry"`
	// MaxMessageExpiry is the longest life of a queued or retained message.
	// 0 (the default) means no forced expiry: retained messages stay until
	// replaced, and per-message MQTT 5 expiry still applies. (The broker's
	// own default silently deletes retained messages after 24 h.)
	MaxMessageExpiry Duration `yaml:"max_message_expiry"`
	// MaxConnections caps concurrent clients; 0 means no limit.
	MaxConnections int64 `yaml:"max_connections"`
	// MaxTopicLevels caps the levels of a topic or filter (32).
	MaxTopicLevels int `yaml:"max_topic_levels"`
	// MaxKeepalive is the longest keep-alive an MQTT 5 client may use (20
	// minutes); a client asking for more, or for none (0), is told this
	// value in its CONNACK, so a connection that goes silent is always
	// closed eventually. MQTT 3 has no way to tell the client.
	MaxKeepalive Duration `yaml:"max_keepalive"`
	// PublicAddr is the MQTT host:port handed to clients with their
	// credentials; by default the bound address, with 127.0.0.1 for an
	// unspecified host.
	PublicAddr string `yaml:"public_addr"`
	// Anonymous configures an optional listener whose clients need no
	// credentials and share one sandbox app's IoT area. Off by default.
	Anonymous AnonymousConfig `yaml:"anonymous"`
}

// AnonymousConfig configures the anonymous listener.
type AnonymousConfig struct {
	// Addr enables the listener ("" disables it, the default).
	Addr string `yaml:"addr"`
	// App is the sandbox app anonymous clients belong to ("sandbox").
	App string `yaml:"app"`
	// Rules grant topics under w/{App}/iot/, like an app's IoT rules; %c
	// is the client ID.
	Rules []RuleConfig `yaml:"rules"`
}

// RuleConfig is one topic rule: an MQTT filter pattern and its access
// (read, write or readwrite).
type RuleConfig struct {
	Pattern string `yaml:"pattern"`
	Access  string `yaml:"access"`
}

// ChatConfig configures the chat service.
type ChatConfig struct {
	// SendRate is each user's sustained send quota in messages per second
	// (20); -1 disables the quota. SendBurst is the burst allowed (100).
	SendRate  float64 `yaml:"send_rate"`
	SendBurst int     `yaml:"send_burst"`
	// MaxGroupSize is the most members of a group or channel (1000).
	MaxGroupSize int `yaml:"max_group_size"`
	// MaxBody is the largest message body in bytes (65536).
	MaxBody int `yaml:"max_body"`
	// ChannelBroadcast delivers each message of a channel once, on the
	// channel's broadcast topic w/{app}/b/{conv}, instead of as a copy on
	// every member's downlink (false). Members then receive a channel
	// live only while subscribed to its topic, which the ACL grants to
	// members only; sync, history and the push to offline members are the
	// same either way. It trades one publish per member (and no
	// subscription to manage) for one publish per message plus a
	// membership check per delivery, from memory: worth it for channels
	// with large audiences.
	ChannelBroadcast bool `yaml:"channel_broadcast"`
}

// HTTPConfig configures the HTTP listener: API, health, metrics, the web
// client and same-origin MQTT-over-WebSocket.
type HTTPConfig struct {
	// Addr is ":8080" by default; "" disables HTTP.
	Addr string `yaml:"addr"`
	// TLS serves HTTPS on Addr when a certificate is configured.
	TLS bool `yaml:"tls"`
	// Pprof mounts Go's profiler at /debug/pprof/ for requests from
	// loopback addresses only. Off by default.
	Pprof bool `yaml:"pprof"`
	// MaxBody caps every /v1 request body in bytes (1 MiB); routes apply
	// smaller limits of their own. A larger body is answered 413.
	MaxBody int64 `yaml:"max_body"`
	// ReadTimeout bounds reading a /v1 request's body (30s); WriteTimeout
	// bounds writing its response (60s).
	ReadTimeout  Duration `yaml:"read_timeout"`
	WriteTimeout Duration `yaml:"write_timeout"`
	// ReadHeaderTimeout bounds the arrival of a request's headers on every
	// HTTP and WebSocket listener (10s), so that slow-header clients
	// cannot hold connections; IdleTimeout closes a keep-alive connection
	// that sends no next request (120s).
	ReadHeaderTimeout Duration `yaml:"read_header_timeout"`
	IdleTimeout       Duration `yaml:"idle_timeout"`
}

// TLSConfig names a certificate and key in PEM files. When both are set the
// TLS and WSS listeners start.
type TLSConfig struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// Enabled reports whether a certificate is configured.
func (t TLSConfig) Enabled() bool { return t.CertFile != "" && t.KeyFile != "" }

// LogConfig configures structured logging.
type LogConfig struct {
	// Level is debug, info, warn or error (info).
	Level string `yaml:"level"`
	// Format is text or json; "" picks text on a terminal and json otherwise.
	Format string `yaml:"format"`
}

// Duration is a time.Duration that reads "10s" or "1h30m" from YAML.
type Duration time.Duration

// UnmarshalYAML implements yaml.Unmarshaler.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration (e.g. 10s, 5m, 24h)", n.Line, n.Value)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML implements yaml.Marshaler.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Default returns the embedded defaults: data in ./data, MQTT on :1883,
// WebSocket on :8083, HTTP on :8080, and the hardened broker limits.
func Default() Config {
	return Config{
		Data: "./data",
		MQTT: MQTTConfig{
			Addr:             ":1883",
			TLSAddr:          ":8883",
			WSAddr:           ":8083",
			WSSAddr:          ":8084",
			WSPath:           "/mqtt",
			MaxPacketSize:    256 << 10,
			ConnectTimeout:   Duration(10 * time.Second),
			MaxWritesPending: 256,
			WriteTimeout:     Duration(10 * time.Second),
			MaxInflight:      1024,
			ReceiveMaximum:   256,
			MaxSessionExpiry: Duration(7 * 24 * time.Hour),
			MaxMessageExpiry: 0,
			MaxTopicLevels:   32,
			MaxKeepalive:     Duration(20 * time.Minute),
			Anonymous: AnonymousConfig{App: "sandbox", Rules: []RuleConfig{
				{Pattern: "w/{app}/iot/%c/#", Access: "readwrite"},
				{Pattern: "w/{app}/iot/public/#", Access: "readwrite"},
			}},
		},
		HTTP: HTTPConfig{Addr: ":8080", MaxBody: 1 << 20,
			ReadTimeout: Duration(30 * time.Second), WriteTimeout: Duration(60 * time.Second),
			ReadHeaderTimeout: Duration(10 * time.Second), IdleTimeout: Duration(120 * time.Second)},
		Chat:     ChatConfig{SendRate: 20, SendBurst: 100, MaxGroupSize: 1000, MaxBody: 64 << 10},
		Media:    defaultMedia(),
		Log:      LogConfig{Level: "info"},
		Limits:   DefaultLimits(),
		Webhooks: DefaultWebhooks(),
	}
}

// LoadFile overlays the YAML file at path onto c. Unknown keys are errors,
// so a typo in a setting is reported instead of silently ignored.
func (c *Config) LoadFile(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if err := c.LoadBytes(b); err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	return nil
}

// LoadBytes overlays a YAML document onto c, as LoadFile does for a file;
// an empty document changes nothing.
func (c *Config) LoadBytes(b []byte) error {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	return nil
}

// ApplyEnv overlays the WARBLER_* environment variables read by getenv
// (os.Getenv in production): WARBLER_DATA, WARBLER_MQTT, WARBLER_WS,
// WARBLER_HTTP, WARBLER_MQTT_TLS, WARBLER_WSS, WARBLER_TLS_CERT,
// WARBLER_TLS_KEY, WARBLER_LOG_LEVEL, WARBLER_LOG_FORMAT,
// WARBLER_MAX_PACKET_SIZE.
func (c *Config) ApplyEnv(getenv func(string) string) error {
	set := func(name string, dst *string) {
		if v, ok := lookup(getenv, name); ok {
			*dst = v
		}
	}
	set("WARBLER_DATA", &c.Data)
	set("WARBLER_MQTT", &c.MQTT.Addr)
	set("WARBLER_WS", &c.MQTT.WSAddr)
	set("WARBLER_HTTP", &c.HTTP.Addr)
	set("WARBLER_MQTT_TLS", &c.MQTT.TLSAddr)
	set("WARBLER_WSS", &c.MQTT.WSSAddr)
	set("WARBLER_TLS_CERT", &c.TLS.CertFile)
	set("WARBLER_TLS_KEY", &c.TLS.KeyFile)
	set("WARBLER_LOG_LEVEL", &c.Log.Level)
	set("WARBLER_LOG_FORMAT", &c.Log.Format)
	if v, ok := lookup(getenv, "WARBLER_MAX_PACKET_SIZE"); ok {
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			return fmt.Errorf("WARBLER_MAX_PACKET_SIZE: %q is not a byte count", v)
		}
		c.MQTT.MaxPacketSize = uint32(n)
	}
	return nil
}

func lookup(getenv func(string) string, name string) (string, bool) {
	v := getenv(name)
	return v, v != ""
}

// Validate reports the first setting that cannot work.
func (c *Config) Validate() error {
	if c.Data == "" {
		return errors.New("config: data directory is empty")
	}
	if c.MQTT.Addr == "" && c.MQTT.WSAddr == "" && c.HTTP.Addr == "" && !c.TLS.Enabled() {
		return errors.New("config: every listener is disabled")
	}
	if c.MQTT.MaxPacketSize < 64 {
		return fmt.Errorf("config: mqtt.max_packet_size %d is too small (minimum 64 bytes)", c.MQTT.MaxPacketSize)
	}
	if k := c.MQTT.MaxKeepalive.D(); k < time.Second || k > 65535*time.Second {
		return fmt.Errorf("config: mqtt.max_keepalive %v must be between 1s and 65535s", k)
	}
	if c.MQTT.WriteTimeout.D() < 0 {
		return errors.New("config: mqtt.write_timeout must not be negative")
	}
	if c.MQTT.ConnectTimeout.D() <= 0 {
		return errors.New("config: mqtt.connect_timeout must be positive")
	}
	if c.MQTT.MaxWritesPending < 8 {
		return fmt.Errorf("config: mqtt.max_writes_pending %d is too small (minimum 8)", c.MQTT.MaxWritesPending)
	}
	if c.MQTT.ReceiveMaximum == 0 || c.MQTT.MaxInflight == 0 {
		return errors.New("config: mqtt.receive_maximum and mqtt.max_inflight must be positive")
	}
	if err := c.Media.validate(); err != nil {
		return err
	}
	if c.Chat.MaxBody < 1 {
		return fmt.Errorf("config: chat.max_body %d must be positive", c.Chat.MaxBody)
	}
	if c.Chat.SendRate == 0 || c.Chat.SendRate < -1 {
		return errors.New("config: chat.send_rate must be positive, or -1 for no quota")
	}
	if c.MQTT.WSPath == "" || !strings.HasPrefix(c.MQTT.WSPath, "/") {
		return fmt.Errorf("config: mqtt.ws_path %q must start with /", c.MQTT.WSPath)
	}
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		return errors.New("config: tls.cert_file and tls.key_file go together")
	}
	if c.HTTP.MaxBody < 0 || c.HTTP.ReadTimeout < 0 || c.HTTP.WriteTimeout < 0 || c.HTTP.IdleTimeout < 0 {
		return errors.New("config: http.max_body, http.read_timeout, http.write_timeout and http.idle_timeout cannot be negative")
	}
	if c.HTTP.ReadHeaderTimeout <= 0 {
		return errors.New("config: http.read_header_timeout must be positive")
	}
	if c.HTTP.TLS && !c.TLS.Enabled() {
		return errors.New("config: http.tls needs tls.cert_file and tls.key_file")
	}
	if err := c.Limits.Validate(); err != nil {
		return err
	}
	if err := c.Webhooks.Validate(); err != nil {
		return err
	}
	switch strings.ToLower(c.Log.Level) {
	case "", "debug", "info", "warn", "warning", "error":
	default:
		return fmt.Errorf("config: log.level %q is not one of debug, info, warn, error", c.Log.Level)
	}
	switch c.Log.Format {
	case "", "text", "json":
	default:
		return fmt.Errorf("config: log.format %q is not text or json", c.Log.Format)
	}
	return nil
}
