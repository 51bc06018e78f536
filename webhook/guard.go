package webhook

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ErrRefused is wrapped by every error of the SSRF guard: the endpoint's
// address is in a range the server does not call.
var ErrRefused = errors.New("webhook: address refused")

// MaxURLLength bounds an endpoint URL.
const MaxURLLength = 2048

// ParseURL checks the form of an endpoint URL: absolute http or https, a
// host, no user info or fragment, a numeric port if any. It does not
// resolve the host; Guard.CheckURL does that.
func ParseURL(raw string) (*url.URL, error) {
	if raw == "" {
		return nil, errors.New("url: required")
	}
	if len(raw) > MaxURLLength {
		return nil, fmt.Errorf("url: longer than %d bytes", MaxURLLength)
	}
	for i := 0; i < len(raw); i++ {
		if c := raw[i]; c <= ' ' || c == 0x7f {
			return nil, errors.New("url: contains spaces or control characters")
		}
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, errors.New("url: not a valid URL")
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, errors.New("url: scheme must be http or https")
	}
	if u.Opaque != "" || u.Host == "" || u.Hostname() == "" {
		return nil, errors.New("url: needs a host")
	}
	if u.User != nil {
		return nil, errors.New("url: must not contain user info")
	}
	if u.Fragment != "" || strings.Contains(raw, "#") {
		return nil, errors.New("url: must not contain a fragment")
	}
	if p := u.Port(); p != "" {
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil || n == 0 {
			return nil, errors.New("url: port must be 1-65535")
		}
	} else if strings.HasSuffix(u.Host, ":") {
		return nil, errors.New("url: empty port")
	}
	if h := u.Hostname(); strings.ContainsAny(h, "%/\\") {
		// zone identifiers and escaped hosts are never a public endpoint
		return nil, errors.New("url: host is not a valid name or address")
	}
	return u, nil
}

// blocked are ranges a webhook may not reach besides those that
// netip.Addr's predicates catch (loopback, private, link-local,
// multicast, unspecified): shared address space, documentation and
// benchmarking ranges, reserved space, and IPv6 translation prefixes that
// can carry a private IPv4 address.
var blocked = func() []netip.Prefix {
	var out []netip.Prefix
	for _, s := range []string{
		"0.0.0.0/8", "100.64.0.0/10", "192.0.0.0/24", "192.0.2.0/24", "198.18.0.0/15",
		"198.51.100.0/24", "203.0.113.0/24", "240.0.0.0/4",
		"::/96", "64:ff9b::/96", "64:ff9b:1::/48", "100::/64", "2001:db8::/32", "2002::/16", "fec0::/10",
	} {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}()

// Guard keeps webhooks away from the server's own network (SSRF): it
// refuses loopback, private (RFC 1918), unique-local (fc00::/7),
// link-local (which includes cloud metadata at 169.254.169.254),
// multicast, unspecified and reserved addresses. It checks an endpoint's
// host when the endpoint is saved and again, through Dial, for the very
// address each connection goes to, so a name that resolves to a public
// address when checked and to a private one later (DNS rebinding) is still
// refused.
//
// The zero Guard refuses all of those ranges and resolves with the
// system resolver.
type Guard struct {
	// AllowPrivate turns the guard off (tests, and servers whose
	// receivers are all on their own network).
	AllowPrivate bool
	// Allow lists ranges that are allowed even though they are otherwise
	// refused, for example one internal subnet of receivers.
	Allow []netip.Prefix
	// Resolve looks up a host's addresses; nil uses net.DefaultResolver.
	Resolve func(ctx context.Context, host string) ([]netip.Addr, error)
	// DialTimeout bounds one connection attempt (default 10 s).
	DialTimeout time.Duration
}

// Allowed returns nil if the guard lets a webhook connect to ip, else an
// error wrapping ErrRefused.
func (g *Guard) Allowed(ip netip.Addr) error {
	ip = ip.Unmap()
	if g.AllowPrivate {
		return nil
	}
	for _, p := range g.Allow {
		if p.Contains(ip) {
			return nil
		}
	}
	bad := ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() ||
		ip.IsInterfaceLocalMulticast() || ip.IsMulticast() || ip.IsUnspecified() || !ip.IsValid()
	for _, p := range blocked {
		if bad {
			break
		}
		bad = p.Contains(ip)
	}
	if bad {
		return fmt.Errorf("%w: %s is a loopback, private, link-local, multicast or reserved address (allow it with webhooks.allow_private or webhooks.allow_cidrs)", ErrRefused, ip)
	}
	return nil
}

func (g *Guard) resolve(ctx context.Context, host string) ([]netip.Addr, error) {
	if ip, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{ip}, nil
	}
	if g.Resolve != nil {
		return g.Resolve(ctx, host)
	}
	return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
}

// CheckURL parses raw (see ParseURL) and checks that every address its
// host resolves to is allowed. A host that does not resolve is an error.
func (g *Guard) CheckURL(ctx context.Context, raw string) (*url.URL, error) {
	u, err := ParseURL(raw)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	ips, err := g.resolve(ctx, u.Hostname())
	if err != nil {
		return nil, fmt.Errorf("url: host %s does not resolve", u.Hostname())
	}
	if len(ips) == 0 {
		return nil, fmt.Errorf("url: host %s has no address", u.Hostname())
	}
	for _, ip := range ips {
		if err := g.Allowed(ip); err != nil {
			return nil, fmt.Errorf("url: %w", err)
		}
	}
	return u, nil
}

// DialContext connects to addr (host:port) for an HTTP transport: it
// resolves the host itself, skips refused addresses, and checks the
// address of every socket again right before it connects.
func (g *Guard) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	ips, err := g.resolve(ctx, host)
	if err != nil {
		return nil, err
	}
	timeout := g.DialTimeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	d := net.Dialer{Timeout: timeout, Control: g.control}
	var first error
	for _, ip := range ips {
		if err := g.Allowed(ip); err != nil {
			if first == nil {
				first = err
			}
			continue
		}
		c, err := d.DialContext(ctx, network, net.JoinHostPort(ip.Unmap().String(), port))
		if err == nil {
			return c, nil
		}
		if first == nil || errors.Is(first, ErrRefused) {
			first = err
		}
	}
	if first == nil {
		first = fmt.Errorf("%s has no address", host)
	}
	return nil, first
}

// control runs on each socket before it connects, with the numeric
// address it connects to.
func (g *Guard) control(_, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: unexpected address %q", ErrRefused, address)
	}
	return g.Allowed(ap.Addr())
}
