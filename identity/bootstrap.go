package identity

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/warblerim/warbler/storage"
)

// Files that Bootstrap keeps in the data directory, each of mode 0600.
const (
	MasterKeyFile = "master.key" // 32 random bytes
	AdminKeyFile  = "admin.key"  // the admin API key, as text
	DemoApp       = "demo"
)

// Bootstrapped is what Bootstrap returns.
type Bootstrapped struct {
	Service *Service
	// AdminKey is the plaintext admin API key (also in AdminKeyPath).
	AdminKey string
	// FirstStart is true if the master key was created by this call.
	FirstStart bool
	// CreatedDemo is true if this call created the "demo" app.
	CreatedDemo   bool
	MasterKeyPath string
	AdminKeyPath  string
}

// Bootstrap prepares the identity service of a server whose data lives in
// dataDir, so that a fresh install works with no configuration and has no
// default credentials:
//
//   - On first start it creates dataDir/master.key (32 random bytes) and
//     dataDir/admin.key (a new admin API key; only its digest goes into the
//     store), both of mode 0600 and created exclusively, so a concurrent
//     start cannot overwrite them.
//   - On later starts it reads both. A file that is readable by group or
//     others, is not a regular file, or has the wrong length is an error,
//     not a warning. If the store has lost the admin key's record (a wiped
//     database), the key in admin.key is registered again; if the store
//     holds a different secret for it, that is an error.
//   - If the store holds no app, it creates the app "demo" with the IoT rule
//     {"pattern": "w/{app}/iot/%u/#", "access": "readwrite"}.
//
// o is passed to New with MasterKey taken from the file; o.MasterKey must
// be nil.
func Bootstrap(ctx context.Context, dataDir string, o Options) (*Bootstrapped, error) {
	if o.MasterKey != nil {
		return nil, errors.New("identity: Bootstrap reads the master key from the data directory; leave Options.MasterKey nil")
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("identity: data dir: %w", err)
	}
	b := &Bootstrapped{
		MasterKeyPath: filepath.Join(dataDir, MasterKeyFile),
		AdminKeyPath:  filepath.Join(dataDir, AdminKeyFile),
	}
	master, err := readSecretFile(b.MasterKeyPath)
	if errors.Is(err, fs.ErrNotExist) {
		master = make([]byte, 32)
		_, _ = rand.Read(master)
		if err := writeSecretFile(b.MasterKeyPath, master); err != nil {
			return nil, err
		}
		b.FirstStart = true
	} else if err != nil {
		return nil, err
	}
	if len(master) != 32 {
		return nil, fmt.Errorf("identity: %s holds %d bytes; it must hold exactly 32", b.MasterKeyPath, len(master))
	}
	o.MasterKey = master
	svc, err := New(ctx, o)
	if err != nil {
		return nil, err
	}
	b.Service = svc

	raw, err := readSecretFile(b.AdminKeyPath)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		id := randomString(8)
		plain, digest := newKeySecret(id)
		if err := writeSecretFile(b.AdminKeyPath, []byte(plain+"\n")); err != nil {
			return nil, err
		}
		if err := svc.store.CreateAPIKey(ctx, storage.APIKey{
			ID: id, App: AdminApp, Name: "admin", Hash: digest, Scopes: []string{ScopeAdmin}, CreatedAt: svc.now().UTC(),
		}); err != nil {
			_ = os.Remove(b.AdminKeyPath)
			return nil, fmt.Errorf("identity: store admin key: %w", err)
		}
		b.AdminKey = plain
	case err != nil:
		return nil, err
	default:
		plain := strings.TrimSpace(string(raw))
		id, ok := splitKey(plain)
		if !ok {
			return nil, fmt.Errorf("identity: %s does not hold an API key", b.AdminKeyPath)
		}
		digest := newDigest(plain)
		k, err := svc.store.GetAPIKey(ctx, id)
		switch {
		case errors.Is(err, ErrNotFound):
			if err := svc.store.CreateAPIKey(ctx, storage.APIKey{
				ID: id, App: AdminApp, Name: "admin", Hash: digest, Scopes: []string{ScopeAdmin}, CreatedAt: svc.now().UTC(),
			}); err != nil {
				return nil, fmt.Errorf("identity: store admin key: %w", err)
			}
		case err != nil:
			return nil, err
		case k.App != AdminApp || subtle.ConstantTimeCompare(k.Hash, digest) != 1:
			return nil, fmt.Errorf("identity: %s does not match the admin key in the store", b.AdminKeyPath)
		}
		b.AdminKey = plain
	}

	apps, err := svc.ListApps(ctx)
	if err != nil {
		return nil, err
	}
	if len(apps) == 0 {
		_, err := svc.CreateApp(ctx, AppSpec{ID: DemoApp, Name: "Demo", Settings: storage.AppSettings{
			IoTRules: []storage.TopicRule{{Pattern: "w/{app}/iot/%u/#", Access: "readwrite"}},
		}})
		if err != nil && !errors.Is(err, ErrExists) {
			return nil, fmt.Errorf("identity: create demo app: %w", err)
		}
		b.CreatedDemo = err == nil
	}
	return b, nil
}

// readSecretFile reads a small secret file after checking that it is a
// regular file that only its owner can read.
func readSecretFile(path string) ([]byte, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("identity: %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("identity: %s has mode %04o; it must be readable by its owner only (chmod 600 %s)", path, perm, path)
	}
	if fi.Size() > 4096 {
		return nil, fmt.Errorf("identity: %s is too large to be a key file", path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("identity: read %s: %w", path, err)
	}
	return b, nil
}

// writeSecretFile creates path with mode 0600 holding data, durably and
// exclusively: it fails if path exists.
func writeSecretFile(path string, data []byte) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		return fmt.Errorf("identity: create %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("identity: write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		return fmt.Errorf("identity: create %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}
