package imexsim

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

// Bounds of what the tools read from files: a configuration or nodes file
// larger than maxFileSize, or a nodes file with more than MaxNodes
// addresses, is refused. NVIDIA's largest NVLink domain (NVL72) has 18
// nodes; the bound leaves room without letting a file exhaust memory.
const (
	maxFileSize = 1 << 20
	MaxNodes    = 1024
)

// DefaultConfigPath is where both tools look for the configuration
// without -c, as NVIDIA's do.
const DefaultConfigPath = "/etc/nvidia-imex/config.cfg"

// DefaultServerPort is SERVER_PORT when the configuration has none.
const DefaultServerPort = 50000

// Config is what the simulated tools use of an IMEX configuration file
// (NVIDIA's KEY=VALUE format; comments, blank lines and every other key
// are ignored, as are LOG_FILE_NAME and the authentication settings: the
// simulated daemon always logs to stderr and never encrypts).
type Config struct {
	// NodeConfigFile is IMEX_NODE_CONFIG_FILE, the file of the domain's
	// node addresses. Required.
	NodeConfigFile string
	// BindIP is BIND_INTERFACE_IP; invalid when empty (found from the
	// nodes file).
	BindIP netip.Addr
	// ServerPort is SERVER_PORT, the peers' port.
	ServerPort int
	// CmdEnabled is IMEX_CMD_ENABLED=1.
	CmdEnabled bool
	// CmdBindIP is IMEX_CMD_BIND_INTERFACE_IP; invalid when empty.
	CmdBindIP netip.Addr
	// CmdPort is IMEX_CMD_PORT; 0 when unset (no TCP command service).
	CmdPort int
	// CmdUnixPath is IMEX_CMD_UNIX_DOMAIN_PATH; empty when unset.
	CmdUnixPath string
	// Daemonize is DAEMONIZE (NVIDIA's default 1). The simulated daemon
	// always runs in the foreground and says so when asked otherwise.
	Daemonize bool
}

// LoadConfig reads the configuration file at path.
func LoadConfig(path string) (Config, error) {
	data, err := readBounded(path)
	if err != nil {
		return Config{}, fmt.Errorf("read the IMEX configuration: %w", err)
	}
	cfg, err := ParseConfig(data)
	if err != nil {
		return Config{}, fmt.Errorf("IMEX configuration %s: %w", path, err)
	}
	return cfg, nil
}

// ParseConfig parses an IMEX configuration.
func ParseConfig(data []byte) (Config, error) {
	cfg := Config{ServerPort: DefaultServerPort, Daemonize: true}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), maxFileSize)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		key, value, ok := strings.Cut(line, "=")
		if !ok {
			continue // not a setting: ignored, as an unknown key is
		}
		key, value = strings.TrimSpace(key), strings.TrimSpace(value)
		var err error
		switch key {
		case "IMEX_NODE_CONFIG_FILE":
			cfg.NodeConfigFile = value
		case "BIND_INTERFACE_IP":
			cfg.BindIP, err = optionalAddr(value)
		case "SERVER_PORT":
			cfg.ServerPort, err = port(value, false)
		case "IMEX_CMD_ENABLED":
			cfg.CmdEnabled, err = flag(value)
		case "IMEX_CMD_BIND_INTERFACE_IP":
			cfg.CmdBindIP, err = optionalAddr(value)
		case "IMEX_CMD_PORT":
			cfg.CmdPort, err = port(value, true)
		case "IMEX_CMD_UNIX_DOMAIN_PATH":
			cfg.CmdUnixPath = value
		case "DAEMONIZE":
			cfg.Daemonize, err = flag(value)
		}
		if err != nil {
			return Config{}, fmt.Errorf("line %d: %s: %w", n, key, err)
		}
	}
	if err := sc.Err(); err != nil {
		return Config{}, err
	}
	if cfg.NodeConfigFile == "" {
		return Config{}, errors.New("IMEX_NODE_CONFIG_FILE is not set")
	}
	return cfg, nil
}

func optionalAddr(v string) (netip.Addr, error) {
	if v == "" {
		return netip.Addr{}, nil
	}
	a, err := netip.ParseAddr(v)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("not an IP address: %q", v)
	}
	return a.Unmap(), nil
}

func port(v string, emptyOK bool) (int, error) {
	if v == "" && emptyOK {
		return 0, nil
	}
	p, err := strconv.Atoi(v)
	if err != nil || p < 1 || p > 65535 {
		return 0, fmt.Errorf("not a port: %q", v)
	}
	return p, nil
}

func flag(v string) (bool, error) {
	switch v {
	case "0":
		return false, nil
	case "1":
		return true, nil
	}
	return false, fmt.Errorf("want 0 or 1, not %q", v)
}

// ReadNodes reads a nodes file: one IP address a line, in the domain's
// order; blank lines and lines starting with # are ignored. An address
// that is not an IP address, one listed twice, or more than MaxNodes are
// errors. An empty list is not an error: the daemon then finds no address
// of its own.
func ReadNodes(path string) ([]netip.Addr, error) {
	data, err := readBounded(path)
	if err != nil {
		return nil, fmt.Errorf("read the IMEX nodes file: %w", err)
	}
	var nodes []netip.Addr
	seen := map[netip.Addr]bool{}
	for n, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		a, err := netip.ParseAddr(line)
		if err != nil {
			return nil, fmt.Errorf("IMEX nodes file %s: line %d: not an IP address: %q", path, n+1, truncate(line))
		}
		a = a.Unmap()
		if seen[a] {
			return nil, fmt.Errorf("IMEX nodes file %s: line %d: %s is listed twice", path, n+1, a)
		}
		if len(nodes) == MaxNodes {
			return nil, fmt.Errorf("IMEX nodes file %s: more than %d nodes", path, MaxNodes)
		}
		seen[a] = true
		nodes = append(nodes, a)
	}
	return nodes, nil
}

// readBounded reads the regular file at path, at most maxFileSize bytes.
func readBounded(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil {
		return nil, err
	} else if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file", path)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxFileSize {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, maxFileSize)
	}
	return data, nil
}

// truncate shortens s for a message.
func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
