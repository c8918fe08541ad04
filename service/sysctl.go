package service

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// The path-manager sysctls of the calling thread's network namespace.
const (
	sysctlPathManager = "/proc/sys/net/mptcp/path_manager" // "kernel" or "userspace" (Linux 6.15+)
	sysctlPMType      = "/proc/sys/net/mptcp/pm_type"      // 0 kernel, 1 userspace
)

// SetPathManagerSysctl sets the path manager of new MPTCP connections of
// the calling thread's network namespace, "kernel" or "userspace":
// net.mptcp.path_manager, or on kernels without it net.mptcp.pm_type. It
// is the default Deps.SetPathManager.
func SetPathManagerSysctl(name string) error {
	return setPathManager(name, os.WriteFile)
}

func setPathManager(name string, write func(string, []byte, fs.FileMode) error) error {
	var pmType string
	switch name {
	case "kernel":
		pmType = "0"
	case "userspace":
		pmType = "1"
	default:
		return fmt.Errorf("service: set path manager: unknown path manager %q", name)
	}
	err := write(sysctlPathManager, []byte(name), 0o644)
	if errors.Is(err, fs.ErrNotExist) {
		err = write(sysctlPMType, []byte(pmType), 0o644)
	}
	if err != nil {
		return fmt.Errorf("service: set path manager %s: %w", name, err)
	}
	return nil
}
