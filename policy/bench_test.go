package policy

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
)

// BenchmarkConnection runs a policy's Connection on 1000 client-side
// connections with a view of 3 interfaces (IPv4 and IPv6 each): once
// "steady" (every subflow the policy wants exists) and once "fresh" (none
// does, so each call returns actions). One op is the 1000 calls.
func BenchmarkConnection(b *testing.B) {
	v := View{Addresses: []Address{c0v4, c0v6, c1v4, c1v6, c2v4, c2v6}, SubflowLimit: 8}
	for _, name := range []string{NameSubflowPerInterface, NameFullmesh} {
		p, err := New(name)
		if err != nil {
			b.Fatal(err)
		}
		for _, steady := range []bool{true, false} {
			conns := make([]Connection, 1000)
			for i := range conns {
				c := client4()
				c.Token = uint32(i)
				c.Local = ap(c0v4, uint16(30000+i))
				c.Subflows = []Subflow{{Local: c.Local, Remote: c.Remote}}
				if steady {
					for _, a := range []Address{c1v4, c2v4} {
						c.Subflows = append(c.Subflows, sf(a, uint16(40000+i), srv4))
					}
				}
				conns[i] = c
			}
			b.Run(fmt.Sprintf("%s/steady=%t", name, steady), func(b *testing.B) {
				b.ReportAllocs()
				n := 0
				for b.Loop() {
					for _, c := range conns {
						n += len(p.Connection(v, c))
					}
				}
				if steady != (n == 0) {
					b.Fatalf("%d actions", n)
				}
			})
		}
	}
}

// BenchmarkEndpoints runs the endpoints policy on 6 usable addresses, 4 of
// them with endpoints already.
func BenchmarkEndpoints(b *testing.B) {
	v := View{Addresses: []Address{c0v4, c0v6, c1v4, c1v6, c2v4, c2v6}}
	for i, a := range v.Addresses[:4] {
		v.Endpoints = append(v.Endpoints, ep(uint8(i+1), a))
	}
	v.Endpoints = append(v.Endpoints, Endpoint{Address: pm.Address{ID: 9, Addr: netip.MustParseAddr("10.9.9.9")}})
	p, err := New(NameEndpoints)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if len(p.Endpoints(v)) != 2 {
			b.Fatal("want 2 actions")
		}
	}
}
