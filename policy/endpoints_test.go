package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
)

// ep is the endpoint the endpoints policy keeps for a, with id.
func ep(id uint8, a Address) Endpoint {
	return Endpoint{
		Address:   pm.Address{ID: id, Addr: a.Addr, Flags: a.Flags, Ifindex: int32(a.Ifindex)},
		Interface: a.Interface,
		Origin:    OriginPolicy,
	}
}

// external marks a as on an interface whose endpoints another program
// writes.
func external(a Address) Address { a.External = true; return a }

func addEP(a Address) Action     { return Action{Kind: AddEndpoint, Endpoint: ep(0, a)} }
func removeEP(e Endpoint) Action { return Action{Kind: RemoveEndpoint, Endpoint: e} }

func TestEndpoints(t *testing.T) {
	foreign := Endpoint{Address: pm.Address{ID: 5, Addr: c1v4.Addr, Flags: pm.FlagSignal, Ifindex: 3}, Origin: OriginExternal}
	implicit := Endpoint{Address: pm.Address{ID: 6, Addr: c1v4.Addr, Flags: pm.FlagImplicit, Ifindex: 3}, Origin: OriginExternal}
	gone := ep(4, with(c2v4, pm.FlagSubflow))
	relinked := ep(3, c1v4)
	relinked.Ifindex = 33
	withPort := ep(3, c1v4)
	withPort.Port = 8080

	// eight endpoints, one of them owned by the policy on an address that
	// is gone, and three new usable addresses.
	var full []Endpoint
	var fullAddrs []Address
	for i := range MaxEndpoints {
		a := Address{Interface: fmt.Sprintf("e%d", i), Ifindex: 10 + i, Addr: netip.AddrFrom4([4]byte{10, 1, byte(i), 1}), Flags: sub}
		e := ep(uint8(i+1), a)
		if i != 0 {
			e.Origin = OriginExternal
		}
		full = append(full, e)
		if i > 0 {
			fullAddrs = append(fullAddrs, a)
		}
	}
	newAddrs := []Address{
		{Interface: "n0", Ifindex: 30, Addr: netip.MustParseAddr("10.2.0.1"), Flags: sub},
		{Interface: "n1", Ifindex: 31, Addr: netip.MustParseAddr("10.2.1.1"), Flags: sub},
	}

	tests := []struct {
		name string
		v    View
		want []Action
	}{
		{"nothing usable", View{}, nil},
		{"another program's interface: nothing added, owned kept as it is", View{
			Addresses: []Address{c0v4, external(c1v4), external(with(c2v4, pm.FlagSubflow|pm.FlagBackup))},
			Endpoints: []Endpoint{ep(1, c0v4), ep(2, c2v4)},
		}, nil},
		{"nothing to do", View{Addresses: []Address{c0v4, c1v4}, Endpoints: []Endpoint{ep(1, c0v4), ep(2, c1v4)}}, nil},
		{"new addresses", View{Addresses: []Address{c0v4, c0v6, c1v4}, Endpoints: []Endpoint{ep(1, c0v4)}},
			[]Action{addEP(c0v6), addEP(c1v4)}},
		{"unsorted view, sorted actions", View{Addresses: []Address{c2v4, c1v6, c0v4}},
			[]Action{addEP(c0v4), addEP(c1v6), addEP(c2v4)}},
		{"address gone", View{Addresses: []Address{c0v4}, Endpoints: []Endpoint{ep(1, c0v4), gone}},
			[]Action{removeEP(gone)}},
		{"carrier lost: every address gone", View{Endpoints: []Endpoint{ep(2, c1v4), ep(1, c0v4)}},
			[]Action{removeEP(ep(1, c0v4)), removeEP(ep(2, c1v4))}},
		{"not owned: covers its address, never removed", View{Addresses: []Address{c1v4},
			Endpoints: []Endpoint{foreign, {Address: pm.Address{ID: 9, Addr: c2v4.Addr, Flags: sub}, Origin: OriginAdmin}}}, nil},
		{"implicit does not cover", View{Addresses: []Address{c1v4}, Endpoints: []Endpoint{implicit}},
			[]Action{addEP(c1v4)}},
		{"backup set in place", View{Addresses: []Address{with(c1v4, pm.FlagSubflow|pm.FlagBackup)}, Endpoints: []Endpoint{ep(3, c1v4)}},
			[]Action{{Kind: SetEndpointFlags, Endpoint: ep(3, with(c1v4, pm.FlagSubflow|pm.FlagBackup))}}},
		{"fullmesh cleared in place", View{Addresses: []Address{c1v4}, Endpoints: []Endpoint{ep(3, with(c1v4, pm.FlagFullmesh|pm.FlagSubflow))}},
			[]Action{{Kind: SetEndpointFlags, Endpoint: ep(3, c1v4)}}},
		{"flag order does not matter", View{Addresses: []Address{with(c1v4, pm.FlagBackup|pm.FlagSubflow)},
			Endpoints: []Endpoint{ep(3, with(c1v4, pm.FlagSubflow|pm.FlagBackup))}}, nil},
		{"subflow to signal: remove and add", View{Addresses: []Address{with(c1v4, pm.FlagSignal)}, Endpoints: []Endpoint{ep(3, c1v4)}},
			[]Action{removeEP(ep(3, c1v4)), addEP(with(c1v4, pm.FlagSignal))}},
		{"link re-created: remove and add", View{Addresses: []Address{c1v4}, Endpoints: []Endpoint{relinked}},
			[]Action{removeEP(relinked), addEP(c1v4)}},
		{"port: remove and add", View{Addresses: []Address{c1v4}, Endpoints: []Endpoint{withPort}},
			[]Action{removeEP(withPort), addEP(c1v4)}},
		{"owned duplicate removed", View{Addresses: []Address{c1v4}, Endpoints: []Endpoint{ep(7, c1v4), ep(3, c1v4)}},
			[]Action{removeEP(ep(7, c1v4))}},
		{"address on two interfaces: the first", View{Addresses: []Address{c1v4, {Interface: "c2", Ifindex: 4, Addr: c1v4.Addr, Flags: sub}}},
			[]Action{addEP(c1v4)}},
		{"IPv4-mapped endpoint is the IPv4 address", View{Addresses: []Address{c1v4},
			Endpoints: []Endpoint{ep(3, Address{Interface: "c1", Ifindex: 3, Addr: netip.AddrFrom16(c1v4.Addr.As16()), Flags: sub})}}, nil},
		{"kernel full: adds up to the free slots", View{Addresses: slices.Concat(fullAddrs, newAddrs), Endpoints: full},
			[]Action{removeEP(full[0]), addEP(newAddrs[0])}},
		{"kernel full: an implicit one is replaced", View{Addresses: slices.Concat(fullAddrs[:6], []Address{c1v4}), Endpoints: slices.Concat(full[1:], []Endpoint{implicit})},
			[]Action{addEP(c1v4)}},
	}
	p, err := New(NameEndpoints)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkActions(t, p.Endpoints(tt.v), tt.want)
			if got := p.Connection(tt.v, client4()); len(got) != 0 {
				t.Errorf("Connection: %v, want nothing", got)
			}
			// and the actions converge
			w := &world{v: tt.v}
			w.apply(t, p.Endpoints(tt.v))
			if more := p.Endpoints(w.v); len(more) != 0 {
				t.Errorf("after the actions: %v, want nothing", more)
			}
		})
	}
}
