package bridge

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/sideshow/apns2/certificate"
	"github.com/sideshow/apns2/token"
	"golang.org/x/oauth2/google"

	"github.com/warblerim/warbler/storage"
)

// APNsCredentials are an app's credentials for Apple's push service: either
// token auth (AuthKey, KeyID and TeamID) or a certificate (Certificate).
type APNsCredentials struct {
	// AuthKey is the .p8 signing key, PEM (PKCS#8 ECDSA P-256).
	AuthKey string `json:"auth_key,omitempty"`
	KeyID   string `json:"key_id,omitempty"`
	TeamID  string `json:"team_id,omitempty"`
	// Certificate is a .p12 file with the certificate and its key, or PEM
	// text holding both.
	Certificate         []byte `json:"certificate,omitempty"`
	CertificatePassword string `json:"certificate_password,omitempty"`
	// Topic is the default apns-topic (bundle ID) for devices that did not
	// register their own.
	Topic string `json:"topic,omitempty"`
	// Sandbox sends to Apple's development environment.
	Sandbox bool `json:"sandbox,omitempty"`
	// Endpoint replaces Apple's host (a proxy or gateway), as an https URL
	// without path.
	Endpoint string `json:"endpoint,omitempty"`
	// RootCAs, PEM, replaces the system trust roots for Endpoint.
	RootCAs string `json:"root_cas,omitempty"`
}

// FCMCredentials are an app's credentials for Firebase Cloud Messaging.
type FCMCredentials struct {
	// ServiceAccount is the service account's JSON key file. Its token_uri
	// is where access tokens are obtained.
	ServiceAccount json.RawMessage `json:"service_account"`
	// ProjectID is the Firebase project; the service account's if empty.
	ProjectID string `json:"project_id,omitempty"`
	// Endpoint replaces Google's FCM v1 endpoint: requests go to
	// {Endpoint}/projects/{ProjectID}/messages:send.
	Endpoint string `json:"endpoint,omitempty"`
	// RootCAs, PEM, replaces the system trust roots for Endpoint and for
	// the token exchange.
	RootCAs string `json:"root_cas,omitempty"`
}

// Credentials is what SetCredentials takes: exactly one of the two.
type Credentials struct {
	APNs *APNsCredentials `json:"apns,omitempty"`
	FCM  *FCMCredentials  `json:"fcm,omitempty"`
}

// CredentialInfo is the non-secret view of stored credentials.
type CredentialInfo struct {
	App       string            `json:"app"`
	Provider  string            `json:"provider"`
	Info      map[string]string `json:"info"`
	Paused    string            `json:"paused,omitempty"`
	PausedAt  time.Time         `json:"paused_at,omitzero"`
	UpdatedAt time.Time         `json:"updated_at"`
}

func invalidf(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, a...))
}

func checkEndpoint(s string) error {
	if s == "" {
		return nil
	}
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.RawQuery != "" || u.User != nil {
		return invalidf("endpoint must be an https URL")
	}
	return nil
}

func rootPool(pemText string) (*x509.CertPool, error) {
	if pemText == "" {
		return nil, nil
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM([]byte(pemText)) {
		return nil, invalidf("root_cas holds no PEM certificate")
	}
	return p, nil
}

// validate checks c and returns the provider and the operator summary.
func (c *Credentials) validate() (string, map[string]string, error) {
	switch {
	case c.APNs != nil && c.FCM == nil:
		a := c.APNs
		info := map[string]string{"environment": "production"}
		if a.Sandbox {
			info["environment"] = "sandbox"
		}
		if err := checkEndpoint(a.Endpoint); err != nil {
			return "", nil, err
		}
		if _, err := rootPool(a.RootCAs); err != nil {
			return "", nil, err
		}
		switch {
		case a.AuthKey != "" && len(a.Certificate) == 0:
			if _, err := token.AuthKeyFromBytes([]byte(a.AuthKey)); err != nil {
				return "", nil, invalidf("auth_key: %v", err)
			}
			if a.KeyID == "" || a.TeamID == "" {
				return "", nil, invalidf("token auth needs key_id and team_id")
			}
			info["auth"], info["key_id"], info["team_id"] = "token", a.KeyID, a.TeamID
		case a.AuthKey == "" && len(a.Certificate) > 0:
			cert, err := apnsCertificate(a)
			if err != nil {
				return "", nil, invalidf("certificate: %v", err)
			}
			info["auth"] = "certificate"
			if cert.Leaf != nil {
				info["subject"] = cert.Leaf.Subject.String()
				info["not_after"] = cert.Leaf.NotAfter.UTC().Format(time.RFC3339)
			}
		default:
			return "", nil, invalidf("apns needs either auth_key (with key_id and team_id) or certificate")
		}
		if a.Topic != "" {
			info["topic"] = a.Topic
		}
		if a.Endpoint != "" {
			info["endpoint"] = a.Endpoint
		}
		return storage.ProviderAPNs, info, nil
	case c.FCM != nil && c.APNs == nil:
		f := c.FCM
		var sa struct {
			Type        string `json:"type"`
			ProjectID   string `json:"project_id"`
			ClientEmail string `json:"client_email"`
		}
		if err := json.Unmarshal(f.ServiceAccount, &sa); err != nil || sa.Type != "service_account" {
			return "", nil, invalidf("service_account must be a service account JSON key")
		}
		if _, err := google.CredentialsFromJSONWithType(context.Background(), f.ServiceAccount, google.ServiceAccount, fcmScope); err != nil {
			return "", nil, invalidf("service_account: %v", err)
		}
		if f.ProjectID == "" {
			f.ProjectID = sa.ProjectID
		}
		if f.ProjectID == "" {
			return "", nil, invalidf("project_id is required")
		}
		if err := checkEndpoint(f.Endpoint); err != nil {
			return "", nil, err
		}
		if _, err := rootPool(f.RootCAs); err != nil {
			return "", nil, err
		}
		info := map[string]string{"project_id": f.ProjectID, "client_email": sa.ClientEmail}
		if f.Endpoint != "" {
			info["endpoint"] = f.Endpoint
		}
		return storage.ProviderFCM, info, nil
	}
	return "", nil, invalidf("give exactly one of apns and fcm")
}

func apnsCertificate(a *APNsCredentials) (tls.Certificate, error) {
	var cert tls.Certificate
	var err error
	if len(a.Certificate) > 0 && a.Certificate[0] == '-' {
		cert, err = certificate.FromPemBytes(a.Certificate, a.CertificatePassword)
	} else {
		cert, err = certificate.FromP12Bytes(a.Certificate, a.CertificatePassword)
	}
	if err != nil {
		return cert, err
	}
	if cert.Leaf == nil && len(cert.Certificate) > 0 {
		cert.Leaf, _ = x509.ParseCertificate(cert.Certificate[0])
	}
	return cert, nil
}

func (b *Bridge) aad(app, provider string) []byte {
	return []byte("push\x00" + app + "\x00" + provider)
}

func (b *Bridge) seal(app, provider string, plain []byte) ([]byte, error) {
	blk, err := aes.NewCipher(b.sealKey)
	if err != nil {
		return nil, err
	}
	gcm, err := cipher.NewGCM(blk)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, gcm.NonceSize(), gcm.NonceSize()+len(plain)+gcm.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return gcm.Seal(nonce, nonce, plain, b.aad(app, provider)), nil
}

var errUnseal = errors.New("bridge: sealed credentials do not open (wrong master key or tampered record)")

func (b *Bridge) open(app, provider string, sealed []byte) ([]byte, error) {
	blk, err := aes.NewCipher(b.sealKey)
	if err != nil {
		return nil, err
	}
	gcm, err := cipher.NewGCM(blk)
	if err != nil {
		return nil, err
	}
	if len(sealed) < gcm.NonceSize()+gcm.Overhead() {
		return nil, errUnseal
	}
	pt, err := gcm.Open(nil, sealed[:gcm.NonceSize()], sealed[gcm.NonceSize():], b.aad(app, provider))
	if err != nil {
		return nil, errUnseal
	}
	return pt, nil
}

// SetCredentials validates and stores an app's credentials for one
// provider, sealed, replacing any before. It resumes a paused queue and
// makes the next send use a new client.
func (b *Bridge) SetCredentials(ctx context.Context, app string, c Credentials) (CredentialInfo, error) {
	provider, info, err := c.validate()
	if err != nil {
		return CredentialInfo{}, err
	}
	if c.FCM != nil && c.FCM.ProjectID == "" {
		c.FCM.ProjectID = info["project_id"]
	}
	plain, err := json.Marshal(c)
	if err != nil {
		return CredentialInfo{}, err
	}
	sealed, err := b.seal(app, provider, plain)
	if err != nil {
		return CredentialInfo{}, err
	}
	rec := storage.PushCredential{App: app, Provider: provider, Sealed: sealed, Info: info, UpdatedAt: b.o.Now().UTC()}
	if err := b.store.PutPushCredential(ctx, rec); err != nil {
		return CredentialInfo{}, err
	}
	id := storage.PushQueueID{App: app, Provider: provider}
	b.mu.Lock()
	b.creds[id] = true
	b.dropClientLocked(id)
	q := b.queues[id]
	b.mu.Unlock()
	if q != nil {
		q.resume()
	}
	return viewCred(rec), nil
}

func viewCred(c storage.PushCredential) CredentialInfo {
	return CredentialInfo{App: c.App, Provider: c.Provider, Info: c.Info, Paused: c.Paused, PausedAt: c.PausedAt, UpdatedAt: c.UpdatedAt}
}

// CredentialInfo returns the non-secret view of an app's credentials;
// storage.ErrNotFound if there are none.
func (b *Bridge) CredentialInfo(ctx context.Context, app, provider string) (CredentialInfo, error) {
	c, err := b.store.GetPushCredential(ctx, app, provider)
	if err != nil {
		return CredentialInfo{}, err
	}
	return viewCred(c), nil
}

// DeleteCredentials removes an app's credentials for one provider. Records
// still queued for it wait (the queue pauses with "no_credentials") until
// new credentials arrive or they expire.
func (b *Bridge) DeleteCredentials(ctx context.Context, app, provider string) error {
	if err := b.store.DeletePushCredential(ctx, app, provider); err != nil {
		return err
	}
	id := storage.PushQueueID{App: app, Provider: provider}
	b.mu.Lock()
	b.creds[id] = false
	b.dropClientLocked(id)
	b.mu.Unlock()
	return nil
}

// Resume restarts a queue paused by an authentication error, for example
// after the provider side was fixed without new credentials.
func (b *Bridge) Resume(ctx context.Context, app, provider string) error {
	_, err := b.store.UpdatePushCredential(ctx, app, provider, func(c *storage.PushCredential) error {
		c.Paused, c.PausedAt = "", time.Time{}
		return nil
	})
	if err != nil {
		return err
	}
	id := storage.PushQueueID{App: app, Provider: provider}
	b.mu.Lock()
	b.dropClientLocked(id)
	q := b.queues[id]
	b.mu.Unlock()
	if q != nil {
		q.resume()
	}
	return nil
}

func (b *Bridge) dropClientLocked(id storage.PushQueueID) {
	if c := b.clients[id]; c != nil {
		c.close()
		delete(b.clients, id)
	}
}

// client returns the queue's provider client, building it from the stored
// credentials on first use.
func (b *Bridge) client(ctx context.Context, id storage.PushQueueID) (sender, error) {
	b.mu.Lock()
	c := b.clients[id]
	b.mu.Unlock()
	if c != nil {
		return c, nil
	}
	rec, err := b.store.GetPushCredential(ctx, id.App, id.Provider)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, ErrNoCredentials
	} else if err != nil {
		return nil, err
	}
	plain, err := b.open(id.App, id.Provider, rec.Sealed)
	if err != nil {
		return nil, err
	}
	var cr Credentials
	if err := json.Unmarshal(plain, &cr); err != nil {
		return nil, err
	}
	switch {
	case id.Provider == storage.ProviderAPNs && cr.APNs != nil:
		c, err = newAPNs(cr.APNs)
	case id.Provider == storage.ProviderFCM && cr.FCM != nil:
		c, err = newFCM(ctx, cr.FCM)
	default:
		err = ErrNoCredentials
	}
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if cur := b.clients[id]; cur != nil { // another worker won the race
		c.close()
		return cur, nil
	}
	b.clients[id] = c
	return c, nil
}
