package hooks

// Auth is the mochi hook that authenticates every MQTT CONNECT against the
// identity service and records who each client is (a Principal) for the ACL
// hook.
//
// Credentials, by kind of client (docs/PROTOCOL.md has the full rules):
//
//	user     password: an access token (JWT)
//	         client ID: "{app}:{user}:{device}" of the token's app, sub and dev
//	                    (for an app-minted token without dev, any valid device ID)
//	         username:  empty, or "{app}:{user}"
//	service  password: an API key of the app with the "publish" scope
//	         client ID: "{app}:_svc:{name}"
//	         username:  "{app}:_svc"
//	admin    password: the admin key; client ID "_admin:_svc:{name}",
//	         username "_admin:_svc"; may read $SYS and nothing else. The
//	         admin key may also connect as the service of any app.
//
// On an anonymous listener (AuthOptions.Anonymous) no credentials are read:
// every client becomes an anonymous principal of the sandbox app, allowed
// only what the sandbox rules grant, and its client ID must be a plain
// identifier (no ':'), so it can never take over a user's or service's
// session.
//
// Because the client ID is bound to the authenticated identity, a client
// can only resume (take over) a session of the same app, user and device:
// mochi's session inheritance by client ID (security notes §0.4) cannot
// cross users or apps.
//
// A CONNECT whose Will topic the principal could not publish to is refused
// too, because mochi publishes a Will without asking the ACL.
//
// Refusals. A refused client gets CONNACK 0x87 "not authorized" (MQTT 5) or
// 0x05 (MQTT 3.1.1) and is disconnected. mochi itself would answer 0x86 "bad
// username or password" to a false from OnConnectAuthenticate, so the hook
// writes the CONNACK itself and closes the connection; mochi's own CONNACK
// then fails on the closed connection and is never sent. Each refusal is
// counted by reason (Refusals).
//
// mochi ORs the answers of all hooks that provide OnConnectAuthenticate. Add
// no other authenticating hook: one that said yes first would let a client
// in without a principal (the ACL then denies it everything, so this fails
// closed, but it would be a bug).

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/warblerim/warbler/identity"
	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage"
)

// Authenticator is what the Auth hook needs from the identity service;
// *identity.Service implements it.
type Authenticator interface {
	VerifyAccess(token string) (*identity.Claims, error)
	VerifyKey(ctx context.Context, key string) (*identity.KeyInfo, error)
	AppRules(app string) *identity.Rules
	AppActive(app string) bool
	UserActive(app, user string) bool
	OnRevoke(fn func(identity.RevokeEvent))
}

// AnonymousOptions configure the anonymous listeners. See PROTOCOL.md.
type AnonymousOptions struct {
	// Listeners are the IDs of the listeners whose clients are anonymous.
	Listeners []string
	// App is the sandbox app whose topic space anonymous clients share.
	// It needs no record in the store.
	App string
	// Rules grant access within w/{App}/iot/, with the syntax of app IoT
	// rules; "%c" is the client ID, and rules with "%u" never match.
	Rules []storage.TopicRule
}

// AuthOptions configure the Auth hook.
type AuthOptions struct {
	Identity   Authenticator
	Principals *Principals
	// Anonymous, if non-nil, enables anonymous listeners. Off by default.
	Anonymous *AnonymousOptions
	// RestoreSessions gives a principal to each persistent session that
	// the broker restores from storage at start (see below), so that it
	// keeps receiving while its owner is away. Without it such a session
	// receives nothing until its owner connects again.
	RestoreSessions bool
	// KeyTimeout bounds the store lookup of an API key; 5s if 0.
	KeyTimeout time.Duration
	Logger     *slog.Logger
	// Server, if set, has the subscriptions of revoked sessions removed
	// (see revoke); without it they are kept and only denied deliveries.
	Server *mqtt.Server
}

// Refusal reasons, the labels of the refusal counters.
type refusal uint8

const (
	refuseNoCredentials refusal = iota
	refuseBadToken
	refuseTokenExpired
	refuseTokenRevoked
	refuseAppDisabled
	refuseBadClientID
	refuseClientIDMismatch
	refuseUsernameMismatch
	refuseBadKey
	refuseWrongApp
	refuseScope
	refuseWillDenied
	refuseInternal
	numRefusals
)

var refusalNames = [numRefusals]string{
	refuseNoCredentials:    "no_credentials",
	refuseBadToken:         "bad_token",
	refuseTokenExpired:     "token_expired",
	refuseTokenRevoked:     "token_revoked",
	refuseAppDisabled:      "app_disabled",
	refuseBadClientID:      "bad_client_id",
	refuseClientIDMismatch: "client_id_mismatch",
	refuseUsernameMismatch: "username_mismatch",
	refuseBadKey:           "bad_key",
	refuseWrongApp:         "wrong_app",
	refuseScope:            "missing_scope",
	refuseWillDenied:       "will_denied",
	refuseInternal:         "internal_error",
}

// Auth authenticates MQTT clients. Create it with NewAuth.
type Auth struct {
	mqtt.HookBase
	id        Authenticator
	reg       *Principals
	anon      map[string]bool
	anonApp   string
	anonRules *identity.Rules
	keyTO     time.Duration
	restore   bool
	log       *slog.Logger
	server    *mqtt.Server

	refused [numRefusals]atomic.Uint64
}

// NewAuth builds the hook and subscribes it to the identity service's
// revocations: a revoked user, session, key or app has its live clients
// disconnected and its principals marked revoked, so that even a
// persistent session left offline receives nothing more.
func NewAuth(o AuthOptions) (*Auth, error) {
	if o.Identity == nil || o.Principals == nil {
		return nil, errors.New("hooks: AuthOptions.Identity and Principals are required")
	}
	a := &Auth{id: o.Identity, reg: o.Principals, anon: map[string]bool{}, keyTO: o.KeyTimeout, restore: o.RestoreSessions, log: o.Logger, server: o.Server}
	if a.keyTO <= 0 {
		a.keyTO = 5 * time.Second
	}
	if a.log == nil {
		a.log = slog.Default()
	}
	if an := o.Anonymous; an != nil && len(an.Listeners) > 0 {
		if !protocol.ValidID(an.App) {
			return nil, fmt.Errorf("hooks: anonymous sandbox app %q: %w", an.App, protocol.ErrBadID)
		}
		rules, err := identity.CompileRules(an.App, an.Rules)
		if err != nil {
			return nil, fmt.Errorf("hooks: anonymous rules: %w", err)
		}
		for _, l := range an.Listeners {
			a.anon[l] = true
		}
		a.anonApp, a.anonRules = an.App, rules
	}
	o.Identity.OnRevoke(a.revoke)
	return a, nil
}

// ID implements mqtt.Hook.
func (a *Auth) ID() string { return "warbler-auth" }

// Provides implements mqtt.Hook.
func (a *Auth) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnDisconnect || b == mqtt.OnClientExpired
}

// Refusals returns the number of refused CONNECTs by reason. Every reason
// is present, so the set of labels is fixed.
func (a *Auth) Refusals() map[string]uint64 {
	m := make(map[string]uint64, numRefusals)
	for i := range a.refused {
		m[refusalNames[i]] = a.refused[i].Load()
	}
	return m
}

// OnConnectAuthenticate implements mqtt.Hook.
func (a *Auth) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	p, why := a.authenticate(cl, pk)
	if p != nil && pk.Connect.WillFlag {
		t := pk.Connect.WillTopic
		if !protocol.ValidFilter(t, 0) || !protocol.FilterIsExact(t) || check(p, t, true, nil) != allowOK {
			p, why = nil, refuseWillDenied
		}
	}
	if p == nil {
		a.refused[why].Add(1)
		a.log.Debug("mqtt connect refused", "client", cl.ID, "listener", cl.Net.Listener, "reason", refusalNames[why])
		refuse(cl)
		return false
	}
	a.reg.set(p)
	return true
}

// refuse sends CONNACK "not authorized" and closes the connection.
func refuse(cl *mqtt.Client) {
	code := packets.ErrNotAuthorized // 0x87
	if cl.Properties.ProtocolVersion < 5 {
		code = packets.Err3NotAuthorized // 0x05
	}
	ack := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack}, ReasonCode: code.Code}
	if cl.Properties.ProtocolVersion == 5 {
		ack.Properties.ReasonString = packets.ErrNotAuthorized.Reason
	}
	_ = cl.WritePacket(ack)
	cl.Stop(packets.ErrNotAuthorized)
}

func (a *Auth) authenticate(cl *mqtt.Client, pk packets.Packet) (*Principal, refusal) {
	if a.anon[cl.Net.Listener] {
		if !protocol.ValidID(cl.ID) {
			return nil, refuseBadClientID
		}
		p := newPrincipal(KindAnonymous, cl, a.anonApp, "", "")
		p.rules = a.anonRules
		return p, 0
	}
	username, password := string(pk.Connect.Username), string(pk.Connect.Password)
	if password == "" {
		return nil, refuseNoCredentials
	}
	app, user, device, ok := protocol.ParseClientID(cl.ID)
	if !ok {
		return nil, refuseBadClientID
	}
	if strings.HasPrefix(password, identity.KeyPrefix) {
		return a.authService(cl, username, password, app, user, device)
	}
	c, err := a.id.VerifyAccess(password)
	switch {
	case errors.Is(err, identity.ErrTokenExpired):
		return nil, refuseTokenExpired
	case errors.Is(err, identity.ErrTokenRevoked), errors.Is(err, identity.ErrUserDisabled):
		return nil, refuseTokenRevoked
	case errors.Is(err, identity.ErrAppDisabled):
		return nil, refuseAppDisabled
	case err != nil:
		return nil, refuseBadToken
	}
	if app != c.App || user != c.User || (c.Device != "" && device != c.Device) {
		return nil, refuseClientIDMismatch
	}
	if username != "" && username != c.App+":"+c.User {
		return nil, refuseUsernameMismatch
	}
	p := newPrincipal(KindUser, cl, app, user, device)
	p.Session, p.TokenID = c.Session, c.ID
	p.rules = a.id.AppRules(app)
	return p, 0
}

func (a *Auth) authService(cl *mqtt.Client, username, key, app, user, name string) (*Principal, refusal) {
	if user != identity.ServiceUser {
		return nil, refuseClientIDMismatch
	}
	if username != app+":"+identity.ServiceUser {
		return nil, refuseUsernameMismatch
	}
	ctx, cancel := context.WithTimeout(context.Background(), a.keyTO)
	defer cancel()
	k, err := a.id.VerifyKey(ctx, key)
	switch {
	case errors.Is(err, identity.ErrInvalidKey):
		return nil, refuseBadKey
	case errors.Is(err, identity.ErrAppDisabled):
		return nil, refuseAppDisabled
	case err != nil:
		a.log.Error("mqtt connect: verify key", "error", err)
		return nil, refuseInternal
	}
	if k.IsAdmin() && app == identity.AdminApp {
		p := newPrincipal(KindAdmin, cl, app, user, name)
		p.KeyID = k.ID
		return p, 0
	}
	if app == identity.AdminApp || (!k.IsAdmin() && k.App != app) {
		return nil, refuseWrongApp
	}
	if !k.Can(app, identity.ScopePublish) {
		return nil, refuseScope
	}
	p := newPrincipal(KindService, cl, app, user, name)
	p.KeyID = k.ID
	return p, 0
}

// OnDisconnect implements mqtt.Hook: a session that ends with its
// connection drops its principal; a persistent one keeps it until it
// expires.
//
// mochi also calls OnDisconnect once for every session it restores from
// storage at start; those never connected in this process (no network
// connection) and have no principal. With AuthOptions.RestoreSessions the
// hook rebuilds one from the client ID, which the Auth hook bound to the
// identity when the session was created:
//
//	{app}:{user}:{device}  a user, if the app is enabled and the user has no
//	                       revocation on record (identity.Service.UserActive)
//	{app}:_svc:{name}      a service, if the app is enabled
//	plain ID               an anonymous client, if it was on an anonymous listener
//
// The admin's sessions are not restored. A restored principal is replaced
// when the owner connects again, and is covered by later revocations.
func (a *Auth) OnDisconnect(cl *mqtt.Client, _ error, expire bool) {
	switch {
	case expire:
		a.reg.remove(cl)
	case a.restore && cl.Net.Conn == nil && !cl.Net.Inline:
		if _, ok := a.reg.Lookup(cl.ID); !ok {
			if p := a.restored(cl); p != nil {
				a.reg.set(p)
			}
		}
	}
}

// restored builds the principal of a session restored from storage, or
// nil if it gets none.
func (a *Auth) restored(cl *mqtt.Client) *Principal {
	if a.anon[cl.Net.Listener] {
		if !protocol.ValidID(cl.ID) {
			return nil
		}
		p := newPrincipal(KindAnonymous, cl, a.anonApp, "", "")
		p.rules = a.anonRules
		return p
	}
	app, user, device, ok := protocol.ParseClientID(cl.ID)
	if !ok || app == identity.AdminApp || !a.id.AppActive(app) {
		return nil
	}
	if user == identity.ServiceUser {
		return newPrincipal(KindService, cl, app, user, device)
	}
	if user[0] == '_' || !a.id.UserActive(app, user) {
		return nil
	}
	p := newPrincipal(KindUser, cl, app, user, device)
	p.rules = a.id.AppRules(app)
	return p
}

// OnClientExpired implements mqtt.Hook.
func (a *Auth) OnClientExpired(cl *mqtt.Client) { a.reg.remove(cl) }

// revoke handles a revocation from the identity service: the principals it
// covers are marked revoked at once (the ACL denies them everything from
// then on), the subscriptions of their sessions, connected or kept for
// later, are removed (from the broker and from the stored session), and
// their connections are closed, MQTT 5 clients first getting DISCONNECT
// 0x87. A session restored later starts with no subscriptions: whatever
// was granted before the revocation is not granted again without a new
// SUBSCRIBE, which the ACL checks. The closing happens in the background,
// so that a client that does not read cannot stall the caller (an HTTP
// handler); a write that has not finished within a second is cut short by
// closing the connection.
func (a *Auth) revoke(ev identity.RevokeEvent) {
	for _, p := range a.reg.revoke(ev) {
		cl := p.client
		if a.server != nil && cl.State.Subscriptions.Len() > 0 {
			a.server.UnsubscribeClient(cl)
		}
		if cl.Closed() {
			continue
		}
		a.log.Info("mqtt client disconnected: credentials revoked", "client", cl.ID, "reason", ev.Reason)
		go func() {
			t := time.AfterFunc(time.Second, func() { cl.Stop(packets.ErrNotAuthorized) })
			defer t.Stop()
			if cl.Properties.ProtocolVersion == 5 {
				_ = cl.WritePacket(packets.Packet{
					FixedHeader: packets.FixedHeader{Type: packets.Disconnect},
					ReasonCode:  packets.ErrNotAuthorized.Code,
				})
			}
			cl.Stop(packets.ErrNotAuthorized)
		}()
	}
}
