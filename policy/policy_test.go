package policy

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
)

func TestRegistry(t *testing.T) {
	want := []string{NameEndpoints, NameFullmesh, NameHandover, NameNone, NameSubflowPerInterface}
	if got := Names(); !slices.Equal(got, want) {
		t.Fatalf("Names() = %v, want %v", got, want)
	}
	pms := map[string]string{
		NameEndpoints: PathManagerKernel, NameSubflowPerInterface: PathManagerUserspace,
		NameFullmesh: PathManagerUserspace, NameHandover: PathManagerUserspace, NameNone: "",
	}
	for _, name := range want {
		p, err := New(name)
		if err != nil {
			t.Fatalf("New(%q): %v", name, err)
		}
		if p.Name() != name || p.PathManager() != pms[name] {
			t.Errorf("New(%q): Name %q PathManager %q, want %q", name, p.Name(), p.PathManager(), pms[name])
		}
	}

	_, err := New("sspi")
	if !errors.Is(err, ErrUnknown) {
		t.Fatalf("New(sspi) = %v, want ErrUnknown", err)
	}
	for _, name := range want {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("error %q does not list %q", err, name)
		}
	}

	for _, bad := range []struct {
		name string
		f    func() Policy
	}{{"", func() Policy { return none{} }}, {"x", nil}, {NameNone, func() Policy { return none{} }}} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Register(%q, f) did not panic", bad.name)
				}
			}()
			Register(bad.name, bad.f)
		}()
	}
	if got := Names(); !slices.Equal(got, want) {
		t.Errorf("after failed registrations Names() = %v", got)
	}
}

func TestNoneDoesNothing(t *testing.T) {
	p, err := New(NameNone)
	if err != nil {
		t.Fatal(err)
	}
	v := View{Addresses: []Address{c0v4, c1v4}, Endpoints: []Endpoint{{Address: pm.Address{ID: 1, Addr: c2v4.Addr}, Origin: OriginPolicy}}, SubflowLimit: 8}
	if got := slices.Concat(p.Endpoints(v), p.Connection(v, client4())); len(got) != 0 {
		t.Errorf("none acted: %v", got)
	}
}

func TestKindString(t *testing.T) {
	seen := map[string]bool{}
	for k := AddEndpoint; k <= SetSubflowBackup; k++ {
		s := k.String()
		if s == "" || strings.HasPrefix(s, "Kind(") || seen[s] {
			t.Errorf("Kind(%d).String() = %q", k, s)
		}
		seen[s] = true
	}
	for _, k := range []Kind{0, SetSubflowBackup + 1, 255} {
		if got := k.String(); !strings.HasPrefix(got, "Kind(") {
			t.Errorf("Kind(%d).String() = %q, want Kind(n)", uint8(k), got)
		}
	}
}

func TestActionString(t *testing.T) {
	tests := []struct {
		a    Action
		want string
	}{
		{Action{Kind: AddEndpoint, Endpoint: Endpoint{Address: pm.Address{Addr: c1v4.Addr, Flags: subBackup}, Interface: "c1"}},
			`add-endpoint id 0 10.55.1.1 [subflow,backup] dev "c1"`},
		{createFrom(c1v4, srv4, true), `create-subflow token 00000007 10.55.1.1:0 -> 10.55.0.2:8080 dev "c1" backup true`},
		{Action{Kind: Withdraw, Token: 7, ID: 3, Local: c1v6.Addr, LocalPort: 80},
			`withdraw token 00000007 id 3 [fd00:55:1::1]:80 dev ""`},
		{Action{Kind: 99}, "Kind(99)"},
	}
	for _, tt := range tests {
		if got := tt.a.String(); got != tt.want {
			t.Errorf("String() = %q, want %q", got, tt.want)
		}
	}
}

func TestKeyUnmaps(t *testing.T) {
	mapped := netip.MustParseAddr("::ffff:10.55.0.1")
	if pm.CanonicalAddr(mapped) != c0v4.Addr || pm.CanonicalAddr(netip.MustParseAddr("fe80::1%c0")) != netip.MustParseAddr("fe80::1") {
		t.Errorf("key does not unmap or drop the zone")
	}
}

// TestReasons: each policy says why it wants an action, in words that
// name what it saw.
func TestReasons(t *testing.T) {
	mustNew := func(name string) Policy {
		p, err := New(name)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	withSubflow := func(s Subflow) Connection {
		c := client4()
		c.Subflows = append(c.Subflows, s)
		return c
	}
	fromC1 := Subflow{Local: ap(c1v4, 41000), Remote: srv4, Interface: "c1"}
	server := Connection{Token: 7, ServerSide: true, Established: true, Local: srv4, Remote: ap(c0v4, 40000),
		Subflows:  []Subflow{{Local: srv4, Remote: ap(c0v4, 40000)}},
		Announced: []PeerAddress{{ID: 3, Addr: netip.MustParseAddr("10.55.9.2")}}}
	srvAddrs := []Address{{Interface: "s0", Ifindex: 2, Addr: srv4.Addr()}, {Interface: "s1", Ifindex: 3, Addr: netip.MustParseAddr("10.55.1.2")}}
	withPeer := func(p PeerAddress) Connection {
		c := client4()
		c.PeerAddresses = append(c.PeerAddresses, p)
		return c
	}
	gone := ep(9, Address{Interface: "c9", Ifindex: 9, Addr: netip.MustParseAddr("10.55.9.1"), Flags: sub})
	moved := ep(1, c0v4)
	moved.Ifindex = 22
	withPort := ep(1, c0v4)
	withPort.Port = 8080
	tests := []struct {
		name string
		acts []Action
		want []string
	}{
		{"subflow-per-interface: a new interface",
			mustNew(NameSubflowPerInterface).Connection(View{Addresses: []Address{c0v4, c1v4}, SubflowLimit: 8}, client4()),
			[]string{"interface c1 has no subflow"}},
		{"subflow-per-interface: an address gone",
			mustNew(NameSubflowPerInterface).Connection(View{Addresses: []Address{c0v4}, SubflowLimit: 8}, withSubflow(fromC1)),
			[]string{"address 10.55.1.1 is not usable any more"}},
		{"subflow-per-interface: the server's announcements",
			mustNew(NameSubflowPerInterface).Connection(View{Addresses: srvAddrs}, server),
			[]string{"address 10.55.9.2 is not usable any more", "address 10.55.1.2 on s1 is not announced"}},
		{"fullmesh: a new address",
			mustNew(NameFullmesh).Connection(View{Addresses: []Address{c0v4, c1v4}, SubflowLimit: 8}, client4()),
			[]string{"no subflow from 10.55.1.1 to 10.55.0.2"}},
		{"fullmesh: the peer announced an address",
			mustNew(NameFullmesh).Connection(View{Addresses: []Address{c0v4}, SubflowLimit: 8}, withPeer(PeerAddress{ID: 1, Addr: netip.MustParseAddr("10.66.0.2")})),
			[]string{"the peer announced 10.66.0.2; no subflow from 10.55.0.1 to 10.66.0.2"}},
		{"fullmesh: an address gone",
			mustNew(NameFullmesh).Connection(View{Addresses: []Address{c0v4}, SubflowLimit: 8}, withSubflow(fromC1)),
			[]string{"address 10.55.1.1 is not usable any more"}},
		{"endpoints: a new address, an address gone",
			mustNew(NameEndpoints).Endpoints(View{Addresses: []Address{c0v4, c1v4}, Endpoints: []Endpoint{ep(1, c0v4), gone}}),
			[]string{"the address is not usable any more", "usable address on c1"}},
		{"endpoints: flags changed",
			mustNew(NameEndpoints).Endpoints(View{Addresses: []Address{with(c0v4, subBackup)}, Endpoints: []Endpoint{ep(1, c0v4)}}),
			[]string{"the configured flags are subflow,backup"}},
		{"endpoints: the address moved",
			mustNew(NameEndpoints).Endpoints(View{Addresses: []Address{c0v4}, Endpoints: []Endpoint{moved}}),
			[]string{"the address is on interface c0, the endpoint on another", "the address is on interface c0, the endpoint on another"}},
		{"endpoints: an endpoint with a port",
			mustNew(NameEndpoints).Endpoints(View{Addresses: []Address{c0v4}, Endpoints: []Endpoint{withPort}}),
			[]string{"the endpoint has a port", "the endpoint has a port"}},
		{"endpoints: flags the kernel cannot change in place",
			mustNew(NameEndpoints).Endpoints(View{Addresses: []Address{with(c0v4, pm.FlagSignal)}, Endpoints: []Endpoint{ep(1, c0v4)}}),
			[]string{"the flags signal cannot be set on the endpoint", "the flags signal cannot be set on the endpoint"}},
	}
	for _, tt := range tests {
		var got []string
		for _, a := range tt.acts {
			got = append(got, a.Reason)
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("%s: reasons %q, want %q (actions %v)", tt.name, got, tt.want, tt.acts)
		}
	}
}
