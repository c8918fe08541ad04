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
	want := []string{NameEndpoints, NameFullmesh, NameNone, NameSubflowPerInterface}
	if got := Names(); !slices.Equal(got, want) {
		t.Fatalf("Names() = %v, want %v", got, want)
	}
	pms := map[string]string{
		NameEndpoints: PathManagerKernel, NameSubflowPerInterface: PathManagerUserspace,
		NameFullmesh: PathManagerUserspace, NameNone: "",
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
	for k := AddEndpoint; k <= Withdraw; k++ {
		s := k.String()
		if s == "" || strings.HasPrefix(s, "Kind(") || seen[s] {
			t.Errorf("Kind(%d).String() = %q", k, s)
		}
		seen[s] = true
	}
	for _, k := range []Kind{0, Withdraw + 1, 255} {
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
		{createFrom(c1v4, srv4, true), `create-subflow token 7 10.55.1.1:0 -> 10.55.0.2:8080 dev "c1" backup true`},
		{Action{Kind: Withdraw, Token: 7, ID: 3, Local: c1v6.Addr, LocalPort: 80},
			`withdraw token 7 id 3 [fd00:55:1::1]:80 dev ""`},
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
