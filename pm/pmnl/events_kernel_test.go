//go:build linux

package pmnl_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmnl"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
)

const eventWait = 10 * time.Second

// recorder keeps every event one namespace's listener receives, so that a
// test can wait for events in any order.
type recorder struct {
	name string
	mu   sync.Mutex
	evs  []pm.Event
	err  error
	more chan struct{} // closed and replaced whenever events or an error arrive
}

// record opens an EventListener in h's namespace and records its events
// until the test ends.
func record(t *testing.T, h *pmtest.Host) *recorder {
	t.Helper()
	l, err := pmnl.ListenEvents(&pmnl.Config{NetNS: h.NSFD()})
	if err != nil {
		t.Fatalf("ListenEvents in %s: %v", h.Name, err)
	}
	r := &recorder{name: h.Name, more: make(chan struct{})}
	done := make(chan struct{})
	go func() {
		defer close(done)
		var buf []pm.Event
		for {
			var err error
			buf, err = l.Receive(buf)
			r.mu.Lock()
			r.evs = append(r.evs, buf...)
			if err != nil && !errors.Is(err, net.ErrClosed) {
				r.err = err
			}
			close(r.more)
			r.more = make(chan struct{})
			r.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		<-done
		if r.err != nil {
			t.Errorf("%s: Receive: %v", r.name, r.err)
		}
	})
	return r
}

// wait returns the first recorded event that match accepts, waiting for it
// if need be; the test fails if none comes.
func (r *recorder) wait(t *testing.T, what string, match func(pm.Event) bool) pm.Event {
	t.Helper()
	deadline := time.After(eventWait)
	for seen := 0; ; {
		r.mu.Lock()
		evs, err, more := r.evs, r.err, r.more
		r.mu.Unlock()
		for ; seen < len(evs); seen++ {
			if match(evs[seen]) {
				return evs[seen]
			}
		}
		if err != nil {
			t.Fatalf("%s: waiting for %s: %v", r.name, what, err)
		}
		select {
		case <-more:
		case <-deadline:
			t.Fatalf("%s: no %s within %v; events:\n%s", r.name, what, eventWait, r.dump())
		}
	}
}

func (r *recorder) dump() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	for _, ev := range r.evs {
		fmt.Fprintf(&b, "  %v %+v\n", ev.Type, ev)
	}
	return b.String()
}

func is(typ pm.EventType, token uint32) func(pm.Event) bool {
	return func(ev pm.Event) bool { return ev.Type == typ && ev.Token == token }
}

func checkEvent(t *testing.T, got, want pm.Event) {
	t.Helper()
	if got != want {
		t.Errorf("%v:\n got %+v\nwant %+v", want.Type, got, want)
	}
}

func addrPort(t *testing.T, a net.Addr) netip.AddrPort {
	t.Helper()
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		t.Fatal(err)
	}
	return ap
}

func ifindex(t *testing.T, h *pmtest.Host, name string) int32 {
	t.Helper()
	var idx int
	if err := h.Do(func() error {
		ifi, err := net.InterfaceByName(name)
		if err == nil {
			idx = ifi.Index
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return int32(idx)
}

func send(t *testing.T, c net.Conn) {
	t.Helper()
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
}

// connectionEvents dials from the client's first address to srv and checks
// CREATED and ESTABLISHED on both sides; it returns the connection and the
// client's and the server's tokens.
func connectionEvents(t *testing.T, lab *pmtest.Lab, cli, srv *recorder, local netip.Addr, srvAddr netip.AddrPort) (net.Conn, uint32, uint32) {
	t.Helper()
	conn := lab.Client.Dial(t, local, srvAddr)
	send(t, conn)
	la, ra := addrPort(t, conn.LocalAddr()), addrPort(t, conn.RemoteAddr())
	family := uint16(afInet)
	if la.Addr().Is6() {
		family = afInet6
	}
	byPort := func(typ pm.EventType) func(pm.Event) bool {
		return func(ev pm.Event) bool {
			return ev.Type == typ && (ev.LocalPort == la.Port() || ev.RemotePort == la.Port())
		}
	}

	cc := cli.wait(t, "client CREATED", byPort(pm.EventCreated))
	if cc.Token == 0 {
		t.Errorf("client CREATED with token 0")
	}
	want := pm.Event{Type: pm.EventCreated, Token: cc.Token, Family: family,
		LocalAddr: la.Addr(), LocalPort: la.Port(), RemoteAddr: ra.Addr(), RemotePort: ra.Port()}
	checkEvent(t, cc, want)
	want.Type = pm.EventEstablished
	checkEvent(t, cli.wait(t, "client ESTABLISHED", is(pm.EventEstablished, cc.Token)), want)

	sc := srv.wait(t, "server CREATED", byPort(pm.EventCreated))
	if sc.Token == 0 {
		t.Errorf("server CREATED with token 0")
	}
	want = pm.Event{Type: pm.EventCreated, Token: sc.Token, Family: family,
		LocalAddr: ra.Addr(), LocalPort: ra.Port(), RemoteAddr: la.Addr(), RemotePort: la.Port(),
		Flags: pm.EventFlagServerSide, ServerSide: true}
	checkEvent(t, sc, want)
	want.Type = pm.EventEstablished
	checkEvent(t, srv.wait(t, "server ESTABLISHED", is(pm.EventEstablished, sc.Token)), want)
	return conn, cc.Token, sc.Token
}

// TestEventsIPv4 follows one IPv4 connection of the in-kernel path manager
// with a subflow endpoint bound to c1: creation, the extra subflow, its
// backup flag, its removal, and the close.
func TestEventsIPv4(t *testing.T) {
	lab := pmtest.NewLab(t, pmtest.LabOptions{})
	c, s := lab.Client, lab.Server
	c.Run(t, "ip", "mptcp", "endpoint", "add", c.Addrs4[1].String(), "dev", c.Ifaces[1], "id", "7", "subflow")
	c1 := ifindex(t, c, c.Ifaces[1])
	cli, srv := record(t, c), record(t, s)
	srvAddr := s.Serve(t, netip.AddrPortFrom(s.Addrs4[0], 0))

	conn, ctok, stok := connectionEvents(t, lab, cli, srv, c.Addrs4[0], srvAddr)

	cse := cli.wait(t, "client SUB_ESTABLISHED", is(pm.EventSubEstablished, ctok))
	if cse.LocalPort == 0 {
		t.Errorf("client SUB_ESTABLISHED with local port 0")
	}
	checkEvent(t, cse, pm.Event{Type: pm.EventSubEstablished, Token: ctok, Family: afInet,
		LocalID: 7, RemoteID: 0, LocalAddr: c.Addrs4[1], LocalPort: cse.LocalPort,
		RemoteAddr: s.Addrs4[0], RemotePort: srvAddr.Port(), Ifindex: c1})
	sse := srv.wait(t, "server SUB_ESTABLISHED", is(pm.EventSubEstablished, stok))
	wantSrv := pm.Event{Type: pm.EventSubEstablished, Token: stok, Family: afInet,
		LocalID: 0, RemoteID: 7, LocalAddr: s.Addrs4[0], LocalPort: srvAddr.Port(),
		RemoteAddr: c.Addrs4[1], RemotePort: cse.LocalPort} // not bound: no Ifindex
	checkEvent(t, sse, wantSrv)

	// The client marks the endpoint backup: the server hears MP_PRIO.
	c.Run(t, "ip", "mptcp", "endpoint", "change", "id", "7", "backup")
	wantSrv.Type, wantSrv.Backup = pm.EventSubPriority, true
	checkEvent(t, srv.wait(t, "server SUB_PRIORITY", is(pm.EventSubPriority, stok)), wantSrv)

	// Deleting the endpoint closes its subflow and removes its address.
	c.Run(t, "ip", "mptcp", "endpoint", "del", "id", "7")
	csc := cli.wait(t, "client SUB_CLOSED", is(pm.EventSubClosed, ctok))
	// BACKUP is the peer's priority request for the subflow, so the
	// client's own change does not show on its side.
	want := cse
	want.Type = pm.EventSubClosed
	checkEvent(t, csc, want)
	checkEvent(t, srv.wait(t, "server REMOVED", is(pm.EventRemoved, stok)),
		pm.Event{Type: pm.EventRemoved, Token: stok, RemoteID: 7})
	wantSrv.Type = pm.EventSubClosed
	checkEvent(t, srv.wait(t, "server SUB_CLOSED", is(pm.EventSubClosed, stok)), wantSrv)

	if err := conn.Close(); err != nil {
		t.Fatal(err)
	}
	checkEvent(t, cli.wait(t, "client CLOSED", is(pm.EventClosed, ctok)),
		pm.Event{Type: pm.EventClosed, Token: ctok})
}

// TestEventsIPv6 is the IPv6 connection with its extra subflow.
func TestEventsIPv6(t *testing.T) {
	lab := pmtest.NewLab(t, pmtest.LabOptions{})
	c, s := lab.Client, lab.Server
	c.Run(t, "ip", "mptcp", "endpoint", "add", c.Addrs6[1].String(), "dev", c.Ifaces[1], "id", "8", "subflow")
	c1 := ifindex(t, c, c.Ifaces[1])
	cli, srv := record(t, c), record(t, s)
	srvAddr := s.Serve(t, netip.AddrPortFrom(s.Addrs6[0], 0))

	conn, ctok, stok := connectionEvents(t, lab, cli, srv, c.Addrs6[0], srvAddr)

	cse := cli.wait(t, "client SUB_ESTABLISHED", is(pm.EventSubEstablished, ctok))
	checkEvent(t, cse, pm.Event{Type: pm.EventSubEstablished, Token: ctok, Family: afInet6,
		LocalID: 8, LocalAddr: c.Addrs6[1], LocalPort: cse.LocalPort,
		RemoteAddr: s.Addrs6[0], RemotePort: srvAddr.Port(), Ifindex: c1})
	checkEvent(t, srv.wait(t, "server SUB_ESTABLISHED", is(pm.EventSubEstablished, stok)),
		pm.Event{Type: pm.EventSubEstablished, Token: stok, Family: afInet6,
			RemoteID: 8, LocalAddr: s.Addrs6[0], LocalPort: srvAddr.Port(),
			RemoteAddr: c.Addrs6[1], RemotePort: cse.LocalPort})

	if err := conn.Close(); err != nil {
		t.Fatal(err)
	}
	checkEvent(t, cli.wait(t, "client CLOSED", is(pm.EventClosed, ctok)),
		pm.Event{Type: pm.EventClosed, Token: ctok})
}

// TestEventsAnnounced: the server signals its second address; the client
// hears ANNOUNCED, and its join there is refused (no listener on that
// address), which SUB_CLOSED reports with the error.
func TestEventsAnnounced(t *testing.T) {
	lab := pmtest.NewLab(t, pmtest.LabOptions{})
	c, s := lab.Client, lab.Server
	s.Run(t, "ip", "mptcp", "endpoint", "add", s.Addrs4[1].String(), "id", "9", "signal")
	cli, srv := record(t, c), record(t, s)
	srvAddr := s.Serve(t, netip.AddrPortFrom(s.Addrs4[0], 0))

	_, ctok, _ := connectionEvents(t, lab, cli, srv, c.Addrs4[0], srvAddr)

	// Without a port in the endpoint, the kernel reports the connection's.
	checkEvent(t, cli.wait(t, "client ANNOUNCED", is(pm.EventAnnounced, ctok)),
		pm.Event{Type: pm.EventAnnounced, Token: ctok, RemoteID: 9,
			RemoteAddr: s.Addrs4[1], RemotePort: srvAddr.Port()})

	csc := cli.wait(t, "client SUB_CLOSED", is(pm.EventSubClosed, ctok))
	if csc.RemoteAddr != s.Addrs4[1] || csc.RemotePort != srvAddr.Port() || csc.RemoteID != 9 {
		t.Errorf("SUB_CLOSED to %v:%d id %d, want %v:%d id 9", csc.RemoteAddr, csc.RemotePort, csc.RemoteID,
			s.Addrs4[1], srvAddr.Port())
	}
	if csc.Error != uint8(unix.ECONNREFUSED) {
		t.Errorf("SUB_CLOSED Error = %d, want ECONNREFUSED (%d)", csc.Error, unix.ECONNREFUSED)
	}
}

// TestEventsDualStackListener: a [::] listener reports IPv4 peers with
// IPv4-mapped addresses; the events carry plain IPv4 ones.
func TestEventsDualStackListener(t *testing.T) {
	lab := pmtest.NewLab(t, pmtest.LabOptions{Paths: 1})
	c, s := lab.Client, lab.Server
	cli, srv := record(t, c), record(t, s)
	ln := s.Serve(t, netip.AddrPortFrom(netip.IPv6Unspecified(), 0))

	checkEvent(t, srv.wait(t, "LISTENER_CREATED", func(ev pm.Event) bool { return ev.Type == pm.EventListenerCreated }),
		pm.Event{Type: pm.EventListenerCreated, Family: afInet6, LocalAddr: netip.IPv6Unspecified(), LocalPort: ln.Port()})

	conn := c.Dial(t, c.Addrs4[0], netip.AddrPortFrom(s.Addrs4[0], ln.Port()))
	send(t, conn)
	la := addrPort(t, conn.LocalAddr())
	cc := cli.wait(t, "client CREATED", func(ev pm.Event) bool { return ev.Type == pm.EventCreated })
	if cc.Family != afInet || cc.LocalAddr != la.Addr() {
		t.Errorf("client CREATED %+v, want family %d from %v", cc, afInet, la)
	}
	sc := srv.wait(t, "server CREATED", func(ev pm.Event) bool { return ev.Type == pm.EventCreated })
	checkEvent(t, sc, pm.Event{Type: pm.EventCreated, Token: sc.Token, Family: afInet6,
		LocalAddr: s.Addrs4[0], LocalPort: ln.Port(), RemoteAddr: la.Addr(), RemotePort: la.Port(),
		Flags: pm.EventFlagServerSide, ServerSide: true})
}

// mptcpListen opens and closes an MPTCP listener inside h.
func mptcpListen(h *pmtest.Host, addr string) (close func() error, port uint16, err error) {
	var ln net.Listener
	err = h.Do(func() (err error) {
		var lc net.ListenConfig
		lc.SetMultipathTCP(true)
		ln, err = lc.Listen(context.Background(), "tcp", addr)
		return err
	})
	if err != nil {
		return nil, 0, err
	}
	return ln.Close, uint16(ln.Addr().(*net.TCPAddr).Port), nil
}

func TestEventsListener(t *testing.T) {
	h := pmtest.NewNamespace(t)
	r := record(t, h)
	closeLn, port, err := mptcpListen(h, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	want := pm.Event{Type: pm.EventListenerCreated, Family: afInet, LocalAddr: addr("127.0.0.1"), LocalPort: port}
	checkEvent(t, r.wait(t, "LISTENER_CREATED", func(ev pm.Event) bool { return ev.Type == pm.EventListenerCreated }), want)
	if err := closeLn(); err != nil {
		t.Fatal(err)
	}
	want.Type = pm.EventListenerClosed
	checkEvent(t, r.wait(t, "LISTENER_CLOSED", func(ev pm.Event) bool { return ev.Type == pm.EventListenerClosed }), want)
}

// churnListeners opens and closes n MPTCP listeners in h with raw system
// calls: 2n events.
func churnListeners(h *pmtest.Host, n int) error {
	return h.Do(func() error {
		for range n {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_MPTCP)
			if err != nil {
				return fmt.Errorf("socket: %w", err)
			}
			err = unix.Listen(fd, 1)
			unix.Close(fd)
			if err != nil {
				return fmt.Errorf("listen: %w", err)
			}
		}
		return nil
	})
}

func listen(t testing.TB, h *pmtest.Host) *pmnl.EventListener {
	t.Helper()
	l, err := pmnl.ListenEvents(&pmnl.Config{NetNS: h.NSFD()})
	if err != nil {
		t.Fatalf("ListenEvents: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// overfilled returns a namespace and a listener in it whose socket buffer
// (4 MiB or more) overflowed: 60,000 events that it did not read. Its
// deadline is eventWait away.
func overfilled(t *testing.T) (*pmtest.Host, *pmnl.EventListener) {
	t.Helper()
	h := pmtest.NewNamespace(t)
	l := listen(t, h)
	if err := churnListeners(h, 30000); err != nil {
		t.Fatal(err)
	}
	if err := l.SetDeadline(time.Now().Add(eventWait)); err != nil {
		t.Fatal(err)
	}
	return h, l
}

// TestEventsOverflow fills the listener's socket buffer (4 MiB or more)
// without reading: the next Receive reports ErrOverflow, and the one after
// returns the events that were queued.
func TestEventsOverflow(t *testing.T) {
	_, l := overfilled(t)
	evs, err := l.Receive(nil)
	if !errors.Is(err, pmnl.ErrOverflow) {
		t.Fatalf("Receive after 60000 unread events: %d events, error %v; want ErrOverflow", len(evs), err)
	}
	evs, err = l.Receive(evs)
	if err != nil {
		t.Fatalf("Receive after the overflow: %v", err)
	}
	if len(evs) == 0 || evs[0].Type != pm.EventListenerCreated && evs[0].Type != pm.EventListenerClosed {
		t.Errorf("Receive after the overflow: %+v, want listener events", evs)
	}
}

// TestEventsDiscard: after an overflow, Discard drops what is queued, and
// the listener then returns only newer events.
func TestEventsDiscard(t *testing.T) {
	h, l := overfilled(t)
	if _, err := l.Receive(nil); !errors.Is(err, pmnl.ErrOverflow) {
		t.Fatalf("Receive after 60000 unread events: %v; want ErrOverflow", err)
	}
	n, err := l.Discard()
	if err != nil || n < 1000 {
		t.Fatalf("Discard = %d, %v; want the thousands of queued datagrams", n, err)
	}
	l.SetDeadline(time.Now().Add(50 * time.Millisecond))
	if evs, err := l.Receive(nil); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Receive after Discard: %d events, %v; want nothing queued", len(evs), err)
	}
	l.SetDeadline(time.Time{})
	if n, err := l.Discard(); n != 0 || err != nil {
		t.Errorf("Discard of an empty queue = %d, %v", n, err)
	}
	if err := churnListeners(h, 1); err != nil {
		t.Fatal(err)
	}
	l.SetDeadline(time.Now().Add(eventWait))
	evs, err := l.Receive(nil)
	if err != nil || len(evs) == 0 || evs[0].Type != pm.EventListenerCreated {
		t.Errorf("Receive of a new event after Discard: %+v, %v", evs, err)
	}
}

func TestEventListenerDeadlineAndClose(t *testing.T) {
	h := pmtest.NewNamespace(t)
	l := listen(t, h)

	if err := l.SetDeadline(time.Now().Add(20 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Receive(nil); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Receive past the deadline: %v, want os.ErrDeadlineExceeded", err)
	}
	// The listener still works once the deadline is lifted.
	if err := l.SetDeadline(time.Time{}); err != nil {
		t.Fatal(err)
	}
	if err := churnListeners(h, 1); err != nil {
		t.Fatal(err)
	}
	// One receive reads what is queued: LISTENER_CREATED, and its
	// LISTENER_CLOSED when that came already.
	if evs, err := l.Receive(nil); err != nil || len(evs) == 0 || len(evs) > 2 || evs[0].Type != pm.EventListenerCreated ||
		len(evs) == 2 && evs[1].Type != pm.EventListenerClosed {
		t.Fatalf("Receive after the deadline was lifted: %+v, %v", evs, err)
	}

	// Close unblocks a pending Receive.
	errc := make(chan error, 1)
	go func() {
		for {
			if _, err := l.Receive(nil); err != nil {
				errc <- err
				return
			}
		}
	}()
	time.Sleep(20 * time.Millisecond) // let Receive block (it would unblock from any state)
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("Receive after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(eventWait):
		t.Fatal("Close did not unblock Receive")
	}
	if err := l.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestListenEventsNeedsCapability drops CAP_NET_ADMIN on one locked thread
// (capabilities are per thread) and checks the refusal is pm.ErrPermission.
func TestListenEventsNeedsCapability(t *testing.T) {
	h := pmtest.NewNamespace(t)
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked if the capability cannot be restored
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var orig [2]unix.CapUserData
		if err := unix.Capget(&hdr, &orig[0]); err != nil {
			errc <- fmt.Errorf("capget: %w", err)
			return
		}
		dropped := orig
		dropped[0].Effective &^= 1 << unix.CAP_NET_ADMIN
		if err := unix.Capset(&hdr, &dropped[0]); err != nil {
			errc <- fmt.Errorf("capset: %w", err)
			return
		}
		l, err := pmnl.ListenEvents(&pmnl.Config{NetNS: h.NSFD()})
		if err == nil {
			l.Close()
			err = errors.New("ListenEvents succeeded without CAP_NET_ADMIN")
		}
		if rerr := unix.Capset(&hdr, &orig[0]); rerr != nil {
			errc <- errors.Join(err, fmt.Errorf("restore capabilities: %w", rerr))
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	if err := <-errc; !errors.Is(err, pm.ErrPermission) {
		t.Fatalf("ListenEvents without CAP_NET_ADMIN: %v, want ErrPermission", err)
	}
}

// benchmarkReceive measures receiving listener events already queued on
// the socket, batch by batch, with receive reading one batch.
func benchmarkReceive(b *testing.B, h *pmtest.Host, receive func() (int, error)) {
	const batch = 256 // listeners per batch: 512 events, well within the buffer
	b.ReportAllocs()
	b.StopTimer()
	events := 0
	for events < b.N {
		if err := churnListeners(h, batch); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		for got := 0; got < 2*batch; {
			n, err := receive()
			if err != nil {
				b.Fatal(err)
			}
			got += n
		}
		b.StopTimer()
		events += 2 * batch
	}
	b.ReportMetric(float64(events)/b.Elapsed().Seconds(), "events/s")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(events), "ns/event")
}

// BenchmarkReceive is EventListener.Receive, raw receive into a reused buffer.
func BenchmarkReceive(b *testing.B) {
	h := pmtest.NewNamespace(b)
	l := listen(b, h)
	var buf []pm.Event
	benchmarkReceive(b, h, func() (int, error) {
		var err error
		buf, err = l.Receive(buf)
		return len(buf), err
	})
}

// BenchmarkReceiveGenetlink is the same with genetlink.Conn.Receive and
// DecodeEvent, the baseline Receive's own receive path is measured against.
func BenchmarkReceiveGenetlink(b *testing.B) {
	h := pmtest.NewNamespace(b)
	c, err := genetlink.Dial(&netlink.Config{NetNS: h.NSFD()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	f, err := c.GetFamily(pmnl.FamilyName)
	if err != nil {
		b.Fatal(err)
	}
	for _, g := range f.Groups {
		if g.Name == pmnl.GroupEvents {
			if err := c.JoinGroup(g.ID); err != nil {
				b.Fatal(err)
			}
		}
	}
	if err := c.SetReadBuffer(4 << 20); err != nil {
		b.Fatal(err)
	}
	benchmarkReceive(b, h, func() (int, error) {
		msgs, _, err := c.Receive()
		n := 0
		for _, m := range msgs {
			if _, err := pmnl.DecodeEvent(m.Header.Command, m.Data); err == nil {
				n++
			}
		}
		return n, err
	})
}

// follow runs l.Follow on a goroutine, collecting what fn gets until fn's
// stop says to stop; it returns a function that waits for Follow's end
// and returns the events, the errors fn got, and Follow's error.
func follow(l *pmnl.EventListener, stop func(evs []pm.Event) bool) func() ([]pm.Event, []error, error) {
	var (
		evs  []pm.Event
		errs []error
		ferr error
	)
	done := make(chan struct{})
	go func() {
		defer close(done)
		ferr = l.Follow(func(batch []pm.Event, err error) bool {
			evs = append(evs, batch...)
			if err != nil {
				errs = append(errs, err)
			}
			return !stop(evs)
		})
	}()
	return func() ([]pm.Event, []error, error) {
		<-done
		return evs, errs, ferr
	}
}

// TestFollow: Follow delivers every event in order, those that come one
// at a time (each receive finds the socket then empty, and Follow waits
// for it to be signalled instead of reading it again) and those of a
// burst larger than one receive (which it reads on at once), and returns
// nil when fn says to stop.
func TestFollow(t *testing.T) {
	h := pmtest.NewNamespace(t)
	l := listen(t, h)
	const single, burst = 50, 500
	want := 2 * (single + burst)
	if err := l.SetDeadline(time.Now().Add(eventWait)); err != nil {
		t.Fatal(err)
	}
	wait := follow(l, func(evs []pm.Event) bool { return len(evs) >= want })
	for range single {
		if err := churnListeners(h, 1); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond)
	}
	if err := churnListeners(h, burst); err != nil {
		t.Fatal(err)
	}
	evs, errs, err := wait()
	if err != nil || len(errs) > 0 {
		t.Fatalf("Follow after %d of %d events: %v, errors given to fn: %v", len(evs), want, err, errs)
	}
	if len(evs) != want {
		t.Fatalf("%d events, want %d", len(evs), want)
	}
	for i := 0; i < len(evs); i += 2 {
		c, d := evs[i], evs[i+1]
		if c.Type != pm.EventListenerCreated || d.Type != pm.EventListenerClosed || c.LocalPort != d.LocalPort {
			t.Fatalf("events %d and %d: %v %d, %v %d; want a listener's CREATED and CLOSED", i, i+1, c.Type, c.LocalPort, d.Type, d.LocalPort)
		}
	}
}

// TestFollowOverflow: after an overflow Follow drops what was queued, says
// how much with an error wrapping ErrOverflow, and goes on with newer
// events; Close ends it with net.ErrClosed.
func TestFollowOverflow(t *testing.T) {
	h, l := overfilled(t)
	overflowed := make(chan struct{})
	var once sync.Once
	wait := follow(l, func(evs []pm.Event) bool {
		once.Do(func() { close(overflowed) })
		return false
	})
	<-overflowed
	if err := churnListeners(h, 1); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	l.Close()
	evs, errs, err := wait()
	if !errors.Is(err, net.ErrClosed) {
		t.Errorf("Follow after Close: %v, want net.ErrClosed", err)
	}
	if len(errs) != 1 || !errors.Is(errs[0], pmnl.ErrOverflow) || !strings.Contains(errs[0].Error(), "queued events dropped") {
		t.Fatalf("errors given to fn: %v; want one overflow that says how many were dropped", errs)
	}
	if len(evs) != 2 || evs[0].Type != pm.EventListenerCreated || evs[1].Type != pm.EventListenerClosed {
		t.Errorf("events after the overflow: %+v; want only the new listener's CREATED and CLOSED", evs)
	}
}
