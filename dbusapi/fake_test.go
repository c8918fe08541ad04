package dbusapi

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/mptcp-pmd/mptcp-pmd/dbusapi/dbustest"
	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/policy"
	"github.com/mptcp-pmd/mptcp-pmd/service"
)

// call is one request the fake backend received.
type call struct {
	Method string
	Caller service.Caller
	Args   []any
}

// fakeBackend records requests and answers them from fixed state.
type fakeBackend struct {
	mu           sync.Mutex
	calls        []call
	err          error // returned by every request when set
	manager      service.Manager
	conns        []service.Connection
	tokens       map[uint32]uint64
	addresses    []service.AddressInfo
	addressesErr error       // returned by Addresses
	onLoad       func(n int) // called at the start of the nth Manager call
	loads        int
	onReg        func() // called inside RegisterController
	vanished     chan string
}

func newFakeBackend() *fakeBackend {
	return &fakeBackend{tokens: map[uint32]uint64{}, vanished: make(chan string, 16)}
}

func (f *fakeBackend) record(method string, c service.Caller, args ...any) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, call{method, c, args})
	return f.err
}

func (f *fakeBackend) setErr(err error) {
	f.mu.Lock()
	f.err = err
	f.mu.Unlock()
}

// takeCalls returns the calls so far and forgets them.
func (f *fakeBackend) takeCalls() []call {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.calls
	f.calls = nil
	return c
}

func (f *fakeBackend) Manager(context.Context) (service.Manager, error) {
	f.mu.Lock()
	f.loads++
	n, hook := f.loads, f.onLoad
	f.mu.Unlock()
	if hook != nil {
		hook(n)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.manager, nil
}

func (f *fakeBackend) Connections(context.Context) ([]service.Connection, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.conns), nil
}

func (f *fakeBackend) ConnectionByToken(_ context.Context, token uint32) (uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	id, ok := f.tokens[token]
	if !ok {
		return 0, errors.Join(errors.New("no connection with that token"), service.ErrNotFound)
	}
	return id, nil
}

func (f *fakeBackend) Addresses(context.Context) ([]service.AddressInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.addresses), f.addressesErr
}

func (f *fakeBackend) AddEndpoint(_ context.Context, c service.Caller, e policy.Endpoint) (uint8, error) {
	if err := f.record("AddEndpoint", c, e); err != nil {
		return 0, err
	}
	return 42, nil
}

func (f *fakeBackend) RemoveEndpoint(_ context.Context, c service.Caller, id uint8) error {
	return f.record("RemoveEndpoint", c, id)
}

func (f *fakeBackend) SetEndpointFlags(_ context.Context, c service.Caller, id uint8, flags pm.Flags) error {
	return f.record("SetEndpointFlags", c, id, flags)
}

func (f *fakeBackend) FlushEndpoints(_ context.Context, c service.Caller) error {
	return f.record("FlushEndpoints", c)
}

func (f *fakeBackend) SetInterfacePreference(_ context.Context, c service.Caller, name, pref string) error {
	return f.record("SetInterfacePreference", c, name, pref)
}

func (f *fakeBackend) SetLimits(_ context.Context, c service.Caller, l service.Limits) error {
	return f.record("SetLimits", c, l)
}

func (f *fakeBackend) AnnounceAddress(_ context.Context, c service.Caller, conn uint64, addr netip.Addr, port uint16, id uint8) (uint8, error) {
	if err := f.record("AnnounceAddress", c, conn, addr, port, id); err != nil {
		return 0, err
	}
	return 7, nil
}

func (f *fakeBackend) RemoveAddress(_ context.Context, c service.Caller, conn uint64, id uint8) error {
	return f.record("RemoveAddress", c, conn, id)
}

func (f *fakeBackend) CreateSubflow(_ context.Context, c service.Caller, conn uint64, r service.SubflowRequest) error {
	return f.record("CreateSubflow", c, conn, r)
}

func (f *fakeBackend) RemoveSubflow(_ context.Context, c service.Caller, conn uint64, local, remote netip.AddrPort) error {
	return f.record("RemoveSubflow", c, conn, local, remote)
}

func (f *fakeBackend) SetSubflowBackup(_ context.Context, c service.Caller, conn uint64, local, remote netip.AddrPort, backup bool) error {
	return f.record("SetSubflowBackup", c, conn, local, remote, backup)
}

func (f *fakeBackend) RegisterController(_ context.Context, c service.Caller, path string) error {
	f.mu.Lock()
	hook := f.onReg
	f.mu.Unlock()
	if hook != nil {
		hook()
	}
	return f.record("RegisterController", c, path)
}

func (f *fakeBackend) UnregisterController(_ context.Context, c service.Caller, path string) error {
	return f.record("UnregisterController", c, path)
}

func (f *fakeBackend) ControllerVanished(name string) { f.vanished <- name }

// allowAll is an Authorizer that allows everyone and remembers what it was
// asked.
type allowAll struct {
	mu   sync.Mutex
	asks []authRequest
}

type authRequest struct {
	Sender      string
	UID         uint32
	Interactive bool
}

func (a *allowAll) Authorize(_ context.Context, sender string, uid uint32, interactive bool) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.asks = append(a.asks, authRequest{sender, uid, interactive})
	return nil
}

// requests returns the authorization requests so far and forgets them.
func (a *allowAll) requests() []authRequest {
	a.mu.Lock()
	defer a.mu.Unlock()
	r := a.asks
	a.asks = nil
	return r
}

// harness is a Server on a private bus with a fake backend, and a client.
type harness struct {
	bus     *dbustest.Bus
	srv     *Server
	srvConn *dbus.Conn
	client  *dbus.Conn
	be      *fakeBackend
	dest    string // where the client sends: the service name, or the server's unique name
}

// newHarness starts a bus and a server. As root it requests the service
// name (the bus policy lets only root and mptcp-pm own it); as another user
// it loads the state and the client talks to the server's unique name.
// setup, if not nil, prepares the backend before the state is loaded.
func newHarness(t *testing.T, opts Options, setup func(*fakeBackend)) *harness {
	t.Helper()
	h := &harness{bus: dbustest.StartBus(t), be: newFakeBackend()}
	if setup != nil {
		setup(h.be)
	}
	h.srvConn = dialServer(t, h.bus)
	if opts.Authorizer == nil {
		opts.Authorizer = &allowAll{}
	}
	if opts.Stats == nil {
		opts.Stats = fakeStats{}
	}
	if opts.Counters == nil {
		opts.Counters = fakeCounters
	}
	var err error
	h.srv, err = New(h.srvConn, h.be, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.srv.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if os.Geteuid() == 0 {
		if err := h.srv.RequestName(ctx); err != nil {
			t.Fatal(err)
		}
		h.dest = BusName
	} else {
		if err := h.srv.load(ctx); err != nil {
			t.Fatal(err)
		}
		h.dest = h.srvConn.Names()[0]
	}
	h.client = h.bus.Dial(t)
	return h
}

func (h *harness) obj(path dbus.ObjectPath) dbus.BusObject { return h.client.Object(h.dest, path) }

// call calls a method and returns its reply body and error.
func (h *harness) call(path dbus.ObjectPath, method string, args ...any) ([]any, error) {
	c := h.obj(path).Call(method, 0, args...)
	return c.Body, c.Err
}

// subscribe delivers the signals from the server on the client to the
// returned channel, in order.
func (h *harness) subscribe(t *testing.T) <-chan *dbus.Signal {
	t.Helper()
	sender := h.dest
	if err := h.client.AddMatchSignal(dbus.WithMatchSender(sender)); err != nil {
		t.Fatal(err)
	}
	ch := make(chan *dbus.Signal, 4096)
	h.client.Signal(ch)
	return ch
}

// next returns the next signal, failing the test after a timeout.
func next(t *testing.T, ch <-chan *dbus.Signal) *dbus.Signal {
	t.Helper()
	select {
	case s := <-ch:
		return s
	case <-time.After(10 * time.Second):
		t.Fatal("no signal within 10s")
		return nil
	}
}

// errName returns the D-Bus error name of err, or "" if it is not a D-Bus
// error.
func errName(err error) string {
	var de dbus.Error
	if errors.As(err, &de) {
		return de.Name
	}
	return ""
}

// Test data.
var (
	conn1 = service.Connection{
		ID: 1, Token: 0xdeadbeef, ServerSide: true, State: service.StateEstablished,
		LocalAddress: netip.MustParseAddr("10.55.0.2"), LocalPort: 8080,
		RemoteAddress: netip.MustParseAddr("10.55.0.1"), RemotePort: 40000,
		DenyJoinID0: true, Userspace: true,
		Subflows: []service.Subflow{{
			LocalID: 0, RemoteID: 0, LocalAddress: netip.MustParseAddr("10.55.0.2"), LocalPort: 8080,
			RemoteAddress: netip.MustParseAddr("10.55.0.1"), RemotePort: 40000, Interface: "s0",
		}, {
			LocalID: 1, RemoteID: 2, LocalAddress: netip.MustParseAddr("fd00:55:1::2"), LocalPort: 8080,
			RemoteAddress: netip.MustParseAddr("fd00:55:1::1"), RemotePort: 40001, Backup: true,
		}},
		RemoteAddresses:    []service.AnnouncedAddress{{ID: 2, Address: netip.MustParseAddr("fd00:55:1::1")}},
		AnnouncedAddresses: []service.AnnouncedAddress{{ID: 5, Address: netip.MustParseAddr("10.55.1.2"), Port: 9000}},
	}
	// conn2 has nothing but its id and token: every address is unset.
	conn2 = service.Connection{ID: 2, Token: 7, State: service.StateCreated}

	manager1 = service.Manager{
		Version: "1.0-test", ControlMode: service.ModeBuiltin, Policy: "endpoints", KernelPathManager: "kernel",
		Endpoints: []policy.Endpoint{
			{Address: pm.Address{ID: 1, Addr: netip.MustParseAddr("10.55.1.1"), Flags: pm.FlagSubflow | pm.FlagBackup}, Interface: "c1", Origin: policy.OriginPolicy},
			{Address: pm.Address{ID: 2, Addr: netip.MustParseAddr("fe80::1"), Port: 1234}, Origin: policy.OriginExternal},
		},
		Limits:         service.Limits{Subflows: 8, AddAddrAccepted: 4},
		LocalAddresses: []service.LocalAddress{{Interface: "c0", Address: netip.MustParseAddr("10.55.0.1")}},
		Warnings:       []string{"strict reverse-path filtering (rp_filter 1) on c0"},
		Preferences:    map[string]string{"c0": "cheap", "wwan0": "expensive"},
	}
)

// Wire forms of the test data, as a client decodes them (structs are
// []any), written out by hand from the contract.
var (
	conn1Wire = map[string]any{
		"Token": uint32(0xdeadbeef), "ServerSide": true, "State": "established",
		"LocalAddress": "10.55.0.2", "LocalPort": uint16(8080),
		"RemoteAddress": "10.55.0.1", "RemotePort": uint16(40000), "DenyJoinId0": true,
		"Subflows": [][]any{
			{uint8(0), uint8(0), "10.55.0.2", uint16(8080), "10.55.0.1", uint16(40000), false, "s0"},
			{uint8(1), uint8(2), "fd00:55:1::2", uint16(8080), "fd00:55:1::1", uint16(40001), true, ""},
		},
		"RemoteAddresses":    [][]any{{uint8(2), "fd00:55:1::1", uint16(0)}},
		"AnnouncedAddresses": [][]any{{uint8(5), "10.55.1.2", uint16(9000)}},
	}
	conn2Wire = map[string]any{
		"Token": uint32(7), "ServerSide": false, "State": "created",
		"LocalAddress": "", "LocalPort": uint16(0), "RemoteAddress": "", "RemotePort": uint16(0),
		"DenyJoinId0": false, "Subflows": [][]any{}, "RemoteAddresses": [][]any{}, "AnnouncedAddresses": [][]any{},
	}
	manager1Wire = map[string]any{
		"Version": "1.0-test", "ControlMode": "builtin", "Controller": "", "Policy": "endpoints",
		"KernelPathManager": "kernel",
		"Endpoints": [][]any{
			{uint8(1), "10.55.1.1", uint16(0), []string{"subflow", "backup"}, "c1", "policy"},
			{uint8(2), "fe80::1", uint16(1234), []string{}, "", "external"},
		},
		"Limits":               []any{uint32(8), uint32(4)},
		"LocalAddresses":       [][]any{{"c0", "10.55.0.1"}},
		"SignalsDropped":       uint64(0),
		"Warnings":             []string{"strict reverse-path filtering (rp_filter 1) on c0"},
		"InterfacePreferences": map[string]string{"c0": "cheap", "wwan0": "expensive"},
	}
)

// values unwraps a property dictionary.
func values(props map[string]dbus.Variant) map[string]any {
	out := make(map[string]any, len(props))
	for k, v := range props {
		out[k] = v.Value()
	}
	return out
}

// fakeStats gives every connection of the test data the same statistics.
type fakeStats struct{}

// conn1Stats are the statistics fakeStats gives.
var conn1Stats = ConnStats{
	BytesSent: 1000, BytesReceived: 2000, BytesAcked: 900, CgroupID: 7, Cgroup: "/system.slice/x.service", Unit: "x.service",
	Subflows: []SubflowStats{{Local: netip.MustParseAddrPort("10.55.0.1:40000"), Remote: netip.MustParseAddrPort("10.55.0.2:80"),
		Interface: "c0", RTT: 1500 * time.Microsecond, Cwnd: 10, BytesSent: 1000, BytesAcked: 900}},
}

func (fakeStats) Stats(tokens []uint32, owner bool) (map[uint32]ConnStats, error) {
	out := map[uint32]ConnStats{}
	for _, tok := range []uint32{conn1.Token, conn2.Token} {
		if tokens == nil || slices.Contains(tokens, tok) {
			st := conn1Stats
			if owner {
				st.PID, st.Command = 42, "curl"
			}
			out[tok] = st
		}
	}
	return out, nil
}

// fakeCounters are the counters of the tests.
func fakeCounters() (map[string]uint64, error) {
	return map[string]uint64{"MPJoinSynRx": 12, "Blackhole": 0}, nil
}
