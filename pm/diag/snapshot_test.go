package diag

import (
	"net/netip"
	"testing"
)

func TestJoinAndSide(t *testing.T) {
	ap := netip.MustParseAddrPort
	conn := func(token uint32, inode uint64, local, remote string) Conn {
		return Conn{Token: token, Inode: inode, State: StateEstablished, Local: ap(local), Remote: ap(remote)}
	}
	listener := func(local string) Conn {
		return Conn{State: StateListen, Local: ap(local), Remote: ap("0.0.0.0:0"), Inode: 1}
	}
	conns := []Conn{
		listener("0.0.0.0:80"),
		conn(1, 10, "10.0.0.1:40000", "10.0.0.2:80"), // client: its initial subflow says so
		conn(2, 20, "10.0.0.2:80", "10.0.0.1:40000"), // server: initial subflow
		conn(3, 30, "10.0.0.2:80", "10.0.0.1:40001"), // server: only a join left, listener on 0.0.0.0:80
		listener("[::]:443"),
		conn(4, 40, "10.0.0.2:443", "10.0.0.1:1"), // server: [::] takes IPv4 too
		listener("10.0.0.9:8080"),
		conn(5, 50, "10.0.0.2:8080", "10.0.0.1:2"), // unknown: the listener is on another address
		listener("0.0.0.0:9090"),
		conn(6, 60, "[fd00::2]:9090", "[fd00::1]:3"), // unknown: 0.0.0.0 takes IPv4 only
		conn(0, 70, "10.0.0.1:3", "10.0.0.2:3"),      // no token: joined by inode
		listener("10.0.0.2:7000"),
		conn(7, 0, "10.0.0.2:7000", "10.0.0.1:4"), // server by its listener, no subflow
	}
	sf := func(token uint32, inode uint64, flags SubflowFlags) Subflow {
		return Subflow{Token: token, Inode: inode, Flags: flags, State: StateEstablished}
	}
	sfs := []Subflow{
		sf(1, 10, SubflowJoinLocal|SubflowJoinRemote),
		sf(1, 10, SubflowMPCapableLocal|SubflowMPCapableRemote),
		sf(2, 20, SubflowMPCapableRemote),
		sf(2, 20, SubflowJoinRemote),
		sf(3, 30, SubflowJoinRemote),
		sf(0, 70, SubflowMPCapableLocal),
		sf(99, 0, SubflowMPCapableLocal), // its connection is gone
		sf(0, 0, 0),                      // no token, no inode
		sf(5, 999, SubflowJoinLocal),     // token wins over inode
	}
	s := join(conns, sfs)
	if len(s.Listeners) != 5 || len(s.Conns) != 8 {
		t.Fatalf("listeners %d conns %d", len(s.Listeners), len(s.Conns))
	}
	want := []struct {
		token    uint32
		subflows int
		side     Side
	}{{1, 2, SideClient}, {2, 2, SideServer}, {3, 1, SideServer}, {4, 0, SideServer},
		{5, 1, SideUnknown}, {6, 0, SideUnknown}, {0, 1, SideClient}, {7, 0, SideServer}}
	for i, w := range want {
		c := s.Conns[i]
		if c.Token != w.token || len(c.Subflows) != w.subflows || c.Side != w.side {
			t.Errorf("conn %d: token %d subflows %d side %v, want %+v", i, c.Token, len(c.Subflows), c.Side, w)
		}
	}
	if len(s.Unmatched) != 2 || s.Unmatched[0].Token != 99 {
		t.Errorf("unmatched: %+v", s.Unmatched)
	}
	if s.Conn(2) != &s.Conns[1] || s.Conn(0) != nil || s.Conn(12345) != nil {
		t.Errorf("Conn lookup")
	}
	if e := join(nil, nil); len(e.Conns) != 0 || e.Conn(1) != nil {
		t.Errorf("empty join: %+v", e)
	}
}
