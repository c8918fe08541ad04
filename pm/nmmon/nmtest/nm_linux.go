package nmtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mptcp-pmd/mptcp-pmd/dbusapi/dbustest"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
)

const (
	// startTimeout bounds how long NetworkManager may take until nmcli
	// says it runs and has started (about 1 s here).
	startTimeout = 20 * time.Second
	// stopTimeout bounds how long NetworkManager may take to exit after
	// SIGTERM before it is killed.
	stopTimeout = 10 * time.Second
	// nmcliTimeout bounds one nmcli command.
	nmcliTimeout = 30 * time.Second
	// logTail is how many lines of NetworkManager's log a failure shows.
	logTail = 60
)

// Options shape a NetworkManager.
type Options struct {
	// Managed names the interfaces NetworkManager manages (a [device]
	// section with managed=1 and keep-configuration=no, so at start-up it
	// takes them over instead of assuming their configuration). Every other
	// device of the namespace, loopback included, is unmanaged.
	Managed []string
	// Config is appended to NetworkManager.conf, for example a
	// [connection] section with defaults or a [logging] level.
	Config string
}

// NM is a NetworkManager running in a test's namespace.
type NM struct {
	host *pmtest.Host
	bus  *dbustest.Bus
	dir  string // configuration, state, profiles (conns/) and log

	mu   sync.Mutex
	cmd  *exec.Cmd     // nil when stopped
	done chan struct{} // closed when cmd has exited
}

// Require skips (or, in CI, fails) a test unless NetworkManager can run
// here: root, NetworkManager, nmcli, unshare, mount and ip.
func Require(tb testing.TB) {
	tb.Helper()
	pmtest.RequireRoot(tb)
	for _, p := range []string{"NetworkManager", "nmcli", "unshare", "mount", "ip"} {
		pmtest.RequireProgram(tb, p)
	}
}

// Start runs NetworkManager in host's network namespace, connected to bus
// (a bus with dbustest.SystemDefaults must have been given Policy), and
// returns once nmcli says it runs and has finished starting up. It is
// stopped when the test ends, before host and bus go. Its profiles live in
// a directory of the test's (keyfile plugin), so everything it is told to
// remember goes with the test.
func Start(tb testing.TB, host *pmtest.Host, bus *dbustest.Bus, opts Options) *NM {
	tb.Helper()
	Require(tb)
	for _, d := range []string{"/var/lib/NetworkManager", "/etc/NetworkManager"} {
		if fi, err := os.Stat(d); err != nil || !fi.IsDir() {
			tb.Fatalf("nmtest: %s is missing (installed with NetworkManager): %v", d, err)
		}
	}
	n := &NM{host: host, bus: bus, dir: tb.TempDir()}
	for _, p := range []string{n.dir, strings.TrimPrefix(bus.Address(), "unix:path=")} {
		if p == "/run" || strings.HasPrefix(p, "/run/") {
			tb.Fatalf("nmtest: %s is under /run, which NetworkManager's mount namespace covers; set TMPDIR elsewhere", p)
		}
	}
	for _, d := range []string{"run", "lib", "conf.d"} {
		if err := os.Mkdir(filepath.Join(n.dir, d), 0o755); err != nil {
			tb.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(n.dir, "conns"), 0o700); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(n.dir, "NetworkManager.conf"), []byte(config(n.dir, opts)), 0o644); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("nmtest: the last lines of NetworkManager's log:\n%s", n.tail())
		}
		n.stop()
	})
	n.start(tb)
	return n
}

// config returns NetworkManager.conf for a test: only the keyfile plugin
// with profiles in dir/conns, no default profiles, no DNS, hostname,
// polkit or connectivity checks, and the devices of opts managed.
func config(dir string, opts Options) string {
	var b strings.Builder
	fmt.Fprintf(&b, `[main]
plugins=keyfile
no-auto-default=*
dns=none
rc-manager=unmanaged
hostname-mode=none
auth-polkit=false
systemd-resolved=false
dhcp=internal

[keyfile]
path=%s

[connectivity]
enabled=false

[logging]
level=INFO
`, filepath.Join(dir, "conns"))
	if len(opts.Managed) > 0 {
		specs := make([]string, len(opts.Managed))
		for i, m := range opts.Managed {
			specs[i] = "interface-name:" + m
		}
		fmt.Fprintf(&b, `
[device-nmtest-managed]
match-device=%s
managed=1
keep-configuration=no
`, strings.Join(specs, ";"))
	}
	b.WriteString(`
[device-nmtest-others]
match-device=*
managed=0
`)
	if opts.Config != "" {
		b.WriteString("\n" + opts.Config + "\n")
	}
	return b.String()
}

// script runs as sh -c inside the namespace, in a mount namespace of its
// own, with the test's directory as $0: it hides the machine's /run and
// /etc/NetworkManager, binds the test's run and lib directories over
// NetworkManager's fixed paths, makes /sys read-only (no udev) and becomes
// NetworkManager.
const script = `set -e
D=$0
mount -t tmpfs -o mode=755 nmtest-run /run
mkdir /run/NetworkManager
mount --bind "$D/run" /run/NetworkManager
mount --bind "$D/lib" /var/lib/NetworkManager
mount -t tmpfs -o mode=755 nmtest-etc /etc/NetworkManager
mount -o remount,bind,ro /sys
exec NetworkManager --debug \
	--config="$D/NetworkManager.conf" --config-dir="$D/conf.d" \
	--system-config-dir="$D/conf.d" --intern-config="$D/NetworkManager-intern.conf" \
	--state-file="$D/NetworkManager.state" --pid-file="$D/run/nm.pid"
`

// start runs NetworkManager and waits until it has started up.
func (n *NM) start(tb testing.TB) {
	tb.Helper()
	logf, err := os.OpenFile(n.logPath(), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		tb.Fatal(err)
	}
	defer logf.Close()
	// ip netns exec, unshare and sh each exec the next: the process is
	// NetworkManager itself, and SIGTERM stops it cleanly.
	cmd := exec.Command("ip", "netns", "exec", n.host.Name,
		"unshare", "--mount", "--propagation", "private", "sh", "-c", script, n.dir)
	cmd.Env = append(os.Environ(), "DBUS_SYSTEM_BUS_ADDRESS="+n.bus.Address())
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		tb.Fatalf("nmtest: start NetworkManager: %v", err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		close(done)
	}()
	n.mu.Lock()
	n.cmd, n.done = cmd, done
	n.mu.Unlock()

	deadline := time.Now().Add(startTimeout)
	var last string
	for {
		select {
		case <-done:
			tb.Fatalf("nmtest: NetworkManager exited at start-up (%v); its log:\n%s", cmd.ProcessState, n.tail())
		default:
		}
		out, err := n.NmcliErr("-t", "-f", "RUNNING,STARTUP", "general")
		last = strings.TrimSpace(out)
		if err == nil && last == "running:started" {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("nmtest: NetworkManager not started after %v (nmcli: %q, %v); its log:\n%s", startTimeout, last, err, n.tail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Nmcli runs nmcli with the arguments inside the namespace, against this
// NetworkManager, and returns its output; a failure ends the test and
// shows the output.
func (n *NM) Nmcli(tb testing.TB, args ...string) string {
	tb.Helper()
	out, err := n.NmcliErr(args...)
	if err != nil {
		tb.Fatalf("nmtest: nmcli %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return out
}

// NmcliErr is Nmcli for a goroutine other than the test's, or a command
// expected to fail: it returns the combined output and the error.
func (n *NM) NmcliErr(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), nmcliTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.host.Name, "nmcli"}, args...)...)
	cmd.Env = append(os.Environ(), "DBUS_SYSTEM_BUS_ADDRESS="+n.bus.Address())
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Stop ends NetworkManager with SIGTERM and waits until it has exited
// (killing it after 10 s, which fails the test). Like a service stop, this
// leaves the addresses, routes and MPTCP endpoints it configured in place.
// Stopping a stopped NetworkManager does nothing.
func (n *NM) Stop(tb testing.TB) {
	tb.Helper()
	if err := n.stop(); err != nil {
		tb.Errorf("nmtest: %v", err)
	}
}

// stop is Stop without a test.
func (n *NM) stop() error {
	n.mu.Lock()
	cmd, done := n.cmd, n.done
	n.cmd, n.done = nil, nil
	n.mu.Unlock()
	if cmd == nil {
		return nil
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
		return nil
	case <-time.After(stopTimeout):
	}
	cmd.Process.Kill()
	<-done
	return errors.New("NetworkManager did not exit within " + stopTimeout.String() + " of SIGTERM; killed")
}

// Restart stops NetworkManager (if it runs) and starts it again with the
// same configuration and run state, as a service restart does: it assumes
// the connections that were active again.
func (n *NM) Restart(tb testing.TB) {
	tb.Helper()
	n.Stop(tb)
	n.start(tb)
}

// Pid returns NetworkManager's process id, or 0 when it is stopped.
func (n *NM) Pid() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return 0
	}
	return n.cmd.Process.Pid
}

// Log returns what NetworkManager logged so far, across restarts.
func (n *NM) Log() string {
	b, _ := os.ReadFile(n.logPath())
	return string(b)
}

func (n *NM) logPath() string { return filepath.Join(n.dir, "nm.log") }

// tail returns the last lines of the log.
func (n *NM) tail() string {
	lines := strings.Split(strings.TrimRight(n.Log(), "\n"), "\n")
	if len(lines) > logTail {
		lines = lines[len(lines)-logTail:]
	}
	return strings.Join(lines, "\n")
}
