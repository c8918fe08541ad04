package pmtest

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// InCI reports whether the tests run in CI (the CI environment variable is
// set to anything but "" or "false"), where a missing requirement is a failure.
func InCI() bool {
	v := os.Getenv("CI")
	return v != "" && v != "false" && v != "0"
}

// Unavailable skips the test with the reason, or fails it in CI.
func Unavailable(tb testing.TB, format string, args ...any) {
	tb.Helper()
	msg := fmt.Sprintf(format, args...)
	if InCI() {
		tb.Fatalf("requirement missing in CI: %s", msg)
	}
	tb.Skip("skipped: " + msg)
}

// skipShort skips the test in -short mode, which runs the unit tests only.
func skipShort(tb testing.TB, what string) {
	tb.Helper()
	if testing.Short() {
		tb.Skip("skipped in -short mode: needs " + what)
	}
}

// RequireRoot skips (or, in CI, fails) a test unless it runs as root, which
// namespace labs and the path manager's mutating commands need. Like every
// Require function, it also skips the test in -short mode.
func RequireRoot(tb testing.TB) {
	tb.Helper()
	skipShort(tb, "root")
	if os.Geteuid() != 0 {
		Unavailable(tb, "needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN to create network namespaces); run as root or with CI set")
	}
}

// RequireMPTCP skips (or fails in CI) a test unless the kernel has MPTCP
// enabled in the current network namespace.
func RequireMPTCP(tb testing.TB) {
	tb.Helper()
	skipShort(tb, "MPTCP")
	b, err := os.ReadFile("/proc/sys/net/mptcp/enabled")
	if err != nil {
		Unavailable(tb, "kernel has no MPTCP (%v)", err)
		return
	}
	if strings.TrimSpace(string(b)) != "1" {
		Unavailable(tb, "MPTCP is disabled (net.mptcp.enabled=%s)", strings.TrimSpace(string(b)))
	}
}

// RequireProgram skips (or fails in CI) a test unless the named program is
// on PATH or at the absolute path given, and returns its path.
func RequireProgram(tb testing.TB, name string) string {
	tb.Helper()
	skipShort(tb, name)
	p, err := exec.LookPath(name)
	if err != nil {
		Unavailable(tb, "needs the program %s: %v", name, err)
		return ""
	}
	return p
}

// RequireLab combines RequireRoot, RequireMPTCP and RequireProgram("ip"): the
// requirements of NewLab and NewNamespace.
func RequireLab(tb testing.TB) {
	tb.Helper()
	RequireRoot(tb)
	RequireMPTCP(tb)
	RequireProgram(tb, "ip")
}
