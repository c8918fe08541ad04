package netmon

import (
	"bytes"
	"net/netip"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

// Builders of rtnetlink payloads, as the kernel lays them out.

func nlattr(typ uint16, val []byte) []byte {
	n := unix.SizeofRtAttr + len(val)
	b := make([]byte, (n+3)&^3)
	native.PutUint16(b[0:2], uint16(n))
	native.PutUint16(b[2:4], typ)
	copy(b[4:], val)
	return b
}

func u32(v uint32) []byte { b := make([]byte, 4); native.PutUint32(b, v); return b }

func ipBytes(s string) []byte { return netip.MustParseAddr(s).AsSlice() }

func linkMsg(family uint8, index int32, flags uint32, attrs ...[]byte) []byte {
	b := make([]byte, unix.SizeofIfInfomsg)
	b[0] = family
	native.PutUint32(b[4:8], uint32(index))
	native.PutUint32(b[8:12], flags)
	return append(b, bytes.Join(attrs, nil)...)
}

func addrMsg(family, plen, flags, scope uint8, index uint32, attrs ...[]byte) []byte {
	b := []byte{family, plen, flags, scope, 0, 0, 0, 0}
	native.PutUint32(b[4:8], index)
	return append(b, bytes.Join(attrs, nil)...)
}

func routeMsg(family, dstLen, srcLen, table, typ uint8, flags uint32, attrs ...[]byte) []byte {
	b := []byte{family, dstLen, srcLen, 0, table, unix.RTPROT_BOOT, unix.RT_SCOPE_UNIVERSE, typ, 0, 0, 0, 0}
	native.PutUint32(b[8:12], flags)
	return append(b, bytes.Join(attrs, nil)...)
}

func nexthop(flags uint8, index int32, attrs ...[]byte) []byte {
	body := bytes.Join(attrs, nil)
	b := make([]byte, unix.SizeofRtNexthop)
	native.PutUint16(b[0:2], uint16(unix.SizeofRtNexthop+len(body)))
	b[2] = flags
	native.PutUint32(b[4:8], uint32(index))
	return append(b, body...)
}

func via(family uint16, a string) []byte {
	b := make([]byte, 2)
	native.PutUint16(b, family)
	return append(b, ipBytes(a)...)
}

func TestDecodeLink(t *testing.T) {
	name := nlattr(unix.IFLA_IFNAME, []byte("eth0\x00"))
	oper := nlattr(unix.IFLA_OPERSTATE, []byte{6})
	tests := []struct {
		name    string
		typ     uint16
		data    []byte
		want    []event
		wantErr bool
	}{
		{"up with carrier", unix.RTM_NEWLINK, linkMsg(0, 2, unix.IFF_UP|unix.IFF_LOWER_UP|unix.IFF_RUNNING, name, oper),
			[]event{{op: opNewLink, link: Link{Index: 2, Name: "eth0", Up: true, Carrier: true}}}, false},
		{"operational state alone is no carrier", unix.RTM_NEWLINK, linkMsg(0, 2, unix.IFF_UP, name, oper),
			[]event{{op: opNewLink, link: Link{Index: 2, Name: "eth0", Up: true}}}, false},
		{"carrier only while up", unix.RTM_NEWLINK, linkMsg(0, 2, unix.IFF_LOWER_UP, name),
			[]event{{op: opNewLink, link: Link{Index: 2, Name: "eth0"}}}, false},
		{"loopback, name without NUL", unix.RTM_NEWLINK, linkMsg(0, 1, unix.IFF_UP|unix.IFF_LOOPBACK|unix.IFF_LOWER_UP, nlattr(unix.IFLA_IFNAME, []byte("lo"))),
			[]event{{op: opNewLink, link: Link{Index: 1, Name: "lo", Up: true, Carrier: true, Loopback: true}}}, false},
		{"removal", unix.RTM_DELLINK, linkMsg(0, 2, 0, name),
			[]event{{op: opDelLink, link: Link{Index: 2, Name: "eth0"}}}, false},
		{"bridge port message", unix.RTM_DELLINK, linkMsg(unix.AF_BRIDGE, 2, 0, name), nil, false},
		{"short", unix.RTM_NEWLINK, linkMsg(0, 2, 0)[:10], nil, true},
		{"no index", unix.RTM_NEWLINK, linkMsg(0, 0, 0, name), nil, true},
		{"attribute longer than the message", unix.RTM_NEWLINK, append(linkMsg(0, 2, 0), 200, 0, 3, 0, 'x'), nil, true},
	}
	for _, tt := range tests {
		got, err := decode(nil, tt.typ, 0, tt.data)
		if (err != nil) != tt.wantErr || !slices.Equal(got, tt.want) {
			t.Errorf("%s: decode = %v, %v; want %v, error %v", tt.name, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestDecodeAddr(t *testing.T) {
	a := func(index int, p string, f AddrFlags, scope uint8) Address {
		return Address{Index: index, Prefix: netip.MustParsePrefix(p), Flags: f, Scope: scope}
	}
	tests := []struct {
		name    string
		typ     uint16
		data    []byte
		want    []event
		wantErr bool
	}{
		{"IPv4", unix.RTM_NEWADDR, addrMsg(unix.AF_INET, 24, unix.IFA_F_PERMANENT, 0, 3,
			nlattr(unix.IFA_ADDRESS, ipBytes("10.0.0.1")), nlattr(unix.IFA_LOCAL, ipBytes("10.0.0.1"))),
			[]event{{op: opNewAddr, addr: a(3, "10.0.0.1/24", Permanent, 0)}}, false},
		{"point-to-point: the local address", unix.RTM_NEWADDR, addrMsg(unix.AF_INET, 32, 0, 0, 3,
			nlattr(unix.IFA_ADDRESS, ipBytes("10.0.0.2")), nlattr(unix.IFA_LOCAL, ipBytes("10.0.0.1"))),
			[]event{{op: opNewAddr, addr: a(3, "10.0.0.1/32", 0, 0)}}, false},
		{"IPv6, 32-bit flags win", unix.RTM_NEWADDR, addrMsg(unix.AF_INET6, 64, unix.IFA_F_TENTATIVE, unix.RT_SCOPE_LINK, 3,
			nlattr(unix.IFA_ADDRESS, ipBytes("fe80::1")), nlattr(unix.IFA_FLAGS, u32(unix.IFA_F_PERMANENT|unix.IFA_F_NOPREFIXROUTE))),
			[]event{{op: opNewAddr, addr: a(3, "fe80::1/64", Permanent|NoPrefixRoute, ScopeLink)}}, false},
		{"removal", unix.RTM_DELADDR, addrMsg(unix.AF_INET6, 64, 0, 0, 3, nlattr(unix.IFA_ADDRESS, ipBytes("fd00::1"))),
			[]event{{op: opDelAddr, addr: a(3, "fd00::1/64", 0, 0)}}, false},
		{"other family", unix.RTM_NEWADDR, addrMsg(unix.AF_PACKET, 0, 0, 0, 3), nil, false},
		{"prefix too long", unix.RTM_NEWADDR, addrMsg(unix.AF_INET, 33, 0, 0, 3, nlattr(unix.IFA_ADDRESS, ipBytes("10.0.0.1"))), nil, true},
		{"no address", unix.RTM_NEWADDR, addrMsg(unix.AF_INET, 24, 0, 0, 3), nil, true},
		{"address of the wrong size", unix.RTM_NEWADDR, addrMsg(unix.AF_INET, 24, 0, 0, 3, nlattr(unix.IFA_ADDRESS, ipBytes("fd00::1"))), nil, true},
		{"no index", unix.RTM_NEWADDR, addrMsg(unix.AF_INET, 24, 0, 0, 0, nlattr(unix.IFA_ADDRESS, ipBytes("10.0.0.1"))), nil, true},
		{"short", unix.RTM_NEWADDR, []byte{unix.AF_INET, 24}, nil, true},
	}
	for _, tt := range tests {
		got, err := decode(nil, tt.typ, 0, tt.data)
		if (err != nil) != tt.wantErr || !slices.Equal(got, tt.want) {
			t.Errorf("%s: decode = %v, %v; want %v, error %v", tt.name, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestDecodeRoute(t *testing.T) {
	r := func(index, family int, gw string, table, prio int) Route {
		rt := Route{Index: index, Family: family, Table: table, Priority: prio}
		if gw != "" {
			rt.Gateway = netip.MustParseAddr(gw)
		}
		return rt
	}
	withSrc := r(2, FamilyIPv4, "10.0.0.254", 1000, 5)
	withSrc.Src = netip.MustParseAddr("10.0.0.1")
	const inet, inet6 = unix.AF_INET, unix.AF_INET6
	oif2 := nlattr(unix.RTA_OIF, u32(2))
	tests := []struct {
		name    string
		typ     uint16
		flags   uint16
		data    []byte
		want    []event
		wantErr bool
	}{
		{"IPv4 default", unix.RTM_NEWROUTE, 0, routeMsg(inet, 0, 0, 254, unix.RTN_UNICAST, 0,
			nlattr(unix.RTA_TABLE, u32(254)), nlattr(unix.RTA_GATEWAY, ipBytes("10.0.0.254")), oif2),
			[]event{{op: opNewRoute, route: r(2, FamilyIPv4, "10.0.0.254", TableMain, 0)}}, false},
		{"table beyond 8 bits, metric, source", unix.RTM_NEWROUTE, 0, routeMsg(inet, 0, 0, unix.RT_TABLE_COMPAT, unix.RTN_UNICAST, 0,
			nlattr(unix.RTA_TABLE, u32(1000)), nlattr(unix.RTA_PRIORITY, u32(5)), nlattr(unix.RTA_PREFSRC, ipBytes("10.0.0.1")),
			nlattr(unix.RTA_GATEWAY, ipBytes("10.0.0.254")), oif2),
			[]event{{op: opNewRoute, route: withSrc}}, false},
		{"IPv6 default removed", unix.RTM_DELROUTE, 0, routeMsg(inet6, 0, 0, 254, unix.RTN_UNICAST, 0,
			nlattr(unix.RTA_PRIORITY, u32(1024)), nlattr(unix.RTA_GATEWAY, ipBytes("fe80::1")), oif2),
			[]event{{op: opDelRoute, route: r(2, FamilyIPv6, "fe80::1", TableMain, 1024)}}, false},
		{"device route", unix.RTM_NEWROUTE, 0, routeMsg(inet, 0, 0, 200, unix.RTN_UNICAST, 0, oif2),
			[]event{{op: opNewRoute, route: r(2, FamilyIPv4, "", 200, 0)}}, false},
		{"replacing", unix.RTM_NEWROUTE, unix.NLM_F_REPLACE, routeMsg(inet, 0, 0, 254, unix.RTN_UNICAST, 0, oif2),
			[]event{{op: opNewRoute, route: r(2, FamilyIPv4, "", TableMain, 0), replace: true}}, false},
		{"replace flag on a removal means nothing", unix.RTM_DELROUTE, unix.NLM_F_REPLACE, routeMsg(inet, 0, 0, 254, unix.RTN_UNICAST, 0, oif2),
			[]event{{op: opDelRoute, route: r(2, FamilyIPv4, "", TableMain, 0)}}, false},
		{"not a default route", unix.RTM_NEWROUTE, 0, routeMsg(inet, 24, 0, 254, unix.RTN_UNICAST, 0,
			nlattr(unix.RTA_DST, ipBytes("10.0.0.0")), oif2), nil, false},
		{"source-specific", unix.RTM_NEWROUTE, 0, routeMsg(inet6, 0, 48, 254, unix.RTN_UNICAST, 0, oif2), nil, false},
		{"cached clone", unix.RTM_NEWROUTE, 0, routeMsg(inet6, 0, 0, 254, unix.RTN_UNICAST, unix.RTM_F_CLONED, oif2), nil, false},
		{"blackhole", unix.RTM_NEWROUTE, 0, routeMsg(inet, 0, 0, 254, unix.RTN_BLACKHOLE, 0), nil, false},
		{"replacing blackhole", unix.RTM_NEWROUTE, unix.NLM_F_REPLACE, routeMsg(inet, 0, 0, 254, unix.RTN_BLACKHOLE, 0, nlattr(unix.RTA_PRIORITY, u32(7))),
			[]event{{op: opNewRoute, route: r(0, FamilyIPv4, "", TableMain, 7), replace: true, noRoute: true}}, false},
		{"no interface", unix.RTM_NEWROUTE, 0, routeMsg(inet, 0, 0, 254, unix.RTN_UNICAST, 0, nlattr(unix.RTA_GATEWAY, ipBytes("10.0.0.254"))), nil, false},
		{"nexthop object", unix.RTM_NEWROUTE, 0, routeMsg(inet, 0, 0, 254, unix.RTN_UNICAST, 0, nlattr(30, u32(1)), oif2), nil, false},
		{"other family", unix.RTM_NEWROUTE, 0, routeMsg(unix.AF_MPLS, 0, 0, 254, unix.RTN_UNICAST, 0, oif2), nil, false},
		{"multipath", unix.RTM_NEWROUTE, unix.NLM_F_REPLACE, routeMsg(inet, 0, 0, 254, unix.RTN_UNICAST, 0,
			nlattr(unix.RTA_MULTIPATH, bytes.Join([][]byte{
				nexthop(0, 2, nlattr(unix.RTA_GATEWAY, ipBytes("10.0.0.254"))),
				nexthop(0, 3, nlattr(unix.RTA_VIA, via(unix.AF_INET6, "fe80::1"))),
				nexthop(0, 0), // no interface
			}, nil))),
			[]event{
				{op: opNewRoute, route: r(2, FamilyIPv4, "10.0.0.254", TableMain, 0), replace: true},
				{op: opNewRoute, route: r(3, FamilyIPv4, "fe80::1", TableMain, 0)},
			}, false},
		{"bad next hop", unix.RTM_NEWROUTE, 0, routeMsg(inet, 0, 0, 254, unix.RTN_UNICAST, 0,
			nlattr(unix.RTA_MULTIPATH, append(nexthop(0, 2), 40, 0, 0, 0, 3, 0, 0, 0))), nil, true},
		{"short", unix.RTM_NEWROUTE, 0, routeMsg(inet, 0, 0, 254, unix.RTN_UNICAST, 0)[:8], nil, true},
	}
	prior := event{op: opNewLink, link: Link{Index: 9}}
	for _, tt := range tests {
		got, err := decode([]event{prior}, tt.typ, tt.flags, tt.data)
		if got[0] != prior {
			t.Errorf("%s: decode changed the events it appends to", tt.name)
		}
		if got = got[1:]; (err != nil) != tt.wantErr || !slices.Equal(got, tt.want) {
			t.Errorf("%s: decode = %v, %v; want %v, error %v", tt.name, got, err, tt.want, tt.wantErr)
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(uint16(unix.RTM_NEWLINK), uint16(0), linkMsg(0, 2, unix.IFF_UP, nlattr(unix.IFLA_IFNAME, []byte("eth0\x00"))))
	f.Add(uint16(unix.RTM_NEWADDR), uint16(0), addrMsg(unix.AF_INET6, 64, 0, 0, 3,
		nlattr(unix.IFA_ADDRESS, ipBytes("fd00::1")), nlattr(unix.IFA_FLAGS, u32(unix.IFA_F_PERMANENT))))
	f.Add(uint16(unix.RTM_NEWROUTE), uint16(unix.NLM_F_REPLACE), routeMsg(unix.AF_INET, 0, 0, 254, unix.RTN_UNICAST, 0,
		nlattr(unix.RTA_MULTIPATH, append(nexthop(0, 2, nlattr(unix.RTA_GATEWAY, ipBytes("10.0.0.254"))),
			nexthop(0, 3, nlattr(unix.RTA_VIA, via(unix.AF_INET6, "fe80::1")))...))))
	f.Fuzz(func(t *testing.T, typ, flags uint16, data []byte) {
		evs, err := decode(nil, typ, flags, data)
		if err != nil && len(evs) != 0 {
			t.Fatalf("events %v with error %v", evs, err)
		}
		for _, e := range evs {
			switch e.op {
			case opNewLink, opDelLink:
				if e.link.Index <= 0 || e.link.Carrier && !e.link.Up {
					t.Fatalf("bad link %v", e.link)
				}
			case opNewAddr, opDelAddr:
				if e.addr.Index <= 0 || !e.addr.Prefix.IsValid() || e.addr.Addr().Zone() != "" {
					t.Fatalf("bad address %v", e.addr)
				}
			case opNewRoute, opDelRoute:
				if !e.noRoute && e.route.Index <= 0 || e.route.Family != FamilyIPv4 && e.route.Family != FamilyIPv6 {
					t.Fatalf("bad route %+v", e)
				}
			default:
				t.Fatalf("bad op in %+v", e)
			}
		}
	})
}

// BenchmarkDecodeApply measures a notification that changes nothing, from
// its bytes to the de-duplication.
func BenchmarkDecodeApply(b *testing.B) {
	for _, bc := range []struct {
		name string
		typ  uint16
		data []byte
	}{
		{"link", unix.RTM_NEWLINK, linkMsg(0, 2, unix.IFF_UP|unix.IFF_LOWER_UP, nlattr(unix.IFLA_IFNAME, []byte("eth0\x00")),
			nlattr(unix.IFLA_MTU, u32(1500)), nlattr(unix.IFLA_OPERSTATE, []byte{6}))},
		{"address", unix.RTM_NEWADDR, addrMsg(unix.AF_INET6, 64, 0, 0, 2,
			nlattr(unix.IFA_ADDRESS, ipBytes("fd00::1")), nlattr(unix.IFA_CACHEINFO, make([]byte, 16)), nlattr(unix.IFA_FLAGS, u32(unix.IFA_F_PERMANENT)))},
	} {
		b.Run(bc.name, func(b *testing.B) {
			s := newState()
			applyAll(s, newLink(Link{Index: 2, Name: "eth0", Up: true, Carrier: true}),
				newAddr(Address{Index: 2, Prefix: netip.MustParsePrefix("fd00::1/64"), Flags: Permanent}))
			evs := make([]event, 0, 4)
			b.ReportAllocs()
			for b.Loop() {
				evs, _ = decode(evs[:0], bc.typ, 0, bc.data)
				for i := range evs {
					s.apply(&evs[i])
				}
			}
			if len(evs) != 1 || len(s.out) != 0 {
				b.Fatalf("events %v, updates %v", evs, s.out)
			}
		})
	}
}
