package main

// The test daemon: the real service and D-Bus front end, on a fake kernel
// (pmtest.FakeKernel) and a private bus, in the test process. mptcpctl runs
// in-process against it (ctl), or as a child process (ctlAs) for what
// depends on the caller's user.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/mptcp-pmd/mptcp-pmd/dbusapi"
	"github.com/mptcp-pmd/mptcp-pmd/dbusapi/dbustest"
	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
	"github.com/mptcp-pmd/mptcp-pmd/policy"
	"github.com/mptcp-pmd/mptcp-pmd/service"
)

// asMainEnv makes the test binary run mptcpctl's main instead of the tests
// (for ctlAs and the completion test's mptcpctl).
const asMainEnv = "MPTCPCTL_TEST_AS_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(asMainEnv) == "1" {
		main()
	}
	os.Exit(m.Run())
}

// ownAnyone lets any user own the service name on the test bus, so that the
// test daemon runs for a user other than root too.
const ownAnyone = `<policy context="mandatory"><allow own="org.mptcp.PathManager1"/></policy>`

type testDaemon struct {
	bus    *dbustest.Bus
	k      *pmtest.FakeKernel
	svc    *service.Service
	srv    *dbusapi.Server
	auth   *testAuth
	events chan pm.Event
	net    chan service.NetEvent

	cfg service.Config

	mu sync.Mutex
	pm string // the namespace's path manager, as the service reads it
}

type daemonOptions struct {
	// rootOnly keeps the server's default authorization (UID 0 only)
	// instead of a testAuth.
	rootOnly bool
}

// startDaemon starts the test daemon with the configuration's policy
// "none" (nothing acts by itself) and points DBUS_SYSTEM_BUS_ADDRESS at its
// bus. The host has two interfaces with carrier, c1 (10.55.1.2, fe80::1)
// and c2 (10.55.2.2), lo (127.0.0.1) and c3 without carrier (10.55.3.2).
func startDaemon(t *testing.T, o daemonOptions) *testDaemon {
	t.Helper()
	d := &testDaemon{
		bus:    dbustest.StartBus(t, dbustest.ExtraConfig(ownAnyone)),
		k:      pmtest.NewFakeKernel(),
		auth:   &testAuth{},
		events: make(chan pm.Event),
		net:    make(chan service.NetEvent),
		pm:     "kernel",
	}
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", d.bus.Address())
	cfg := service.DefaultConfig()
	cfg.Policy = service.PolicyNone
	cfg.Filter = policy.FilterConfig{SkipLoopback: true, SkipLinkLocal: true, SkipTentative: true}
	var pub publisher
	d.cfg = cfg
	d.svc = service.New(cfg, service.Deps{
		Kernel:      d.k,
		Publisher:   &pub,
		Listeners:   (&fakeListeners{port: 50000}).listen,
		PathManager: d.pathManager,
		Version:     "1.2.3-test",
	})
	var auth dbusapi.Authorizer = d.auth
	if o.rootOnly {
		auth = nil
	}
	var err error
	d.srv, err = dbusapi.New(dialDaemon(t, d.bus), d.svc, dbusapi.Options{Authorizer: auth})
	if err != nil {
		t.Fatal(err)
	}
	pub.set(d.srv)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.svc.Run(ctx, d.events, d.net) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("service: %v", err)
		}
		d.srv.Close()
	})
	rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
	defer rcancel()
	if err := d.srv.RequestName(rctx); err != nil {
		t.Fatal(err)
	}
	link := func(i int, name string, carrier, loopback bool) service.NetEvent {
		return service.NetEvent{Kind: service.NetLinkChanged, Link: service.Link{Index: i, Name: name, Up: true, Carrier: carrier, Loopback: loopback}}
	}
	addr := func(i int, p string) service.NetEvent {
		return service.NetEvent{Kind: service.NetAddressAdded, Address: service.LinkAddress{Index: i, Prefix: netip.MustParsePrefix(p)}}
	}
	d.sendNet(link(1, "lo", true, true), link(4, "c1", true, false), link(5, "c2", true, false), link(6, "c3", false, false),
		addr(1, "127.0.0.1/8"), addr(4, "10.55.1.2/24"), addr(4, "fe80::1/64"), addr(5, "10.55.2.2/24"), addr(6, "10.55.3.2/24"),
		service.NetEvent{Kind: service.NetSynced})
	d.sync(t)
	return d
}

// publisher forwards the service's notifications to the server, which is
// made after the service.
type publisher struct {
	mu  sync.Mutex
	srv *dbusapi.Server
}

func (p *publisher) set(s *dbusapi.Server) {
	p.mu.Lock()
	p.srv = s
	p.mu.Unlock()
}

func (p *publisher) Publish(n service.Notification) {
	p.mu.Lock()
	s := p.srv
	p.mu.Unlock()
	if s != nil {
		s.Publish(n)
	}
}

func (d *testDaemon) sendNet(evs ...service.NetEvent) {
	for _, ev := range evs {
		d.net <- ev
	}
}

// send hands kernel events to the service.
func (d *testDaemon) send(evs ...pm.Event) {
	for _, ev := range evs {
		d.events <- ev
	}
}

// sync hands the service the events the fake kernel emitted, and returns
// when it has handled them and published what they changed (the server
// emits signals before Publish returns).
func (d *testDaemon) sync(t *testing.T) {
	t.Helper()
	for {
		select {
		case ev := <-d.k.Events():
			d.events <- ev
			continue
		default:
		}
		break
	}
	if _, err := d.svc.Connections(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func (d *testDaemon) pathManager() (string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.pm, nil
}

// open makes an established connection in the fake kernel, under the
// userspace path manager or the in-kernel one (which becomes the
// namespace's, read by the service as a reload reads it), and returns its
// object number.
func (d *testDaemon) open(t *testing.T, token uint32, userspace bool, local, remote string) uint64 {
	t.Helper()
	want := "kernel"
	if userspace {
		want = "userspace"
	}
	d.mu.Lock()
	changed := d.pm != want
	d.pm = want
	d.mu.Unlock()
	if changed {
		if err := d.svc.Reload(context.Background(), d.cfg); err != nil {
			t.Fatal(err)
		}
	}
	d.k.AddConnection(token, userspace, netip.MustParseAddrPort(local), netip.MustParseAddrPort(remote))
	d.sync(t)
	n, err := d.svc.ConnectionByToken(context.Background(), token)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// testAuth allows every caller unless deny is set, and counts what it was
// asked.
type testAuth struct {
	mu   sync.Mutex
	deny bool
	asks int
}

func (a *testAuth) Authorize(_ context.Context, sender string, uid uint32, _ bool) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.asks++
	if a.deny {
		return fmt.Errorf("%w: %s (uid %d) may not", service.ErrPermissionDenied, sender, uid)
	}
	return nil
}

func (a *testAuth) setDeny(deny bool) {
	a.mu.Lock()
	a.deny = deny
	a.mu.Unlock()
}

// fakeListeners is a ListenerFactory without sockets.
type fakeListeners struct {
	mu   sync.Mutex
	port uint16
}

func (f *fakeListeners) listen(ap netip.AddrPort) (net.Listener, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if ap.Port() == 0 {
		f.port++
		ap = netip.AddrPortFrom(ap.Addr(), f.port)
	}
	return &fakeListener{addr: net.TCPAddrFromAddrPort(ap), closed: make(chan struct{})}, nil
}

type fakeListener struct {
	addr   *net.TCPAddr
	once   sync.Once
	closed chan struct{}
}

func (l *fakeListener) Accept() (net.Conn, error) {
	<-l.closed
	return nil, net.ErrClosed
}

func (l *fakeListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *fakeListener) Addr() net.Addr { return l.addr }

// result is what one mptcpctl run printed and returned.
type result struct {
	out, err string
	code     int
}

// ctl runs mptcpctl in-process with args.
func ctl(args ...string) result {
	var out, errb bytes.Buffer
	code := run(context.Background(), args, &out, &errb)
	return result{out.String(), errb.String(), code}
}

// mustCtl runs mptcpctl and fails the test unless it succeeded.
func mustCtl(t *testing.T, args ...string) string {
	t.Helper()
	r := ctl(args...)
	if r.code != exitOK {
		t.Fatalf("mptcpctl %s: exit %d: %s%s", strings.Join(args, " "), r.code, r.err, r.out)
	}
	return r.out
}

// selfCopy returns a copy of the test binary that every user may run,
// which runs mptcpctl's main when asMainEnv is set.
func selfCopy(t *testing.T) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(exe)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst := filepath.Join(dir, "mptcpctl")
	f, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(f, src); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return dst
}

// ctlAs runs mptcpctl as another user, as a child process.
func (d *testDaemon) ctlAs(t *testing.T, uid, gid uint32, args ...string) result {
	t.Helper()
	cmd := d.bus.CommandAs(t, uid, gid, selfCopy(t), args...)
	cmd.Env = append(cmd.Env, asMainEnv+"=1")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	return result{out.String(), errb.String(), cmd.ProcessState.ExitCode()}
}

// tableRows splits a table mptcpctl printed into cells, by the columns of
// its header line, and fails the test if a cell does not start at its
// column (the table is not aligned). Lines after the first empty one (the
// summary) are left out.
func tableRows(t *testing.T, text string) [][]string {
	t.Helper()
	lines := strings.Split(text, "\n")
	header := lines[0]
	var starts []int
	for i := range header {
		if header[i] != ' ' && (i == 0 || header[i-1] == ' ') {
			starts = append(starts, i)
		}
	}
	var rows [][]string
	for _, line := range lines {
		if line == "" {
			break
		}
		var cells []string
		for c, s := range starts {
			end := len(line)
			if c+1 < len(starts) {
				end = min(starts[c+1], len(line))
			}
			if s >= len(line) {
				cells = append(cells, "")
				continue
			}
			cell := line[s:end]
			if s > 0 && line[s-1] != ' ' || strings.HasPrefix(cell, " ") && strings.TrimSpace(cell) != "" {
				t.Fatalf("cell %q of line %q is not at column %d of the header:\n%s", cell, line, s, text)
			}
			cells = append(cells, strings.TrimSpace(cell))
		}
		rows = append(rows, cells)
	}
	return rows
}

// dialDaemon connects the daemon's side to the bus as the daemon does
// (dbusapi.Connect: it writes its signals itself).
func dialDaemon(t *testing.T, bus *dbustest.Bus) *dbus.Conn {
	t.Helper()
	conn, err := dbusapi.Connect(bus.Address())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}
