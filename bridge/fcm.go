package bridge

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	firebase "firebase.google.com/go/v4"
	"firebase.google.com/go/v4/errorutils"
	"firebase.google.com/go/v4/messaging"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/google"
	"google.golang.org/api/option"

	"github.com/warblerim/warbler/storage"
)

const fcmScope = "https://www.googleapis.com/auth/firebase.messaging"

// fcmSender sends with one Firebase messaging client per app.
type fcmSender struct {
	cl *messaging.Client
	tr *http.Transport
}

// fcmAuth adds the service account's access token to every request. A
// failed token exchange is answered as the 401 the FCM endpoint would give
// for missing credentials, so that it is classified (and not retried) like
// any other authentication failure: the Firebase client retries network
// errors, and a refused service account is not one.
type fcmAuth struct {
	src  oauth2.TokenSource
	base http.RoundTripper
}

func (t *fcmAuth) RoundTrip(r *http.Request) (*http.Response, error) {
	tok, err := t.src.Token()
	if err != nil {
		if r.Body != nil {
			_ = r.Body.Close()
		}
		msg, _ := json.Marshal("service account token exchange failed: " + err.Error())
		body := fmt.Sprintf(`{"error":{"code":401,"status":"UNAUTHENTICATED","message":%s}}`, msg)
		return &http.Response{
			StatusCode: http.StatusUnauthorized, Status: "401 Unauthorized", Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			Header:  http.Header{"Content-Type": {"application/json"}},
			Body:    io.NopCloser(bytes.NewReader([]byte(body))),
			Request: r, ContentLength: int64(len(body)),
		}, nil
	}
	r2 := r.Clone(r.Context())
	tok.SetAuthHeader(r2)
	return t.base.RoundTrip(r2)
}

func newFCM(ctx context.Context, f *FCMCredentials) (*fcmSender, error) {
	pool, err := rootPool(f.RootCAs)
	if err != nil {
		return nil, err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	tr.ForceAttemptHTTP2 = true
	tr.MaxIdleConnsPerHost = 64
	// The token exchange uses the same trust roots; its context lives as
	// long as the client, since the token source refreshes through it.
	tokCtx := context.WithValue(context.Background(), oauth2.HTTPClient, &http.Client{Transport: tr, Timeout: 30 * time.Second})
	creds, err := google.CredentialsFromJSONWithType(tokCtx, f.ServiceAccount, google.ServiceAccount, fcmScope)
	if err != nil {
		return nil, err
	}
	hc := &http.Client{Transport: &fcmAuth{src: creds.TokenSource, base: tr}}
	opts := []option.ClientOption{option.WithHTTPClient(hc)}
	if f.Endpoint != "" {
		opts = append(opts, option.WithEndpoint(f.Endpoint))
	}
	app, err := firebase.NewApp(ctx, &firebase.Config{ProjectID: f.ProjectID}, opts...)
	if err != nil {
		return nil, err
	}
	cl, err := app.Messaging(ctx)
	if err != nil {
		return nil, err
	}
	return &fcmSender{cl: cl, tr: tr}, nil
}

func (s *fcmSender) close() { s.tr.CloseIdleConnections() }

// fcmMessage builds the FCM v1 message of r.
func fcmMessage(r *storage.PushRecord, badge *int) *messaging.Message {
	data := make(map[string]string, len(r.Data)+1)
	for k, v := range r.Data {
		data[k] = v
	}
	m := &messaging.Message{Token: r.Token, Data: data}
	ac := &messaging.AndroidConfig{CollapseKey: collapseID(r.Conv), Priority: "high"}
	if !r.Expires.IsZero() {
		ttl := max(time.Until(r.Expires).Truncate(time.Second), 0)
		ac.TTL = &ttl
	}
	switch r.Kind {
	case KindSilent:
		ac.Priority = "normal"
	case KindPrivate:
		// Data only: the app decrypts and shows the notification itself.
		data["kind"] = KindPrivate
	default:
		m.Notification = &messaging.Notification{Title: r.Title, Body: r.Body}
		n := &messaging.AndroidNotification{Tag: collapseID(r.Conv), NotificationCount: badge}
		if r.Quiet {
			n.Priority = messaging.PriorityMin
			ac.Priority = "normal"
		} else if r.Sound != "" && r.Sound != "none" {
			n.Sound = r.Sound
		}
		ac.Notification = n
	}
	if r.Priority == 5 {
		ac.Priority = "normal"
	}
	m.Android = ac
	return m
}

func (s *fcmSender) send(ctx context.Context, r *storage.PushRecord, badge *int) outcome {
	name, err := s.cl.Send(ctx, fcmMessage(r, badge))
	if err == nil {
		return outcome{class: outAccepted, status: http.StatusOK, providerID: name}
	}
	return classifyFCM(err)
}

// classifyFCM maps a Send error to an outcome. The messaging and
// errorutils helpers use a type assertion on the error itself, so err must
// be the raw error Send returned, never a wrapped one.
func classifyFCM(err error) outcome {
	o := outcome{reason: err.Error()}
	if resp := errorutils.HTTPResponse(err); resp != nil {
		o.status = resp.StatusCode
		o.retryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
	}
	switch {
	case messaging.IsUnregistered(err):
		o.class, o.reason = outPrune, "UNREGISTERED"
	case messaging.IsThirdPartyAuthError(err):
		o.class, o.reason = outAuth, "THIRD_PARTY_AUTH_ERROR"
	case errorutils.IsUnauthenticated(err):
		o.class, o.reason = outAuth, "UNAUTHENTICATED: "+err.Error()
	case errorutils.IsPermissionDenied(err):
		o.class, o.reason = outAuth, "PERMISSION_DENIED: "+err.Error()
	case messaging.IsSenderIDMismatch(err):
		o.class, o.reason = outFail, "SENDER_ID_MISMATCH"
	case messaging.IsQuotaExceeded(err):
		o.class, o.reason = outRetry, "QUOTA_EXCEEDED"
	case messaging.IsUnavailable(err), messaging.IsInternal(err):
		o.class = outRetry
		o.reason = "UNAVAILABLE"
		if messaging.IsInternal(err) {
			o.reason = "INTERNAL"
		}
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		o.class, o.reason = outRetry, "timeout: "+err.Error()
	case o.status == 0:
		o.class, o.reason = outRetry, "network: "+err.Error() // transport error, no answer
	case o.status == http.StatusTooManyRequests || o.status >= 500:
		o.class = outRetry
	case messaging.IsInvalidArgument(err):
		o.class, o.reason = outFail, "INVALID_ARGUMENT: "+err.Error()
	default:
		o.class = outFail
		if o.status != 0 {
			o.reason = "http " + strconv.Itoa(o.status) + ": " + err.Error()
		}
	}
	return o
}
