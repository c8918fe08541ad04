package policy

import (
	"net/netip"
	"testing"
)

func TestFullmesh(t *testing.T) {
	peer := netip.MustParseAddr("10.66.0.2")
	peerP := netip.AddrPortFrom(peer, 8080) // announced without a port: the connection's
	peer9 := netip.MustParseAddrPort("10.66.1.2:9000")
	announced := []PeerAddress{{ID: 1, Addr: peer}}
	all := []Address{c0v4, c1v4, c2v4}
	fromC1 := sf(c1v4, 41000, srv4)

	tests := []struct {
		name  string
		addrs []Address
		limit uint32
		edit  func(*Connection)
		want  []Action
	}{
		{"not established", all, 8, func(c *Connection) { c.Established = false }, nil},
		{"one address, one peer address: nothing to do", []Address{c0v4}, 8, nil, nil},
		{"new local addresses", all, 8, nil,
			[]Action{createFrom(c1v4, srv4, false), createFrom(c2v4, srv4, false)}},
		{"peer announced an address", []Address{c0v4, c1v4}, 8, func(c *Connection) { c.PeerAddresses = announced },
			[]Action{createFrom(c0v4, peerP, false), createFrom(c1v4, srv4, false), createFrom(c1v4, peerP, false)}},
		{"announced port", []Address{c0v4}, 8,
			func(c *Connection) { c.PeerAddresses = []PeerAddress{{ID: 2, Addr: peer9.Addr(), Port: peer9.Port()}} },
			[]Action{createFrom(c0v4, peer9, false)}},
		{"announced initial address counts once", []Address{c0v4, c1v4}, 8,
			func(c *Connection) {
				c.PeerAddresses = []PeerAddress{{ID: 1, Addr: srv4.Addr()}, {ID: 2, Addr: srv4.Addr(), Port: srv4.Port()}}
			},
			[]Action{createFrom(c1v4, srv4, false)}},
		{"peer address of the other family", []Address{c0v4, c0v6}, 8,
			func(c *Connection) { c.PeerAddresses = []PeerAddress{{ID: 1, Addr: srv6.Addr()}} }, nil},
		{"existing and pending subflows", all, 8, func(c *Connection) {
			c.PeerAddresses = announced
			c.Subflows = append(c.Subflows, fromC1, Subflow{Local: ap(c2v4, 0), Remote: peerP, Pending: true},
				sf(c0v4, 41001, peerP))
		}, []Action{createFrom(c1v4, peerP, false), createFrom(c2v4, srv4, false)}},
		{"failed local address", all, 8, func(c *Connection) {
			c.PeerAddresses = announced
			c.Failed = []netip.AddrPort{ap(c1v4, 0), ap(c0v4, 0)}
		}, []Action{createFrom(c2v4, srv4, false), createFrom(c2v4, peerP, false)}},
		{"limit", all, 3, func(c *Connection) { c.PeerAddresses = announced },
			[]Action{createFrom(c0v4, peerP, false), createFrom(c1v4, srv4, false), createFrom(c1v4, peerP, false)}},
		{"limit counts existing", all, 2, func(c *Connection) {
			c.PeerAddresses = announced
			c.Subflows = append(c.Subflows, fromC1)
		}, []Action{createFrom(c0v4, peerP, false)}},
		{"address gone: its subflows go, the initial stays", []Address{c1v4}, 8, func(c *Connection) {
			c.Subflows = append(c.Subflows, sf(c2v4, 41002, srv4), fromC1, sf(c0v4, 41003, peerP))
		}, []Action{destroy(sf(c2v4, 41002, srv4)), destroy(sf(c0v4, 41003, peerP))}},
		{"IPv6", []Address{c0v4, c0v6, c1v6, c1v4}, 8, func(c *Connection) {
			c.Local, c.Remote = ap(c0v6, 40000), srv6
			c.Subflows = nil
			c.PeerAddresses = []PeerAddress{{ID: 1, Addr: peer}, {ID: 2, Addr: netip.MustParseAddr("fd00:66::2"), Port: 443}}
		}, []Action{
			createFrom(c0v6, netip.MustParseAddrPort("[fd00:66::2]:443"), false),
			createFrom(c1v6, srv6, false),
			createFrom(c1v6, netip.MustParseAddrPort("[fd00:66::2]:443"), false),
		}},
		{"backup from the address's flags", []Address{c0v4, with(c1v4, subBackup)}, 8, nil,
			[]Action{createFrom(with(c1v4, subBackup), srv4, true)}},
	}
	p, err := New(NameFullmesh)
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

func TestFullmeshServer(t *testing.T) {
	s0 := Address{Interface: "s0", Ifindex: 2, Addr: netip.MustParseAddr("10.55.0.2")}
	s1 := Address{Interface: "s1", Ifindex: 3, Addr: netip.MustParseAddr("10.55.1.2")}
	client := netip.MustParseAddrPort("10.55.0.1:40000")
	server := func() Connection {
		return Connection{Token: 7, ServerSide: true, Established: true, Local: ap(s0, 8080), Remote: client}
	}
	p, err := New(NameFullmesh)
	if err != nil {
		t.Fatal(err)
	}
	v := View{Addresses: []Address{s0, s1}, SubflowLimit: 8}

	// Nothing to the client's initial address: no listener behind its port.
	c := server()
	checkActions(t, p.Connection(v, c), nil)

	// The client announced an address: subflows from both to it, on the
	// port it gave or else the connection's.
	c.PeerAddresses = []PeerAddress{{ID: 1, Addr: netip.MustParseAddr("10.55.1.1")}, {ID: 2, Addr: netip.MustParseAddr("10.55.2.1"), Port: 5000}}
	c1 := netip.MustParseAddrPort("10.55.1.1:40000")
	c2 := netip.MustParseAddrPort("10.55.2.1:5000")
	act := func(a Address, r netip.AddrPort) Action {
		return Action{Kind: CreateSubflow, Token: 7, Local: a.Addr, Interface: a.Interface, Ifindex: a.Ifindex, Remote: r}
	}
	checkActions(t, p.Connection(v, c), []Action{act(s0, c1), act(s0, c2), act(s1, c1), act(s1, c2)})
	checkConverges(t, p, v, c)
}
