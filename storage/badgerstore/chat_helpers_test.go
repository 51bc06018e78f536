package badgerstore

import (
	"os"
	"path/filepath"
)

func writeFile(dir, name string) error {
	return os.WriteFile(filepath.Join(dir, name), []byte("x"), 0o600)
}

func removeFile(dir, name string) { _ = os.Remove(filepath.Join(dir, name)) }
