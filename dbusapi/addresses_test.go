package dbusapi

import (
	"net/netip"
	"testing"

	"github.com/mptcp-pmd/mptcp-pmd/service"
)

// TestListAddresses checks that ListAddresses replies with the backend's
// addresses in their wire form, to a caller that needs no authorization.
func TestListAddresses(t *testing.T) {
	auth := &allowAll{}
	want := []service.AddressInfo{
		{Interface: "eth0", Address: netip.MustParseAddr("10.0.0.1"), Usable: true},
		{Interface: "eth0", Address: netip.MustParseAddr("fe80::1"), Reason: "link-local"},
		{Interface: "lo", Address: netip.MustParseAddr("127.0.0.1"), Reason: "loopback"},
	}
	h := newHarness(t, Options{Authorizer: auth}, func(f *fakeBackend) { f.addresses = want })
	var got []addressInfoWire
	if err := h.obj(ManagerPath).Call(ManagerInterface+".ListAddresses", 0).Store(&got); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("ListAddresses = %v, want %v", got, want)
	}
	for i, w := range want {
		if g := got[i]; g.Interface != w.Interface || g.Address != w.Address.String() || g.Usable != w.Usable || g.Reason != w.Reason {
			t.Errorf("ListAddresses[%d] = %+v, want %+v", i, g, w)
		}
	}
	if asks := auth.requests(); len(asks) != 0 {
		t.Errorf("ListAddresses was authorized: %v", asks)
	}

	// A failing backend is the caller's error.
	h.be.mu.Lock()
	h.be.addressesErr = service.ErrFailed
	h.be.mu.Unlock()
	if _, err := h.call(ManagerPath, ManagerInterface+".ListAddresses"); errName(err) != ErrorFailed {
		t.Errorf("ListAddresses with a failing backend: %v, want %s", err, ErrorFailed)
	}
}
