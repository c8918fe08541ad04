package pm

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
)

// The MPTCP sysctls. /proc/sys/net shows the network namespace of the thread
// that opens the file.
const (
	sysctlPathManager = "/proc/sys/net/mptcp/path_manager" // "kernel" or "userspace" (Linux 6.15+)
	sysctlPMType      = "/proc/sys/net/mptcp/pm_type"      // 0 kernel, 1 userspace
	sysctlEnabled     = "/proc/sys/net/mptcp/enabled"      // 0 or 1
)

// PathManagerType returns the path manager that new MPTCP connections of
// the calling thread's network namespace get: "kernel" or "userspace"
// (net.mptcp.path_manager; on kernels without it, net.mptcp.pm_type 0 or 1).
// A path manager a newer kernel names otherwise is returned by its name.
func PathManagerType() (string, error) {
	return pathManagerType(os.ReadFile)
}

func pathManagerType(read func(string) ([]byte, error)) (string, error) {
	b, err := read(sysctlPathManager)
	if err == nil {
		if s := strings.TrimSpace(string(b)); s != "" {
			return s, nil
		}
		return "", fmt.Errorf("pm: read %s: empty: %w", sysctlPathManager, ErrInvalid)
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("pm: path manager type: %w", err)
	}
	b, err = read(sysctlPMType)
	if err != nil {
		return "", fmt.Errorf("pm: path manager type: %w", err)
	}
	switch s := strings.TrimSpace(string(b)); s {
	case "0":
		return "kernel", nil
	case "1":
		return "userspace", nil
	default:
		return "", fmt.Errorf("pm: read %s: unknown value %q: %w", sysctlPMType, s, ErrInvalid)
	}
}

// SetPathManagerType sets the path manager that new MPTCP connections of
// the calling thread's network namespace get, "kernel" or "userspace":
// net.mptcp.path_manager, or on kernels without it net.mptcp.pm_type. It
// needs CAP_NET_ADMIN in the namespace.
func SetPathManagerType(name string) error {
	return setPathManagerType(name, os.WriteFile)
}

func setPathManagerType(name string, write func(string, []byte, fs.FileMode) error) error {
	var pmType string
	switch name {
	case "kernel":
		pmType = "0"
	case "userspace":
		pmType = "1"
	default:
		return fmt.Errorf("pm: set path manager: unknown path manager %q: %w", name, ErrInvalid)
	}
	err := write(sysctlPathManager, []byte(name), 0o644)
	if errors.Is(err, fs.ErrNotExist) {
		err = write(sysctlPMType, []byte(pmType), 0o644)
	}
	if err != nil {
		return fmt.Errorf("pm: set path manager %s: %w", name, err)
	}
	return nil
}

// MPTCPEnabled reports whether new sockets of the calling thread's network
// namespace may use MPTCP (net.mptcp.enabled). A kernel without MPTCP gives
// an error wrapping fs.ErrNotExist.
func MPTCPEnabled() (bool, error) {
	return mptcpEnabled(os.ReadFile)
}

func mptcpEnabled(read func(string) ([]byte, error)) (bool, error) {
	b, err := read(sysctlEnabled)
	if err != nil {
		return false, fmt.Errorf("pm: mptcp enabled: %w", err)
	}
	switch s := strings.TrimSpace(string(b)); s {
	case "0":
		return false, nil
	case "1":
		return true, nil
	default:
		return false, fmt.Errorf("pm: read %s: unknown value %q: %w", sysctlEnabled, s, ErrInvalid)
	}
}
