//go:build linux

package pmnl_test

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmnl"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
)

// The helpers of this file are prefixed "client" so they do not clash with
// those of the event tests in the same package.

const clientEventWait = 10 * time.Second

// clientDial opens a Client in h's namespace, closed when the test ends.
func clientDial(tb testing.TB, h *pmtest.Host) *pmnl.Client {
	tb.Helper()
	c, err := pmnl.Dial(&pmnl.Config{NetNS: h.NSFD()})
	if err != nil {
		tb.Fatalf("Dial in %s: %v", h.Name, err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// clientEvents is an EventListener of one namespace with the events it has
// read but not yet matched.
type clientEvents struct {
	l       *pmnl.EventListener
	pending []pm.Event
	buf     []pm.Event
}

func clientListen(t *testing.T, h *pmtest.Host) *clientEvents {
	t.Helper()
	l, err := pmnl.ListenEvents(&pmnl.Config{NetNS: h.NSFD()})
	if err != nil {
		t.Fatalf("ListenEvents in %s: %v", h.Name, err)
	}
	t.Cleanup(func() { l.Close() })
	return &clientEvents{l: l}
}

// wait returns the first event, read before or now, that match accepts, and
// forgets it; the test fails if none comes in time.
func (e *clientEvents) wait(t *testing.T, what string, match func(pm.Event) bool) pm.Event {
	t.Helper()
	if err := e.l.SetDeadline(time.Now().Add(clientEventWait)); err != nil {
		t.Fatal(err)
	}
	seen := 0
	for {
		for i := seen; i < len(e.pending); i++ {
			if ev := e.pending[i]; match(ev) {
				e.pending = slices.Delete(e.pending, i, i+1)
				return ev
			}
		}
		seen = len(e.pending)
		var err error
		e.buf, err = e.l.Receive(e.buf)
		if err != nil {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		e.pending = append(e.pending, e.buf...)
	}
}

// clientRefusal checks that err is a kernel refusal matching sentinel whose
// message contains msg.
func clientRefusal(t *testing.T, err, sentinel error, msg string) {
	t.Helper()
	var pe *pm.Error
	if !errors.As(err, &pe) {
		t.Fatalf("err = %v, want a *pm.Error", err)
	}
	if !errors.Is(err, sentinel) {
		t.Errorf("err = %v (errno %d), want it to match %v", err, pe.Errno, sentinel)
	}
	if !strings.Contains(pe.Message, msg) {
		t.Errorf("kernel message %q, want it to contain %q", pe.Message, msg)
	}
}

// clientMustConnect opens an MPTCP connection from the lab's client address
// local to the server's listener at remote, sends a few bytes so that it
// becomes fully established, and returns it with the client-side token.
func clientMustConnect(t *testing.T, lab *pmtest.Lab, ev *clientEvents, local netip.Addr, remote netip.AddrPort) (net.Conn, uint32) {
	t.Helper()
	conn := lab.Client.Dial(t, local, remote)
	if _, err := conn.Write([]byte("hello")); err != nil {
		t.Fatalf("write: %v", err)
	}
	lp := netip.MustParseAddrPort(conn.LocalAddr().String()).Port()
	est := ev.wait(t, "ESTABLISHED", func(e pm.Event) bool {
		return e.Type == pm.EventEstablished && e.LocalPort == lp
	})
	return conn, est.Token
}

func TestKernelEndpoints(t *testing.T) {
	h := pmtest.NewNamespace(t)
	// A signal endpoint with a port gets a listening socket: its address must exist.
	h.Run(t, "ip", "addr", "add", "10.9.0.2/32", "dev", "lo")
	c := clientDial(t, h)

	if eps, err := c.Endpoints(); err != nil || len(eps) != 0 {
		t.Fatalf("fresh namespace: Endpoints = %v, %v; want none", eps, err)
	}

	a5 := pm.Address{ID: 5, Addr: netip.MustParseAddr("10.9.0.1"), Flags: pm.FlagSubflow}
	id, err := c.AddEndpoint(a5)
	if err != nil || id != 5 {
		t.Fatalf("AddEndpoint(%+v) = %d, %v; want 5", a5, id, err)
	}

	// Without an id: the kernel picks it, AddEndpoint finds it.
	want := map[uint8]pm.Address{5: a5}
	for _, a := range []pm.Address{
		{Addr: netip.MustParseAddr("fd00:9::1"), Flags: pm.FlagSignal | pm.FlagBackup},
		{Addr: netip.MustParseAddr("10.9.0.2"), Port: 8080, Flags: pm.FlagSignal},
		{Addr: netip.MustParseAddr("10.9.0.3"), Flags: pm.FlagSubflow, Ifindex: 1}, // lo
	} {
		id, err := c.AddEndpoint(a)
		if err != nil || id == 0 {
			t.Fatalf("AddEndpoint(%+v) = %d, %v", a, id, err)
		}
		if _, dup := want[id]; dup {
			t.Fatalf("AddEndpoint(%+v) returned id %d, already used", a, id)
		}
		a.ID = id
		want[id] = a
	}
	// An IPv4-mapped address is added as IPv4.
	id, err = c.AddEndpoint(pm.Address{ID: 20, Addr: netip.MustParseAddr("::ffff:10.9.0.4"), Flags: pm.FlagSignal})
	if err != nil || id != 20 {
		t.Fatalf("AddEndpoint(mapped) = %d, %v", id, err)
	}
	want[20] = pm.Address{ID: 20, Addr: netip.MustParseAddr("10.9.0.4"), Flags: pm.FlagSignal}

	for id, w := range want {
		got, err := c.GetEndpoint(id)
		if err != nil || got != w {
			t.Errorf("GetEndpoint(%d) = %+v, %v; want %+v", id, got, err, w)
		}
	}
	eps, err := c.Endpoints()
	if err != nil {
		t.Fatal(err)
	}
	if len(eps) != len(want) {
		t.Errorf("Endpoints = %+v, want %d of them", eps, len(want))
	}
	for _, ep := range eps {
		if want[ep.ID] != ep {
			t.Errorf("Endpoints has %+v, want %+v", ep, want[ep.ID])
		}
	}
	// iproute2 sees the same.
	if out := h.Run(t, "ip", "mptcp", "endpoint", "show", "id", "20"); !strings.Contains(out, "10.9.0.4 id 20 signal") {
		t.Errorf("ip mptcp endpoint show id 20: %q", out)
	}

	// Flags: the kernel changes backup and fullmesh.
	if err := c.SetEndpointFlags(5, pm.FlagBackup|pm.FlagFullmesh); err != nil {
		t.Fatal(err)
	}
	if got, err := c.GetEndpoint(5); err != nil || got.Flags != pm.FlagSubflow|pm.FlagBackup|pm.FlagFullmesh {
		t.Errorf("after setting backup,fullmesh: %+v, %v", got, err)
	}
	if err := c.SetEndpointFlags(5, 0); err != nil {
		t.Fatal(err)
	}
	if got, err := c.GetEndpoint(5); err != nil || got.Flags != pm.FlagSubflow {
		t.Errorf("after clearing the flags: %+v, %v", got, err)
	}

	// Refusals, as the 6.18 kernel words them.
	_, err = c.AddEndpoint(pm.Address{ID: 30, Addr: netip.MustParseAddr("10.9.0.1"), Flags: pm.FlagSubflow})
	clientRefusal(t, err, pm.ErrExists, "duplicate")
	_, err = c.AddEndpoint(pm.Address{ID: 5, Addr: netip.MustParseAddr("10.9.0.99"), Flags: pm.FlagSubflow})
	clientRefusal(t, err, pm.ErrBusy, "duplicate") // an id in use is EBUSY
	clientRefusal(t, c.DeleteEndpoint(99), pm.ErrNotFound, "address not found")
	_, err = c.GetEndpoint(99)
	clientRefusal(t, err, pm.ErrNotFound, "address not found")
	clientRefusal(t, c.SetEndpointFlags(99, pm.FlagBackup), pm.ErrNotFound, "address not found")

	if err := c.DeleteEndpoint(5); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetEndpoint(5); !errors.Is(err, pm.ErrNotFound) {
		t.Errorf("GetEndpoint after delete: err = %v, want ErrNotFound", err)
	}
	if err := c.FlushEndpoints(); err != nil {
		t.Fatal(err)
	}
	if eps, err := c.Endpoints(); err != nil || len(eps) != 0 {
		t.Errorf("after flush: Endpoints = %+v, %v; want none", eps, err)
	}
}

func TestKernelLimits(t *testing.T) {
	h := pmtest.NewNamespace(t)
	c := clientDial(t, h)
	for _, l := range []pm.Limits{{Subflows: 5, AddAddrAccepted: 3}, {Subflows: 0, AddAddrAccepted: 8}} {
		if err := c.SetLimits(l); err != nil {
			t.Fatalf("SetLimits(%+v): %v", l, err)
		}
		got, err := c.Limits()
		if err != nil || got != l {
			t.Errorf("Limits = %+v, %v; want %+v", got, err, l)
		}
	}
	// iproute2 reads what was set.
	if out := h.Run(t, "ip", "mptcp", "limits", "show"); !strings.Contains(out, "add_addr_accepted 8 subflows 0") {
		t.Errorf("ip mptcp limits show: %q", out)
	}
	clientRefusal(t, c.SetLimits(pm.Limits{Subflows: 9}), pm.ErrInvalid, "limit greater than maximum")
}

func TestKernelSysctl(t *testing.T) {
	h := pmtest.NewNamespace(t)
	// The reader opened in the namespace reads it from any thread.
	var r *pm.PathManagerReader
	if err := h.Do(func() (err error) { r, err = pm.OpenPathManagerReader(); return err }); err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for _, want := range []string{"userspace", "kernel", "userspace"} {
		h.SetPathManager(t, want)
		var got string
		if err := h.Do(func() (err error) { got, err = pm.PathManagerType(); return err }); err != nil || got != want {
			t.Errorf("PathManagerType = %q, %v; want %q", got, err, want)
		}
		if got, err := r.Read(); err != nil || got != want {
			t.Errorf("PathManagerReader.Read outside the namespace = %q, %v; want %q", got, err, want)
		}
	}
	for _, want := range []bool{false, true} {
		v := map[bool]string{false: "0", true: "1"}[want]
		h.Run(t, "sysctl", "-qw", "net.mptcp.enabled="+v)
		var got bool
		if err := h.Do(func() (err error) { got, err = pm.MPTCPEnabled(); return err }); err != nil || got != want {
			t.Errorf("MPTCPEnabled = %v, %v; want %v", got, err, want)
		}
	}
}

func TestKernelUserspacePM(t *testing.T) {
	lab := pmtest.NewLab(t, pmtest.LabOptions{Paths: 2, ClientPM: "userspace"})
	cliEv := clientListen(t, lab.Client) // also lets the kernel accept the server's joins
	srvEv := clientListen(t, lab.Server)
	server := lab.Server.Listen(t, netip.AddrPortFrom(netip.IPv4Unspecified(), 0))
	srv := server.Addr
	c := clientDial(t, lab.Client)

	_, token := clientMustConnect(t, lab, cliEv, lab.Client.Addrs4[0], netip.AddrPortFrom(lab.Server.Addrs4[0], srv.Port()))
	// The server's in-kernel PM can open a join only once its application
	// has accepted the connection: before that the MPTCP socket has no
	// struct socket, the join fails (MPJoinSynTxCreatSkErr) and is not
	// tried again. So accept before announcing.
	select {
	case <-server.Accepted():
	case <-time.After(clientEventWait):
		t.Fatal("the server did not accept the connection")
	}

	// Announce the second client address, with a listener behind it.
	annAddr := lab.Client.Serve(t, netip.AddrPortFrom(lab.Client.Addrs4[1], 0))
	ann := pm.Address{ID: 3, Addr: annAddr.Addr(), Port: annAddr.Port()}
	if err := c.Announce(token, ann); err != nil {
		t.Fatalf("Announce: %v", err)
	}
	srvEv.wait(t, "ANNOUNCED on the server", func(e pm.Event) bool {
		return e.Type == pm.EventAnnounced && e.RemoteID == 3 && e.RemoteAddr == ann.Addr && e.RemotePort == ann.Port
	})
	// The server's in-kernel PM joins the announced address.
	isJoin := func(typ pm.EventType) func(pm.Event) bool {
		return func(e pm.Event) bool {
			return e.Type == typ && e.Token == token && e.LocalID == 3 && e.LocalAddr == ann.Addr && e.LocalPort == ann.Port
		}
	}
	cliEv.wait(t, "SUB_ESTABLISHED of the server's join to the announced address", isJoin(pm.EventSubEstablished))
	addrs, err := c.Addresses(token)
	if err != nil {
		t.Fatal(err)
	}
	wantAnn := pm.Address{ID: 3, Addr: ann.Addr, Port: ann.Port, Flags: pm.FlagSignal}
	if !slices.Contains(addrs, wantAnn) {
		t.Errorf("Addresses = %+v, want it to contain %+v", addrs, wantAnn)
	}
	// Id 3 is bound to that address now.
	err = c.Announce(token, pm.Address{ID: 3, Addr: lab.Client.Addrs4[0]})
	clientRefusal(t, err, pm.ErrInvalid, "did not match address and id")

	if err := c.Remove(token, 3); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	srvEv.wait(t, "REMOVED on the server", func(e pm.Event) bool {
		return e.Type == pm.EventRemoved && e.RemoteID == 3
	})
	cliEv.wait(t, "SUB_CLOSED of the join to the removed address", isJoin(pm.EventSubClosed))
	if addrs, err := c.Addresses(token); err != nil || slices.ContainsFunc(addrs, func(a pm.Address) bool { return a.ID == 3 }) {
		t.Errorf("after Remove: Addresses = %+v, %v; want no id 3", addrs, err)
	}

	// A subflow from the second client address to the server.
	local := pm.Address{ID: 4, Addr: lab.Client.Addrs4[1]}
	remote := netip.AddrPortFrom(lab.Server.Addrs4[1], srv.Port())
	if err := c.CreateSubflow(token, local, remote); err != nil {
		t.Fatalf("CreateSubflow: %v", err)
	}
	sf := cliEv.wait(t, "SUB_ESTABLISHED", func(e pm.Event) bool {
		return e.Type == pm.EventSubEstablished && e.Token == token && e.LocalID == 4
	})
	if sf.LocalAddr != local.Addr || sf.RemoteAddr != remote.Addr() || sf.RemotePort != remote.Port() {
		t.Errorf("SUB_ESTABLISHED %+v, want %s to %s", sf, local.Addr, remote)
	}
	lport := netip.AddrPortFrom(local.Addr, sf.LocalPort)
	if out := lab.Client.Run(t, "ss", "-tnH", "state", "established", "src", lport.String()); !strings.Contains(out, remote.String()) {
		t.Errorf("ss shows no subflow %s -> %s: %q", lport, remote, out)
	}
	if addrs, err := c.Addresses(token); err != nil || !slices.ContainsFunc(addrs, func(a pm.Address) bool { return a.ID == 4 && a.Addr == local.Addr }) {
		t.Errorf("Addresses = %+v, %v; want id 4 %s", addrs, err, local.Addr)
	}

	// Backup on, then off: the server sees the MP_PRIO.
	for _, backup := range []bool{true, false} {
		f := pm.Flags(0)
		if backup {
			f = pm.FlagBackup
		}
		if err := c.SetSubflowFlags(token, lport, remote, f); err != nil {
			t.Fatalf("SetSubflowFlags(%v): %v", f, err)
		}
		srvEv.wait(t, "SUB_PRIORITY on the server", func(e pm.Event) bool {
			return e.Type == pm.EventSubPriority && e.RemoteAddr == lport.Addr() && e.RemotePort == lport.Port() && e.Backup == backup
		})
	}
	err = c.SetSubflowFlags(token, lport, netip.AddrPortFrom(remote.Addr(), remote.Port()+1), pm.FlagBackup)
	clientRefusal(t, err, pm.ErrNotFound, "subflow not found")

	if err := c.DestroySubflow(token, lport, remote); err != nil {
		t.Fatalf("DestroySubflow: %v", err)
	}
	cliEv.wait(t, "SUB_CLOSED", func(e pm.Event) bool {
		return e.Type == pm.EventSubClosed && e.Token == token && e.LocalPort == lport.Port()
	})

	// Refusals.
	err = c.Announce(token+1, pm.Address{ID: 5, Addr: lab.Client.Addrs4[1]})
	clientRefusal(t, err, pm.ErrNotFound, "invalid token")
	err = c.CreateSubflow(token+1, local, remote)
	clientRefusal(t, err, pm.ErrNotFound, "invalid token")
	err = c.Remove(token, 77)
	clientRefusal(t, err, pm.ErrNotFound, "not found")

	err = c.Announce(token, pm.Address{ID: 0, Addr: lab.Client.Addrs4[1]})
	var pe *pm.Error
	if !errors.Is(err, pm.ErrInvalid) || errors.As(err, &pe) {
		t.Errorf("Announce id 0: err = %v, want a local ErrInvalid, not a kernel refusal", err)
	}
}

func TestKernelUserspaceCommandOnKernelPM(t *testing.T) {
	lab := pmtest.NewLab(t, pmtest.LabOptions{Paths: 2})
	cliEv := clientListen(t, lab.Client)
	srv := lab.Server.Serve(t, netip.AddrPortFrom(netip.IPv4Unspecified(), 0))
	c := clientDial(t, lab.Client)
	_, token := clientMustConnect(t, lab, cliEv, lab.Client.Addrs4[0], netip.AddrPortFrom(lab.Server.Addrs4[0], srv.Port()))

	err := c.Announce(token, pm.Address{ID: 3, Addr: lab.Client.Addrs4[1]})
	clientRefusal(t, err, pm.ErrNotSupported, "userspace PM not selected")
	err = c.CreateSubflow(token, pm.Address{ID: 4, Addr: lab.Client.Addrs4[1]}, netip.AddrPortFrom(lab.Server.Addrs4[1], srv.Port()))
	clientRefusal(t, err, pm.ErrNotSupported, "userspace PM not selected")
}

// TestKernelNeedsCapability runs commands on a locked thread without
// CAP_NET_ADMIN (capabilities are per thread; the socket is made there too):
// the kernel refuses changes with EPERM, which matches pm.ErrPermission, and
// still answers reads.
func TestKernelNeedsCapability(t *testing.T) {
	h := pmtest.NewNamespace(t)
	var addErr, limitsErr error
	err := h.Do(func() error {
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var orig [2]unix.CapUserData
		if err := unix.Capget(&hdr, &orig[0]); err != nil {
			return fmt.Errorf("capget: %w", err)
		}
		dropped := orig
		dropped[0].Effective &^= 1 << unix.CAP_NET_ADMIN
		if err := unix.Capset(&hdr, &dropped[0]); err != nil {
			return fmt.Errorf("capset: %w", err)
		}
		defer func() {
			if err := unix.Capset(&hdr, &orig[0]); err != nil {
				runtime.LockOSThread() // keep this thread out of the pool: it dies with its goroutine
			}
		}()
		c, err := pmnl.Dial(nil) // the namespace of this thread
		if err != nil {
			return err
		}
		defer c.Close()
		_, addErr = c.AddEndpoint(pm.Address{ID: 1, Addr: netip.MustParseAddr("10.9.0.1"), Flags: pm.FlagSignal})
		_, limitsErr = c.Limits()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var pe *pm.Error
	if !errors.Is(addErr, pm.ErrPermission) || !errors.As(addErr, &pe) || pe.Errno != unix.EPERM {
		t.Errorf("AddEndpoint without CAP_NET_ADMIN: %v, want an EPERM refusal matching ErrPermission", addErr)
	}
	if limitsErr != nil {
		t.Errorf("Limits without CAP_NET_ADMIN: %v, want it to work", limitsErr)
	}
}

// BenchmarkPathManagerRead compares reading the path manager the way the
// daemon did at every CREATED (PathManagerType: open, read, close) with
// the kept-open reader (one pread).
func BenchmarkPathManagerRead(b *testing.B) {
	r, err := pm.OpenPathManagerReader()
	if err != nil {
		b.Skip(err)
	}
	defer r.Close()
	b.Run("PathManagerType", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := pm.PathManagerType(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("PathManagerReader", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := r.Read(); err != nil {
				b.Fatal(err)
			}
		}
	})
}
