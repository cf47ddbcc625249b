package cdi

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	cdiapi "tags.cncf.io/container-device-interface/pkg/cdi"
	specs "tags.cncf.io/container-device-interface/specs-go"
)

// writeSpec writes spec to path atomically, with SpecMode, and only if the
// CDI library accepts it: the temporary file (whose extension the runtime's
// CDI cache ignores) is read back and validated by the library before the
// rename.
func writeSpec(path string, spec *specs.Spec) error {
	data, err := json.Marshal(spec)
	if err != nil {
		return fmt.Errorf("encode: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*"+tempSuffix)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	// CreateTemp makes 0600 files; fchmod sets SpecMode whatever the
	// umask, and the rename replaces a file of any other mode. (The CDI
	// library's own writer, not used here, leaves specs 0600 and takes no
	// mode.)
	if err := tmp.Chmod(SpecMode); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := cdiapi.ReadSpec(tmp.Name(), 0); err != nil {
		return fmt.Errorf("CDI library rejects the spec: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
