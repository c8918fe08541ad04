package service

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
)

var (
	cliAddr = netip.MustParseAddr("10.55.0.1")
	srvAddr = netip.MustParseAddr("10.55.0.2")
	cli2    = netip.MustParseAddr("10.55.1.1")
)

func created(token uint32) pm.Event {
	return pm.Event{Type: pm.EventCreated, Token: token, Family: 2,
		LocalAddr: cliAddr, LocalPort: 40000, RemoteAddr: srvAddr, RemotePort: 8080}
}

func established(token uint32) pm.Event {
	ev := created(token)
	ev.Type = pm.EventEstablished
	return ev
}

func closed(token uint32) pm.Event { return pm.Event{Type: pm.EventClosed, Token: token} }

func subEvent(t pm.EventType, token uint32, lport uint16, backup bool) pm.Event {
	return pm.Event{Type: t, Token: token, Family: 2, LocalID: 3, RemoteID: 0,
		LocalAddr: cli2, LocalPort: lport, RemoteAddr: srvAddr, RemotePort: 8080, Backup: backup}
}

func TestConnectionEvents(t *testing.T) {
	tests := []struct {
		name   string
		events []pm.Event
		want   []string
		live   int // connections left
	}{
		{
			name:   "lifecycle",
			events: []pm.Event{created(7), established(7), closed(7)},
			want:   []string{"added 1 token=7 created", "changed 1 [State]", "removed 1 token=7"},
		},
		{
			name:   "ESTABLISHED after CLOSED does not resurrect",
			events: []pm.Event{created(7), closed(7), established(7)},
			want:   []string{"added 1 token=7 created", "removed 1 token=7"},
		},
		{
			name:   "CLOSED for an unknown token is ignored",
			events: []pm.Event{closed(9)},
			want:   nil,
		},
		{
			name:   "refused connect: CLOSED then a late ESTABLISHED",
			events: []pm.Event{closed(9), established(9)},
			want:   nil,
		},
		{
			name:   "token reuse replaces the live connection",
			events: []pm.Event{created(7), established(7), created(7)},
			want:   []string{"added 1 token=7 created", "changed 1 [State]", "removed 1 token=7", "added 2 token=7 created"},
			live:   1,
		},
		{
			name:   "token reused after close gets a new object",
			events: []pm.Event{created(7), closed(7), created(7), established(7)},
			want:   []string{"added 1 token=7 created", "removed 1 token=7", "added 2 token=7 created", "changed 2 [State]"},
			live:   1,
		},
		{
			name:   "ESTABLISHED without CREATED adopts the connection",
			events: []pm.Event{established(5)},
			want:   []string{"added 1 token=5 established"},
			live:   1,
		},
		{
			name:   "a repeated ESTABLISHED changes nothing",
			events: []pm.Event{created(7), established(7), established(7)},
			want:   []string{"added 1 token=7 created", "changed 1 [State]"},
			live:   1,
		},
		{
			name: "subflow and address events for unknown tokens are ignored",
			events: []pm.Event{
				subEvent(pm.EventSubEstablished, 4, 1000, false),
				{Type: pm.EventAnnounced, Token: 4, RemoteID: 1, RemoteAddr: srvAddr},
			},
			want: nil,
		},
		{
			name:   "listener events change nothing",
			events: []pm.Event{{Type: pm.EventListenerCreated, LocalAddr: cliAddr, LocalPort: 80}},
			want:   nil,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			h.send(tt.events...)
			sameStrings(t, "notifications", describeAll(h.take()), tt.want)
			conns, err := h.s.Connections(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if len(conns) != tt.live {
				t.Errorf("%d live connections, want %d", len(conns), tt.live)
			}
		})
	}
}

func TestConnectionProperties(t *testing.T) {
	h := newHarness(t)
	ev := created(0xabcdef)
	ev.ServerSide = true
	ev.Flags = pm.EventFlagDenyJoinID0 | pm.EventFlagServerSide
	h.send(ev)
	ns := h.take()
	if len(ns) != 1 {
		t.Fatalf("got %v", describeAll(ns))
	}
	got := ns[0].(ConnectionAdded).Connection
	want := Connection{
		ID: 1, Token: 0xabcdef, ServerSide: true, State: StateCreated,
		LocalAddress: cliAddr, LocalPort: 40000, RemoteAddress: srvAddr, RemotePort: 8080,
		DenyJoinID0: true, Userspace: true,
	}
	if got.ID != want.ID || got.Token != want.Token || got.ServerSide != want.ServerSide || got.State != want.State ||
		got.LocalAddress != want.LocalAddress || got.LocalPort != want.LocalPort || got.RemoteAddress != want.RemoteAddress ||
		got.RemotePort != want.RemotePort || got.DenyJoinID0 != want.DenyJoinID0 || got.Userspace != want.Userspace {
		t.Errorf("ConnectionAdded:\n got %+v\nwant %+v", got, want)
	}
	c, err := h.s.Connection(context.Background(), 1)
	if err != nil || c.Token != 0xabcdef {
		t.Errorf("Connection(1) = %+v, %v", c, err)
	}
}

// TestUserspaceFollowsPathManagerAtCreation: a connection is under the
// path manager in force when it was created. A new connection reads the
// sysctl only when the value last read is pathManagerFresh old; one that
// comes sooner gets that value, which is read again when the check falls
// due; when it changed, the connections labelled since are asked of the
// kernel and corrected.
func TestUserspaceFollowsPathManagerAtCreation(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	h := newHarness(t, withService(func(s *Service) { s.now = clock.Now }))
	h.take() // started with "userspace"
	reads := func() int {
		h.mu.Lock()
		defer h.mu.Unlock()
		return h.pmReads
	}
	before := reads()
	// Another program switches to the in-kernel path manager; two
	// connections come under it at once.
	h.setPM("kernel")
	h.k.AddConnection(1, false, ap("10.55.0.1:40000"), ap("10.55.0.2:8080"))
	h.k.AddConnection(2, false, ap("10.55.0.1:40001"), ap("10.55.0.2:8080"))
	h.pump()
	if n := reads() - before; n != 0 {
		t.Errorf("%d reads of the path manager for two new connections at once, want 0", n)
	}
	h.inspect(h.s.pathManagerDue)
	if n := reads() - before; n != 1 {
		t.Errorf("%d reads of the path manager after the check, want 1", n)
	}
	// And back, a while later: the new connection reads it.
	clock.Add(pathManagerFresh)
	h.setPM("userspace")
	h.k.AddConnection(3, true, ap("10.55.0.1:40002"), ap("10.55.0.2:8080"))
	h.pump()
	if n := reads() - before; n != 2 {
		t.Errorf("%d reads of the path manager in all, want 2", n)
	}
	conns, _ := h.s.Connections(context.Background())
	if len(conns) != 3 || conns[0].Userspace || conns[1].Userspace || !conns[2].Userspace {
		t.Errorf("connections %+v: want two in-kernel, then one userspace", conns)
	}
	m, _ := h.s.Manager(context.Background())
	if m.KernelPathManager != "userspace" {
		t.Errorf("KernelPathManager = %q", m.KernelPathManager)
	}
	// A check with no connection labelled from an older read reads nothing.
	n := reads()
	h.inspect(h.s.pathManagerDue)
	if reads() != n {
		t.Error("a check with nothing to check read the path manager")
	}
}

func TestSubflowEvents(t *testing.T) {
	h := newHarness(t)
	h.sendNet(NetEvent{Kind: NetLinkChanged, Link: Link{Index: 4, Name: "c1", Up: true, Carrier: true}})
	h.send(created(7), established(7))
	h.take()

	est := subEvent(pm.EventSubEstablished, 7, 1000, false)
	est.Ifindex = 4
	prio := subEvent(pm.EventSubPriority, 7, 1000, true)
	cl := subEvent(pm.EventSubClosed, 7, 1000, true)
	cl.Error = 104
	cl.ResetReason = 2
	other := subEvent(pm.EventSubClosed, 7, 2000, false) // never reported established

	h.send(est, est, prio, prio)
	sameStrings(t, "establish, duplicate, priority", describeAll(h.take()), []string{
		`subflow 1 established 3/0 10.55.1.1:1000-10.55.0.2:8080 backup=false if="c1" err=0 reset=0`,
		`changed 1 [Subflows]`,
		`subflow 1 established 3/0 10.55.1.1:1000-10.55.0.2:8080 backup=false if="c1" err=0 reset=0`,
		`subflow 1 priority 3/0 10.55.1.1:1000-10.55.0.2:8080 backup=true if="c1" err=0 reset=0`,
		`changed 1 [Subflows]`,
		`subflow 1 priority 3/0 10.55.1.1:1000-10.55.0.2:8080 backup=true if="c1" err=0 reset=0`,
	})
	c, _ := h.s.Connection(context.Background(), 1)
	if len(c.Subflows) != 1 || !c.Subflows[0].Backup || c.Subflows[0].Interface != "c1" {
		t.Fatalf("Subflows = %+v, want one backup subflow on c1", c.Subflows)
	}

	h.send(cl, other)
	sameStrings(t, "close", describeAll(h.take()), []string{
		`subflow 1 closed 3/0 10.55.1.1:1000-10.55.0.2:8080 backup=true if="c1" err=104 reset=2`,
		`changed 1 [Subflows]`,
		`subflow 1 closed 3/0 10.55.1.1:2000-10.55.0.2:8080 backup=false if="" err=0 reset=0`,
	})
	c, _ = h.s.Connection(context.Background(), 1)
	if len(c.Subflows) != 0 {
		t.Errorf("Subflows = %+v after close, want none", c.Subflows)
	}
}

func TestRemoteAddressEvents(t *testing.T) {
	h := newHarness(t)
	h.send(created(7))
	h.take()
	peer2 := netip.MustParseAddr("10.55.1.2")
	h.send(
		pm.Event{Type: pm.EventAnnounced, Token: 7, RemoteID: 1, RemoteAddr: peer2, RemotePort: 8080},
		pm.Event{Type: pm.EventAnnounced, Token: 7, RemoteID: 1, RemoteAddr: peer2, RemotePort: 8080},
		pm.Event{Type: pm.EventAnnounced, Token: 7, RemoteID: 1, RemoteAddr: peer2, RemotePort: 9090},
		pm.Event{Type: pm.EventAnnounced, Token: 7, RemoteID: 2, RemoteAddr: cli2},
	)
	sameStrings(t, "announced", describeAll(h.take()), []string{
		"announced 1 id=1 10.55.1.2:8080", "changed 1 [RemoteAddresses]",
		"announced 1 id=1 10.55.1.2:8080",
		"announced 1 id=1 10.55.1.2:9090", "changed 1 [RemoteAddresses]",
		"announced 1 id=2 10.55.1.1:0", "changed 1 [RemoteAddresses]",
	})
	c, _ := h.s.Connection(context.Background(), 1)
	want := []AnnouncedAddress{{ID: 1, Address: peer2, Port: 9090}, {ID: 2, Address: cli2}}
	if len(c.RemoteAddresses) != 2 || c.RemoteAddresses[0] != want[0] || c.RemoteAddresses[1] != want[1] {
		t.Errorf("RemoteAddresses = %+v, want %+v", c.RemoteAddresses, want)
	}
	h.send(pm.Event{Type: pm.EventRemoved, Token: 7, RemoteID: 1}, pm.Event{Type: pm.EventRemoved, Token: 7, RemoteID: 9})
	sameStrings(t, "removed", describeAll(h.take()), []string{
		"addr-removed 1 id=1", "changed 1 [RemoteAddresses]",
		"addr-removed 1 id=9",
	})
}

// TestNoGrowth opens and closes many connections, each with a subflow, peer
// addresses and an announcement, and checks that nothing of them is left.
func TestNoGrowth(t *testing.T) {
	h := newHarness(t)
	const n = 10000
	for i := range uint32(n) {
		token := 1000 + i
		h.send(created(token), established(token),
			subEvent(pm.EventSubEstablished, token, 1000, false),
			pm.Event{Type: pm.EventAnnounced, Token: token, RemoteID: 1, RemoteAddr: cli2})
		if i%100 == 0 { // an announcement, with its listener, every 100th connection
			id, err := h.s.ConnectionByToken(context.Background(), token)
			if err != nil {
				t.Fatal(err)
			}
			h.k.AddConnection(token, true, netip.AddrPortFrom(cliAddr, 1), netip.AddrPortFrom(srvAddr, 2))
			if _, err := h.s.AnnounceAddress(context.Background(), Caller{}, id, cli2, 0, 0); err != nil {
				t.Fatal(err)
			}
		}
		h.send(closed(token), established(token))
	}
	h.take()
	h.inspect(func() {
		if len(h.s.conns.byToken) != 0 || len(h.s.conns.byID) != 0 {
			t.Errorf("%d connections by token, %d by id left", len(h.s.conns.byToken), len(h.s.conns.byID))
		}
		if r := &h.s.conns.closed; r.n != recentClosed || len(r.count) > recentClosed {
			t.Errorf("recent closed: %d in ring, %d counted, want %d at most", r.n, len(r.count), recentClosed)
		}
		if len(h.s.lis.held) != 0 {
			t.Errorf("%d listeners held", len(h.s.lis.held))
		}
		if len(h.s.ids.byAddr) > 255 {
			t.Errorf("%d address ids, want 255 at most", len(h.s.ids.byAddr))
		}
		if h.s.conns.lastID != n {
			t.Errorf("last object number %d, want %d", h.s.conns.lastID, n)
		}
	})
	if open := h.lis.openAddrs(); len(open) != 0 {
		t.Errorf("listeners still open: %v", open)
	}
}
