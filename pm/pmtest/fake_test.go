package pmtest_test

import (
	"errors"
	"net/netip"
	"strings"
	"syscall"
	"testing"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
)

func addr(s string) netip.Addr         { return netip.MustParseAddr(s) }
func addrPort(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func wantErr(t *testing.T, err, sentinel error, msg string) {
	t.Helper()
	var pe *pm.Error
	if !errors.As(err, &pe) || !errors.Is(err, sentinel) || pe.Message != msg {
		t.Errorf("error %v, want a *pm.Error matching %v with message %q", err, sentinel, msg)
	}
}

// TestFakeEndpoints follows what the 6.18 kernel did with the same commands
// (pmnl.py in a fresh namespace).
func TestFakeEndpoints(t *testing.T) {
	k := pmtest.NewFakeKernel()
	id, err := k.AddEndpoint(pm.Address{Addr: addr("10.9.9.1"), Flags: pm.FlagSubflow})
	if err != nil || id != 1 {
		t.Fatalf("first endpoint: %d, %v; want id 1", id, err)
	}
	_, err = k.AddEndpoint(pm.Address{Addr: addr("10.9.9.1"), Flags: pm.FlagSubflow})
	wantErr(t, err, pm.ErrExists, "too many addresses or duplicate one")
	_, err = k.AddEndpoint(pm.Address{ID: 1, Addr: addr("10.9.9.2")})
	wantErr(t, err, pm.ErrBusy, "too many addresses or duplicate one")
	if id, err := k.AddEndpoint(pm.Address{ID: 7, Addr: addr("10.9.9.3"), Flags: pm.FlagSignal}); err != nil || id != 7 {
		t.Fatalf("explicit id: %d, %v", id, err)
	}
	if id, err := k.AddEndpoint(pm.Address{Addr: addr("10.9.9.4"), Port: 80}); err != nil || id != 8 {
		t.Fatalf("after id 7 the kernel gives 8; got %d, %v", id, err)
	}
	eps, _ := k.Endpoints()
	if len(eps) != 3 || eps[2].Port != 0 {
		t.Errorf("endpoints %+v: want 3, the port of a non-signal one dropped", eps)
	}
	wantErr(t, k.DeleteEndpoint(99), pm.ErrNotFound, "address not found")
	if err := k.DeleteEndpoint(0); err != nil {
		t.Errorf("delete id 0: %v (the kernel accepts it)", err)
	}
	wantErr(t, k.SetEndpointFlags(99, pm.FlagBackup), pm.ErrNotFound, "address not found")
	if err := k.SetEndpointFlags(7, pm.FlagBackup|pm.FlagSubflow); err != nil {
		t.Fatal(err)
	}
	eps, _ = k.Endpoints()
	if eps[1].Flags != pm.FlagSignal|pm.FlagBackup {
		t.Errorf("flags after set: %v, want signal,backup (only backup and fullmesh change)", eps[1].Flags)
	}
	for i := range 5 {
		if _, err := k.AddEndpoint(pm.Address{Addr: netip.AddrFrom4([4]byte{10, 9, 8, byte(i)})}); err != nil {
			t.Fatal(err)
		}
	}
	_, err = k.AddEndpoint(pm.Address{Addr: addr("10.9.7.1")})
	if !errors.Is(err, syscall.ERANGE) || errors.Is(err, pm.ErrInvalid) {
		t.Errorf("ninth endpoint: %v, want ERANGE", err)
	}
	if err := k.FlushEndpoints(); err != nil {
		t.Fatal(err)
	}
	if id, _ := k.AddEndpoint(pm.Address{Addr: addr("10.9.9.1")}); id != 1 {
		t.Errorf("after flush: id %d, want 1", id)
	}
}

func TestFakeLimits(t *testing.T) {
	k := pmtest.NewFakeKernel()
	if l, _ := k.Limits(); l != (pm.Limits{Subflows: 2}) {
		t.Errorf("fresh limits %+v, want 2/0", l)
	}
	wantErr(t, k.SetLimits(pm.Limits{Subflows: 9}), pm.ErrInvalid, "limit greater than maximum (8)")
	if err := k.SetLimits(pm.Limits{Subflows: 8, AddAddrAccepted: 8}); err != nil {
		t.Fatal(err)
	}
	if l, _ := k.Limits(); l != (pm.Limits{Subflows: 8, AddAddrAccepted: 8}) {
		t.Errorf("limits %+v", l)
	}
}

func TestFakeUserspaceCommands(t *testing.T) {
	k := pmtest.NewFakeKernel()
	evs := k.AddConnection(1, true, addrPort("10.55.0.1:40000"), addrPort("10.55.0.2:8080"))
	if len(evs) != 2 || evs[0].Type != pm.EventCreated || evs[1].Type != pm.EventEstablished || evs[0].Family != 2 {
		t.Fatalf("AddConnection events %+v", evs)
	}
	<-k.Events()
	<-k.Events()
	k.AddConnection(2, false, addrPort("10.55.0.1:40001"), addrPort("10.55.0.2:8080"))
	<-k.Events()
	<-k.Events()

	a := pm.Address{ID: 5, Addr: addr("10.55.1.1")}
	wantErr(t, k.Announce(9, a), pm.ErrNotFound, "invalid token")
	wantErr(t, k.Announce(2, a), pm.ErrNotSupported, "userspace PM not selected")
	wantErr(t, k.Announce(1, pm.Address{Addr: addr("10.55.1.1")}), pm.ErrInvalid, "invalid addr id")
	if err := k.Announce(1, a); err != nil {
		t.Fatal(err)
	}
	if err := k.Announce(1, a); err != nil {
		t.Errorf("announcing again: %v", err)
	}
	wantErr(t, k.Announce(1, pm.Address{ID: 5, Addr: addr("10.55.0.1")}), pm.ErrInvalid, "did not match address and id")
	wantErr(t, k.Announce(1, pm.Address{ID: 5, Addr: addr("10.55.1.1"), Port: 5555}), pm.ErrInvalid, "did not match address and id")
	wantErr(t, k.Announce(1, pm.Address{ID: 6, Addr: addr("10.55.1.1")}), pm.ErrInvalid, "did not match address and id")
	wantErr(t, k.Remove(1, 9), pm.ErrNotFound, "address with id 9 not found")

	// A subflow from the announced address with its id comes up at once.
	remote := addrPort("10.55.0.2:8080")
	if err := k.CreateSubflow(1, pm.Address{ID: 5, Addr: addr("10.55.1.1"), Flags: pm.FlagBackup, Ifindex: 3}, remote); err != nil {
		t.Fatal(err)
	}
	ev := <-k.Events()
	if ev.Type != pm.EventSubEstablished || ev.Token != 1 || ev.LocalID != 5 || ev.LocalAddr != addr("10.55.1.1") ||
		ev.LocalPort == 0 || ev.RemoteAddr != remote.Addr() || ev.RemotePort != 8080 || !ev.Backup || ev.Ifindex != 3 {
		t.Errorf("SUB_ESTABLISHED %+v", ev)
	}
	local := netip.AddrPortFrom(ev.LocalAddr, ev.LocalPort)
	wantErr(t, k.CreateSubflow(1, pm.Address{ID: 5, Addr: addr("fd00::1")}, remote), pm.ErrInvalid, "families mismatch")
	wantErr(t, k.SetSubflowFlags(1, addrPort("10.55.1.1:1"), remote, pm.FlagBackup), pm.ErrNotFound, "subflow not found")
	if err := k.SetSubflowFlags(1, netip.AddrPortFrom(local.Addr(), 0), remote, 0); err != nil {
		t.Errorf("set flags on any port: %v", err)
	}
	select {
	case ev := <-k.Events():
		t.Errorf("event %v after a local flag change; the kernel sends none", ev.Type)
	default:
	}
	wantErr(t, k.DestroySubflow(1, addrPort("10.55.1.1:1"), remote), pm.ErrNotFound, "subflow not found")
	if err := k.DestroySubflow(1, local, remote); err != nil {
		t.Fatal(err)
	}
	if ev := <-k.Events(); ev.Type != pm.EventSubClosed || ev.LocalPort != local.Port() || ev.Backup {
		t.Errorf("SUB_CLOSED %+v, want the subflow, no longer backup", ev)
	}

	// Remove closes the subflows that use the address.
	k.CreateSubflow(1, pm.Address{ID: 5, Addr: addr("10.55.1.1")}, remote)
	<-k.Events()
	if err := k.Remove(1, 5); err != nil {
		t.Fatal(err)
	}
	if ev := <-k.Events(); ev.Type != pm.EventSubClosed || ev.LocalID != 5 {
		t.Errorf("after Remove: %+v, want SUB_CLOSED of id 5", ev)
	}

	if evs := k.CloseConnection(1); len(evs) != 1 || evs[0].Type != pm.EventClosed || evs[0].Token != 1 {
		t.Errorf("CloseConnection: %+v", evs)
	}
	if evs := k.CloseConnection(1); len(evs) != 0 {
		t.Errorf("closing again: %+v", evs)
	}
}

func TestFakeFailNextAndCalls(t *testing.T) {
	k := pmtest.NewFakeKernel()
	boom := errors.New("boom")
	k.FailNext("Limits", boom)
	if _, err := k.Limits(); err != boom {
		t.Errorf("Limits: %v, want the injected error", err)
	}
	if _, err := k.Limits(); err != nil {
		t.Errorf("second Limits: %v, want the injection used up", err)
	}
	k.Announce(3, pm.Address{ID: 1, Addr: addr("10.0.0.1")})
	calls := k.Calls()
	if len(calls) != 3 || calls[0] != "Limits" || !strings.HasPrefix(calls[2], "Announce 3 {ID:1 Addr:10.0.0.1 Port:0") {
		t.Errorf("calls %q", calls)
	}
}

func TestFakeDropsWhenEventsAreNotRead(t *testing.T) {
	k := pmtest.NewFakeKernel()
	for i := range pmtest.EventBuffer {
		k.AddConnection(uint32(i), true, addrPort("10.0.0.1:1"), addrPort("10.0.0.2:2"))
	}
	if got := k.Dropped(); got != pmtest.EventBuffer {
		t.Errorf("dropped %d, want %d (two events per connection, half fit)", got, pmtest.EventBuffer)
	}
}
