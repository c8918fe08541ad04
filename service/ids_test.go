package service

import (
	"net/netip"
	"testing"
)

func TestIDManager(t *testing.T) {
	m := newIDManager()
	a := netip.MustParseAddr("10.0.0.1")
	b := netip.MustParseAddr("10.0.0.2")
	v6 := netip.MustParseAddr("fe80::1%eth0")

	if id := m.id(a, 0); id != 1 {
		t.Errorf("first address got %d, want 1", id)
	}
	if id := m.id(b, 0); id != 2 {
		t.Errorf("second address got %d, want 2", id)
	}
	if id := m.id(a, 0); id != 1 {
		t.Errorf("first address again got %d, want 1", id)
	}
	if id := m.id(netip.MustParseAddr("::ffff:10.0.0.1"), 0); id != 1 {
		t.Errorf("IPv4-mapped form got %d, want the IPv4 address's 1", id)
	}
	if id := m.id(a, 8080); id != 3 {
		t.Errorf("address with a port got %d, want a new id 3", id)
	}
	if id1, id2 := m.id(v6, 0), m.id(v6.WithZone(""), 0); id1 != id2 {
		t.Errorf("zone changes the id: %d, %d", id1, id2)
	}

	// A claimed free id is kept; a claim on a taken id is not recorded.
	c := netip.MustParseAddr("10.0.0.3")
	m.claim(c, 0, 200)
	if id := m.id(c, 0); id != 200 {
		t.Errorf("claimed address got %d, want 200", id)
	}
	d := netip.MustParseAddr("10.0.0.4")
	m.claim(d, 0, 1)
	if id := m.id(d, 0); id == 1 {
		t.Error("a claim took the id of another address")
	}
	m.claim(a, 0, 250)
	if id := m.id(a, 0); id != 1 {
		t.Errorf("a claim changed an address's id to %d", id)
	}
}

// TestIDManagerReuse fills all 255 ids and checks that the id used longest
// ago is the one given to the next address.
func TestIDManagerReuse(t *testing.T) {
	m := newIDManager()
	addr := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}) }
	ids := make([]uint8, 255)
	seen := make(map[uint8]bool)
	for i := range ids {
		ids[i] = m.id(addr(i), 0)
		if ids[i] == 0 || seen[ids[i]] {
			t.Fatalf("address %d got id %d, used before or zero", i, ids[i])
		}
		seen[ids[i]] = true
	}
	for i := range ids {
		if i != 2 {
			m.id(addr(i), 0) // used again: addr(2) is now the one used longest ago
		}
	}
	if got := m.id(addr(1000), 0); got != ids[2] {
		t.Errorf("new address got id %d, want %d of the one used longest ago", got, ids[2])
	}
	if len(m.byAddr) != 255 {
		t.Errorf("%d addresses kept, want 255", len(m.byAddr))
	}
	if id := m.id(addr(2), 0); id == ids[2] {
		t.Error("the address that lost its id still has it")
	}
}
