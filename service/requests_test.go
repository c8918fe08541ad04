package service

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
	"github.com/mptcp-pmd/mptcp-pmd/policy"
)

var (
	bg      = context.Background()
	admin   = Caller{Name: ":1.10"}
	ctlName = ":1.20"
	ctlr    = Caller{Name: ctlName}
)

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// TestRequestErrors checks every request's validation and how kernel
// refusals map: the error matches exactly one sentinel and says why.
func TestRequestErrors(t *testing.T) {
	type env struct {
		h      *harness
		us, kn uint64 // a userspace-PM and an in-kernel-PM connection
	}
	tests := []struct {
		name  string
		setup func(e *env)
		req   func(e *env) error
		want  error
		text  string // in the message
		sent  string // a kernel call that must not have been made ("" = none checked)
	}{
		{name: "connection: unknown id", want: ErrNotFound, text: "no connection 99",
			req: func(e *env) error { _, err := e.h.s.Connection(bg, 99); return err }},
		{name: "connection by token: unknown", want: ErrNotFound, text: "token 00004242",
			req: func(e *env) error { _, err := e.h.s.ConnectionByToken(bg, 0x4242); return err }},
		{name: "announce: unknown connection", want: ErrNotFound, sent: "Announce",
			req: func(e *env) error { _, err := e.h.s.AnnounceAddress(bg, admin, 99, cli2, 0, 0); return err }},
		{name: "announce: in-kernel PM connection, refused before sending", want: ErrNotSupported, text: "userspace path manager", sent: "Announce",
			req: func(e *env) error { _, err := e.h.s.AnnounceAddress(bg, admin, e.kn, cli2, 0, 0); return err }},
		{name: "announce: no address", want: ErrInvalidArguments, sent: "Announce",
			req: func(e *env) error { _, err := e.h.s.AnnounceAddress(bg, admin, e.us, netip.Addr{}, 0, 0); return err }},
		{name: "announce: id bound to another address", want: ErrInvalidArguments, text: "did not match address and id",
			setup: func(e *env) {
				if _, err := e.h.s.AnnounceAddress(bg, admin, e.us, cli2, 0, 5); err != nil {
					panic(err)
				}
			},
			req: func(e *env) error { _, err := e.h.s.AnnounceAddress(bg, admin, e.us, cliAddr, 0, 5); return err }},
		{name: "announce: kernel no longer knows the token", want: ErrNotFound, text: "invalid token",
			setup: func(e *env) { e.h.k.CloseConnection(1) }, // the CLOSED is not handed to the service
			req:   func(e *env) error { _, err := e.h.s.AnnounceAddress(bg, admin, e.us, cli2, 0, 0); return err }},
		{name: "announce: listener on a foreign address", want: ErrInvalidArguments, text: "listen", sent: "Announce",
			setup: func(e *env) { e.h.lis.fail = os.NewSyscallError("bind", syscall.EADDRNOTAVAIL) },
			req:   func(e *env) error { _, err := e.h.s.AnnounceAddress(bg, admin, e.us, cli2, 0, 0); return err }},
		{name: "remove address: unknown id", want: ErrNotFound, text: "address with id 9 not found",
			req: func(e *env) error { return e.h.s.RemoveAddress(bg, admin, e.us, 9) }},
		{name: "remove address: in-kernel PM", want: ErrNotSupported, sent: "Remove",
			req: func(e *env) error { return e.h.s.RemoveAddress(bg, admin, e.kn, 1) }},
		{name: "create subflow: no remote port", want: ErrInvalidArguments, sent: "CreateSubflow",
			req: func(e *env) error {
				return e.h.s.CreateSubflow(bg, admin, e.us, SubflowRequest{LocalAddress: cli2, RemoteAddress: srvAddr})
			}},
		{name: "create subflow: no local address", want: ErrInvalidArguments, sent: "CreateSubflow",
			req: func(e *env) error {
				return e.h.s.CreateSubflow(bg, admin, e.us, SubflowRequest{RemoteAddress: srvAddr, RemotePort: 80})
			}},
		{name: "create subflow: families differ", want: ErrInvalidArguments, text: "different families", sent: "CreateSubflow",
			req: func(e *env) error {
				return e.h.s.CreateSubflow(bg, admin, e.us, SubflowRequest{LocalAddress: netip.MustParseAddr("fd00::1"), RemoteAddress: srvAddr, RemotePort: 80})
			}},
		{name: "create subflow: unknown interface", want: ErrInvalidArguments, text: `"wwan9"`, sent: "CreateSubflow",
			req: func(e *env) error {
				return e.h.s.CreateSubflow(bg, admin, e.us, SubflowRequest{LocalAddress: cli2, RemoteAddress: srvAddr, RemotePort: 80, Interface: "wwan9"})
			}},
		{name: "create subflow: zone and interface differ", want: ErrInvalidArguments, sent: "CreateSubflow",
			req: func(e *env) error {
				return e.h.s.CreateSubflow(bg, admin, e.us, SubflowRequest{LocalAddress: netip.MustParseAddr("fe80::1%c0"), RemoteAddress: netip.MustParseAddr("fe80::2"), RemotePort: 80, Interface: "c1"})
			}},
		{name: "create subflow: in-kernel PM", want: ErrNotSupported, sent: "CreateSubflow",
			req: func(e *env) error {
				return e.h.s.CreateSubflow(bg, admin, e.kn, SubflowRequest{LocalAddress: cli2, RemoteAddress: srvAddr, RemotePort: 80})
			}},
		{name: "remove subflow: unknown subflow", want: ErrNotFound, text: "subflow not found",
			req: func(e *env) error {
				return e.h.s.RemoveSubflow(bg, admin, e.us, ap("10.55.1.1:1"), ap("10.55.0.2:8080"))
			}},
		{name: "remove subflow: no local port", want: ErrInvalidArguments, sent: "DestroySubflow",
			req: func(e *env) error {
				return e.h.s.RemoveSubflow(bg, admin, e.us, ap("10.55.1.1:0"), ap("10.55.0.2:8080"))
			}},
		{name: "set subflow backup: unknown subflow", want: ErrNotFound, text: "subflow not found",
			req: func(e *env) error {
				return e.h.s.SetSubflowBackup(bg, admin, e.us, ap("10.55.1.1:0"), ap("10.55.0.2:8080"), true)
			}},
		{name: "set subflow backup: no remote port", want: ErrInvalidArguments, sent: "SetSubflowFlags",
			req: func(e *env) error {
				return e.h.s.SetSubflowBackup(bg, admin, e.us, ap("10.55.1.1:0"), ap("10.55.0.2:0"), true)
			}},
		{name: "add endpoint: no address", want: ErrInvalidArguments, sent: "AddEndpoint",
			req: func(e *env) error { _, err := e.h.s.AddEndpoint(bg, admin, policy.Endpoint{}); return err }},
		{name: "add endpoint: unknown interface", want: ErrInvalidArguments, sent: "AddEndpoint",
			req: func(e *env) error {
				_, err := e.h.s.AddEndpoint(bg, admin, policy.Endpoint{Address: pm.Address{Addr: cli2}, Interface: "nope0"})
				return err
			}},
		{name: "add endpoint: duplicate address", want: ErrExists,
			setup: func(e *env) { e.h.s.AddEndpoint(bg, admin, policy.Endpoint{Address: pm.Address{Addr: cli2}}) },
			req: func(e *env) error {
				_, err := e.h.s.AddEndpoint(bg, admin, policy.Endpoint{Address: pm.Address{Addr: cli2}})
				return err
			}},
		{name: "add endpoint: id in use", want: ErrBusy,
			setup: func(e *env) { e.h.s.AddEndpoint(bg, admin, policy.Endpoint{Address: pm.Address{Addr: cli2, ID: 3}}) },
			req: func(e *env) error {
				_, err := e.h.s.AddEndpoint(bg, admin, policy.Endpoint{Address: pm.Address{Addr: cliAddr, ID: 3}})
				return err
			}},
		{name: "add endpoint: kernel says EPERM", want: ErrPermissionDenied,
			setup: func(e *env) {
				e.h.k.FailNext("AddEndpoint", &pm.Error{Op: "add endpoint", Errno: syscall.EPERM})
			},
			req: func(e *env) error {
				_, err := e.h.s.AddEndpoint(bg, admin, policy.Endpoint{Address: pm.Address{Addr: cli2}})
				return err
			}},
		{name: "add endpoint: an errno without sentinel is Failed", want: ErrFailed, text: "too many addresses",
			setup: func(e *env) {
				for i := range 8 {
					e.h.s.AddEndpoint(bg, admin, policy.Endpoint{Address: pm.Address{Addr: netip.AddrFrom4([4]byte{10, 9, 9, byte(i)})}})
				}
			},
			req: func(e *env) error {
				_, err := e.h.s.AddEndpoint(bg, admin, policy.Endpoint{Address: pm.Address{Addr: cli2}})
				return err
			}},
		{name: "remove endpoint: unknown id", want: ErrNotFound, text: "address not found",
			req: func(e *env) error { return e.h.s.RemoveEndpoint(bg, admin, 77) }},
		{name: "remove endpoint: id 0", want: ErrInvalidArguments, sent: "DeleteEndpoint",
			req: func(e *env) error { return e.h.s.RemoveEndpoint(bg, admin, 0) }},
		{name: "set endpoint flags: unknown id", want: ErrNotFound,
			req: func(e *env) error { return e.h.s.SetEndpointFlags(bg, admin, 77, pm.FlagBackup) }},
		{name: "set limits: above the kernel's maximum", want: ErrInvalidArguments, text: "limit greater than maximum",
			req: func(e *env) error { return e.h.s.SetLimits(bg, admin, Limits{Subflows: 9}) }},
		{name: "flush endpoints: kernel says EOPNOTSUPP", want: ErrNotSupported,
			setup: func(e *env) {
				e.h.k.FailNext("FlushEndpoints", &pm.Error{Op: "flush endpoints", Errno: syscall.EOPNOTSUPP})
			},
			req: func(e *env) error { return e.h.s.FlushEndpoints(bg, admin) }},
		{name: "register controller: no name", want: ErrInvalidArguments,
			req: func(e *env) error { return e.h.s.RegisterController(bg, Caller{}, "/c") }},
		{name: "register controller: already controlled", want: ErrAlreadyControlled, text: ctlName,
			setup: func(e *env) { e.h.s.RegisterController(bg, ctlr, "/c") },
			req:   func(e *env) error { return e.h.s.RegisterController(bg, admin, "/c") }},
		{name: "register controller: twice by the controller", want: ErrAlreadyControlled,
			setup: func(e *env) { e.h.s.RegisterController(bg, ctlr, "/c") },
			req:   func(e *env) error { return e.h.s.RegisterController(bg, ctlr, "/c") }},
		{name: "unregister controller: none registered", want: ErrNotController,
			req: func(e *env) error { return e.h.s.UnregisterController(bg, ctlr, "/c") }},
		{name: "unregister controller: other path", want: ErrNotController,
			setup: func(e *env) { e.h.s.RegisterController(bg, ctlr, "/c") },
			req:   func(e *env) error { return e.h.s.UnregisterController(bg, ctlr, "/d") }},
		{name: "unregister controller: other caller", want: ErrNotController,
			setup: func(e *env) { e.h.s.RegisterController(bg, ctlr, "/c") },
			req:   func(e *env) error { return e.h.s.UnregisterController(bg, admin, "/c") }},
		{name: "cancelled context", want: ErrFailed, text: "context canceled",
			req: func(e *env) error {
				ctx, cancel := context.WithCancel(bg)
				cancel()
				_, err := e.h.s.Manager(ctx)
				if !errors.Is(err, context.Canceled) {
					return errors.New("not context.Canceled")
				}
				return err
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			e := &env{h: h}
			e.us = h.open(1, "10.55.0.1:40000", "10.55.0.2:8080")
			h.k.AddConnection(2, false, ap("10.55.0.1:40001"), ap("10.55.0.2:8080"))
			h.setPMSeen("kernel")
			h.pump()
			e.kn, _ = h.s.ConnectionByToken(bg, 2)
			if tt.setup != nil {
				tt.setup(e)
			}
			before := len(h.k.Calls())
			err := tt.req(e)
			wantKind(t, err, tt.want)
			if !strings.Contains(err.Error(), tt.text) {
				t.Errorf("error %q does not say %q", err, tt.text)
			}
			if tt.sent != "" {
				for _, c := range h.k.Calls()[before:] {
					if strings.HasPrefix(c, tt.sent+" ") {
						t.Errorf("kernel was called: %s", c)
					}
				}
			}
		})
	}
}

// TestNotController checks that every mutating request of someone else is
// refused while a controller is registered, before the kernel is asked,
// and that the controller's own requests pass.
func TestNotController(t *testing.T) {
	h := newHarness(t)
	id := h.open(1, "10.55.0.1:40000", "10.55.0.2:8080")
	if err := h.s.RegisterController(bg, ctlr, "/org/example/ctl"); err != nil {
		t.Fatal(err)
	}
	requests := map[string]func(c Caller) error{
		"AddEndpoint": func(c Caller) error {
			_, err := h.s.AddEndpoint(bg, c, policy.Endpoint{Address: pm.Address{Addr: cli2}})
			return err
		},
		"SetEndpointFlags": func(c Caller) error { return h.s.SetEndpointFlags(bg, c, 1, pm.FlagBackup) },
		"RemoveEndpoint":   func(c Caller) error { return h.s.RemoveEndpoint(bg, c, 1) },
		"FlushEndpoints":   func(c Caller) error { return h.s.FlushEndpoints(bg, c) },
		"SetLimits":        func(c Caller) error { return h.s.SetLimits(bg, c, Limits{Subflows: 4, AddAddrAccepted: 4}) },
		"AnnounceAddress": func(c Caller) error {
			_, err := h.s.AnnounceAddress(bg, c, id, cli2, 0, 0)
			return err
		},
		"CreateSubflow": func(c Caller) error {
			return h.s.CreateSubflow(bg, c, id, SubflowRequest{LocalAddress: cli2, RemoteAddress: srvAddr, RemotePort: 8080})
		},
		"SetSubflowBackup": func(c Caller) error {
			return h.s.SetSubflowBackup(bg, c, id, ap("10.55.1.1:0"), ap("10.55.0.2:8080"), true)
		},
		"RemoveSubflow": func(c Caller) error {
			return h.s.RemoveSubflow(bg, c, id, ap("10.55.1.1:40001"), ap("10.55.0.2:8080"))
		},
		"RemoveAddress": func(c Caller) error { return h.s.RemoveAddress(bg, c, id, 1) },
	}
	// The order makes each controller request valid after the previous.
	order := []string{"AddEndpoint", "SetEndpointFlags", "RemoveEndpoint", "FlushEndpoints", "SetLimits",
		"AnnounceAddress", "CreateSubflow", "SetSubflowBackup", "RemoveSubflow", "RemoveAddress"}
	for _, name := range order {
		before := len(h.k.Calls())
		for _, other := range []Caller{admin, {Name: ""}} {
			wantKind(t, requests[name](other), ErrNotController)
		}
		if calls := h.k.Calls()[before:]; len(calls) != 0 {
			t.Errorf("%s by another caller reached the kernel: %v", name, calls)
		}
		if err := requests[name](ctlr); err != nil {
			t.Errorf("%s by the controller: %v", name, err)
		}
		h.pump() // the subflow's SUB_ESTABLISHED, for the requests after
	}
}

func TestController(t *testing.T) {
	h := newHarness(t)
	if err := h.s.RegisterController(bg, ctlr, "/c"); err != nil {
		t.Fatal(err)
	}
	ns := h.take()
	sameStrings(t, "register", describeAll(ns), []string{"manager [ControlMode Controller]"})
	if m := ns[0].(ManagerChanged).Manager; m.ControlMode != ModeController || m.Controller != ctlName {
		t.Errorf("after register: mode %q controller %q", m.ControlMode, m.Controller)
	}
	h.s.ControllerVanished(":1.99") // somebody else
	sameStrings(t, "other name vanished", describeAll(h.take()), nil)
	h.s.ControllerVanished(ctlName)
	ns = h.take()
	sameStrings(t, "controller vanished", describeAll(ns), []string{"manager [ControlMode Controller]"})
	if m := ns[0].(ManagerChanged).Manager; m.ControlMode != ModeBuiltin || m.Controller != "" {
		t.Errorf("after vanishing: mode %q controller %q", m.ControlMode, m.Controller)
	}
	// A new claim, given back.
	if err := h.s.RegisterController(bg, admin, "/a"); err != nil {
		t.Fatal(err)
	}
	if err := h.s.UnregisterController(bg, admin, "/a"); err != nil {
		t.Fatal(err)
	}
	sameStrings(t, "register, unregister", describeAll(h.take()), []string{
		"manager [ControlMode Controller]", "manager [ControlMode Controller]",
	})
	if err := h.s.RegisterController(bg, admin, "/a"); err != nil {
		t.Fatal(err)
	}
}

// TestShutdown checks what Run's return does: the controller is told, the
// listeners are closed, and requests fail.
func TestShutdown(t *testing.T) {
	k := pmtest.NewFakeKernel()
	rec := &recorder{}
	lis := newFakeListeners()
	s := New(DefaultConfig(), Deps{Kernel: k, Publisher: rec, Listeners: lis.listen,
		PathManager: func() (string, error) { return "userspace", nil }})
	events := make(chan pm.Event)
	ctx, cancel := context.WithCancel(bg)
	done := make(chan error)
	go func() { done <- s.Run(ctx, events, nil) }()

	for _, ev := range k.AddConnection(1, true, ap("10.55.0.1:1"), ap("10.55.0.2:2")) {
		events <- ev
	}
	if _, err := s.AnnounceAddress(bg, Caller{}, 1, cli2, 0, 0); err != nil {
		t.Fatal(err)
	}
	if err := s.RegisterController(bg, ctlr, "/c"); err != nil {
		t.Fatal(err)
	}
	if len(lis.openAddrs()) != 1 {
		t.Fatalf("listeners open: %v", lis.openAddrs())
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if open := lis.openAddrs(); len(open) != 0 {
		t.Errorf("listeners open after Run: %v", open)
	}
	last := rec.ns[len(rec.ns)-1]
	if got := describe(last); got != "released :1.20 /c shutdown" {
		t.Errorf("last notification %q, want the controller's release", got)
	}
	_, err := s.Manager(bg)
	wantKind(t, err, ErrFailed)
	if err := s.Run(bg, events, nil); err == nil {
		t.Error("a second Run did not fail")
	}
	s.ControllerVanished(ctlName) // must not block
}

func TestRunEndsWhenEventsClose(t *testing.T) {
	s := New(DefaultConfig(), Deps{Kernel: pmtest.NewFakeKernel(), PathManager: func() (string, error) { return "kernel", nil }})
	events := make(chan pm.Event)
	close(events)
	if err := s.Run(bg, events, nil); err == nil {
		t.Error("Run returned nil after the kernel events ended")
	}
}

func TestRunFailsOnRefusedLimits(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Limits = &Limits{Subflows: 9, AddAddrAccepted: 1}
	s := New(cfg, Deps{Kernel: pmtest.NewFakeKernel(), PathManager: func() (string, error) { return "kernel", nil }})
	err := s.Run(bg, nil, nil)
	if err == nil || !strings.Contains(err.Error(), "limit greater than maximum") {
		t.Errorf("Run = %v, want the kernel's refusal of the limits", err)
	}
}

func TestAnnounceAndListeners(t *testing.T) {
	h := newHarness(t)
	c1 := h.open(1, "10.55.0.1:40000", "10.55.0.2:8080")
	c2 := h.open(2, "10.55.0.1:40001", "10.55.0.2:8080")
	h.take()

	// Port 0: a listener on a port the kernel (here the fake) chose, and
	// that port is announced. The daemon chooses the id.
	id, err := h.s.AnnounceAddress(bg, admin, c1, cli2, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if id == 0 {
		t.Fatal("announced with id 0")
	}
	open := h.lis.openAddrs()
	if len(open) != 1 {
		t.Fatalf("listeners %v, want one", open)
	}
	bound := ap(open[0])
	if bound.Addr() != cli2 || bound.Port() == 0 {
		t.Fatalf("listener on %v", bound)
	}
	c, _ := h.s.Connection(bg, c1)
	if want := (AnnouncedAddress{ID: id, Address: cli2, Port: bound.Port()}); len(c.AnnouncedAddresses) != 1 || c.AnnouncedAddresses[0] != want {
		t.Errorf("AnnouncedAddresses = %+v, want [%+v]", c.AnnouncedAddresses, want)
	}
	sameStrings(t, "announce", describeAll(h.take()), []string{"changed 1 [AnnouncedAddresses]"})
	calls := h.k.Calls()
	if last := calls[len(calls)-1]; !strings.Contains(last, "Announce 1") || !strings.Contains(last, "Port:"+strconv.Itoa(int(bound.Port()))) {
		t.Errorf("kernel call %q does not announce port %d", last, bound.Port())
	}

	// The second connection shares the listener, and gets the same id.
	id2, err := h.s.AnnounceAddress(bg, admin, c2, cli2, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if id2 != id {
		t.Errorf("same address got id %d, then %d", id, id2)
	}
	if h.lis.opened != 1 {
		t.Errorf("%d listeners opened, want 1 shared", h.lis.opened)
	}
	// Removing the first announcement keeps the listener for the second...
	if err := h.s.RemoveAddress(bg, admin, c1, id); err != nil {
		t.Fatal(err)
	}
	if len(h.lis.openAddrs()) != 1 {
		t.Errorf("listener closed while still announced on connection 2")
	}
	// ...and the second connection's CLOSED closes it.
	h.k.CloseConnection(2)
	h.pump()
	h.take()
	if open := h.lis.openAddrs(); len(open) != 0 {
		t.Errorf("listeners %v open after the last announcement's connection closed", open)
	}

	// A kernel refusal releases the listener just opened.
	h.k.FailNext("Announce", &pm.Error{Op: "announce", Errno: syscall.EBUSY})
	_, err = h.s.AnnounceAddress(bg, admin, c1, cli2, 7000, 0)
	wantKind(t, err, ErrBusy)
	if open := h.lis.openAddrs(); len(open) != 0 {
		t.Errorf("listeners %v open after a refused announcement", open)
	}

	// An explicit port somebody already listens on is announced without a
	// listener of ours.
	h.lis.listen(ap("10.55.1.1:443")) // "the server's own socket"
	id443, err := h.s.AnnounceAddress(bg, admin, c1, cli2, 443, 0)
	if err != nil {
		t.Fatalf("announce on a port in use: %v", err)
	}
	if err := h.s.RemoveAddress(bg, admin, c1, id443); err != nil {
		t.Fatal(err)
	}
	if open := h.lis.openAddrs(); len(open) != 1 || open[0] != "10.55.1.1:443" {
		t.Errorf("listeners %v, want the foreign one left alone", open)
	}
}

func TestReannounceSameID(t *testing.T) {
	h := newHarness(t)
	c1 := h.open(1, "10.55.0.1:40000", "10.55.0.2:8080")
	h.take()
	for range 3 {
		if _, err := h.s.AnnounceAddress(bg, admin, c1, cli2, 8080, 4); err != nil {
			t.Fatal(err)
		}
	}
	sameStrings(t, "announce thrice", describeAll(h.take()), []string{"changed 1 [AnnouncedAddresses]"})
	h.inspect(func() {
		if n := h.s.lis.held[ap("10.55.1.1:8080")].refs; n != 1 {
			t.Errorf("listener has %d references, want 1", n)
		}
	})
}

func TestSubflowRequests(t *testing.T) {
	h := newHarness(t)
	h.sendNet(NetEvent{Kind: NetLinkChanged, Link: Link{Index: 5, Name: "c1", Up: true, Carrier: true}})
	c1 := h.open(1, "10.55.0.1:40000", "10.55.0.2:8080")
	c2 := h.open(2, "10.55.0.1:40001", "10.55.0.2:8080")
	h.take()

	req := SubflowRequest{LocalAddress: cli2, RemoteAddress: srvAddr, RemotePort: 8080, Interface: "c1", Backup: true}
	if err := h.s.CreateSubflow(bg, admin, c1, req); err != nil {
		t.Fatal(err)
	}
	if err := h.s.CreateSubflow(bg, admin, c2, req); err != nil {
		t.Fatal(err)
	}
	h.pump()
	ns := describeAll(h.take())
	sameStrings(t, "subflows", ns, []string{
		`subflow 1 established 1/0 10.55.1.1:40001-10.55.0.2:8080 backup=true if="c1" err=0 reset=0`,
		"changed 1 [Subflows]",
		`subflow 2 established 1/0 10.55.1.1:40002-10.55.0.2:8080 backup=true if="c1" err=0 reset=0`,
		"changed 2 [Subflows]",
	})
	// An announcement binds the id to the address and the announced port,
	// which the subflows' (port 0) differs from: it gets another id, the
	// same on both connections.
	id1, err := h.s.AnnounceAddress(bg, admin, c1, cli2, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	id2, err := h.s.AnnounceAddress(bg, admin, c2, cli2, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if id1 == 1 || id1 != id2 {
		t.Errorf("announcements got ids %d and %d, want one id other than the subflows' 1", id1, id2)
	}
	// An explicit id the kernel accepts is kept for the address.
	other := netip.MustParseAddr("10.55.2.1")
	if err := h.s.CreateSubflow(bg, admin, c1, SubflowRequest{LocalAddress: other, LocalID: 9, RemoteAddress: srvAddr, RemotePort: 8080}); err != nil {
		t.Fatal(err)
	}
	if err := h.s.CreateSubflow(bg, admin, c2, SubflowRequest{LocalAddress: other, RemoteAddress: srvAddr, RemotePort: 8080}); err != nil {
		t.Fatal(err)
	}
	calls := h.k.Calls()
	if last := calls[len(calls)-1]; !strings.Contains(last, "{ID:9 Addr:10.55.2.1 ") {
		t.Errorf("second subflow from %s: %s, want id 9", other, last)
	}
	h.pump()
	h.take()

	// Backup off: the kernel sends no event, the service updates Subflows.
	if err := h.s.SetSubflowBackup(bg, admin, c1, ap("10.55.1.1:0"), ap("10.55.0.2:8080"), false); err != nil {
		t.Fatal(err)
	}
	sameStrings(t, "backup", describeAll(h.take()), []string{"changed 1 [Subflows]"})
	c, _ := h.s.Connection(bg, c1)
	if c.Subflows[0].Backup {
		t.Errorf("subflow still backup: %+v", c.Subflows[0])
	}
	// Remove: the change comes with the kernel's SUB_CLOSED.
	if err := h.s.RemoveSubflow(bg, admin, c1, ap("10.55.1.1:40001"), ap("10.55.0.2:8080")); err != nil {
		t.Fatal(err)
	}
	h.pump()
	sameStrings(t, "remove", describeAll(h.take()), []string{
		`subflow 1 closed 1/0 10.55.1.1:40001-10.55.0.2:8080 backup=false if="c1" err=0 reset=0`,
		"changed 1 [Subflows]",
	})
}

func TestEndpoints(t *testing.T) {
	k := pmtest.NewFakeKernel()
	ext := netip.MustParseAddr("192.0.2.1")
	if _, err := k.AddEndpoint(pm.Address{Addr: ext, Flags: pm.FlagSignal}); err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, withKernel(k))
	h.sendNet(NetEvent{Kind: NetLinkChanged, Link: Link{Index: 5, Name: "c1", Up: true, Carrier: true}})
	m, _ := h.s.Manager(bg)
	if len(m.Endpoints) != 1 || m.Endpoints[0].Origin != policy.OriginExternal || m.Endpoints[0].Addr != ext {
		t.Fatalf("Endpoints at start = %+v, want the external one", m.Endpoints)
	}
	h.take()

	id, err := h.s.AddEndpoint(bg, admin, policy.Endpoint{Address: pm.Address{Addr: cli2, Flags: pm.FlagSubflow}, Interface: "c1", Origin: policy.OriginPolicy})
	if err != nil {
		t.Fatal(err)
	}
	if id != 2 {
		t.Errorf("id %d, want 2 (the kernel's next)", id)
	}
	ns := h.take()
	sameStrings(t, "add", describeAll(ns), []string{"manager [Endpoints]"})
	want := policy.Endpoint{Address: pm.Address{ID: 2, Addr: cli2, Flags: pm.FlagSubflow}, Interface: "c1", Origin: policy.OriginAdmin}
	got := ns[0].(ManagerChanged).Manager.Endpoints
	if len(got) != 2 || !sameEndpoint(got[1], want) {
		t.Errorf("Endpoints = %+v, want the external one and %+v", got, want)
	}

	// Someone else adds one; the service sees it at the next read.
	k.AddEndpoint(pm.Address{Addr: cliAddr, Flags: pm.FlagSubflow})
	if err := h.s.SetEndpointFlags(bg, admin, id, pm.FlagSubflow|pm.FlagBackup); err != nil {
		t.Fatal(err)
	}
	m, _ = h.s.Manager(bg)
	if len(m.Endpoints) != 3 || m.Endpoints[1].Flags != pm.FlagSubflow|pm.FlagBackup ||
		m.Endpoints[1].Origin != policy.OriginAdmin || m.Endpoints[2].Origin != policy.OriginExternal {
		t.Errorf("Endpoints = %+v", m.Endpoints)
	}

	// The controller's endpoints are the controller's.
	h.s.RegisterController(bg, ctlr, "/c")
	id, err = h.s.AddEndpoint(bg, ctlr, policy.Endpoint{Address: pm.Address{Addr: netip.MustParseAddr("fe80::1%c1")}})
	if err != nil {
		t.Fatal(err)
	}
	m, _ = h.s.Manager(bg)
	if e := m.Endpoints[len(m.Endpoints)-1]; e.ID != id || e.Origin != policy.OriginController || e.Interface != "c1" || e.Addr.Zone() != "" {
		t.Errorf("controller's endpoint = %+v", e)
	}
	h.take()

	if err := h.s.RemoveEndpoint(bg, ctlr, 2); err != nil {
		t.Fatal(err)
	}
	if err := h.s.FlushEndpoints(bg, ctlr); err != nil {
		t.Fatal(err)
	}
	if err := h.s.FlushEndpoints(bg, ctlr); err != nil {
		t.Fatal(err)
	}
	sameStrings(t, "remove, flush, flush", describeAll(h.take()), []string{"manager [Endpoints]", "manager [Endpoints]"})
	m, _ = h.s.Manager(bg)
	if len(m.Endpoints) != 0 {
		t.Errorf("Endpoints after flush = %+v", m.Endpoints)
	}
}

// sameEndpoint compares what the Endpoints property shows (the interface by
// name).
func sameEndpoint(a, b policy.Endpoint) bool {
	a.Ifindex, b.Ifindex = 0, 0
	return a == b
}

func TestEndpointsWhenTheKernelCannotBeRead(t *testing.T) {
	h := newHarness(t)
	h.take()
	h.k.FailNext("Endpoints", errors.New("netlink: boom"))
	id, err := h.s.AddEndpoint(bg, admin, policy.Endpoint{Address: pm.Address{Addr: cli2}})
	if err != nil {
		t.Fatal(err)
	}
	m, _ := h.s.Manager(bg)
	if len(m.Endpoints) != 1 || m.Endpoints[0].ID != id || m.Endpoints[0].Origin != policy.OriginAdmin {
		t.Errorf("Endpoints = %+v, want the one added", m.Endpoints)
	}
}

func TestLimits(t *testing.T) {
	h := newHarness(t, withConfig(func(c *Config) { c.Limits = &Limits{Subflows: 4, AddAddrAccepted: 3} }))
	m, _ := h.s.Manager(bg)
	if m.Limits != (Limits{Subflows: 4, AddAddrAccepted: 3}) {
		t.Errorf("limits at start %+v, want the configured ones", m.Limits)
	}
	h.take()
	if err := h.s.SetLimits(bg, admin, Limits{Subflows: 8, AddAddrAccepted: 8}); err != nil {
		t.Fatal(err)
	}
	if err := h.s.SetLimits(bg, admin, Limits{Subflows: 8, AddAddrAccepted: 8}); err != nil {
		t.Fatal(err)
	}
	ns := h.take()
	sameStrings(t, "set twice", describeAll(ns), []string{"manager [Limits]"})
	if l := ns[0].(ManagerChanged).Manager.Limits; l != (Limits{8, 8}) {
		t.Errorf("published limits %+v", l)
	}
}

func TestOverflowRereadsKeepsConnections(t *testing.T) {
	h := newHarness(t)
	h.open(1, "10.55.0.1:40000", "10.55.0.2:8080")
	h.take()
	h.k.AddEndpoint(pm.Address{Addr: cli2, Flags: pm.FlagSubflow})
	h.k.SetLimits(pm.Limits{Subflows: 5, AddAddrAccepted: 1})
	h.s.Overflow()
	h.s.Overflow() // coalesced with the first, or a second resync: either way no further change
	eventually(t, "resync", func() bool {
		m, _ := h.s.Manager(bg)
		return len(m.Endpoints) == 1 && m.Limits.Subflows == 5
	})
	conns, _ := h.s.Connections(bg)
	if len(conns) != 1 {
		t.Errorf("%d connections after overflow, want 1", len(conns))
	}
	sameStrings(t, "resync", describeAll(h.take()), []string{"manager [Limits]", "manager [Endpoints]"})
}

// TestCreateSubflowForeignAddress checks that, once the host's addresses
// are known, a subflow from an address the host does not have is refused
// before the kernel is asked (the kernel would only say EADDRNOTAVAIL).
func TestCreateSubflowForeignAddress(t *testing.T) {
	h := newHarness(t)
	h.sendNet(
		NetEvent{Kind: NetLinkChanged, Link: Link{Index: 5, Name: "c1", Up: true, Carrier: true}},
		NetEvent{Kind: NetAddressAdded, Address: LinkAddress{Index: 5, Prefix: netip.MustParsePrefix("10.55.1.1/24")}},
		NetEvent{Kind: NetSynced},
	)
	c := h.open(1, "10.55.0.1:40000", "10.55.0.2:8080")
	h.take()
	err := h.s.CreateSubflow(bg, admin, c, SubflowRequest{LocalAddress: netip.MustParseAddr("10.55.9.9"), RemoteAddress: srvAddr, RemotePort: 8080})
	if !errors.Is(err, ErrInvalidArguments) || !strings.Contains(err.Error(), "10.55.9.9 is not an address of this host") {
		t.Errorf("foreign local address: %v, want InvalidArguments naming it", err)
	}
	for _, call := range h.k.Calls() {
		if strings.HasPrefix(call, "CreateSubflow") {
			t.Errorf("the kernel was asked: %s", call)
		}
	}
	if err := h.s.CreateSubflow(bg, admin, c, SubflowRequest{LocalAddress: netip.MustParseAddr("10.55.1.1"), RemoteAddress: srvAddr, RemotePort: 8080}); err != nil {
		t.Errorf("own address: %v", err)
	}
}

// TestManagerConnectionCount: the manager counts the live connections, for
// the daemon's STATUS= line, without listing them.
func TestManagerConnectionCount(t *testing.T) {
	h := newHarness(t)
	count := func() int {
		m, err := h.s.Manager(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return m.ConnectionCount
	}
	if n := count(); n != 0 {
		t.Errorf("no connection: count %d", n)
	}
	h.open(1, "10.55.0.1:40000", "10.55.0.2:80")
	h.open(2, "10.55.0.1:40001", "10.55.0.2:80")
	if n := count(); n != 2 {
		t.Errorf("two connections: count %d", n)
	}
	h.send(h.k.CloseConnection(1)...)
	if n := count(); n != 1 {
		t.Errorf("one closed: count %d", n)
	}
}
