package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coreos/go-systemd/v22/journal"
	"github.com/godbus/dbus/v5"

	"github.com/mptcp-pmd/mptcp-pmd/dbusapi"
	"github.com/mptcp-pmd/mptcp-pmd/dbusapi/dbustest"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
	"github.com/mptcp-pmd/mptcp-pmd/service"
)

// The unit tests of systemd.go need nothing; the tests at the end run the
// built daemon in a namespace (root, MPTCP, dbus-daemon, setpriv).

func TestFieldName(t *testing.T) {
	for _, tc := range []struct{ key, want string }{
		{"token", "TOKEN"},
		{"bus_name", "BUS_NAME"},
		{"err", "ERR"},
		{"local-addr", "LOCAL_ADDR"},
		{"a.b", "A_B"},
		{"_private", "PRIVATE"},
		{"9lives", "ATTR_9LIVES"},
		{"", "ATTR_"},
		{"___", "ATTR_"},
		{"Überzahl", "BERZAHL"},
		{"x\n=y", "X__Y"},
	} {
		if got := fieldName(tc.key); got != tc.want {
			t.Errorf("fieldName(%q) = %q, want %q", tc.key, got, tc.want)
		}
	}
}

// sentEntry is one journal.Send call.
type sentEntry struct {
	msg    string
	pri    journal.Priority
	fields map[string]string
}

type journalRecorder struct {
	mu      sync.Mutex
	entries []sentEntry
	err     error
}

func (j *journalRecorder) send(msg string, pri journal.Priority, fields map[string]string) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.entries = append(j.entries, sentEntry{msg, pri, fields})
	return j.err
}

func (j *journalRecorder) count() int {
	j.mu.Lock()
	defer j.mu.Unlock()
	return len(j.entries)
}

func (j *journalRecorder) last(t *testing.T) sentEntry {
	t.Helper()
	j.mu.Lock()
	defer j.mu.Unlock()
	if len(j.entries) == 0 {
		t.Fatal("nothing was sent to the journal")
	}
	return j.entries[len(j.entries)-1]
}

// journalToken is a token as the service logs it: a slog.LogValuer of
// eight hex digits, which the handler resolves.
type journalToken uint32

func (t journalToken) LogValue() slog.Value { return slog.StringValue(fmt.Sprintf("%08x", uint32(t))) }

func TestJournalHandler(t *testing.T) {
	var rec journalRecorder
	log := slog.New(newJournalHandler(slog.LevelInfo, rec.send, nil))

	log.Warn("subflow closed", "token", journalToken(0x8f2014e1), "local", netip.MustParseAddrPort("10.0.0.1:443"), "err", errors.New("reset by peer"))
	e := rec.last(t)
	if e.pri != journal.PriWarning {
		t.Errorf("priority %d, want %d (warning)", e.pri, journal.PriWarning)
	}
	for k, want := range map[string]string{
		"TOKEN": "8f2014e1", "LOCAL": "10.0.0.1:443", "ERR": "reset by peer", "SYSLOG_IDENTIFIER": "mptcp-pmd",
	} {
		if got := e.fields[k]; got != want {
			t.Errorf("field %s = %q, want %q (fields %v)", k, got, want, e.fields)
		}
	}
	if want := `subflow closed token=8f2014e1 local=10.0.0.1:443 err="reset by peer"`; e.msg != want {
		t.Errorf("MESSAGE = %q, want %q", e.msg, want)
	}
	if f := e.fields["CODE_FILE"]; !strings.HasSuffix(f, "systemd_linux_test.go") || e.fields["CODE_LINE"] == "" {
		t.Errorf("CODE_FILE %q, CODE_LINE %q: want this file and a line", f, e.fields["CODE_LINE"])
	}

	// Levels map to syslog priorities; records below the level are dropped.
	for _, tc := range []struct {
		level slog.Level
		want  journal.Priority
	}{{slog.LevelError, journal.PriErr}, {slog.LevelError + 4, journal.PriErr}, {slog.LevelInfo, journal.PriInfo}, {slog.LevelWarn + 1, journal.PriWarning}} {
		log.Log(context.Background(), tc.level, "x")
		if got := rec.last(t).pri; got != tc.want {
			t.Errorf("level %v: priority %d, want %d", tc.level, got, tc.want)
		}
	}
	n := rec.count()
	log.Debug("hidden")
	if rec.count() != n {
		t.Error("a debug record was sent at level info")
	}
	debug := slog.New(newJournalHandler(slog.LevelDebug, rec.send, nil))
	debug.Debug("shown")
	if e := rec.last(t); e.msg != "shown" || e.pri != journal.PriDebug {
		t.Errorf("debug record: %q priority %d", e.msg, e.pri)
	}
}

func TestJournalHandlerAttrsAndGroups(t *testing.T) {
	var rec journalRecorder
	base := slog.New(newJournalHandler(slog.LevelInfo, rec.send, nil))

	// WithAttrs and WithGroup: prefixes in field names and in the text.
	log := base.With("policy", "none").WithGroup("conn").With("id", 3)
	log.Info("added", "token", 7, slog.Group("peer", "addr", "10.0.0.2"), slog.Group("", "inline", true), slog.Attr{})
	e := rec.last(t)
	want := map[string]string{
		"POLICY": "none", "CONN_ID": "3", "CONN_TOKEN": "7", "CONN_PEER_ADDR": "10.0.0.2", "CONN_INLINE": "true",
	}
	for k, v := range want {
		if e.fields[k] != v {
			t.Errorf("field %s = %q, want %q (fields %v)", k, e.fields[k], v, e.fields)
		}
	}
	if wantMsg := "added policy=none conn.id=3 conn.token=7 conn.peer.addr=10.0.0.2 conn.inline=true"; e.msg != wantMsg {
		t.Errorf("MESSAGE = %q, want %q", e.msg, wantMsg)
	}

	// Attributes of one logger do not leak into its siblings or parent.
	log2 := base.With("policy", "fullmesh")
	log.Info("again")
	if e := rec.last(t); e.fields["POLICY"] != "none" {
		t.Errorf("sibling With changed the first logger: POLICY=%q", e.fields["POLICY"])
	}
	log2.Info("other")
	if e := rec.last(t); e.fields["POLICY"] != "fullmesh" || e.fields["CONN_ID"] != "" {
		t.Errorf("second logger: fields %v", e.fields)
	}
	base.Info("plain")
	if e := rec.last(t); e.msg != "plain" || len(e.fields) != 4 { // SYSLOG_IDENTIFIER and CODE_*
		t.Errorf("base logger: %q %v", e.msg, e.fields)
	}

	// The handler's own field names are not overwritten by attributes; a
	// value with spaces, quotes or '=' is quoted in the text.
	base.Info("m", "message", "a b", "priority", "x=y", "syslog_identifier", "")
	e = rec.last(t)
	if e.fields["ATTR_MESSAGE"] != "a b" || e.fields["ATTR_PRIORITY"] != "x=y" || e.fields["SYSLOG_IDENTIFIER"] != "mptcp-pmd" {
		t.Errorf("reserved names: fields %v", e.fields)
	}
	if wantMsg := `m message="a b" priority="x=y" syslog_identifier=""`; e.msg != wantMsg {
		t.Errorf("MESSAGE = %q, want %q", e.msg, wantMsg)
	}
}

func TestJournalHandlerFallback(t *testing.T) {
	rec := journalRecorder{err: errors.New("no journal")}
	var stderr bytes.Buffer
	h := newJournalHandler(slog.LevelInfo, rec.send, &stderr)
	slog.New(h).Error("cannot", "err", "boom")
	if got, want := stderr.String(), "ERROR cannot err=boom\n"; got != want {
		t.Errorf("fallback wrote %q, want %q", got, want)
	}
}

func TestNewLoggerText(t *testing.T) {
	// Not the journal's stream: text on the writer.
	var b bytes.Buffer
	newLogger(&b, slog.LevelInfo).Info("hello", "token", 1)
	if !strings.Contains(b.String(), "msg=hello token=1") {
		t.Errorf("text logger wrote %q", b.String())
	}
}

func TestWatchdogInterval(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	for _, tc := range []struct {
		usec, pid string
		want      time.Duration
	}{
		{"", "", 0},
		{"30000000", "", 30 * time.Second},
		{"30000000", strconv.Itoa(os.Getpid()), 30 * time.Second},
		{"30000000", strconv.Itoa(os.Getpid() + 1), 0}, // another process is watched
		{"bogus", "", 0},
	} {
		t.Setenv("WATCHDOG_USEC", tc.usec)
		t.Setenv("WATCHDOG_PID", tc.pid)
		if got := watchdogInterval(log); got != tc.want {
			t.Errorf("WATCHDOG_USEC=%q WATCHDOG_PID=%q: %v, want %v", tc.usec, tc.pid, got, tc.want)
		}
	}
}

// fakeLoop is a service loop for statusOf and supervise: it answers, or
// hangs until the caller gives up.
type fakeLoop struct {
	stuck atomic.Bool
	conns atomic.Int32
	ctl   atomic.Bool
}

func (f *fakeLoop) wait(ctx context.Context) error {
	if f.stuck.Load() {
		<-ctx.Done()
		return ctx.Err()
	}
	return nil
}

func (f *fakeLoop) Manager(ctx context.Context) (service.Manager, error) {
	if err := f.wait(ctx); err != nil {
		return service.Manager{}, err
	}
	m := service.Manager{Policy: "fullmesh", ControlMode: service.ModeBuiltin, ConnectionCount: int(f.conns.Load())}
	if f.ctl.Load() {
		m.ControlMode, m.Controller = service.ModeController, ":1.42"
	}
	return m, nil
}

func TestStatusOf(t *testing.T) {
	var f fakeLoop
	ctx := context.Background()
	for _, tc := range []struct {
		conns int32
		ctl   bool
		want  string
	}{
		{0, false, "Watching 0 connections, policy fullmesh, control builtin"},
		{1, false, "Watching 1 connection, policy fullmesh, control builtin"},
		{5, true, "Watching 5 connections, policy fullmesh, control controller by :1.42"},
	} {
		f.conns.Store(tc.conns)
		f.ctl.Store(tc.ctl)
		got, err := statusOf(ctx, &f)
		if err != nil || got != tc.want {
			t.Errorf("statusOf = %q, %v; want %q", got, err, tc.want)
		}
	}
	f.stuck.Store(true)
	tctx, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
	defer cancel()
	if _, err := statusOf(tctx, &f); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("statusOf of a stuck loop: %v, want the deadline", err)
	}
}

// notifySocket is a stand-in for systemd's notification socket.
type notifySocket struct {
	path string
	msgs chan []string // one datagram, split into lines
}

// listenNotify creates a notification socket in a fresh directory that
// every user may enter, and reads it until the test ends.
func listenNotify(tb testing.TB) *notifySocket {
	tb.Helper()
	dir, err := os.MkdirTemp("", "sdnotify-")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	ns := &notifySocket{path: filepath.Join(dir, "notify"), msgs: make(chan []string, 1024)}
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: ns.path, Net: "unixgram"})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	os.Chmod(ns.path, 0o666)
	go func() {
		defer close(ns.msgs)
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			ns.msgs <- strings.Split(string(buf[:n]), "\n")
		}
	}()
	return ns
}

// next returns the next message, or fails the test after timeout.
func (ns *notifySocket) next(tb testing.TB, timeout time.Duration) []string {
	tb.Helper()
	select {
	case m, ok := <-ns.msgs:
		if !ok {
			tb.Fatal("notification socket closed")
		}
		return m
	case <-time.After(timeout):
		tb.Fatalf("no notification within %v", timeout)
		return nil
	}
}

// quiet fails the test if a message arrives within d.
func (ns *notifySocket) quiet(tb testing.TB, d time.Duration, why string) {
	tb.Helper()
	select {
	case m := <-ns.msgs:
		tb.Fatalf("%s, but got %q", why, m)
	case <-time.After(d):
	}
}

func hasLine(msg []string, prefix string) (string, bool) {
	for _, l := range msg {
		if strings.HasPrefix(l, prefix) {
			return l, true
		}
	}
	return "", false
}

func TestSupervise(t *testing.T) {
	ns := listenNotify(t)
	t.Setenv("NOTIFY_SOCKET", ns.path)
	n := newNotifier(slog.New(slog.DiscardHandler))
	if !n.enabled {
		t.Fatal("notifier disabled with NOTIFY_SOCKET set")
	}
	var f fakeLoop
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	const watchdog = 100 * time.Millisecond // pings every 50 ms
	go func() {
		defer close(done)
		n.supervise(ctx, &f, nil, watchdog, "Starting")
	}()

	// A loop that answers: pings, and the status once it changes.
	m := ns.next(t, 5*time.Second)
	if _, ok := hasLine(m, "WATCHDOG=1"); !ok {
		t.Fatalf("first message %q has no WATCHDOG=1", m)
	}
	if s, _ := hasLine(m, "STATUS="); s != "STATUS=Watching 0 connections, policy fullmesh, control builtin" {
		t.Errorf("first message %q: want the new status", m)
	}
	m = ns.next(t, 5*time.Second)
	if _, ok := hasLine(m, "STATUS="); ok || len(m) != 1 || m[0] != "WATCHDOG=1" {
		t.Errorf("second message %q: want WATCHDOG=1 alone (status unchanged)", m)
	}
	f.conns.Store(2)
	for {
		m = ns.next(t, 5*time.Second)
		if s, ok := hasLine(m, "STATUS="); ok {
			if s != "STATUS=Watching 2 connections, policy fullmesh, control builtin" {
				t.Errorf("status %q", s)
			}
			break
		}
	}

	// A stuck loop: no more pings (the service manager will restart the
	// daemon). Let a ping already on its way arrive first.
	f.stuck.Store(true)
	for drained := false; !drained; {
		select {
		case <-ns.msgs:
		case <-time.After(2 * watchdog):
			drained = true
		}
	}
	ns.quiet(t, 4*watchdog, "a stuck service loop must get no watchdog ping")

	// It answers again: the pings come back.
	f.stuck.Store(false)
	m = ns.next(t, 5*time.Second)
	if _, ok := hasLine(m, "WATCHDOG=1"); !ok {
		t.Errorf("after recovery: %q, want WATCHDOG=1", m)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("supervise did not return after its context ended")
	}
}

// The tests below run the built daemon.

// sdDir returns a fresh directory that every user may enter, removed when
// the test ends.
func sdDir(tb testing.TB) string {
	tb.Helper()
	dir, err := os.MkdirTemp("", "mptcp-pmd-sd-")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	return dir
}

// sdDaemon is the built daemon run by these tests.
type sdDaemon struct {
	cmd  *exec.Cmd
	out  *pmtest.SyncBuffer
	done chan struct{}
}

// sdCommand returns the command that runs the built daemon in h:
// ip netns exec NS [wrap...] mptcp-pmd --config EMPTY --policy none ARGS,
// with env added to the environment. The configuration file is readable by
// every user.
func sdCommand(tb testing.TB, h *pmtest.Host, bus *dbustest.Bus, wrap, env []string, args ...string) *exec.Cmd {
	tb.Helper()
	bin := filepath.Join(binDir(tb), "mptcp-pmd")
	conf := filepath.Join(sdDir(tb), "mptcp-pmd.toml")
	if err := os.WriteFile(conf, []byte("# the defaults\n"), 0o644); err != nil {
		tb.Fatal(err)
	}
	argv := append([]string{"netns", "exec", h.Name}, wrap...)
	argv = append(argv, bin, "--config="+conf, "--policy=none", "--log-level=debug")
	cmd := exec.Command("ip", append(argv, args...)...)
	cmd.Env = append(os.Environ(), env...)
	if bus != nil {
		cmd.Env = append(cmd.Env, "DBUS_SYSTEM_BUS_ADDRESS="+bus.Address())
	}
	return cmd
}

// sdStart starts cmd and stops it (SIGTERM, then SIGKILL) at the end of
// the test, showing its output if the test failed.
func sdStart(tb testing.TB, cmd *exec.Cmd) *sdDaemon {
	tb.Helper()
	d := &sdDaemon{cmd: cmd, out: &pmtest.SyncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = d.out, d.out
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start %v: %v", cmd.Args, err)
	}
	go func() {
		cmd.Wait()
		close(d.done)
	}()
	tb.Cleanup(func() {
		d.stop(tb)
		if tb.Failed() {
			tb.Logf("daemon output:\n%s", d.out.String())
		}
	})
	return d
}

// stop sends SIGTERM and returns the exit status; after stopTimeout it
// kills the daemon and fails the test.
func (d *sdDaemon) stop(tb testing.TB) int {
	tb.Helper()
	select {
	case <-d.done:
		return d.cmd.ProcessState.ExitCode()
	default:
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(stopTimeout):
		d.cmd.Process.Kill()
		<-d.done
		tb.Errorf("the daemon did not exit within %v of SIGTERM", stopTimeout)
	}
	return d.cmd.ProcessState.ExitCode()
}

func nameHasOwner(tb testing.TB, conn *dbus.Conn) bool {
	tb.Helper()
	var has bool
	if err := conn.BusObject().Call("org.freedesktop.DBus.NameHasOwner", 0, dbusapi.BusName).Store(&has); err != nil {
		tb.Fatalf("NameHasOwner: %v", err)
	}
	return has
}

// TestSystemdNotify runs the daemon as systemd would with Type=notify and
// WatchdogSec=: READY=1 comes once the name is owned, with a STATUS= line;
// WATCHDOG=1 comes at half the interval; SIGTERM gives STOPPING=1.
func TestSystemdNotify(t *testing.T) {
	h := pmtest.NewNamespace(t)
	bus := dbustest.StartBus(t, dbustest.SystemDefaults())
	conn := bus.Dial(t)
	ns := listenNotify(t)
	const watchdog = 400 * time.Millisecond
	// WATCHDOG_PID must be the daemon's pid: the shell's, which exec keeps
	// through ip netns exec.
	cmd := sdCommand(t, h, bus, nil, []string{"NOTIFY_SOCKET=" + ns.path, fmt.Sprintf("WATCHDOG_USEC=%d", watchdog.Microseconds())})
	ipPath, ipArgs := cmd.Path, cmd.Args[1:]
	cmd.Path = "/bin/sh"
	cmd.Args = append([]string{"sh", "-c", `export WATCHDOG_PID=$$; exec "$@"`, "sh", ipPath}, ipArgs...)
	d := sdStart(t, cmd)

	var sawStarting, ready bool
	for !ready {
		m := ns.next(t, nameTimeout)
		if _, ok := hasLine(m, "READY=1"); ok {
			if !nameHasOwner(t, conn) {
				t.Fatalf("READY=1 (%q) while %s has no owner", m, dbusapi.BusName)
			}
			s, _ := hasLine(m, "STATUS=")
			if want := "STATUS=Watching 0 connections, policy none, control builtin"; s != want {
				t.Errorf("READY=1 with %q, want %q", s, want)
			}
			ready = true
			continue
		}
		if s, ok := hasLine(m, "STATUS="); ok && s == "STATUS=Starting" {
			sawStarting = true
		}
		if _, ok := hasLine(m, "WATCHDOG=1"); ok {
			t.Errorf("WATCHDOG=1 before READY=1")
		}
	}
	if !sawStarting {
		t.Error("no STATUS=Starting before READY=1")
	}
	var first time.Time
	for pings := 0; pings < 3; {
		m := ns.next(t, 5*watchdog)
		if _, ok := hasLine(m, "WATCHDOG=1"); ok {
			if pings == 0 {
				first = time.Now()
			}
			pings++
		}
	}
	// Three pings are two intervals of watchdog/2 apart; allow for jitter
	// but not for a daemon that pings without pause.
	if el := time.Since(first); el < watchdog/2 {
		t.Errorf("3 pings within %v: want one per %v", el, watchdog/2)
	}

	// SIGHUP (ExecReload=): RELOADING=1 with the monotonic time, then
	// READY=1 again.
	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	var reloading bool
	for {
		m := ns.next(t, 5*time.Second)
		if _, ok := hasLine(m, "RELOADING=1"); ok {
			if _, ok := hasLine(m, "MONOTONIC_USEC="); !ok {
				t.Errorf("RELOADING=1 without MONOTONIC_USEC=: %q", m)
			}
			reloading = true
		}
		if _, ok := hasLine(m, "READY=1"); ok {
			if !reloading {
				t.Errorf("READY=1 before RELOADING=1: %q", m)
			}
			break
		}
	}

	if code := d.stop(t); code != 0 {
		t.Errorf("exit status %d after SIGTERM", code)
	}
	// The daemon has exited: what it sent is in the socket or read.
	for {
		m := ns.next(t, 5*time.Second)
		if _, ok := hasLine(m, "STOPPING=1"); ok {
			break
		}
	}
}

// TestSystemdNotifyNameTaken: when the name is owned by another
// connection, the daemon fails without ever saying READY=1, and says why in
// STATUS=.
func TestSystemdNotifyNameTaken(t *testing.T) {
	h := pmtest.NewNamespace(t)
	bus := dbustest.StartBus(t, dbustest.SystemDefaults())
	squatter := bus.Dial(t)
	if reply, err := squatter.RequestName(dbusapi.BusName, dbus.NameFlagDoNotQueue); err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("RequestName: %v, %v", reply, err)
	}
	ns := listenNotify(t)
	cmd := sdCommand(t, h, bus, nil, []string{"NOTIFY_SOCKET=" + ns.path})
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("the daemon started while the name was taken:\n%s", out)
	}
	// The daemon has exited: what it sent is in the socket or read.
	var failed bool
	for !failed {
		m := ns.next(t, 5*time.Second)
		if _, ok := hasLine(m, "READY=1"); ok {
			t.Errorf("READY=1 without the bus name: %q", m)
		}
		if s, ok := hasLine(m, "STATUS=Failed: "); ok && strings.Contains(s, "owned by") {
			failed = true
		}
	}
	ns.quiet(t, 200*time.Millisecond, "nothing after STATUS=Failed")
	if !failed {
		t.Errorf("no STATUS=Failed: naming the owner; output:\n%s", out)
	}
}

// nobodyPolicy lets the unprivileged test user own the daemon's name on a
// test bus, as the mptcp-pm user may on a real system.
const nobodyPolicy = `<policy user="nobody">
    <allow own="org.mptcp.PathManager1"/>
    <allow send_type="method_call" send_interface="org.mptcp.PathManager1.Controller" send_member="Release"/>
  </policy>`

// TestUnprivilegedWithCapNetAdmin runs the daemon as nobody with
// CAP_NET_ADMIN as its only capability, as the systemd unit does: it owns
// its name, publishes a real MPTCP connection, and creates a subflow on
// request.
func TestUnprivilegedWithCapNetAdmin(t *testing.T) {
	setpriv := pmtest.RequireProgram(t, "setpriv")
	lab := pmtest.NewLab(t, pmtest.LabOptions{ClientPM: "userspace"})
	bus := dbustest.StartBus(t, dbustest.SystemDefaults(), dbustest.ExtraConfig(nobodyPolicy))
	conn := bus.Dial(t)
	rec := recordSignals(t, bus)
	wrap := []string{setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
		"--inh-caps=-all,+net_admin", "--ambient-caps=-all,+net_admin", "--bounding-set=-all,+net_admin", "--"}
	d := sdStart(t, sdCommand(t, lab.Client, bus, wrap, nil))
	eventually(t, nameTimeout, "the daemon owns its name", func() bool {
		select {
		case <-d.done:
			t.Fatalf("the daemon exited (%v):\n%s", d.cmd.ProcessState, d.out.String())
		default:
		}
		return nameHasOwner(t, conn)
	})

	// It is who it should be: nobody, with CAP_NET_ADMIN (bit 12) only.
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", d.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Uid:\t65534\t65534\t65534\t65534", "Gid:\t65534\t65534\t65534\t65534",
		"CapEff:\t0000000000001000", "CapPrm:\t0000000000001000", "CapBnd:\t0000000000001000", "CapAmb:\t0000000000001000"} {
		if !strings.Contains(string(status), want+"\n") {
			t.Errorf("/proc/PID/status lacks %q:\n%s", want, status)
		}
	}

	srv := lab.Server.Serve(t, netip.AddrPortFrom(lab.Server.Addrs4[0], 0))
	c := lab.Client.Dial(t, lab.Client.Addrs4[0], srv)
	// The client's side is fully established once data has been acked.
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	added := rec.wait(t, "InterfacesAdded", isSignal(dbusapi.ManagerPath, "org.freedesktop.DBus.ObjectManager.InterfacesAdded"))
	path, ok := added.Body[0].(dbus.ObjectPath)
	if !ok {
		t.Fatalf("InterfacesAdded: %v", added.Body)
	}
	obj := conn.Object(dbusapi.BusName, path)
	eventually(t, 10*time.Second, "connection established", func() bool {
		v, err := obj.GetProperty(dbusapi.ConnectionInterface + ".State")
		return err == nil && v.Value() == service.StateEstablished
	})
	local := lab.Client.Addrs4[1]
	err = obj.Call(dbusapi.ConnectionInterface+".CreateSubflow", 0, local.String(), srv.Addr().String(), srv.Port(), map[string]dbus.Variant{}).Err
	if err != nil {
		t.Fatalf("CreateSubflow from %s: %v", local, err)
	}
	rec.wait(t, "SubflowEstablished from "+local.String(), func(s *dbus.Signal) bool {
		if s.Path != path || s.Name != dbusapi.ConnectionInterface+".SubflowEstablished" || len(s.Body) < 3 {
			return false
		}
		return s.Body[2] == local.String()
	})
	if code := d.stop(t); code != 0 {
		t.Errorf("exit status %d after SIGTERM", code)
	}
}

// TestWithoutCapNetAdmin: the daemon run as nobody without capabilities
// exits with status 1 and a message that names CAP_NET_ADMIN.
func TestWithoutCapNetAdmin(t *testing.T) {
	setpriv := pmtest.RequireProgram(t, "setpriv")
	h := pmtest.NewNamespace(t)
	bus := dbustest.StartBus(t, dbustest.SystemDefaults(), dbustest.ExtraConfig(nobodyPolicy))
	wrap := []string{setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--"}
	out, err := sdCommand(t, h, bus, wrap, nil).CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("exit: %v, want status 1; output:\n%s", err, out)
	}
	if !strings.Contains(string(out), "CAP_NET_ADMIN") {
		t.Errorf("the message does not name CAP_NET_ADMIN:\n%s", out)
	}
}

// journalEntry is one native-protocol datagram: its fields.
type journalEntry map[string]string

// parseJournal decodes journald's native protocol: KEY=value lines, or
// KEY\n, a 64-bit little-endian length, the value and \n for values with
// newlines.
func parseJournal(b []byte) (journalEntry, error) {
	e := journalEntry{}
	for len(b) > 0 {
		nl := bytes.IndexByte(b, '\n')
		if nl < 0 {
			return nil, fmt.Errorf("unterminated field %q", b)
		}
		line := b[:nl]
		if k, v, ok := bytes.Cut(line, []byte("=")); ok {
			e[string(k)] = string(v)
			b = b[nl+1:]
			continue
		}
		b = b[nl+1:]
		if len(b) < 8 {
			return nil, fmt.Errorf("field %s: short length", line)
		}
		n := binary.LittleEndian.Uint64(b)
		b = b[8:]
		if uint64(len(b)) < n+1 || b[n] != '\n' {
			return nil, fmt.Errorf("field %s: bad length %d", line, n)
		}
		e[string(line)] = string(b[:n])
		b = b[n+1:]
	}
	return e, nil
}

// TestJournald runs the daemon as systemd does, with standard error
// connected to the journal (JOURNAL_STREAM): it logs to journald's socket
// (a stand-in, mounted on /run in the daemon's mount namespace) with
// structured fields, the connection's token among them, and writes nothing
// to standard error.
func TestJournald(t *testing.T) {
	lab := pmtest.NewLab(t, pmtest.LabOptions{ClientPM: "userspace"})
	bus := dbustest.StartBus(t, dbustest.SystemDefaults())
	conn := bus.Dial(t)

	run := sdDir(t)
	if err := os.MkdirAll(filepath.Join(run, "systemd/journal"), 0o755); err != nil {
		t.Fatal(err)
	}
	sock, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(run, "systemd/journal/socket"), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	entries := make(chan journalEntry, 1024)
	go func() {
		defer close(entries)
		buf := make([]byte, 1<<16)
		for {
			n, err := sock.Read(buf)
			if err != nil {
				return
			}
			e, err := parseJournal(buf[:n])
			if err != nil {
				t.Errorf("journal datagram: %v", err)
				continue
			}
			entries <- e
		}
	}()

	stderr, err := os.CreateTemp(run, "stderr")
	if err != nil {
		t.Fatal(err)
	}
	defer stderr.Close()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(stderr.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	// ip netns exec gives the command a mount namespace of its own (a
	// slave of the host's): the stand-in covers /run there only.
	wrap := []string{"sh", "-c", `mount --bind "$0" /run && exec "$@"`, run}
	cmd := sdCommand(t, lab.Client, bus, wrap, []string{fmt.Sprintf("JOURNAL_STREAM=%d:%d", st.Dev, st.Ino)},
		"--policy=subflow-per-interface")
	d := &sdDaemon{cmd: cmd, out: &pmtest.SyncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = d.out, stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		cmd.Wait()
		close(d.done)
	}()
	defer d.stop(t)
	eventually(t, nameTimeout, "the daemon owns its name", func() bool { return nameHasOwner(t, conn) })

	srv := lab.Server.Serve(t, netip.AddrPortFrom(lab.Server.Addrs4[0], 0))
	c := lab.Client.Dial(t, lab.Client.Addrs4[0], srv)
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}

	var running, token journalEntry
	deadline := time.After(10 * time.Second)
	for running == nil || token == nil {
		select {
		case e, ok := <-entries:
			if !ok {
				t.Fatal("journal socket closed")
			}
			if e["SYSLOG_IDENTIFIER"] != "mptcp-pmd" || e["MESSAGE"] == "" || e["PRIORITY"] == "" {
				t.Errorf("entry without identifier, message or priority: %v", e)
			}
			if strings.HasPrefix(e["MESSAGE"], "mptcp-pmd running") {
				running = e
			}
			if e["TOKEN"] != "" {
				token = e
			}
		case <-deadline:
			t.Fatalf("within 10s: running entry %v, entry with a token %v", running, token)
		}
	}
	if running["PRIORITY"] != "6" || running["BUS_NAME"] != dbusapi.BusName || running["POLICY"] != "subflow-per-interface" {
		t.Errorf("running entry: %v", running)
	}
	// The token as mptcpctl shows it: eight hex digits.
	if _, err := strconv.ParseUint(token["TOKEN"], 16, 32); err != nil || len(token["TOKEN"]) != 8 ||
		!strings.Contains(token["MESSAGE"], "token="+token["TOKEN"]) || token["WHY"] == "" {
		t.Errorf("entry with a token: %v", token)
	}
	if code := d.stop(t); code != 0 {
		t.Errorf("exit status %d after SIGTERM", code)
	}
	if b, _ := os.ReadFile(stderr.Name()); len(b) != 0 {
		t.Errorf("the daemon wrote to standard error with JOURNAL_STREAM set:\n%s", b)
	}
}
