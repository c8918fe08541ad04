package policy

import (
	"net/netip"
	"slices"
	"testing"
)

// sf is an established subflow from a (port p) to remote.
func sf(a Address, p uint16, remote netip.AddrPort) Subflow {
	return Subflow{Local: ap(a, p), Remote: remote, Interface: a.Interface}
}

func destroy(s Subflow) Action {
	return Action{Kind: DestroySubflow, Token: 7, Local: s.Local.Addr(), LocalPort: s.Local.Port(),
		Interface: s.Interface, Backup: s.Backup, Remote: s.Remote}
}

func TestSubflowPerInterfaceClient(t *testing.T) {
	c1b := Address{Interface: "c1", Ifindex: 3, Addr: netip.MustParseAddr("10.55.1.5"), Flags: sub}
	fromC1 := sf(c1v4, 41000, srv4)
	pendingC1 := Subflow{Local: ap(c1v4, 0), Remote: srv4, Interface: "c1", Pending: true}
	all := []Address{c0v4, c1v4, c2v4}

	tests := []struct {
		name  string
		addrs []Address
		limit uint32
		edit  func(*Connection)
		want  []Action
	}{
		{"not established", all, 8, func(c *Connection) { c.Established = false }, nil},
		{"one interface: nothing to do", []Address{c0v4, c0v6}, 8, nil, nil},
		{"new addresses", all, 8, nil,
			[]Action{createFrom(c1v4, srv4, false), createFrom(c2v4, srv4, false)}},
		{"unsorted view", []Address{c2v4, c0v4, c1v4}, 8, nil,
			[]Action{createFrom(c1v4, srv4, false), createFrom(c2v4, srv4, false)}},
		{"served interface", all, 8, func(c *Connection) { c.Subflows = append(c.Subflows, fromC1) },
			[]Action{createFrom(c2v4, srv4, false)}},
		{"served by its second address", []Address{c0v4, c1v4, c1b}, 8,
			func(c *Connection) { c.Subflows = append(c.Subflows, sf(c1b, 41000, srv4)) }, nil},
		{"pending subflow prevents a duplicate", all, 8, func(c *Connection) { c.Subflows = append(c.Subflows, pendingC1) },
			[]Action{createFrom(c2v4, srv4, false)}},
		{"failed address is not retried", all, 8, func(c *Connection) { c.Failed = []netip.AddrPort{ap(c1v4, 0)} },
			[]Action{createFrom(c2v4, srv4, false)}},
		{"failed address: the interface's next one", []Address{c0v4, c1v4, c1b}, 8,
			func(c *Connection) { c.Failed = []netip.AddrPort{ap(c1v4, 0)} },
			[]Action{createFrom(c1b, srv4, false)}},
		{"address gone", []Address{c0v4, c2v4}, 8,
			func(c *Connection) { c.Subflows = append(c.Subflows, fromC1, sf(c2v4, 41001, srv4)) },
			[]Action{destroy(fromC1)}},
		{"carrier lost on c1, c2 new", []Address{c0v4, c2v4}, 8,
			func(c *Connection) { c.Subflows = append(c.Subflows, fromC1) },
			[]Action{destroy(fromC1), createFrom(c2v4, srv4, false)}},
		{"pending subflow from a lost address is left to fail", []Address{c0v4}, 8,
			func(c *Connection) { c.Subflows = append(c.Subflows, pendingC1) }, nil},
		{"initial address gone: the initial subflow stays", []Address{c1v4}, 8,
			func(c *Connection) { c.Subflows = append(c.Subflows, fromC1) }, nil},
		{"initial subflow unknown, its address gone", []Address{c1v4, c2v4}, 8,
			func(c *Connection) { c.Subflows = nil },
			[]Action{createFrom(c1v4, srv4, false), createFrom(c2v4, srv4, false)}},
		{"limit", all, 1, nil, []Action{createFrom(c1v4, srv4, false)}},
		{"limit 0", all, 0, nil, nil},
		{"limit counts pending subflows", all, 1, func(c *Connection) { c.Subflows = append(c.Subflows, pendingC1) }, nil},
		{"limit counts subflows others made", all, 2,
			func(c *Connection) {
				c.Subflows = append(c.Subflows, sf(c0v4, 41000, netip.MustParseAddrPort("10.66.0.2:80")))
			},
			[]Action{createFrom(c1v4, srv4, false)}},
		{"destroyed subflows make room", []Address{c0v4, c2v4}, 1,
			func(c *Connection) { c.Subflows = append(c.Subflows, fromC1) },
			[]Action{destroy(fromC1), createFrom(c2v4, srv4, false)}},
		{"IPv4 connection, IPv4 addresses", []Address{c0v4, c0v6, c1v6, c2v6, c2v4}, 8, nil,
			[]Action{createFrom(c2v4, srv4, false)}},
		{"IPv6 connection, IPv6 addresses", []Address{c0v4, c0v6, c1v6, c2v6, c2v4}, 8,
			func(c *Connection) {
				c.Local, c.Remote = ap(c0v6, 40000), srv6
				c.Subflows = []Subflow{sf(c0v6, 40000, srv6)}
			},
			[]Action{createFrom(c1v6, srv6, false), createFrom(c2v6, srv6, false)}},
		{"IPv4-mapped connection", all, 8,
			func(c *Connection) {
				c.Local = netip.AddrPortFrom(netip.AddrFrom16(c0v4.Addr.As16()), 40000)
				c.Remote = netip.AddrPortFrom(netip.AddrFrom16(srv4.Addr().As16()), srv4.Port())
				c.Subflows = []Subflow{{Local: c.Local, Remote: c.Remote}}
			},
			[]Action{createFrom(c1v4, srv4, false), createFrom(c2v4, srv4, false)}},
		{"backup from the address's flags", []Address{c0v4, with(c1v4, subBackup)}, 8, nil,
			[]Action{createFrom(with(c1v4, subBackup), srv4, true)}},
	}
	p, err := New(NameSubflowPerInterface)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := client4()
			if tt.edit != nil {
				tt.edit(&c)
			}
			v := View{Addresses: tt.addrs, SubflowLimit: tt.limit}
			checkActions(t, p.Connection(v, c), tt.want)
			checkConverges(t, p, v, c)
		})
	}
}

// checkConverges applies the actions the policy wants on c and checks that
// it wants nothing more.
func checkConverges(t *testing.T, p Policy, v View, c Connection) {
	t.Helper()
	c.Subflows = slices.Clone(c.Subflows)
	c.Announced = slices.Clone(c.Announced)
	w := &world{v: v, c: c}
	w.apply(t, p.Connection(v, c))
	if more := p.Connection(w.v, w.c); len(more) != 0 {
		t.Errorf("after the actions: %v, want nothing", more)
	}
}

func TestSubflowPerInterfaceServer(t *testing.T) {
	s0 := Address{Interface: "s0", Ifindex: 2, Addr: netip.MustParseAddr("10.55.0.2")}
	s1 := Address{Interface: "s1", Ifindex: 3, Addr: netip.MustParseAddr("10.55.1.2")}
	s1b := Address{Interface: "s1", Ifindex: 3, Addr: netip.MustParseAddr("10.55.1.5")}
	s1v6 := Address{Interface: "s1", Ifindex: 3, Addr: netip.MustParseAddr("fd00:55:1::2")}
	server := func() Connection {
		local := ap(s0, 8080)
		peer := netip.MustParseAddrPort("10.55.0.1:40000")
		return Connection{Token: 7, ServerSide: true, Established: true, Local: local, Remote: peer,
			Subflows: []Subflow{{Local: local, Remote: peer}}}
	}
	announce := func(a Address) Action {
		return Action{Kind: Announce, Token: 7, Local: a.Addr, Interface: a.Interface, Ifindex: a.Ifindex}
	}
	all := []Address{s0, s1, s1b, s1v6}

	tests := []struct {
		name  string
		addrs []Address
		edit  func(*Connection)
		want  []Action
	}{
		{"not established", all, func(c *Connection) { c.Established = false }, nil},
		{"nothing else to announce", []Address{s0}, nil, nil},
		{"announce the other addresses of the family", all, nil, []Action{announce(s1), announce(s1b)}},
		{"already announced", all, func(c *Connection) {
			c.Announced = []PeerAddress{{ID: 1, Addr: s1.Addr}, {ID: 2, Addr: s1b.Addr, Port: 8080}}
		}, nil},
		{"withdraw what is gone", []Address{s0, s1}, func(c *Connection) {
			c.Announced = []PeerAddress{{ID: 1, Addr: s1.Addr}, {ID: 2, Addr: s1b.Addr, Port: 8080}}
		}, []Action{{Kind: Withdraw, Token: 7, ID: 2, Local: s1b.Addr, LocalPort: 8080}}},
		{"failed is not announced", all, func(c *Connection) { c.Failed = []netip.AddrPort{ap(s1, 0)} },
			[]Action{announce(s1b)}},
		{"IPv6 connection", all, func(c *Connection) {
			c.Local, c.Remote = netip.MustParseAddrPort("[fd00:55::2]:8080"), netip.MustParseAddrPort("[fd00:55::1]:40000")
			c.Subflows = nil
		}, []Action{announce(s1v6)}},
		{"dual-stack listener: IPv4-mapped", all, func(c *Connection) {
			c.Local = netip.AddrPortFrom(netip.AddrFrom16(s0.Addr.As16()), 8080)
			c.Remote = netip.MustParseAddrPort("[::ffff:10.55.0.1]:40000")
		}, []Action{announce(s1), announce(s1b)}},
		{"no subflows from the server side", all, func(c *Connection) {
			c.Announced = []PeerAddress{{ID: 1, Addr: s1.Addr}, {ID: 2, Addr: s1b.Addr}}
			c.PeerAddresses = []PeerAddress{{ID: 1, Addr: netip.MustParseAddr("10.55.1.1")}}
		}, nil},
	}
	p, err := New(NameSubflowPerInterface)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := server()
			if tt.edit != nil {
				tt.edit(&c)
			}
			v := View{Addresses: tt.addrs, SubflowLimit: 8}
			checkActions(t, p.Connection(v, c), tt.want)
			checkConverges(t, p, v, c)
			if got := p.Endpoints(v); len(got) != 0 {
				t.Errorf("Endpoints: %v, want nothing", got)
			}
		})
	}
}
