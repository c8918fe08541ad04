package service

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmnl"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
)

// chanPublisher hands notifications to the test goroutine.
type chanPublisher chan Notification

func (c chanPublisher) Publish(n Notification) {
	select {
	case c <- n:
	default: // the test does not wait for this one
	}
}

// waitFor returns the first notification that satisfies ok.
func (c chanPublisher) waitFor(t *testing.T, what string, ok func(Notification) bool) Notification {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case n := <-c:
			if ok(n) {
				return n
			}
		case <-timeout:
			t.Fatalf("no %s within 10s", what)
		}
	}
}

// runIn starts a service in the host's namespace on the real kernel: the
// pm client and event listener, listeners and path-manager reads all in the
// namespace. It stops when the test ends.
func runIn(t *testing.T, h *pmtest.Host) (*Service, chanPublisher) {
	t.Helper()
	cfg := &pmnl.Config{NetNS: h.NSFD()}
	k, err := pmnl.Dial(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.Close() })
	l, err := pmnl.ListenEvents(cfg)
	if err != nil {
		t.Fatal(err)
	}
	pub := make(chanPublisher, 256)
	s := New(DefaultConfig(), Deps{
		Kernel:    k,
		Publisher: pub,
		Listeners: func(ap netip.AddrPort) (ln net.Listener, err error) {
			err = h.Do(func() error { ln, err = ListenMPTCP(ap); return err })
			return ln, err
		},
		PathManager: func() (p string, err error) {
			err = h.Do(func() error { p, err = pm.PathManagerType(); return err })
			return p, err
		},
	})
	ctx, cancel := context.WithCancel(context.Background())
	events := make(chan pm.Event)
	go func() {
		var buf []pm.Event
		for {
			evs, err := l.Receive(buf[:0])
			for _, ev := range evs {
				select {
				case events <- ev:
				case <-ctx.Done():
					return
				}
			}
			switch {
			case errors.Is(err, pmnl.ErrOverflow):
				s.Overflow()
			case err != nil:
				return
			}
			buf = evs
		}
	}()
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, events, nil) }()
	t.Cleanup(func() {
		cancel()
		l.Close()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return s, pub
}

func ifindex(t *testing.T, h *pmtest.Host, name string) int {
	t.Helper()
	var i int
	if err := h.Do(func() error {
		ifc, err := net.InterfaceByName(name)
		if err == nil {
			i = ifc.Index
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return i
}

// TestKernelCreateSubflow runs the service on the client of a lab under the
// userspace path manager: it sees the connection, and a subflow it asks for
// over the second path comes up.
func TestKernelCreateSubflow(t *testing.T) {
	lab := pmtest.NewLab(t, pmtest.LabOptions{Paths: 2, ClientPM: "userspace"})
	cli, srv := lab.Client, lab.Server
	s, pub := runIn(t, cli)
	c1 := ifindex(t, cli, "c1")
	if err := do(bg, s, "net", func() error {
		s.handleNet(NetEvent{Kind: NetLinkChanged, Link: Link{Index: c1, Name: "c1", Up: true, Carrier: true}})
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	server := srv.Serve(t, netip.AddrPortFrom(srv.Addrs4[0], 0))
	conn := cli.Dial(t, cli.Addrs4[0], server)
	if _, err := conn.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	est := pub.waitFor(t, "ESTABLISHED", func(n Notification) bool {
		c, ok := n.(ConnectionChanged)
		return ok && c.Connection.State == StateEstablished
	}).(ConnectionChanged).Connection
	if !est.Userspace || est.ServerSide || est.RemoteAddress != server.Addr() || est.RemotePort != server.Port() ||
		est.LocalAddress != cli.Addrs4[0] {
		t.Fatalf("connection %+v", est)
	}

	err := s.CreateSubflow(bg, Caller{}, est.ID, SubflowRequest{
		LocalAddress: cli.Addrs4[1], RemoteAddress: server.Addr(), RemotePort: server.Port(), Interface: "c1",
	})
	if err != nil {
		t.Fatal(err)
	}
	sf := pub.waitFor(t, "SUB_ESTABLISHED", func(n Notification) bool {
		e, ok := n.(SubflowEvent)
		return ok && e.Kind == SubflowEstablished
	}).(SubflowEvent)
	if sf.ConnectionID != est.ID || sf.Subflow.LocalAddress != cli.Addrs4[1] || sf.Subflow.LocalID == 0 || sf.Subflow.Interface != "c1" {
		t.Errorf("subflow %+v", sf)
	}
	c, err := s.Connection(bg, est.ID)
	if err != nil || len(c.Subflows) != 1 {
		t.Fatalf("Connection: %+v, %v; want one subflow", c, err)
	}

	// The kernel says no event for a local backup change; the service
	// updates the property itself.
	local := netip.AddrPortFrom(sf.Subflow.LocalAddress, sf.Subflow.LocalPort)
	remote := netip.AddrPortFrom(sf.Subflow.RemoteAddress, sf.Subflow.RemotePort)
	if err := s.SetSubflowBackup(bg, Caller{}, est.ID, local, remote, true); err != nil {
		t.Fatal(err)
	}
	if c, _ := s.Connection(bg, est.ID); !c.Subflows[0].Backup {
		t.Errorf("subflow not backup after SetSubflowBackup: %+v", c.Subflows[0])
	}
	if err := s.RemoveSubflow(bg, Caller{}, est.ID, local, remote); err != nil {
		t.Fatal(err)
	}
	pub.waitFor(t, "SUB_CLOSED", func(n Notification) bool {
		e, ok := n.(SubflowEvent)
		return ok && e.Kind == SubflowClosed && e.Subflow.LocalPort == local.Port()
	})

	// Errors from the kernel keep its words.
	err = s.RemoveSubflow(bg, Caller{}, est.ID, local, remote)
	wantKind(t, err, ErrNotFound)

	conn.Close()
	pub.waitFor(t, "CLOSED", func(n Notification) bool {
		r, ok := n.(ConnectionRemoved)
		return ok && r.Connection.ID == est.ID
	})
}

// TestKernelAnnounceNeedsListener runs the service on the server under the
// userspace path manager and announces its second address with port 0: the
// client's in-kernel path manager joins it, which works only because the
// service listens there.
func TestKernelAnnounceNeedsListener(t *testing.T) {
	lab := pmtest.NewLab(t, pmtest.LabOptions{Paths: 2, ServerPM: "userspace"})
	cli, srv := lab.Client, lab.Server
	s, pub := runIn(t, srv)

	server := srv.Serve(t, netip.AddrPortFrom(srv.Addrs4[0], 0))
	conn := cli.Dial(t, cli.Addrs4[0], server)
	if _, err := conn.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	est := pub.waitFor(t, "a server-side connection", func(n Notification) bool {
		var c Connection
		switch n := n.(type) {
		case ConnectionAdded:
			c = n.Connection
		case ConnectionChanged:
			c = n.Connection
		}
		return c.State == StateEstablished
	})
	var c Connection
	switch n := est.(type) {
	case ConnectionAdded:
		c = n.Connection
	case ConnectionChanged:
		c = n.Connection
	}
	if !c.ServerSide || !c.Userspace {
		t.Fatalf("connection %+v: want server side, userspace PM", c)
	}

	id, err := s.AnnounceAddress(bg, Caller{}, c.ID, srv.Addrs4[1], 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := s.Connection(bg, c.ID)
	if len(got.AnnouncedAddresses) != 1 || got.AnnouncedAddresses[0].ID != id || got.AnnouncedAddresses[0].Port == 0 {
		t.Fatalf("AnnouncedAddresses %+v", got.AnnouncedAddresses)
	}
	port := got.AnnouncedAddresses[0].Port
	sf := pub.waitFor(t, "the client's join", func(n Notification) bool {
		e, ok := n.(SubflowEvent)
		return ok && e.Kind == SubflowEstablished
	}).(SubflowEvent)
	if sf.Subflow.LocalAddress != srv.Addrs4[1] || sf.Subflow.LocalPort != port || sf.Subflow.LocalID != id {
		t.Errorf("join %+v, want to %s:%d id %d", sf.Subflow, srv.Addrs4[1], port, id)
	}

	// The listener accepts and closes a plain new connection to the
	// announced address: it serves joins only.
	other := cli.Dial(t, netip.Addr{}, netip.AddrPortFrom(srv.Addrs4[1], port))
	other.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := other.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Errorf("read on a connection to the listener: %v, want EOF", err)
	}

	// Withdrawn, the address has no listener any more.
	if err := s.RemoveAddress(bg, Caller{}, c.ID, id); err != nil {
		t.Fatal(err)
	}
	err = cli.Do(func() error {
		d := net.Dialer{Timeout: 5 * time.Second}
		d.SetMultipathTCP(true)
		c, err := d.Dial("tcp", netip.AddrPortFrom(srv.Addrs4[1], port).String())
		if err == nil {
			c.Close()
		}
		return err
	})
	if err == nil {
		t.Error("the listener is still there after RemoveAddress")
	}
}
