package bridge

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/sideshow/apns2"
	"github.com/sideshow/apns2/token"
	"golang.org/x/net/http2"

	"github.com/warblerim/warbler/storage"
)

// outcome classes of one send.
const (
	outAccepted = iota
	outRetry    // retryable: 429, 5xx, timeout, network
	outPrune    // the token is dead: prune it and fail
	outAuth     // the credentials are refused: pause the queue
	outFail     // rejected for good
)

// outcome is what one request to a provider came to.
type outcome struct {
	class      int
	status     int    // HTTP status, 0 if none
	reason     string // provider's reason, or the error
	providerID string // apns-id or FCM message name
	retryAfter time.Duration
}

// sender is one app's client for one provider.
type sender interface {
	send(ctx context.Context, r *storage.PushRecord, badge *int) outcome
	close()
}

// apnsSender sends with one long-lived HTTP/2 client.
type apnsSender struct {
	cl    *apns2.Client
	topic string
	tr    *http2.Transport
}

// respMeta receives the headers apns2 does not expose (Retry-After).
type respMeta struct{ retryAfter string }

type respMetaKey struct{}

// metaTransport records response headers into the request's respMeta.
type metaTransport struct{ base http.RoundTripper }

func (t metaTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.base.RoundTrip(r)
	if resp != nil {
		if m, ok := r.Context().Value(respMetaKey{}).(*respMeta); ok {
			m.retryAfter = resp.Header.Get("Retry-After")
		}
	}
	return resp, err
}

func newAPNs(a *APNsCredentials) (*apnsSender, error) {
	pool, err := rootPool(a.RootCAs)
	if err != nil {
		return nil, err
	}
	tc := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	cl := &apns2.Client{Host: apns2.HostProduction}
	if a.Sandbox {
		cl.Host = apns2.HostDevelopment
	}
	if a.Endpoint != "" {
		cl.Host = a.Endpoint
	}
	if a.AuthKey != "" {
		key, err := token.AuthKeyFromBytes([]byte(a.AuthKey))
		if err != nil {
			return nil, err
		}
		cl.Token = &token.Token{AuthKey: key, KeyID: a.KeyID, TeamID: a.TeamID}
	} else {
		cert, err := apnsCertificate(a)
		if err != nil {
			return nil, err
		}
		cl.Certificate = cert
		tc.Certificates = []tls.Certificate{cert}
	}
	tr := &http2.Transport{TLSClientConfig: tc, ReadIdleTimeout: apns2.ReadIdleTimeout, PingTimeout: 15 * time.Second}
	cl.HTTPClient = &http.Client{Transport: metaTransport{tr}, Timeout: apns2.HTTPClientTimeout}
	return &apnsSender{cl: cl, topic: a.Topic, tr: tr}, nil
}

func (s *apnsSender) close() { s.tr.CloseIdleConnections() }

// collapseID is the per-conversation collapse identifier; APNs allows 64
// bytes, so long conversation IDs are hashed.
func collapseID(conv string) string {
	if conv == "" {
		return ""
	}
	if len(conv) <= 62 {
		return "c:" + conv
	}
	h := sha256.Sum256([]byte(conv))
	return "h:" + hex.EncodeToString(h[:20])
}

// apnsPayload builds the JSON payload of r.
func apnsPayload(r *storage.PushRecord, badge *int) ([]byte, apns2.EPushType, int) {
	aps := map[string]any{}
	pushType, prio := apns2.PushTypeAlert, 10
	switch r.Kind {
	case KindSilent:
		aps["content-available"] = 1
		pushType, prio = apns2.PushTypeBackground, 5
	default:
		alert := map[string]any{}
		if r.Title != "" {
			alert["title"] = r.Title
		}
		alert["body"] = r.Body
		if r.Kind == KindPrivate {
			aps["mutable-content"] = 1
			alert["loc-key"] = "WARBLER_NEW_MESSAGE"
		}
		aps["alert"] = alert
		if badge != nil {
			aps["badge"] = *badge
		}
		if r.Sound != "" && r.Sound != "none" && !r.Quiet {
			aps["sound"] = r.Sound
		}
		if r.Quiet {
			aps["interruption-level"] = "passive"
			prio = 5
		}
		if r.Conv != "" {
			aps["thread-id"] = r.Conv
		}
	}
	if r.Priority != 0 {
		prio = r.Priority
	}
	p := map[string]any{"aps": aps}
	for k, v := range r.Data {
		if k != "aps" {
			p[k] = v
		}
	}
	b, _ := json.Marshal(p)
	return b, pushType, prio
}

func (s *apnsSender) send(ctx context.Context, r *storage.PushRecord, badge *int) outcome {
	payload, pushType, prio := apnsPayload(r, badge)
	topic := r.Topic
	if topic == "" {
		topic = s.topic
	}
	n := &apns2.Notification{
		ApnsID: r.ID, DeviceToken: r.Token, Topic: topic, CollapseID: collapseID(r.Conv),
		Expiration: r.Expires, Priority: prio, Payload: payload, PushType: pushType,
	}
	meta := &respMeta{}
	res, err := s.cl.PushWithContext(context.WithValue(ctx, respMetaKey{}, meta), n)
	if err != nil {
		return outcome{class: outRetry, reason: "network: " + err.Error()}
	}
	o := outcome{status: res.StatusCode, reason: res.Reason, providerID: res.ApnsID, retryAfter: parseRetryAfter(meta.retryAfter, time.Now())}
	switch {
	case res.StatusCode == http.StatusOK:
		o.class = outAccepted
	case res.StatusCode == http.StatusGone && (res.Reason == apns2.ReasonUnregistered || res.Reason == apns2.ReasonExpiredToken || res.Reason == ""):
		// Apple's timestamp is when it learned the token was no longer
		// valid; a token registered after that is a new registration.
		if r.TokenAt.IsZero() || r.TokenAt.Before(res.Timestamp.Time) {
			o.class = outPrune
		} else {
			o.class, o.reason = outFail, res.Reason+" (token registered after Apple's timestamp; kept)"
		}
	case res.StatusCode == http.StatusBadRequest && res.Reason == apns2.ReasonBadDeviceToken:
		o.class = outPrune
	case res.StatusCode == http.StatusForbidden:
		// ExpiredProviderToken, InvalidProviderToken, MissingProviderToken,
		// BadCertificate, BadCertificateEnvironment, Forbidden: all mean
		// the app's credentials are refused.
		o.class = outAuth
	case res.StatusCode == http.StatusTooManyRequests, res.StatusCode >= 500:
		o.class = outRetry
	default:
		o.class = outFail
	}
	if o.reason == "" {
		o.reason = "http " + strconv.Itoa(res.StatusCode)
	}
	return o
}

// parseRetryAfter reads a Retry-After header: seconds or an HTTP date.
func parseRetryAfter(h string, now time.Time) time.Duration {
	if h == "" {
		return 0
	}
	if s, err := strconv.Atoi(h); err == nil && s >= 0 {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(h); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}
