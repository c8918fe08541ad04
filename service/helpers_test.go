package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmnl"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
)

var (
	_ Kernel = (*pmnl.Client)(nil)
	_ Kernel = (*pmtest.FakeKernel)(nil)
)

// recorder is a Publisher that keeps what it is given.
type recorder struct {
	mu sync.Mutex
	ns []Notification
}

func (r *recorder) Publish(n Notification) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ns = append(r.ns, n)
}

// harness runs a Service on a FakeKernel with a recording publisher and
// fake listeners. Events go through unbuffered channels, so once a send
// returns the loop has the event, and the next request is served after it.
type harness struct {
	t      *testing.T
	k      *pmtest.FakeKernel
	s      *Service
	rec    *recorder
	lis    *fakeListeners
	events chan pm.Event
	net    chan NetEvent

	log    *pmtest.SyncBuffer
	kernel Kernel           // what the service uses; h.k unless withKernelWrapper
	tweak  []func(*Service) // applied before Run
	wrap   func(*pmtest.FakeKernel) Kernel
	stop   func() // ends Run and checks it returned nil; once

	mu      sync.Mutex
	pmType  string
	pmErr   error
	pmReads int      // reads of the path manager
	pmSets  []string // what SetPathManager was asked

	sysctls map[string]string // what Deps.Sysctl reads (guarded by mu); others do not exist

	listing  bool       // the service lists h.k's connections (withLister)
	record   Record     // withRecord
	logLevel slog.Level // the logger's level: debug unless withLogLevel
}

type harnessOpt func(*harness, *Config)

func withConfig(f func(*Config)) harnessOpt { return func(_ *harness, c *Config) { f(c) } }

func withKernel(k *pmtest.FakeKernel) harnessOpt { return func(h *harness, _ *Config) { h.k = k } }

// withService changes the service before it runs (its clock, backoff).
func withService(f func(*Service)) harnessOpt {
	return func(h *harness, _ *Config) { h.tweak = append(h.tweak, f) }
}

// withKernelWrapper puts a Kernel of the test's around the fake kernel.
func withKernelWrapper(f func(*pmtest.FakeKernel) Kernel) harnessOpt {
	return func(h *harness, _ *Config) { h.wrap = f }
}

// withLister lets the service list the fake kernel's connections.
func withLister() harnessOpt { return func(h *harness, _ *Config) { h.listing = true } }

// withRecord gives the service a record of its endpoints.
func withRecord(r Record) harnessOpt { return func(h *harness, _ *Config) { h.record = r } }

// withLogLevel sets the level of the service's logger (debug otherwise).
func withLogLevel(l slog.Level) harnessOpt { return func(h *harness, _ *Config) { h.logLevel = l } }

// withPM sets the path manager the namespace reports at first.
func withPM(p string) harnessOpt { return func(h *harness, _ *Config) { h.pmType = p } }

// newHarness starts a service; the test's cleanup stops it and checks that
// Run returned nil.
func newHarness(t *testing.T, opts ...harnessOpt) *harness {
	t.Helper()
	h := &harness{
		t:      t,
		k:      pmtest.NewFakeKernel(),
		rec:    &recorder{},
		lis:    newFakeListeners(),
		events: make(chan pm.Event),
		net:    make(chan NetEvent),
		pmType: "userspace",
		log:    &pmtest.SyncBuffer{},

		logLevel: slog.LevelDebug,
	}
	// The tests of the loop's bookkeeping run without a policy; those of
	// the policies choose one.
	cfg := DefaultConfig()
	cfg.Policy = PolicyNone
	for _, o := range opts {
		o(h, &cfg)
	}
	h.kernel = h.k
	if h.wrap != nil {
		h.kernel = h.wrap(h.k)
	}
	var lister Lister
	if h.listing {
		lister = h.k
	}
	h.s = New(cfg, Deps{
		Kernel:         h.kernel,
		Lister:         lister,
		Record:         h.record,
		Publisher:      h.rec,
		Listeners:      h.lis.listen,
		PathManager:    h.pathManager,
		SetPathManager: h.setPathManager,
		Logger:         slog.New(slog.NewTextHandler(h.log, &slog.HandlerOptions{Level: h.logLevel})),
		Version:        "test",
		Sysctl:         h.readSysctl,
	})
	// The path manager is read again when a test says (pathManagerDue),
	// not a second after a new connection.
	h.s.pmCheckAfter = time.Hour
	for _, f := range h.tweak {
		f(h.s)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.s.Run(ctx, h.events, h.net) }()
	h.stop = sync.OnceFunc(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	t.Cleanup(h.stop)
	return h
}

func (h *harness) pathManager() (string, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.pmReads++
	return h.pmType, h.pmErr
}

// setPMSeen changes the namespace's path manager and lets the service
// read it, as it does a second after a new connection.
func (h *harness) setPMSeen(p string) {
	h.setPM(p)
	h.inspect(h.s.refreshPathManager)
}

func (h *harness) setPathManager(p string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.pmSets = append(h.pmSets, p)
	h.pmType = p
	return nil
}

// readSysctl is the service's Deps.Sysctl: it reads h.sysctls.
func (h *harness) readSysctl(name string) (string, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	v, ok := h.sysctls[name]
	if !ok {
		return "", fmt.Errorf("/proc/sys/%s: %w", name, os.ErrNotExist)
	}
	return v, nil
}

// setSysctl sets what the service reads for the sysctl name.
func (h *harness) setSysctl(name, value string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.sysctls == nil {
		h.sysctls = make(map[string]string)
	}
	h.sysctls[name] = value
}

func (h *harness) setPM(p string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.pmType = p
}

// send hands kernel events to the loop.
func (h *harness) send(evs ...pm.Event) {
	for _, ev := range evs {
		h.events <- ev
	}
}

// sendNet hands network events to the loop.
func (h *harness) sendNet(evs ...NetEvent) {
	for _, ev := range evs {
		h.net <- ev
	}
}

// pump forwards the events the fake kernel has emitted so far.
func (h *harness) pump() {
	for {
		select {
		case ev := <-h.k.Events():
			h.events <- ev
		default:
			return
		}
	}
}

// take waits until the loop has handled everything sent so far and returns
// the notifications published since the last take.
func (h *harness) take() []Notification {
	h.t.Helper()
	if _, err := h.s.Connections(context.Background()); err != nil {
		h.t.Fatalf("Connections: %v", err)
	}
	h.rec.mu.Lock()
	defer h.rec.mu.Unlock()
	ns := h.rec.ns
	h.rec.ns = nil
	return ns
}

// inspect runs fn in the loop, to look at its state without a race.
func (h *harness) inspect(fn func()) {
	h.t.Helper()
	if err := do(context.Background(), h.s, "inspect", func() error { fn(); return nil }); err != nil {
		h.t.Fatalf("inspect: %v", err)
	}
}

// open adds a connection to the fake kernel and hands its CREATED and
// ESTABLISHED to the service; it returns the connection's object number.
func (h *harness) open(token uint32, local, remote string) uint64 {
	h.t.Helper()
	h.k.AddConnection(token, true, netip.MustParseAddrPort(local), netip.MustParseAddrPort(remote))
	h.pump()
	id, err := h.s.ConnectionByToken(context.Background(), token)
	if err != nil {
		h.t.Fatalf("ConnectionByToken(%d): %v", token, err)
	}
	return id
}

// describe gives a notification a short form for comparisons.
func describe(n Notification) string {
	switch n := n.(type) {
	case ManagerChanged:
		return fmt.Sprintf("manager %v", n.Changed)
	case ConnectionAdded:
		return fmt.Sprintf("added %d token=%d %s", n.Connection.ID, n.Connection.Token, n.Connection.State)
	case ConnectionChanged:
		return fmt.Sprintf("changed %d %v", n.Connection.ID, n.Changed)
	case ConnectionRemoved:
		return fmt.Sprintf("removed %d token=%d", n.Connection.ID, n.Connection.Token)
	case SubflowEvent:
		kind := map[SubflowKind]string{SubflowEstablished: "established", SubflowClosed: "closed", SubflowPriorityChanged: "priority"}[n.Kind]
		sf := n.Subflow
		return fmt.Sprintf("subflow %d %s %d/%d %s:%d-%s:%d backup=%v if=%q err=%d reset=%d", n.ConnectionID, kind,
			sf.LocalID, sf.RemoteID, sf.LocalAddress, sf.LocalPort, sf.RemoteAddress, sf.RemotePort, sf.Backup, sf.Interface, n.Error, n.ResetReason)
	case AddressAnnounced:
		return fmt.Sprintf("announced %d id=%d %s:%d", n.ConnectionID, n.Address.ID, n.Address.Address, n.Address.Port)
	case AddressRemoved:
		return fmt.Sprintf("addr-removed %d id=%d", n.ConnectionID, n.RemoteID)
	case ControllerReleased:
		return fmt.Sprintf("released %s %s %s", n.Name, n.Path, n.Reason)
	}
	return fmt.Sprintf("unknown %T", n)
}

func describeAll(ns []Notification) []string {
	out := make([]string, len(ns))
	for i, n := range ns {
		out[i] = describe(n)
	}
	return out
}

func sameStrings(t *testing.T, what string, got, want []string) {
	t.Helper()
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("%s:\ngot:\n  %s\nwant:\n  %s", what, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

var sentinels = []error{
	ErrInvalidArguments, ErrPermissionDenied, ErrAlreadyControlled, ErrNotController,
	ErrNotFound, ErrNotSupported, ErrExists, ErrBusy, ErrFailed,
}

// wantKind checks that err matches want and no other service sentinel.
func wantKind(t *testing.T, err, want error) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %v", want)
	}
	var matched []string
	for _, s := range sentinels {
		if errors.Is(err, s) {
			matched = append(matched, s.Error())
		}
	}
	if len(matched) != 1 || !errors.Is(err, want) {
		t.Fatalf("error %q matches %v, want exactly [%v]", err, matched, want)
	}
}

// fakeListeners is a ListenerFactory without sockets.
type fakeListeners struct {
	mu     sync.Mutex
	open   map[netip.AddrPort]*fakeListener
	opened int
	port   uint16
	fail   error // returned by the next listen
}

func newFakeListeners() *fakeListeners {
	return &fakeListeners{open: make(map[netip.AddrPort]*fakeListener), port: 50000}
}

func (f *fakeListeners) listen(ap netip.AddrPort) (net.Listener, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail; err != nil {
		f.fail = nil
		return nil, err
	}
	if ap.Port() == 0 {
		f.port++
		ap = netip.AddrPortFrom(ap.Addr(), f.port)
	}
	if f.open[ap] != nil {
		return nil, &net.OpError{Op: "listen", Net: "tcp", Err: os.NewSyscallError("bind", syscall.EADDRINUSE)}
	}
	l := &fakeListener{owner: f, ap: ap, closed: make(chan struct{})}
	f.open[ap] = l
	f.opened++
	return l, nil
}

// openAddrs returns the addresses with an open listener.
func (f *fakeListeners) openAddrs() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for ap := range f.open {
		out = append(out, ap.String())
	}
	return out
}

type fakeListener struct {
	owner  *fakeListeners
	ap     netip.AddrPort
	once   sync.Once
	closed chan struct{}
}

func (l *fakeListener) Accept() (net.Conn, error) {
	<-l.closed
	return nil, net.ErrClosed
}

func (l *fakeListener) Close() error {
	l.once.Do(func() {
		close(l.closed)
		l.owner.mu.Lock()
		delete(l.owner.open, l.ap)
		l.owner.mu.Unlock()
	})
	return nil
}

func (l *fakeListener) Addr() net.Addr { return net.TCPAddrFromAddrPort(l.ap) }

// eventually polls cond until it holds or a few seconds pass.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
