package hooks

// Limits is the mochi hook, and the listener and handler wrappers, that
// keep any one client, address or app from taking more than its share of
// the server, and keep banned ones out. Its policy (LimitsPolicy) is set in
// the "limits" section of the configuration; EMQX's limiter and flapping
// detection are the model.
//
// Where each limit acts, in the order a connection meets them:
//
//	accept     a banned address is closed; the server-wide connection
//	           rate paces accept (the backlog holds the rest); the global
//	           socket cap, the per-address cap and the per-address
//	           connection rate close the socket. Sockets count from accept,
//	           so ones that never send CONNECT count too. (Listener,
//	           WebSocket)
//	CONNECT    before authentication (OnConnect): a banned address, client
//	           ID or user gets CONNACK 0x8A "banned" (MQTT 3: 0x05); an
//	           address that sent more than Flapping.MaxConnectsPerIP
//	           CONNECTs within Flapping.Window, or a client ID that
//	           connected successfully more than Flapping.MaxConnects times,
//	           is banned for Flapping.BanFor; an app at its MaxConnections
//	           quota gets 0x97 "quota exceeded" (MQTT 3: 0x03).
//	any packet (OnPacketRead) more than MaxUserProperties MQTT 5 user
//	           properties end the connection (DISCONNECT or CONNACK 0x83).
//	PUBLISH    (OnPacketRead) a topic with a wildcard, NUL, bad UTF-8, too
//	           many levels or bytes, "$SYS", or empty without an alias
//	           ends the connection with DISCONNECT 0x90 "topic name
//	           invalid": the broker would otherwise drop it without an ack.
//	           (OnPublish) then the payload cap, the app's message quota,
//	           and the client's message and byte rates. A client over its
//	           rates is first slowed: the publish waits (up to
//	           PublishDelay) for its tokens while the client's reads pause,
//	           so a flood costs the server no more than the rate allows.
//	           Past that wait the publish is refused. A refused QoS 0
//	           message is dropped and counted; a refused MQTT 5 QoS 1 or 2
//	           message gets PUBACK/PUBREC 0x97 "quota exceeded" with a
//	           reason string naming the limit (0x96 "message rate too high"
//	           is not a valid PUBACK code); an MQTT 3 client, which cannot
//	           be told, is disconnected, never acked-then-dropped. A client
//	           that has DisconnectAfter publishes in a row refused is
//	           disconnected with DISCONNECT 0x96.
//	SUBSCRIBE  a filter that is too long or deep gets SUBACK 0x8F, one past
//	           the client's subscription cap 0x97 (MQTT 3: 0x80).
//
// Chat uplinks (w/{app}/up/...) are left to the chat service, whose
// per-user send quota answers inside the chat protocol and in order.
//
// Addresses in LimitsPolicy.Exempt (loopback by default: a local reverse
// proxy would otherwise make every client one address) skip the
// per-address caps, the connection rates and address flapping, never bans.
// IPv6 addresses are limited per /64.
//
// Bans are kept in a storage.BanStore and in memory; they are checked on
// every accept and CONNECT without I/O. Setting one disconnects the
// clients it covers at once (DISCONNECT 0x8A) and closes the address's
// sockets that have not connected yet. Lapsed bans are swept every minute.
//
// Every refusal is counted by reason (Limited) and logged, at most once a
// second per reason with the number of lines suppressed, so that a flood
// cannot turn into a flood of logs.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage"
)

// LimitsPolicy is what the Limits hook enforces. Zero values switch a
// limit off.
type LimitsPolicy struct {
	// MaxConnections caps the open MQTT sockets of the server, from accept,
	// across TCP, TLS and WebSocket.
	MaxConnections int
	// MaxConnectionsPerIP caps the open MQTT sockets of one address.
	MaxConnectionsPerIP int
	// ConnectRate paces accepted sockets over all addresses.
	ConnectRate Rate
	// ConnectRatePerIP limits new sockets per address; over it a socket is
	// closed at accept.
	ConnectRatePerIP Rate
	// Exempt addresses skip the per-address limits and rates.
	Exempt []netip.Prefix

	// PublishRate and PublishBytes limit each client's messages and
	// payload bytes per second (burst: the bucket size).
	PublishRate  Rate
	PublishBytes Rate
	// PublishDelay is how long a publish over its client's rates may be
	// held back, pausing the client's reads, before it is refused instead.
	// Slowing a client to its rate (as EMQX does) costs the server only
	// what the rate allows, however fast the client sends.
	PublishDelay time.Duration
	// DisconnectAfter is how many publishes in a row may be refused
	// before the client is disconnected with 0x96.
	DisconnectAfter int
	// MaxSubscriptions caps each client's subscriptions.
	MaxSubscriptions int
	// MaxTopicLength and MaxTopicLevels bound every topic and filter.
	MaxTopicLength int
	MaxTopicLevels int
	// MaxPayload caps a message's payload in bytes.
	MaxPayload int
	// MaxUserProperties caps the MQTT 5 user properties of any packet
	// (the broker copies them to every subscriber).
	MaxUserProperties int
	// Apps override the client limits above for the clients of one app.
	Apps map[string]AppPolicy

	Flapping FlappingPolicy
}

// AppPolicy overrides client limits for one app; zero fields inherit.
type AppPolicy struct {
	MaxPayload       int
	PublishRate      Rate
	PublishBytes     Rate
	MaxSubscriptions int
}

// FlappingPolicy configures flapping detection: a client ID that connects
// more than MaxConnects times within Window, or an address that sends
// more than MaxConnectsPerIP CONNECTs within Window, is banned for BanFor.
// Zero counts switch detection off for that kind.
type FlappingPolicy struct {
	MaxConnects      int
	MaxConnectsPerIP int
	Window           time.Duration
	BanFor           time.Duration
}

// LimitsOptions configure the Limits hook.
type LimitsOptions struct {
	Policy LimitsPolicy
	// Server is the broker, used to disconnect the clients a new ban covers.
	Server *mqtt.Server
	// Bans keeps bans across restarts. Required.
	Bans storage.BanStore
	// Principals, if set, tells which app an authenticated client belongs
	// to; otherwise the app is read from the client ID.
	Principals *Principals
	// Quotas returns an app's quotas (MaxConnections, MsgsPerSec), read
	// on each check; nil means no app quotas.
	Quotas func(app string) (storage.AppQuotas, bool)
	Clock  Clock
	Logger *slog.Logger
}

// reason is why something was refused; the label of warbler_limited_total.
type reason uint8

const (
	reasonNone reason = iota
	reasonBannedIP
	reasonBannedClient
	reasonBannedUser
	reasonFlapping
	reasonMaxConnections
	reasonIPConnections
	reasonIPConnectRate
	reasonConnectRate
	reasonAppConnections
	reasonTopicInvalid
	reasonTopicLength
	reasonTopicLevels
	reasonPayloadSize
	reasonAppPublishRate
	reasonPublishRate
	reasonPublishBytes
	reasonRateDisconnect
	reasonSubscriptions
	reasonUserProperties
	reasonPublishDelayed
	numReasons
)

var reasonNames = [numReasons]string{
	reasonBannedIP:       "banned_ip",
	reasonBannedClient:   "banned_client_id",
	reasonBannedUser:     "banned_user",
	reasonFlapping:       "flapping",
	reasonMaxConnections: "max_connections",
	reasonIPConnections:  "ip_connections",
	reasonIPConnectRate:  "ip_connect_rate",
	reasonConnectRate:    "connect_rate_paced",
	reasonAppConnections: "app_connections",
	reasonTopicInvalid:   "topic_invalid",
	reasonTopicLength:    "topic_length",
	reasonTopicLevels:    "topic_levels",
	reasonPayloadSize:    "payload_size",
	reasonAppPublishRate: "app_publish_rate",
	reasonPublishRate:    "publish_rate",
	reasonPublishBytes:   "publish_bytes",
	reasonRateDisconnect: "rate_disconnect",
	reasonSubscriptions:  "subscriptions",
	reasonUserProperties: "user_properties",
	reasonPublishDelayed: "publish_delayed",
}

func (r reason) String() string { return reasonNames[r] }

// Limits enforces LimitsPolicy and bans. Create it with NewLimits.
type Limits struct {
	mqtt.HookBase
	policy  LimitsPolicy
	server  *mqtt.Server
	store   storage.BanStore
	reg     *Principals
	quotas  func(string) (storage.AppQuotas, bool)
	clk     atomic.Value // clockBox
	sleep   func(time.Duration)
	log     *slog.Logger
	bans    *banSet
	adm     admission
	flap    *flapping
	clients sync.Map // *mqtt.Client -> *clientLimits
	apps    sync.Map // app -> *appLimits

	limited [numReasons]atomic.Uint64
	logMu   sync.Mutex
	logged  [numReasons]logState

	stop     chan struct{}
	stopOnce sync.Once
	sweeper  sync.WaitGroup
}

type logState struct {
	last       time.Time
	suppressed int
}

// clientLimits is the state of one connected client. Only the client's
// read loop touches it (OnPublish, OnSubscribe run there), so it needs no
// lock.
type clientLimits struct {
	app          string
	msgs, bytes  bucket
	rate, brate  Rate
	maxPayload   int
	maxSubs      int
	refusedInRow int
}

// appLimits is the shared state of one app's clients.
type appLimits struct {
	conns atomic.Int64
	mu    sync.Mutex
	msgs  bucket
}

// NewLimits builds the hook and loads the stored bans, dropping lapsed
// ones.
func NewLimits(o LimitsOptions) (*Limits, error) {
	if o.Bans == nil {
		return nil, errors.New("hooks: LimitsOptions.Bans is required")
	}
	l := &Limits{policy: o.Policy, server: o.Server, store: o.Bans, reg: o.Principals, quotas: o.Quotas,
		log: o.Logger, bans: newBanSet(), stop: make(chan struct{}), sleep: time.Sleep}
	l.SetClock(o.Clock)
	if l.log == nil {
		l.log = slog.Default()
	}
	if l.policy.Flapping.Window <= 0 {
		l.policy.Flapping.Window = time.Minute
	}
	if l.policy.Flapping.BanFor <= 0 {
		l.policy.Flapping.BanFor = 5 * time.Minute
	}
	l.flap = newFlapping(l.policy.Flapping.Window)
	l.adm.ips = map[ipKey]*ipState{}
	l.adm.global = newBucket(l.policy.ConnectRate, l.now())
	n, err := l.bans.load(context.Background(), l.store, l.now())
	if err != nil {
		return nil, err
	}
	if n > 0 {
		l.log.Info("bans loaded", "count", n)
	}
	l.sweeper.Add(1)
	go l.sweepLoop(time.Minute)
	return l, nil
}

type clockBox struct{ c Clock }

// SetClock replaces the clock (nil: the system clock). Tests use it to
// jump across windows and ban lifetimes; it is safe at any time.
func (l *Limits) SetClock(c Clock) {
	if c == nil {
		c = systemClock{}
	}
	l.clk.Store(clockBox{c})
}

func (l *Limits) now() time.Time { return l.clk.Load().(clockBox).c.Now() }

// ID implements mqtt.Hook.
func (l *Limits) ID() string { return "warbler-limits" }

// Provides implements mqtt.Hook.
func (l *Limits) Provides(b byte) bool {
	switch b {
	case mqtt.OnConnect, mqtt.OnSessionEstablished, mqtt.OnDisconnect, mqtt.OnPacketRead,
		mqtt.OnPublish, mqtt.OnSubscribe, mqtt.OnSubscribed:
		return true
	}
	return false
}

// Stop implements mqtt.Hook: it ends the ban sweeper.
func (l *Limits) Stop() error {
	l.stopOnce.Do(func() { close(l.stop) })
	l.sweeper.Wait()
	return nil
}

// Limited returns the number of refusals by reason. Every reason is
// present, so the set of labels is fixed.
func (l *Limits) Limited() map[string]uint64 {
	m := make(map[string]uint64, numReasons-1)
	for r := reason(1); r < numReasons; r++ {
		m[reasonNames[r]] = l.limited[r].Load()
	}
	return m
}

func (l *Limits) count(r reason) { l.limited[r].Add(1) }

// note counts a refusal and logs it, at most once a second per reason.
func (l *Limits) note(r reason, attrs ...any) {
	l.count(r)
	now := l.now()
	l.logMu.Lock()
	st := &l.logged[r]
	if !st.last.IsZero() && now.Sub(st.last) < time.Second {
		st.suppressed++
		l.logMu.Unlock()
		return
	}
	suppressed := st.suppressed
	st.last, st.suppressed = now, 0
	l.logMu.Unlock()
	l.log.Info("limit: refused", append([]any{"reason", r.String(), "suppressed_since_last", suppressed}, attrs...)...)
}

func (l *Limits) exempt(a netip.Addr) bool {
	for _, p := range l.policy.Exempt {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// OnConnect implements mqtt.Hook. It runs before authentication; a
// refusal writes its own CONNACK and returns an error, on which the broker
// closes the connection without a CONNACK of its own.
func (l *Limits) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	if cl.Net.Inline {
		return nil
	}
	now := l.now()
	addr, hasAddr := parseRemote(cl.Net.Remote)
	if hasAddr {
		if b, ok := l.bans.ip(addr, now); ok {
			return l.refuseConnect(cl, reasonBannedIP, packets.ErrBanned, "ban", b.Value)
		}
		if n := l.policy.Flapping.MaxConnectsPerIP; n > 0 && !l.exempt(addr) {
			key := "i/" + netip.Addr(keyOf(addr)).String()
			if c := l.flap.add(key, now); c > n {
				l.flap.reset(key)
				value := addr.String()
				if addr.Is6() {
					value = netip.PrefixFrom(addr, 64).Masked().String()
				}
				l.autoBan(storage.BanIP, value, fmt.Sprintf("flapping: %d CONNECTs from the address within %v", c, l.policy.Flapping.Window), cl.Net.Remote)
				return l.refuseConnect(cl, reasonFlapping, packets.ErrBanned, "address", addr.String())
			}
		}
	}
	if _, ok := l.bans.lookup(storage.BanClientID, cl.ID, now); ok {
		return l.refuseConnect(cl, reasonBannedClient, packets.ErrBanned)
	}
	app, user, _, parsed := protocol.ParseClientID(cl.ID)
	if parsed {
		if _, ok := l.bans.lookup(storage.BanUser, app+":"+user, now); ok {
			return l.refuseConnect(cl, reasonBannedUser, packets.ErrBanned, "user", app+":"+user)
		}
	}
	if u := string(pk.Connect.Username); u != "" {
		if _, ok := l.bans.lookup(storage.BanUser, u, now); ok {
			return l.refuseConnect(cl, reasonBannedUser, packets.ErrBanned, "user", u)
		}
	}
	if n := l.policy.Flapping.MaxConnects; n > 0 {
		if c := l.flap.count("c/"+cl.ID, now); c >= n {
			l.flap.reset("c/" + cl.ID)
			l.autoBan(storage.BanClientID, cl.ID, fmt.Sprintf("flapping: %d connects within %v", c+1, l.policy.Flapping.Window), cl.Net.Remote)
			return l.refuseConnect(cl, reasonFlapping, packets.ErrBanned)
		}
	}
	if parsed && l.quotas != nil {
		if q, ok := l.quotas(app); ok && q.MaxConnections > 0 && l.app(app).conns.Load() >= int64(q.MaxConnections) {
			// A device reconnecting while its old connection lingers
			// takes that connection's place: let it in.
			if l.server == nil {
				return l.refuseConnect(cl, reasonAppConnections, packets.ErrQuotaExceeded, "app", app, "limit", q.MaxConnections)
			}
			if old, ok := l.server.Clients.Get(cl.ID); !ok || old.Closed() {
				return l.refuseConnect(cl, reasonAppConnections, packets.ErrQuotaExceeded, "app", app, "limit", q.MaxConnections)
			}
		}
	}
	return nil
}

// refuseConnect answers a CONNECT with code (MQTT 5) or its MQTT 3
// equivalent, and returns the error that makes the broker close.
func (l *Limits) refuseConnect(cl *mqtt.Client, r reason, code packets.Code, attrs ...any) error {
	l.note(r, append([]any{"client", cl.ID, "remote", cl.Net.Remote}, attrs...)...)
	ack := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack}, ReasonCode: code.Code}
	if cl.Properties.ProtocolVersion < 5 {
		ack.ReasonCode = packets.Err3NotAuthorized.Code // 0x05
		if code == packets.ErrQuotaExceeded {
			ack.ReasonCode = packets.Err3ServerUnavailable.Code // 0x03
		}
	} else {
		ack.Properties.ReasonString = code.Reason
	}
	_ = cl.WritePacket(ack)
	return code
}

func (l *Limits) app(app string) *appLimits {
	if v, ok := l.apps.Load(app); ok {
		return v.(*appLimits)
	}
	v, _ := l.apps.LoadOrStore(app, &appLimits{})
	return v.(*appLimits)
}

// appOf returns the app of an authenticated client.
func (l *Limits) appOf(cl *mqtt.Client) string {
	if l.reg != nil {
		if p := l.reg.Get(cl); p != nil {
			return p.App
		}
	}
	app, _, _, _ := protocol.ParseClientID(cl.ID)
	return app
}

// OnSessionEstablished implements mqtt.Hook: the client is counted toward
// its app and its client ID's flapping window, and gets its rate buckets.
func (l *Limits) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	if cl.Net.Inline {
		return
	}
	now := l.now()
	p := l.policy
	cs := &clientLimits{app: l.appOf(cl), rate: p.PublishRate, brate: p.PublishBytes,
		maxPayload: p.MaxPayload, maxSubs: p.MaxSubscriptions}
	if ap, ok := p.Apps[cs.app]; ok {
		if ap.PublishRate.On() {
			cs.rate = ap.PublishRate
		}
		if ap.PublishBytes.On() {
			cs.brate = ap.PublishBytes
		}
		if ap.MaxPayload > 0 {
			cs.maxPayload = ap.MaxPayload
		}
		if ap.MaxSubscriptions > 0 {
			cs.maxSubs = ap.MaxSubscriptions
		}
	}
	cs.msgs, cs.bytes = newBucket(cs.rate, now), newBucket(cs.brate, now)
	l.clients.Store(cl, cs)
	if cs.app != "" {
		l.app(cs.app).conns.Add(1)
	}
	if p.Flapping.MaxConnects > 0 {
		l.flap.add("c/"+cl.ID, now)
	}
}

// OnDisconnect implements mqtt.Hook. Sessions restored from storage at
// start (no connection) were never counted.
func (l *Limits) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	if cl.Net.Inline || cl.Net.Conn == nil {
		return
	}
	if v, ok := l.clients.LoadAndDelete(cl); ok {
		if app := v.(*clientLimits).app; app != "" {
			l.app(app).conns.Add(-1)
		}
	}
}

// AppConnections returns the connected clients of an app.
func (l *Limits) AppConnections(app string) int64 { return l.app(app).conns.Load() }

// OnPacketRead implements mqtt.Hook: it refuses PUBLISH topics that the
// broker would silently ignore or that break the topic limits.
func (l *Limits) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil
	}
	if n := l.policy.MaxUserProperties; n > 0 && len(pk.Properties.User)+len(pk.Connect.WillProperties.User) > n {
		l.note(reasonUserProperties, "client", cl.ID, "remote", cl.Net.Remote, "packet", pk.FixedHeader.Type)
		code := packets.Code{Code: packets.ErrImplementationSpecificError.Code, Reason: fmt.Sprintf("more than %d user properties", n)}
		if pk.FixedHeader.Type == packets.Connect {
			connack(cl, pk.ProtocolVersion, code)
			return pk, code
		}
		l.disconnect(cl, code)
		return pk, code
	}
	if pk.FixedHeader.Type == packets.Connect && pk.ProtocolVersion < 5 && !pk.Connect.Clean && pk.Connect.ClientIdentifier == "" {
		// MQTT 3.1.1 §3.1.3.1 wants 0x02 "identifier rejected"; the broker
		// would answer 0x80, which is not an MQTT 3 code.
		connack(cl, pk.ProtocolVersion, packets.Err3ClientIdentifierNotValid)
		return pk, packets.ErrClientIdentifierNotValid
	}
	if pk.FixedHeader.Type != packets.Publish {
		return pk, nil
	}
	r, why := l.checkTopic(pk.TopicName, true)
	if r == reasonNone && pk.TopicName == "" && !(pk.Properties.TopicAliasFlag && pk.Properties.TopicAlias > 0) {
		r, why = reasonTopicInvalid, "empty topic without a topic alias"
	}
	if r == reasonNone {
		return pk, nil
	}
	l.note(r, "client", cl.ID, "remote", cl.Net.Remote, "why", why)
	l.disconnect(cl, packets.Code{Code: packets.ErrTopicNameInvalid.Code, Reason: "topic name invalid: " + why})
	return pk, packets.ErrTopicNameInvalid
}

// connack refuses a CONNECT read with protocol version v with code.
func connack(cl *mqtt.Client, v byte, code packets.Code) {
	cl.Properties.ProtocolVersion = v // not parsed from the CONNECT yet
	ack := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack}, ReasonCode: code.Code}
	if v == 5 {
		ack.Properties.ReasonString = code.Reason
	}
	_ = cl.WritePacket(ack)
}

// checkTopic checks a topic name (publish) or filter against the
// structural rules and the length and depth limits.
func (l *Limits) checkTopic(t string, publish bool) (reason, string) {
	if n := l.policy.MaxTopicLength; n > 0 && len(t) > n {
		return reasonTopicLength, fmt.Sprintf("longer than %d bytes", n)
	}
	if n := l.policy.MaxTopicLevels; n > 0 && strings.Count(t, "/") >= n {
		return reasonTopicLevels, fmt.Sprintf("more than %d levels", n)
	}
	if strings.IndexByte(t, 0) >= 0 || !utf8.ValidString(t) {
		return reasonTopicInvalid, "NUL or invalid UTF-8"
	}
	if publish {
		if strings.ContainsAny(t, "+#") {
			return reasonTopicInvalid, "wildcard in a topic name"
		}
		if len(t) >= 4 && strings.EqualFold(t[:4], "$SYS") {
			return reasonTopicInvalid, "$SYS is read-only"
		}
	}
	return reasonNone, ""
}

// disconnect sends an MQTT 5 client DISCONNECT with code, then closes the
// connection.
func (l *Limits) disconnect(cl *mqtt.Client, code packets.Code) {
	if cl.Properties.ProtocolVersion == 5 {
		_ = cl.WritePacket(packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Disconnect},
			ReasonCode:  code.Code,
			Properties:  packets.Properties{ReasonString: code.Reason},
		})
	}
	cl.Stop(code)
}

// OnPublish implements mqtt.Hook: the payload cap, the app's message quota
// and the client's message and byte rates.
func (l *Limits) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline || protocol.ParseTopic(pk.TopicName).Kind == protocol.KindUplink {
		return pk, nil
	}
	v, ok := l.clients.Load(cl)
	if !ok {
		return pk, nil
	}
	cs := v.(*clientLimits)
	now := l.now()
	size := len(pk.Payload)
	if cs.maxPayload > 0 && size > cs.maxPayload {
		return l.refusePublish(cl, pk, cs, reasonPayloadSize, fmt.Sprintf("payload of %d bytes exceeds the limit of %d", size, cs.maxPayload))
	}
	if cs.app != "" && l.quotas != nil {
		if q, ok := l.quotas(cs.app); ok && q.MsgsPerSec > 0 {
			r := Rate{Per: q.MsgsPerSec, Burst: max(q.MsgsPerSec, 1)}
			a := l.app(cs.app)
			a.mu.Lock()
			if a.msgs.last.IsZero() {
				a.msgs = newBucket(r, now)
			}
			ok, _ := a.msgs.take(r, now, 1)
			a.mu.Unlock()
			if !ok {
				return l.refusePublish(cl, pk, cs, reasonAppPublishRate, "app message quota exceeded")
			}
		}
	}
	delay := l.policy.PublishDelay
	w1, ok := cs.msgs.reserve(cs.rate, now, 1, delay)
	if !ok {
		return l.refusePublish(cl, pk, cs, reasonPublishRate, "message rate too high")
	}
	w2, ok := cs.bytes.reserve(cs.brate, now, float64(size), delay)
	if !ok {
		cs.msgs.refund(1)
		return l.refusePublish(cl, pk, cs, reasonPublishBytes, "byte rate too high")
	}
	if w := max(w1, w2); w > 0 {
		// Hold this client's read loop: what it sends meanwhile waits in
		// its socket, so it is slowed to its rate at no cost to others.
		l.count(reasonPublishDelayed)
		l.sleep(w)
	}
	cs.refusedInRow = 0
	return pk, nil
}

// refusePublish refuses one message: QoS 0 is dropped; MQTT 5 QoS 1/2 is
// answered 0x97 with why as the reason string; MQTT 3 QoS 1/2 and a
// client with DisconnectAfter refusals in a row are disconnected. The
// broker neither acks nor routes a message refused with ErrRejectPacket.
func (l *Limits) refusePublish(cl *mqtt.Client, pk packets.Packet, cs *clientLimits, r reason, why string) (packets.Packet, error) {
	l.note(r, "client", cl.ID, "topic", pk.TopicName, "why", why)
	cs.refusedInRow++
	if n := l.policy.DisconnectAfter; n > 0 && cs.refusedInRow >= n {
		l.note(reasonRateDisconnect, "client", cl.ID, "refused_in_a_row", cs.refusedInRow)
		l.disconnect(cl, packets.ErrMessageRateTooHigh)
		return pk, packets.ErrRejectPacket
	}
	switch {
	case pk.FixedHeader.Qos == 0:
	case cl.Properties.ProtocolVersion < 5:
		cl.Stop(packets.ErrQuotaExceeded)
	default:
		typ := packets.Puback
		if pk.FixedHeader.Qos == 2 {
			typ = packets.Pubrec
		}
		_ = cl.WritePacket(packets.Packet{
			FixedHeader: packets.FixedHeader{Type: typ},
			PacketID:    pk.PacketID,
			ReasonCode:  packets.ErrQuotaExceeded.Code,
			Properties:  packets.Properties{ReasonString: why},
		})
	}
	return pk, packets.ErrRejectPacket
}

// Filters put in place of refused ones in a SUBSCRIBE. Both are invalid
// (a '#' not at the end), so the broker refuses them with 0x8F without
// subscribing; OnSubscribed then turns the second kind's code into 0x97.
const (
	filterRefused   = "#/refused-by-topic-limits"
	filterOverQuota = "#/refused-by-subscription-limit"
)

// OnSubscribe implements mqtt.Hook: filters over the topic limits, and
// new filters past the client's subscription cap, are replaced by filters
// the broker refuses.
func (l *Limits) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if cl.Net.Inline {
		return pk
	}
	maxSubs := l.policy.MaxSubscriptions
	if v, ok := l.clients.Load(cl); ok {
		maxSubs = v.(*clientLimits).maxSubs
	}
	have := cl.State.Subscriptions.Len()
	filters := make([]packets.Subscription, len(pk.Filters))
	copy(filters, pk.Filters)
	for i, f := range filters {
		if r, why := l.checkTopic(f.Filter, false); r != reasonNone {
			l.note(r, "client", cl.ID, "why", why)
			filters[i].Filter = filterRefused
			continue
		}
		if _, exists := cl.State.Subscriptions.Get(f.Filter); exists || maxSubs <= 0 {
			continue
		}
		if have >= maxSubs {
			l.note(reasonSubscriptions, "client", cl.ID, "limit", maxSubs)
			filters[i].Filter = filterOverQuota
			continue
		}
		have++
	}
	pk.Filters = filters
	return pk
}

// OnSubscribed implements mqtt.Hook. The broker passes the SUBACK's own
// reason codes, so setting one here changes what the client receives.
func (l *Limits) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	if cl.Properties.ProtocolVersion < 5 {
		return
	}
	for i, f := range pk.Filters {
		if f.Filter == filterOverQuota && i < len(codes) {
			codes[i] = packets.ErrQuotaExceeded.Code
		}
	}
}

// Ban sets (or replaces) a ban after checking it with NormalizeBan, stores
// it, and disconnects the clients it covers. b.By defaults to "admin".
func (l *Limits) Ban(ctx context.Context, b storage.Ban) (storage.Ban, error) {
	return l.ban(ctx, b, "")
}

// ban is Ban, leaving alone the socket with remote address except (the one
// being refused, which gets its CONNACK).
func (l *Limits) ban(ctx context.Context, b storage.Ban, except string) (storage.Ban, error) {
	b, err := NormalizeBan(b)
	if err != nil {
		return b, err
	}
	now := l.now()
	if !b.ExpiresAt.IsZero() && !b.ExpiresAt.After(now) {
		return b, invalidBan("expires_at is not in the future")
	}
	if b.By == "" {
		b.By = "admin"
	}
	b.CreatedAt = now.UTC()
	if err := l.store.PutBan(ctx, b); err != nil {
		return b, err
	}
	l.bans.put(b)
	l.log.Info("ban set", "kind", b.Kind, "value", b.Value, "by", b.By, "reason", b.Reason, "expires_at", b.ExpiresAt)
	l.enforce(b, except)
	return b, nil
}

// autoBan sets a temporary ban from flapping detection.
func (l *Limits) autoBan(kind, value, why, except string) {
	b := storage.Ban{Kind: kind, Value: value, Reason: why, By: "flapping",
		ExpiresAt: l.now().Add(l.policy.Flapping.BanFor).UTC()}
	if _, err := l.ban(context.Background(), b, except); err != nil {
		l.log.Error("flapping ban not stored", "kind", kind, "value", value, "error", err)
		l.bans.put(b) // enforce it in this process anyway
	}
}

// Unban lifts a ban; storage.ErrNotFound if there is none.
func (l *Limits) Unban(ctx context.Context, kind, value string) error {
	b, err := NormalizeBan(storage.Ban{Kind: kind, Value: value})
	if err != nil {
		return err
	}
	if err := l.store.DeleteBan(ctx, b.Kind, b.Value); err != nil {
		return err
	}
	l.bans.delete(b.Kind, b.Value)
	l.log.Info("ban lifted", "kind", b.Kind, "value", b.Value)
	return nil
}

// Bans returns the bans in force, sorted by kind and value.
func (l *Limits) Bans() []storage.Ban { return l.bans.all(l.now()) }

// BanCounts returns the number of bans in force by kind.
func (l *Limits) BanCounts() map[string]int {
	m := map[string]int{storage.BanClientID: 0, storage.BanUser: 0, storage.BanIP: 0}
	for _, b := range l.Bans() {
		m[b.Kind]++
	}
	return m
}

// enforce disconnects the connected clients that b covers, with
// DISCONNECT 0x8A for MQTT 5 clients, and for an address ban closes its
// sockets that have not connected yet. Writes happen in the background, cut
// short after a second, so a client that does not read cannot stall the
// caller.
func (l *Limits) enforce(b storage.Ban, except string) {
	var match func(netip.Addr) bool
	if b.Kind == storage.BanIP {
		if strings.Contains(b.Value, "/") {
			p := netip.MustParsePrefix(b.Value)
			match = p.Contains
		} else {
			a := netip.MustParseAddr(b.Value)
			match = func(x netip.Addr) bool { return x == a }
		}
	}
	clients := map[string]bool{except: true} // sockets not to close: connected clients, and except
	if l.server != nil {
		for _, cl := range l.server.Clients.GetAll() {
			if cl.Net.Inline || cl.Net.Conn == nil || cl.Closed() {
				continue
			}
			clients[cl.Net.Remote] = true
			hit := false
			switch b.Kind {
			case storage.BanClientID:
				hit = cl.ID == b.Value
			case storage.BanUser:
				app, user, _, ok := protocol.ParseClientID(cl.ID)
				hit = ok && app+":"+user == b.Value
			case storage.BanIP:
				a, ok := parseRemote(cl.Net.Remote)
				hit = ok && match(a)
			}
			if !hit {
				continue
			}
			l.log.Info("ban: disconnecting client", "client", cl.ID, "remote", cl.Net.Remote, "kind", b.Kind, "value", b.Value)
			go func() {
				t := time.AfterFunc(time.Second, func() { cl.Stop(packets.ErrBanned) })
				defer t.Stop()
				l.disconnect(cl, packets.ErrBanned)
			}()
		}
	}
	if match != nil {
		if n := l.closeSockets(func(t *connTicket) bool { return match(t.addr) && !clients[t.remote] }); n > 0 {
			l.log.Info("ban: closed sockets", "value", b.Value, "count", n)
		}
	}
}

// sweepLoop removes lapsed bans from memory and the store every period.
func (l *Limits) sweepLoop(period time.Duration) {
	defer l.sweeper.Done()
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			l.SweepBans()
		}
	}
}

// SweepBans removes the bans that have lapsed, from memory and the store.
func (l *Limits) SweepBans() {
	for _, b := range l.bans.expired(l.now()) {
		if err := l.store.DeleteBan(context.Background(), b.Kind, b.Value); err != nil && !errors.Is(err, storage.ErrNotFound) {
			l.log.Error("delete lapsed ban", "kind", b.Kind, "value", b.Value, "error", err)
		}
		l.log.Info("ban lapsed", "kind", b.Kind, "value", b.Value, "by", b.By)
	}
}

// BannedIP reports whether an address (as "host" or "host:port") is banned;
// the HTTP API's middleware asks it.
func (l *Limits) BannedIP(remote string) bool {
	a, ok := parseRemote(remote)
	if !ok {
		return false
	}
	_, banned := l.bans.ip(a, l.now())
	return banned
}

// Exempt reports whether an address (as "host" or "host:port") is exempt
// from per-address limits.
func (l *Limits) Exempt(remote string) bool {
	a, ok := parseRemote(remote)
	return ok && l.exempt(a)
}
