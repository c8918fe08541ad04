package main

// The end-to-end harness: the real, built mptcp-pmd and mptcpctl, run in a
// namespace lab (pmtest) against a private bus (dbustest) that loads the
// project's bus policy.
//
//	s := newSetup(t, pmtest.LabOptions{ClientPM: "userspace"}) // lab, bus, s.rec recording signals
//	kev := listenKernel(t, s.lab.Client)               // the kernel's events, independently
//	d := startDaemon(t, s.lab.Client, s.bus)           // --policy none --log-level debug
//	c, obj := s.established(t, d)                      // an MPTCP connection and its object
//	out, errOut, code := ctl(t, s.bus, "connections")  // the built mptcpctl
//
// Lower level: startDaemon/launchDaemon/runDaemon with any bus and host,
// serve and dial for MPTCP traffic, recordSignals, python for the examples
// in dist/examples.
//
// The binaries are built once per test binary, with -race when the tests
// run with -race, so the race detector watches the daemon too.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/mptcp-pmd/mptcp-pmd/dbusapi"
	"github.com/mptcp-pmd/mptcp-pmd/dbusapi/dbustest"
	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmnl"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
)

const (
	nameTimeout = 10 * time.Second // for the daemon to own its bus name
	stopTimeout = 5 * time.Second  // for the daemon to exit after SIGTERM
	ctlTimeout  = 20 * time.Second // for one mptcpctl or script run
	pythonPath  = "/usr/bin/python3"
)

// built holds the binaries, built on first use and removed by TestMain.
var built struct {
	once sync.Once
	dir  string // bin directory: mptcp-pmd, mptcpctl
	root string // the module root
	err  error
}

func TestMain(m *testing.M) {
	pmtest.HelperMain() // the benchmarks' server processes
	code := m.Run()
	if built.dir != "" {
		os.RemoveAll(filepath.Dir(built.dir))
	}
	os.Exit(code)
}

// raceEnabled reports whether this test binary was built with -race.
func raceEnabled() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
}

// binDir builds ./cmd/... once (go build -o DIR/ ./cmd/... in the module
// root) and returns the directory of the binaries.
func binDir(tb testing.TB) string {
	tb.Helper()
	goTool := pmtest.RequireProgram(tb, "go")
	built.once.Do(func() {
		built.root, built.err = dbustest.ProjectRoot()
		if built.err != nil {
			return
		}
		tmp, err := os.MkdirTemp("", "mptcp-pmd-e2e-")
		if err != nil {
			built.err = err
			return
		}
		// The namespace's processes run as root, but the directory must
		// also be reachable by an unprivileged client (CommandAs).
		if err := os.Chmod(tmp, 0o755); err != nil {
			built.err = err
			return
		}
		dir := filepath.Join(tmp, "bin")
		args := []string{"build", "-o", dir + "/"}
		if raceEnabled() {
			args = append(args, "-race")
		}
		cmd := exec.Command(goTool, append(args, "./cmd/...")...)
		cmd.Dir = built.root
		if out, err := cmd.CombinedOutput(); err != nil {
			built.err = fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
			os.RemoveAll(tmp)
			return
		}
		built.dir = dir
	})
	if built.err != nil {
		tb.Fatalf("build the binaries: %v", built.err)
	}
	return built.dir
}

// daemonSpec says how to run the daemon beyond the defaults.
type daemonSpec struct {
	// Args come after the defaults (--config EMPTY --policy none
	// --log-level debug --runtime-dir DIR-OF-THE-NAMESPACE); a flag given
	// again wins.
	Args []string
	// Env is added to the environment (DBUS_SYSTEM_BUS_ADDRESS is set).
	Env []string
	// Binary, if set, is run instead of the built mptcp-pmd (a baseline
	// build, for a benchmark that compares two).
	Binary string
}

// testDaemon is a running mptcp-pmd.
type testDaemon struct {
	host *pmtest.Host
	bus  *dbustest.Bus
	cmd  *exec.Cmd
	log  *pmtest.SyncBuffer
	done chan struct{} // closed when the process has exited
	// conn is a client connection of the test on the daemon's bus.
	conn *dbus.Conn

	stopOnce sync.Once
}

// configArg writes a TOML configuration file and returns the flag that
// makes the daemon read it.
func configArg(tb testing.TB, text string) string {
	tb.Helper()
	p := filepath.Join(tb.TempDir(), "mptcp-pmd.toml")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		tb.Fatal(err)
	}
	return "--config=" + p
}

// runtimeDirs holds each namespace's runtime directory (by the namespace's
// name): the daemons of one namespace share it, as successive runs of the
// unit share /run/mptcp-pmd.
var runtimeDirs sync.Map

// runtimeDir returns h's runtime directory, made for the test if new.
func runtimeDir(tb testing.TB, h *pmtest.Host) string {
	tb.Helper()
	dir := filepath.Join(tb.TempDir(), "run")
	if old, loaded := runtimeDirs.LoadOrStore(h.Name, dir); loaded {
		return old.(string)
	}
	tb.Cleanup(func() { runtimeDirs.Delete(h.Name) })
	return dir
}

// daemonCommand is the command line that runs the daemon in h with the
// bus's address: ip netns exec NS mptcp-pmd DEFAULTS ARGS.
func daemonCommand(ctx context.Context, tb testing.TB, h *pmtest.Host, bus *dbustest.Bus, spec daemonSpec) *exec.Cmd {
	tb.Helper()
	bin := filepath.Join(binDir(tb), "mptcp-pmd")
	if spec.Binary != "" {
		bin = spec.Binary
	}
	args := append([]string{"netns", "exec", h.Name, bin,
		configArg(tb, "# empty: the defaults\n"), "--policy", "none", "--log-level", "debug",
		"--runtime-dir=" + runtimeDir(tb, h)}, spec.Args...)
	cmd := exec.CommandContext(ctx, "ip", args...)
	cmd.Env = append(append(os.Environ(), "DBUS_SYSTEM_BUS_ADDRESS="+bus.Address()), spec.Env...)
	cmd.Dir = built.root
	return cmd
}

// startDaemon runs the built mptcp-pmd in h's namespace on bus with
// --policy none --log-level debug and args, and waits until it owns
// org.mptcp.PathManager1. At the end of the test it stops the daemon with
// SIGTERM and fails the test unless it exits with status 0 within 5 s; the
// daemon's log is shown when the test failed.
func startDaemon(tb testing.TB, h *pmtest.Host, bus *dbustest.Bus, args ...string) *testDaemon {
	tb.Helper()
	return launchDaemon(tb, h, bus, daemonSpec{Args: args})
}

// launchDaemon is startDaemon with a full spec.
func launchDaemon(tb testing.TB, h *pmtest.Host, bus *dbustest.Bus, spec daemonSpec) *testDaemon {
	tb.Helper()
	d := &testDaemon{host: h, bus: bus, log: &pmtest.SyncBuffer{}, done: make(chan struct{})}
	d.cmd = daemonCommand(context.Background(), tb, h, bus, spec)
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	d.conn = bus.Dial(tb)
	if err := d.cmd.Start(); err != nil {
		tb.Fatalf("start mptcp-pmd: %v", err)
	}
	go func() {
		d.cmd.Wait()
		close(d.done)
	}()
	tb.Cleanup(func() {
		d.stop(tb)
		if tb.Failed() {
			tb.Logf("mptcp-pmd log (pid %d):\n%s", d.cmd.Process.Pid, d.log.String())
		}
	})
	deadline := time.Now().Add(nameTimeout)
	for {
		// This daemon owns the name, not one that is going (the bus
		// releases a name a moment after its owner exits).
		var owner string
		var pid uint32
		if d.conn.BusObject().Call("org.freedesktop.DBus.GetNameOwner", 0, dbusapi.BusName).Store(&owner) == nil &&
			d.conn.BusObject().Call("org.freedesktop.DBus.GetConnectionUnixProcessID", 0, owner).Store(&pid) == nil &&
			int(pid) == d.pid() {
			return d
		}
		select {
		case <-d.done:
			tb.Fatalf("mptcp-pmd exited before owning %s (%v):\n%s", dbusapi.BusName, d.cmd.ProcessState, d.log.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			tb.Fatalf("mptcp-pmd did not own %s within %v:\n%s", dbusapi.BusName, nameTimeout, d.log.String())
		}
	}
}

// pid is the daemon's process id (ip netns exec execs the daemon).
func (d *testDaemon) pid() int { return d.cmd.Process.Pid }

// stop sends SIGTERM and checks that the daemon exits with status 0 within
// stopTimeout; otherwise it kills it and fails the test. Later calls do
// nothing.
func (d *testDaemon) stop(tb testing.TB) {
	tb.Helper()
	d.stopOnce.Do(func() {
		select {
		case <-d.done:
			tb.Errorf("mptcp-pmd exited before the end of the test: %v", d.cmd.ProcessState)
			return
		default:
		}
		d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.done:
			if code := d.cmd.ProcessState.ExitCode(); code != 0 {
				tb.Errorf("mptcp-pmd exited with status %d after SIGTERM (%v)", code, d.cmd.ProcessState)
			}
		case <-time.After(stopTimeout):
			d.cmd.Process.Kill()
			<-d.done
			tb.Errorf("mptcp-pmd did not exit within %v of SIGTERM; killed", stopTimeout)
		}
	})
}

// obj returns a daemon object for calls by the test's client.
func (d *testDaemon) obj(path dbus.ObjectPath) dbus.BusObject {
	return d.conn.Object(dbusapi.BusName, path)
}

// runDaemon runs the daemon in h until it exits (it is expected to fail
// to start) and returns its output and exit status.
func runDaemon(tb testing.TB, h *pmtest.Host, bus *dbustest.Bus, spec daemonSpec) (string, int) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), ctlTimeout)
	defer cancel()
	cmd := daemonCommand(ctx, tb, h, bus, spec)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		tb.Fatalf("run mptcp-pmd: %v", err)
	}
	if ctx.Err() != nil {
		tb.Fatalf("mptcp-pmd did not exit within %v:\n%s", ctlTimeout, out)
	}
	return string(out), cmd.ProcessState.ExitCode()
}

// ctl runs the built mptcpctl with args on bus and returns what it printed
// and its exit status.
func ctl(tb testing.TB, bus *dbustest.Bus, args ...string) (stdout, stderr string, code int) {
	tb.Helper()
	return runTool(tb, bus, filepath.Join(binDir(tb), "mptcpctl"), args...)
}

// ctlCommand returns a command running mptcpctl with args on bus, for a
// test that runs it in the background.
func ctlCommand(tb testing.TB, bus *dbustest.Bus, args ...string) *exec.Cmd {
	tb.Helper()
	cmd := exec.Command(filepath.Join(binDir(tb), "mptcpctl"), args...)
	cmd.Env = append(os.Environ(), "DBUS_SYSTEM_BUS_ADDRESS="+bus.Address())
	return cmd
}

// python runs an example client (a path relative to the module root) with
// Debian's python3, which has python3-dbus and python3-gi, on bus. The test
// is skipped (failed in CI) without them.
func python(tb testing.TB, bus *dbustest.Bus, script string, args ...string) (stdout, stderr string, code int) {
	tb.Helper()
	requirePython(tb)
	root, err := dbustest.ProjectRoot()
	if err != nil {
		tb.Fatal(err)
	}
	return runTool(tb, bus, pythonPath, append([]string{filepath.Join(root, script)}, args...)...)
}

// requirePython skips (fails in CI) unless python3 with the dbus and gi
// modules is there.
func requirePython(tb testing.TB) {
	tb.Helper()
	pmtest.RequireProgram(tb, pythonPath)
	out, err := exec.Command(pythonPath, "-c", "import dbus, dbus.mainloop.glib; from gi.repository import GLib").CombinedOutput()
	if err != nil {
		pmtest.Unavailable(tb, "%s lacks python3-dbus or python3-gi: %v: %s", pythonPath, err, out)
	}
}

func runTool(tb testing.TB, bus *dbustest.Bus, program string, args ...string) (stdout, stderr string, code int) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), ctlTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, program, args...)
	cmd.Env = append(os.Environ(), "DBUS_SYSTEM_BUS_ADDRESS="+bus.Address())
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		tb.Fatalf("run %s: %v", program, err)
	}
	if ctx.Err() != nil {
		tb.Fatalf("%s %s did not finish within %v: %s%s", filepath.Base(program), strings.Join(args, " "), ctlTimeout, o.String(), e.String())
	}
	return o.String(), e.String(), cmd.ProcessState.ExitCode()
}

// recorder keeps every signal the daemon emits on its objects, in order.
type recorder struct {
	mu      sync.Mutex
	sigs    []*dbus.Signal
	changed chan struct{} // closed and replaced at each new signal
}

// recordSignals subscribes a new client of bus to the daemon's signals
// (sender org.mptcp.PathManager1, paths under /org/mptcp/PathManager1)
// and records them until the test ends. Subscribe before the daemon starts
// to see everything it emits.
func recordSignals(tb testing.TB, bus *dbustest.Bus) *recorder {
	tb.Helper()
	conn := bus.Dial(tb)
	r := &recorder{changed: make(chan struct{})}
	ch := make(chan *dbus.Signal, 1024)
	conn.Signal(ch)
	if err := conn.AddMatchSignal(dbus.WithMatchSender(dbusapi.BusName), dbus.WithMatchPathNamespace(dbusapi.ManagerPath)); err != nil {
		tb.Fatalf("subscribe to the daemon's signals: %v", err)
	}
	go func() {
		for s := range ch {
			r.mu.Lock()
			r.sigs = append(r.sigs, s)
			close(r.changed)
			r.changed = make(chan struct{})
			r.mu.Unlock()
		}
	}()
	return r
}

// mark returns the number of signals recorded so far, for waitAfter.
func (r *recorder) mark() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.sigs)
}

// signals returns a copy of the signals recorded from index from on.
func (r *recorder) signals(from int) []*dbus.Signal {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.sigs[min(from, len(r.sigs)):])
}

// wait returns the first recorded signal that satisfies match, waiting up
// to 10 s for it; the test fails if none comes.
func (r *recorder) wait(tb testing.TB, what string, match func(*dbus.Signal) bool) *dbus.Signal {
	tb.Helper()
	return r.waitAfter(tb, 0, what, match)
}

// waitAfter is wait for the signals from index from (a mark) on.
func (r *recorder) waitAfter(tb testing.TB, from int, what string, match func(*dbus.Signal) bool) *dbus.Signal {
	tb.Helper()
	if s := r.find(from, 10*time.Second, match); s != nil {
		return s
	}
	var b strings.Builder
	for _, s := range r.signals(from) {
		fmt.Fprintf(&b, "\n  %s %s %v", s.Path, s.Name, s.Body)
	}
	tb.Fatalf("no signal %s within 10s; recorded:%s", what, b.String())
	return nil
}

// find returns the first signal from index from on that satisfies match,
// waiting up to timeout, or nil.
func (r *recorder) find(from int, timeout time.Duration, match func(*dbus.Signal) bool) *dbus.Signal {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for i := from; ; {
		r.mu.Lock()
		sigs, changed := r.sigs, r.changed
		r.mu.Unlock()
		for ; i < len(sigs); i++ {
			if match(sigs[i]) {
				return sigs[i]
			}
		}
		select {
		case <-changed:
		case <-deadline.C:
			return nil
		}
	}
}

// isSignal matches a signal by object path ("" = any) and full member name
// (interface.member).
func isSignal(path dbus.ObjectPath, name string) func(*dbus.Signal) bool {
	return func(s *dbus.Signal) bool { return (path == "" || s.Path == path) && s.Name == name }
}

// eventually polls cond every 20 ms until it holds or timeout passes, and
// fails the test then.
func eventually(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("%s: not within %v", what, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// connObject is a connection object as a client reads it.
type connObject struct {
	Path               dbus.ObjectPath
	Token              uint32
	ServerSide         bool
	State              string
	LocalAddress       string
	LocalPort          uint16
	RemoteAddress      string
	RemotePort         uint16
	DenyJoinID0        bool
	Subflows           []subflowInfo
	RemoteAddresses    []addrInfo
	AnnouncedAddresses []addrInfo
}

// subflowInfo is one entry of Subflows, a(yysqsqbs), and the first eight
// arguments of the Subflow* signals.
type subflowInfo struct {
	LocalID       uint8
	RemoteID      uint8
	LocalAddress  string
	LocalPort     uint16
	RemoteAddress string
	RemotePort    uint16
	Backup        bool
	Interface     string
}

// addrInfo is one entry of RemoteAddresses or AnnouncedAddresses, a(ysq).
type addrInfo struct {
	ID      uint8
	Address string
	Port    uint16
}

// decodeConn reads a connection object's properties; every property of
// the contract must be there with its type.
func decodeConn(tb testing.TB, path dbus.ObjectPath, props map[string]dbus.Variant) connObject {
	tb.Helper()
	c := connObject{Path: path}
	for name, ptr := range map[string]any{
		"Token": &c.Token, "ServerSide": &c.ServerSide, "State": &c.State,
		"LocalAddress": &c.LocalAddress, "LocalPort": &c.LocalPort,
		"RemoteAddress": &c.RemoteAddress, "RemotePort": &c.RemotePort,
		"DenyJoinId0": &c.DenyJoinID0, "Subflows": &c.Subflows,
		"RemoteAddresses": &c.RemoteAddresses, "AnnouncedAddresses": &c.AnnouncedAddresses,
	} {
		v, ok := props[name]
		if !ok {
			tb.Fatalf("%s: no property %s", path, name)
		}
		if err := dbus.Store([]any{v.Value()}, ptr); err != nil {
			tb.Fatalf("%s: property %s (%s): %v", path, name, v.Signature(), err)
		}
	}
	return c
}

// managedObjects returns the daemon's connection objects by path, from
// GetManagedObjects.
func (d *testDaemon) managedObjects(tb testing.TB) map[dbus.ObjectPath]connObject {
	tb.Helper()
	var objs map[dbus.ObjectPath]map[string]map[string]dbus.Variant
	if err := d.obj(dbusapi.ManagerPath).Call("org.freedesktop.DBus.ObjectManager.GetManagedObjects", 0).Store(&objs); err != nil {
		tb.Fatalf("GetManagedObjects: %v", err)
	}
	out := make(map[dbus.ObjectPath]connObject, len(objs))
	for p, ifaces := range objs {
		props, ok := ifaces[dbusapi.ConnectionInterface]
		if !ok {
			tb.Fatalf("GetManagedObjects: %s has no %s: %v", p, dbusapi.ConnectionInterface, ifaces)
		}
		out[p] = decodeConn(tb, p, props)
	}
	return out
}

// connection reads one connection object with GetAll.
func (d *testDaemon) connection(tb testing.TB, path dbus.ObjectPath) connObject {
	tb.Helper()
	var props map[string]dbus.Variant
	if err := d.obj(path).Call("org.freedesktop.DBus.Properties.GetAll", 0, dbusapi.ConnectionInterface).Store(&props); err != nil {
		tb.Fatalf("GetAll %s: %v", path, err)
	}
	return decodeConn(tb, path, props)
}

// subflowOf decodes the first eight arguments of a Subflow* signal.
func subflowOf(tb testing.TB, s *dbus.Signal) subflowInfo {
	tb.Helper()
	var sf subflowInfo
	if len(s.Body) < 8 {
		tb.Fatalf("%s: %d arguments, want at least 8", s.Name, len(s.Body))
	}
	if err := dbus.Store(s.Body[:8], &sf.LocalID, &sf.RemoteID, &sf.LocalAddress, &sf.LocalPort,
		&sf.RemoteAddress, &sf.RemotePort, &sf.Backup, &sf.Interface); err != nil {
		tb.Fatalf("%s: %v", s.Name, err)
	}
	return sf
}

// kernelEvent is a path-manager event as an independent listener received
// it, with the time it was received.
type kernelEvent struct {
	pm.Event
	At time.Time
}

// kernelLog records the path-manager events of one namespace, from a
// listener of the test's own, independent of the daemon.
type kernelLog struct {
	mu      sync.Mutex
	evs     []kernelEvent
	changed chan struct{} // closed and replaced when events come
	lost    bool          // the socket overflowed: events were lost
}

// listenKernel starts recording h's path-manager events until the test
// ends.
func listenKernel(tb testing.TB, h *pmtest.Host) *kernelLog {
	tb.Helper()
	l, err := pmnl.ListenEvents(&pmnl.Config{NetNS: h.NSFD()})
	if err != nil {
		tb.Fatalf("listen to the kernel's events in %s: %v", h.Name, err)
	}
	k := &kernelLog{changed: make(chan struct{})}
	done := make(chan struct{})
	tb.Cleanup(func() {
		l.Close()
		<-done
	})
	go func() {
		defer close(done)
		buf := make([]pm.Event, 0, 64)
		for {
			evs, err := l.Receive(buf)
			now := time.Now()
			k.mu.Lock()
			for _, ev := range evs {
				k.evs = append(k.evs, kernelEvent{ev, now})
			}
			if len(evs) > 0 {
				close(k.changed)
				k.changed = make(chan struct{})
			}
			if errors.Is(err, pmnl.ErrOverflow) {
				k.lost = true
			}
			k.mu.Unlock()
			switch {
			case err == nil, errors.Is(err, pm.ErrInvalid), errors.Is(err, pmnl.ErrOverflow):
			default: // closed, or the socket failed
				return
			}
			buf = evs[:0]
		}
	}()
	return k
}

// wait returns the first recorded event that satisfies match, waiting up
// to 10 s; the test fails if none comes.
func (k *kernelLog) wait(tb testing.TB, what string, match func(pm.Event) bool) kernelEvent {
	tb.Helper()
	return k.waitFrom(tb, 0, what, match)
}

// waitFrom is wait for the events from index from on (a len(events()) of
// before).
func (k *kernelLog) waitFrom(tb testing.TB, from int, what string, match func(pm.Event) bool) kernelEvent {
	tb.Helper()
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	for i := from; ; {
		k.mu.Lock()
		evs, changed, lost := k.evs, k.changed, k.lost
		k.mu.Unlock()
		for ; i < len(evs); i++ {
			if match(evs[i].Event) {
				return evs[i]
			}
		}
		select {
		case <-changed:
		case <-deadline.C:
			tb.Fatalf("no kernel event %s within 10s (events lost: %v); got %v", what, lost, evs)
		}
	}
}

// events returns a copy of the events recorded so far.
func (k *kernelLog) events() []kernelEvent {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.evs)
}

// Names of the contract's signals and methods, for matching and calling.
const (
	sigInterfacesAdded     = "org.freedesktop.DBus.ObjectManager.InterfacesAdded"
	sigInterfacesRemoved   = "org.freedesktop.DBus.ObjectManager.InterfacesRemoved"
	sigPropertiesChanged   = "org.freedesktop.DBus.Properties.PropertiesChanged"
	sigSubflowEstablished  = dbusapi.ConnectionInterface + ".SubflowEstablished"
	sigSubflowClosed       = dbusapi.ConnectionInterface + ".SubflowClosed"
	sigSubflowPriority     = dbusapi.ConnectionInterface + ".SubflowPriorityChanged"
	sigAddressAnnounced    = dbusapi.ConnectionInterface + ".AddressAnnounced"
	sigAddressRemoved      = dbusapi.ConnectionInterface + ".AddressRemoved"
	connMethod             = dbusapi.ConnectionInterface + "."
	mgrMethod              = dbusapi.ManagerInterface + "."
	propertiesGetAllMethod = "org.freedesktop.DBus.Properties.GetAll"
	propertiesGetMethod    = "org.freedesktop.DBus.Properties.Get"
)

// setup is a lab, a private bus with the system's default policy and the
// project's policy file, and a signal recorder on it.
type setup struct {
	lab *pmtest.Lab
	bus *dbustest.Bus
	rec *recorder
}

// newSetup builds a lab with opts and a private bus (dbustest.SystemDefaults:
// the real system bus's default policy plus the project's policy file) with
// a signal recorder subscribed before any daemon starts.
func newSetup(t *testing.T, opts pmtest.LabOptions) *setup {
	t.Helper()
	lab := pmtest.NewLab(t, opts)
	bus := dbustest.StartBus(t, dbustest.SystemDefaults())
	return &setup{lab: lab, bus: bus, rec: recordSignals(t, bus)}
}

// addedConn waits for the InterfacesAdded of a connection object whose
// properties satisfy match, and returns it.
func addedConn(t *testing.T, rec *recorder, from int, what string, match func(connObject) bool) connObject {
	t.Helper()
	var found connObject
	rec.waitAfter(t, from, "InterfacesAdded of "+what, func(s *dbus.Signal) bool {
		if s.Name != sigInterfacesAdded || len(s.Body) != 2 {
			return false
		}
		p, _ := s.Body[0].(dbus.ObjectPath)
		ifaces, _ := s.Body[1].(map[string]map[string]dbus.Variant)
		props, ok := ifaces[dbusapi.ConnectionInterface]
		if !ok {
			return false
		}
		c := decodeConn(t, p, props)
		if !match(c) {
			return false
		}
		found = c
		return true
	})
	return found
}

// removed matches the InterfacesRemoved of the object at path.
func removed(path dbus.ObjectPath) func(*dbus.Signal) bool {
	return func(s *dbus.Signal) bool {
		if s.Name != sigInterfacesRemoved || len(s.Body) != 2 {
			return false
		}
		p, _ := s.Body[0].(dbus.ObjectPath)
		return p == path
	}
}

// stateEstablished matches the PropertiesChanged that makes the object at
// path established.
func stateEstablished(path dbus.ObjectPath) func(*dbus.Signal) bool {
	return func(s *dbus.Signal) bool {
		if s.Path != path || s.Name != sigPropertiesChanged || len(s.Body) < 2 {
			return false
		}
		changed, _ := s.Body[1].(map[string]dbus.Variant)
		v, ok := changed["State"]
		return ok && v.Value() == "established"
	}
}

// dial opens an MPTCP connection from h and sends a few bytes, so that it
// becomes fully established (a client's MPTCP connection is established
// only once the peer acknowledged data at the MPTCP level).
func dial(t testing.TB, h *pmtest.Host, local netip.Addr, remote netip.AddrPort) net.Conn {
	t.Helper()
	c := h.Dial(t, local, remote)
	if _, err := c.Write([]byte("hello\n")); err != nil {
		t.Fatalf("write to %s: %v", remote, err)
	}
	return c
}

func addrPort(tb testing.TB, a net.Addr) netip.AddrPort {
	tb.Helper()
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		tb.Fatalf("parse %s: %v", a, err)
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func isDBusError(err error, name string) bool {
	de, ok := asDBusError(err)
	return ok && de.Name == name
}

func asDBusError(err error) (dbus.Error, bool) {
	switch e := err.(type) {
	case dbus.Error:
		return e, true
	case *dbus.Error:
		return *e, true
	}
	return dbus.Error{}, false
}

// established makes a connection from the client of s (its first address)
// to a server in the lab, with the daemon d in the client namespace, and
// returns the socket and the connection object once it is established.
func (s *setup) established(t *testing.T, d *testDaemon) (net.Conn, connObject) {
	t.Helper()
	from := s.rec.mark()
	server := s.lab.Server.Listen(t, netip.AddrPortFrom(s.lab.Server.Addrs4[0], 0))
	c := dial(t, s.lab.Client, s.lab.Client.Addrs4[0], server.Addr)
	local := addrPort(t, c.LocalAddr())
	obj := addedConn(t, s.rec, from, "the connection", func(o connObject) bool { return o.LocalPort == local.Port() })
	s.rec.waitAfter(t, from, "State established", stateEstablished(obj.Path))
	// Accepted too, so the server's in-kernel path manager can open joins
	// to what the client announces.
	select {
	case <-server.Accepted():
	case <-time.After(10 * time.Second):
		t.Fatal("the server did not accept the connection")
	}
	return c, d.connection(t, obj.Path)
}

// subflowSignal matches a Subflow* signal (name) on path whose local
// address is local and remote end is remote.
func subflowSignal(t *testing.T, path dbus.ObjectPath, name string, local netip.Addr, remote netip.AddrPort) func(*dbus.Signal) bool {
	return func(s *dbus.Signal) bool {
		if s.Path != path || s.Name != name {
			return false
		}
		sf := subflowOf(t, s)
		return sf.LocalAddress == local.String() && sf.RemoteAddress == remote.Addr().String() && sf.RemotePort == remote.Port()
	}
}

// tcpSockets returns the established TCP sockets in h as "local remote"
// lines (ss -tnH), which for MPTCP are the subflows.
func tcpSockets(t *testing.T, h *pmtest.Host) map[string]bool {
	t.Helper()
	out := h.Run(t, "ss", "-tnH", "state", "established")
	socks := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) >= 4 {
			socks[noZone(f[2])+" "+noZone(f[3])] = true
		}
	}
	return socks
}

// noZone removes the "%dev" ss prints after an address bound to a device.
func noZone(s string) string {
	i := strings.IndexByte(s, '%')
	if i < 0 {
		return s
	}
	if j := strings.IndexByte(s[i:], ']'); j >= 0 {
		return s[:i] + s[i+j:]
	}
	return s[:i] + s[strings.LastIndexByte(s, ':'):]
}

func sockKey(local, remote netip.AddrPort) string { return local.String() + " " + remote.String() }

// background is a program running in the background (mptcpctl monitor, a
// Python example) with its output collected; it is killed when the test
// ends.
type background struct {
	cmd  *exec.Cmd
	out  *pmtest.SyncBuffer
	done chan struct{}
}

// startBackground starts cmd and returns once its output contains marker
// (a program's "I am listening now" line).
func startBackground(t *testing.T, cmd *exec.Cmd, marker string) *background {
	t.Helper()
	b := &background{cmd: cmd, out: &pmtest.SyncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = b.out, b.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", cmd.Path, err)
	}
	go func() {
		cmd.Wait()
		close(b.done)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-b.done
	})
	eventually(t, 10*time.Second, cmd.Path+" prints "+marker, func() bool { return strings.Contains(b.out.String(), marker) })
	return b
}

// stop ends the program with SIGINT and returns its output and status.
func (b *background) stop(t *testing.T) (string, int) {
	t.Helper()
	b.cmd.Process.Signal(os.Interrupt)
	select {
	case <-b.done:
	case <-time.After(5 * time.Second):
		t.Fatalf("%s did not end within 5s of SIGINT: %s", b.cmd.Path, b.out.String())
	}
	return b.out.String(), b.cmd.ProcessState.ExitCode()
}

// wait waits for the program to end by itself and returns its output and
// status.
func (b *background) wait(t *testing.T) (string, int) {
	t.Helper()
	select {
	case <-b.done:
	case <-time.After(ctlTimeout):
		t.Fatalf("%s did not end within %v: %s", b.cmd.Path, ctlTimeout, b.out.String())
	}
	return b.out.String(), b.cmd.ProcessState.ExitCode()
}

// endpointProp is one entry of the manager's Endpoints property.
type endpointProp struct {
	ID        uint8
	Address   string
	Port      uint16
	Flags     []string
	Interface string
	Origin    string
}

// endpointsProperty reads the daemon's Endpoints property.
func (d *testDaemon) endpointsProperty() ([]endpointProp, error) {
	v, err := d.obj(dbusapi.ManagerPath).GetProperty(dbusapi.ManagerInterface + ".Endpoints")
	if err != nil {
		return nil, fmt.Errorf("get Endpoints: %w", err)
	}
	var eps []endpointProp
	if err := dbus.Store([]any{v.Value()}, &eps); err != nil {
		return nil, fmt.Errorf("Endpoints %v: %w", v, err)
	}
	return eps, nil
}
