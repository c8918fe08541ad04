// Package dbustest starts a private dbus-daemon for tests. Its configuration
// includes the project's own bus policy,
// dist/dbus-1/system.d/org.mptcp.PathManager1.conf, so that file is loaded
// (a malformed policy makes the daemon, and so the test, fail) and its rules
// are in force on the private bus.
package dbustest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"html"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
)

// PolicyPath is the project's bus policy file, relative to the project root.
const PolicyPath = "dist/dbus-1/system.d/org.mptcp.PathManager1.conf"

// startTimeout bounds how long dbus-daemon may take to print its address.
const startTimeout = 10 * time.Second

// Bus is a running private dbus-daemon.
type Bus struct {
	address string
	dir     string
	conf    string // the configuration file
	cmd     *exec.Cmd
	stderr  *syncBuffer
	done    chan struct{} // closed when the daemon has exited
}

// Option changes how StartBus configures the daemon.
type Option func(*config)

type config struct {
	systemDefaults bool
	policy         string   // absolute path of the policy file to include
	policies       []string // more <policy> elements, after the included file
}

// SystemDefaults makes the bus's default policy that of the real system bus
// (/usr/share/dbus-1/system.conf): nobody may own a name or send a method
// call unless a policy file allows it. Without it, the default policy allows
// everything and only the project's policy file restricts anything. Use it to
// test what the project's policy allows.
func SystemDefaults() Option {
	return func(c *config) { c.systemDefaults = true }
}

// ExtraConfig adds elements to the bus configuration after the project's
// policy, such as a <policy user="nobody"> that lets a test run the daemon
// under another user, or a <servicedir> of activation files to load.
func ExtraConfig(xml string) Option {
	return func(c *config) { c.policies = append(c.policies, xml) }
}

// StartBus starts a private dbus-daemon with a configuration that includes
// the project's bus policy, and stops it when the test ends. It skips the test
// (or fails it in CI) when dbus-daemon is missing, and fails it when the
// daemon does not start, for example because the policy file is malformed.
//
// The daemon listens on a unix socket in a fresh directory that every user
// may enter, so that clients running under another UID can connect.
func StartBus(tb testing.TB, opts ...Option) *Bus {
	tb.Helper()
	pmtest.RequireProgram(tb, "dbus-daemon")
	root, err := ProjectRoot()
	if err != nil {
		tb.Fatalf("dbustest: %v", err)
	}
	c := config{policy: filepath.Join(root, PolicyPath)}
	for _, o := range opts {
		o(&c)
	}
	b, err := start(c)
	if err != nil {
		tb.Fatalf("dbustest: %v", err)
	}
	tb.Cleanup(b.stop)
	return b
}

// Address returns the bus address, for dbus.Connect or
// DBUS_SYSTEM_BUS_ADDRESS.
func (b *Bus) Address() string { return b.address }

// Dial connects a new client to the bus (authenticated, Hello done) and
// closes it when the test ends. Its signals are delivered in the order they
// arrived.
func (b *Bus) Dial(tb testing.TB) *dbus.Conn {
	tb.Helper()
	conn, err := dbus.Connect(b.address, dbus.WithSignalHandler(dbus.NewSequentialSignalHandler()))
	if err != nil {
		tb.Fatalf("dbustest: connect to %s: %v", b.address, err)
	}
	tb.Cleanup(func() { conn.Close() })
	return conn
}

// CommandAs returns a command that runs the program as the given user and
// group (setpriv, no supplementary groups) with DBUS_SYSTEM_BUS_ADDRESS set to
// this bus, for testing what an unprivileged client sees. It needs root and
// setpriv: the test is skipped (or fails in CI) without them.
func (b *Bus) CommandAs(tb testing.TB, uid, gid uint32, program string, args ...string) *exec.Cmd {
	tb.Helper()
	pmtest.RequireRoot(tb)
	setpriv := pmtest.RequireProgram(tb, "setpriv")
	cmd := exec.Command(setpriv, append([]string{
		fmt.Sprintf("--reuid=%d", uid), fmt.Sprintf("--regid=%d", gid), "--clear-groups", "--", program,
	}, args...)...)
	cmd.Env = append(os.Environ(), "DBUS_SYSTEM_BUS_ADDRESS="+b.address)
	cmd.Dir = os.TempDir()
	return cmd
}

// Log returns what the daemon wrote to its standard error so far (warnings
// about the configuration, for example).
func (b *Bus) Log() string { return b.stderr.String() }

// ProjectRoot returns the directory of the project's go.mod, found by
// walking up from the working directory (a test runs in its package's
// directory).
func ProjectRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("project root: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("project root: no go.mod above the working directory")
		}
		dir = parent
	}
}

func start(c config) (*Bus, error) {
	if _, err := os.Stat(c.policy); err != nil {
		return nil, fmt.Errorf("policy file: %w", err)
	}
	dir, err := os.MkdirTemp("", "dbustest-")
	if err != nil {
		return nil, err
	}
	// Clients of other users (a test's unprivileged caller) need to reach
	// the socket; dbus-daemon makes the socket itself world-writable.
	if err := os.Chmod(dir, 0o755); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	confPath := filepath.Join(dir, "bus.conf")
	if err := os.WriteFile(confPath, []byte(busConfig(c, filepath.Join(dir, "socket"))), 0o644); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	b := &Bus{dir: dir, conf: confPath, stderr: &syncBuffer{}}
	if err := b.run(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return b, nil
}

// run starts dbus-daemon with b's configuration and waits for its address.
func (b *Bus) run() error {
	b.done = make(chan struct{})
	b.cmd = exec.Command("dbus-daemon", "--config-file="+b.conf, "--print-address", "--nofork", "--nopidfile", "--nosyslog")
	b.cmd.Stderr = b.stderr
	stdout, err := b.cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := b.cmd.Start(); err != nil {
		return fmt.Errorf("start dbus-daemon: %w", err)
	}
	done := b.done
	cmd := b.cmd
	go func() {
		cmd.Wait()
		close(done)
	}()

	addr := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		addr <- strings.TrimSpace(line)
		io.Copy(io.Discard, stdout)
	}()
	select {
	case a := <-addr:
		if a != "" {
			b.address = a
			return nil
		}
		<-done
	case <-time.After(startTimeout):
	}
	b.Kill()
	return fmt.Errorf("dbus-daemon did not start (%v): %s", b.cmd.ProcessState, strings.TrimSpace(b.stderr.String()))
}

// Kill stops dbus-daemon at once (SIGKILL), as a crash would: every client
// loses its connection. Restart brings it back.
func (b *Bus) Kill() {
	select {
	case <-b.done:
	default:
		b.cmd.Process.Kill()
		<-b.done
	}
}

// Restart kills dbus-daemon if it runs and starts it again with the same
// configuration at the same address; clients must connect anew.
func (b *Bus) Restart(tb testing.TB) {
	tb.Helper()
	b.Kill()
	if err := b.run(); err != nil {
		tb.Fatalf("dbustest: restart: %v", err)
	}
}

func (b *Bus) stop() {
	b.Kill()
	os.RemoveAll(b.dir)
}

// busConfig returns the daemon's configuration: a private socket, EXTERNAL
// authentication, a default policy, then the included project policy, whose
// rules come later and so take precedence.
func busConfig(c config, socket string) string {
	var policy string
	if c.systemDefaults {
		policy = `
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>`
	} else {
		policy = `
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_type="method_return"/>
    <allow send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>`
	}
	return `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <listen>unix:path=` + html.EscapeString(socket) + `</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">` + policy + `
  </policy>
  <include>` + html.EscapeString(c.policy) + `</include>
` + strings.Join(c.policies, "\n") + `
</busconfig>
`
}

// syncBuffer is a bytes.Buffer safe for one writer and concurrent readers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
