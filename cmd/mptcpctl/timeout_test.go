package main

// A daemon that never answers: the deadline of every request (--timeout),
// and SIGINT and SIGTERM ending mptcpctl, run as a process of its own,
// whatever it waits for.

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
	"golang.org/x/sys/unix"

	"github.com/mptcp-pmd/mptcp-pmd/dbusapi/dbustest"
)

func TestParseTimeout(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
	}{
		{"5s", 5 * time.Second},
		{"500ms", 500 * time.Millisecond},
		{"1m30s", 90 * time.Second},
		{"25", 25 * time.Second},
		{"2.5", 2500 * time.Millisecond},
		{"0.3", 300 * time.Millisecond},
		{"1h", time.Hour},
	} {
		if got, err := parseTimeout(tc.in); err != nil || got != tc.want {
			t.Errorf("parseTimeout(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
	for _, in := range []string{"", "banana", "5x", "0", "0s", "-1", "-1s", "1e3", "inf", "NaN", "0x10", "1.2.3", ".", "1e300", "99999999999"} {
		d, err := parseTimeout(in)
		var ee *exitError
		if !errors.As(err, &ee) || ee.code != exitUsage {
			t.Errorf("parseTimeout(%q) = %v, %v; want a usage error", in, d, err)
		}
	}
}

// frozenDaemon owns the daemon's name on bus and never answers a call, like
// a daemon that is stuck (or SIGSTOPped). calls gets the object path of
// every call, as it arrives.
type frozenDaemon struct {
	calls chan dbus.ObjectPath
	done  chan struct{}
}

// LookupObject holds every incoming call until the test ends: godbus
// handles each call in a goroutine of its own, and answers none until its
// handler returns.
func (f *frozenDaemon) LookupObject(path dbus.ObjectPath) (dbus.ServerObject, bool) {
	select {
	case f.calls <- path:
	default:
	}
	<-f.done
	return nil, false
}

// startFrozen starts a private bus with a frozen daemon on it and points
// DBUS_SYSTEM_BUS_ADDRESS at the bus.
func startFrozen(t *testing.T) *frozenDaemon {
	t.Helper()
	bus := dbustest.StartBus(t, dbustest.ExtraConfig(ownAnyone))
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", bus.Address())
	f := &frozenDaemon{calls: make(chan dbus.ObjectPath, 100), done: make(chan struct{})}
	conn, err := dbus.Connect(bus.Address(), dbus.WithHandler(f))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		close(f.done)
		conn.Close()
	})
	reply, err := conn.RequestName(busName, dbus.NameFlagDoNotQueue)
	if err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("request name: %v, %v", reply, err)
	}
	return f
}

// waitCall waits for the frozen daemon to get a call.
func (f *frozenDaemon) waitCall(t *testing.T) dbus.ObjectPath {
	t.Helper()
	select {
	case p := <-f.calls:
		return p
	case <-time.After(10 * time.Second):
		t.Fatal("the frozen daemon got no call within 10s")
		return ""
	}
}

// ctlWithin runs mptcpctl in-process, failing the test if it has not
// returned within limit (it would otherwise hang the test).
func ctlWithin(t *testing.T, limit time.Duration, args ...string) result {
	t.Helper()
	ch := make(chan result, 1)
	go func() { ch <- ctl(args...) }()
	select {
	case r := <-ch:
		return r
	case <-time.After(limit):
		t.Fatalf("mptcpctl %s still ran %v later", strings.Join(args, " "), limit)
		return result{}
	}
}

// TestTimeout checks that each kind of request mptcpctl makes gives up
// after --timeout when the daemon does not answer, with the timeout's
// exit status and a message naming it, and that it waited that long.
func TestTimeout(t *testing.T) {
	f := startFrozen(t)
	for _, args := range [][]string{
		{"--timeout", "300ms", "status"},                                          // Properties.GetAll
		{"connections", "--timeout=0.3"},                                          // ObjectManager.GetManagedObjects
		{"addresses", "--timeout", "300ms"},                                       // a method of the manager
		{"connection", "show", "3", "-timeout", "0.3s"},                           // Properties.GetAll of a connection
		{"connection", "show", "0x12345678", "--timeout=.3"},                      // GetConnectionByToken
		{"endpoint", "flush", "--timeout", "300ms"},                               // a method that changes something
		{"subflow", "del", "3", "10.0.0.1:1", "10.0.0.2:2", "--timeout", "300ms"}, // a method of a connection
		{"--json", "--timeout", "300ms", "monitor"},                               // monitor's first reads
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			start := time.Now()
			r := ctlWithin(t, 10*time.Second, args...)
			took := time.Since(start)
			wantFail(t, r, exitTimeout, "mptcp-pmd did not answer within 300ms: is it stuck?", "--timeout sets how long")
			if took < 300*time.Millisecond {
				t.Errorf("gave up after %v, before the timeout", took)
			}
			f.waitCall(t)
		})
	}
}

// TestTimeoutProcess runs mptcpctl --timeout 300ms status as a process
// against the frozen daemon: it ends, within well under a second, with
// the timeout's exit status.
func TestTimeoutProcess(t *testing.T) {
	startFrozen(t)
	start := time.Now()
	p := startCtl(t, "--timeout", "300ms", "status")
	code := p.wait(t, 5*time.Second)
	took := time.Since(start)
	if code != exitTimeout || !strings.Contains(p.stderr.String(), "mptcp-pmd did not answer within 300ms") {
		t.Errorf("exit %d, want %d; stderr %q", code, exitTimeout, p.stderr.String())
	}
	if took < 300*time.Millisecond || took >= time.Second {
		t.Errorf("mptcpctl took %v: want the timeout, 300ms, and well under a second", took)
	}
}

// TestTimeoutBus checks the deadline of connecting: a bus that accepts
// the connection and never says anything.
func TestTimeoutBus(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mute-bus")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	addr := "unix:path=" + path
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", addr)
	start := time.Now()
	r := ctlWithin(t, 10*time.Second, "status", "--timeout", "300ms")
	took := time.Since(start)
	wantFail(t, r, exitTimeout, "the system bus at "+addr+" did not answer within 300ms: is dbus-daemon stuck?")
	if took < 300*time.Millisecond || took >= 5*time.Second {
		t.Errorf("gave up after %v, want the timeout, 300ms", took)
	}
}

// ctlProcess is mptcpctl running as a process: the test binary, which runs
// mptcpctl's main when asMainEnv is set (TestMain).
type ctlProcess struct {
	cmd            *exec.Cmd
	stdout, stderr lockedBuffer
	done           chan struct{}
}

// startCtl starts mptcpctl with args as a process, with this process's
// environment (DBUS_SYSTEM_BUS_ADDRESS), and kills it if it still runs
// when the test ends.
func startCtl(t *testing.T, args ...string) *ctlProcess {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	p := &ctlProcess{cmd: exec.Command(exe, args...), done: make(chan struct{})}
	p.cmd.Env = ctlEnv()
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
	})
	return p
}

// ctlEnv is the environment of mptcpctl as a process: this process's
// (DBUS_SYSTEM_BUS_ADDRESS), with asMainEnv. Built with -race, the test
// binary sleeps a second before it exits unless GORACE says otherwise:
// that would be part of how long mptcpctl takes.
func ctlEnv() []string {
	return append(os.Environ(), asMainEnv+"=1", "GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
}

// wait returns the exit status of the process, failing the test (and
// killing it) if it runs for longer than limit. A process a signal killed
// has the status -1.
func (p *ctlProcess) wait(t *testing.T, limit time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(limit):
		p.cmd.Process.Kill()
		<-p.done
		t.Fatalf("mptcpctl %s still ran %v later (stdout %q, stderr %q)", strings.Join(p.cmd.Args[1:], " "), limit,
			p.stdout.String(), p.stderr.String())
		return 0
	}
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestSignalWhileWaiting sends SIGTERM and SIGINT to mptcpctl waiting for
// the frozen daemon with the default timeout (25s): it ends (within 2s: it
// does not hang) with 143 or 130 and says why.
func TestSignalWhileWaiting(t *testing.T) {
	for _, tc := range []struct {
		sig  syscall.Signal
		code int
		text string
		args []string
	}{
		{syscall.SIGTERM, exitTerminated, "mptcpctl: terminated (SIGTERM)", []string{"status"}},
		{syscall.SIGINT, exitInterrupted, "mptcpctl: interrupted (SIGINT)", []string{"status"}},
		{syscall.SIGTERM, exitTerminated, "mptcpctl: terminated (SIGTERM)", []string{"endpoint", "add", "10.0.0.1"}},
		// monitor waiting for its first reads is not monitoring yet.
		{syscall.SIGINT, exitInterrupted, "mptcpctl: interrupted (SIGINT)", []string{"monitor"}},
	} {
		t.Run(tc.sig.String()+" "+strings.Join(tc.args, " "), func(t *testing.T) {
			f := startFrozen(t)
			p := startCtl(t, tc.args...)
			f.waitCall(t) // mptcpctl waits for the answer
			time.Sleep(200 * time.Millisecond)
			if err := p.cmd.Process.Signal(tc.sig); err != nil {
				t.Fatal(err)
			}
			code := p.wait(t, 2*time.Second)
			if code != tc.code {
				t.Errorf("exit %d, want %d (stderr %q)", code, tc.code, p.stderr.String())
			}
			if got := p.stderr.String(); got != tc.text+"\n" {
				t.Errorf("stderr %q, want %q", got, tc.text)
			}
		})
	}
}

// TestSignalWhileConnecting sends SIGTERM to mptcpctl connecting to a bus
// that never answers.
func TestSignalWhileConnecting(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mute-bus")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path="+path)
	p := startCtl(t, "status")
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := l.Accept(); err == nil {
			accepted <- c
		}
	}()
	select {
	case c := <-accepted: // mptcpctl connected, and waits for the bus to answer
		defer c.Close()
	case <-p.done:
		t.Fatalf("mptcpctl ended: exit %d, stderr %q", p.cmd.ProcessState.ExitCode(), p.stderr.String())
	case <-time.After(10 * time.Second):
		t.Fatal("mptcpctl did not connect within 10s")
	}
	time.Sleep(200 * time.Millisecond)
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(t, 2*time.Second); code != exitTerminated {
		t.Errorf("exit %d, want %d (stderr %q)", code, exitTerminated, p.stderr.String())
	}
}

// TestMonitorSignal checks that monitor, monitoring a working daemon, ends
// on SIGINT and SIGTERM with success: that is how it is stopped.
func TestMonitorSignal(t *testing.T) {
	startDaemon(t, daemonOptions{})
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			p := startCtl(t, "monitor")
			deadline := time.Now().Add(10 * time.Second)
			for !strings.HasPrefix(p.stdout.String(), "Monitoring mptcp-pmd") {
				if time.Now().After(deadline) {
					t.Fatalf("monitor did not start: stdout %q, stderr %q", p.stdout.String(), p.stderr.String())
				}
				time.Sleep(10 * time.Millisecond)
			}
			if err := p.cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			if code := p.wait(t, 2*time.Second); code != exitOK {
				t.Errorf("exit %d, want 0 (stderr %q)", code, p.stderr.String())
			}
			if p.stderr.String() != "" {
				t.Errorf("stderr %q", p.stderr.String())
			}
		})
	}
}

// TestSignalOutputBlocked checks that a signal ends mptcpctl even when it
// cannot return: here monitor, blocked writing to a pipe nobody reads.
func TestSignalOutputBlocked(t *testing.T) {
	startDaemon(t, daemonOptions{})
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	// The smallest pipe (a page): a few events fill it.
	if _, err := unix.FcntlInt(r.Fd(), unix.F_SETPIPE_SZ, os.Getpagesize()); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "monitor", "--json")
	cmd.Env = ctlEnv()
	var stderr lockedBuffer
	cmd.Stdout, cmd.Stderr = w, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		close(done)
	}()
	defer func() {
		cmd.Process.Kill()
		<-done
	}()
	// The first line says the monitor is ready; then fill the pipe with
	// events (about 100 bytes each) until a write blocks: nothing reads
	// the pipe.
	first := make([]byte, 1)
	if _, err := r.Read(first); err != nil {
		t.Fatal(err)
	}
	for i := range 200 {
		mustCtl(t, "limits", "set", "1", fmt.Sprint(i%8))
	}
	time.Sleep(200 * time.Millisecond)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatalf("mptcpctl blocked writing still ran 2s after SIGTERM (stderr %q)", stderr.String())
	}
	if code := cmd.ProcessState.ExitCode(); code != exitTerminated {
		t.Errorf("exit %d, want %d (stderr %q)", code, exitTerminated, stderr.String())
	}
}
