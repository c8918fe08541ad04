package main

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmnl"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
)

// ctlJSON runs the built mptcpctl with --json and decodes what it printed.
func ctlJSON[T any](t *testing.T, s *setup, args ...string) T {
	t.Helper()
	out, errOut, code := ctl(t, s.bus, append(args, "--json")...)
	if code != 0 {
		t.Fatalf("mptcpctl %s --json: status %d: %s%s", strings.Join(args, " "), code, out, errOut)
	}
	var v T
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("mptcpctl %s --json: %v:\n%s", strings.Join(args, " "), err, out)
	}
	return v
}

// mustCtlE2E runs the built mptcpctl and fails the test unless it succeeds.
func mustCtlE2E(t *testing.T, s *setup, args ...string) string {
	t.Helper()
	out, errOut, code := ctl(t, s.bus, args...)
	if code != 0 {
		t.Fatalf("mptcpctl %s: status %d: %s%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// TestMptcpctlKernelState: mptcpctl's endpoint, limits and addresses
// commands against the real daemon in the lab, checked against the
// kernel's state read with pm.
func TestMptcpctlKernelState(t *testing.T) {
	s := newSetup(t, pmtest.LabOptions{})
	cli := s.lab.Client
	k, err := pmnl.Dial(&pmnl.Config{NetNS: cli.NSFD()})
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	startDaemon(t, cli, s.bus)

	// Endpoints: add two, list them, change one, delete one, flush.
	out := mustCtlE2E(t, s, "endpoint", "add", cli.Addrs4[1].String(), "--flags", "subflow,backup", "--interface", cli.Ifaces[1])
	id, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(out, "added endpoint ")))
	if err != nil {
		t.Fatalf("endpoint add printed %q", out)
	}
	mustCtlE2E(t, s, "endpoint", "add", cli.Addrs6[0].String(), "--flags", "signal", "--port", "8080", "--id", "9")
	type endpoint struct {
		ID        uint8    `json:"id"`
		Address   string   `json:"address"`
		Port      uint16   `json:"port"`
		Flags     []string `json:"flags"`
		Interface string   `json:"interface"`
		Origin    string   `json:"origin"`
	}
	kernelEndpoints := func() []pm.Address {
		eps, err := k.Endpoints()
		if err != nil {
			t.Fatal(err)
		}
		return eps
	}
	eps := kernelEndpoints()
	listed := ctlJSON[[]endpoint](t, s, "endpoints")
	if len(listed) != 2 || len(eps) != 2 {
		t.Fatalf("mptcpctl endpoints %+v, kernel %+v", listed, eps)
	}
	for i, e := range eps {
		l := listed[i]
		if l.ID != e.ID || l.Address != e.Addr.String() || l.Port != e.Port || !slices.Equal(l.Flags, e.Flags.Names()) || l.Origin != "admin" {
			t.Errorf("mptcpctl endpoints [%d] = %+v, kernel %+v", i, l, e)
		}
	}
	if l := listed[0]; l.ID != uint8(id) || l.Interface != cli.Ifaces[1] {
		t.Errorf("first endpoint %+v, want id %d on %s", l, id, cli.Ifaces[1])
	}
	mustCtlE2E(t, s, "endpoint", "set", fmt.Sprint(id), "none")
	if e := kernelEndpoints()[0]; e.Flags&pm.FlagBackup != 0 {
		t.Errorf("after endpoint set none: kernel %+v", e)
	}
	mustCtlE2E(t, s, "endpoint", "del", "9")
	if eps := kernelEndpoints(); len(eps) != 1 || eps[0].ID != uint8(id) {
		t.Errorf("after endpoint del 9: kernel %+v", eps)
	}
	if _, errOut, code := ctl(t, s.bus, "endpoint", "del", "9"); code != 5 {
		t.Errorf("endpoint del 9 again: status %d, want 5 (not found): %s", code, errOut)
	}
	mustCtlE2E(t, s, "endpoint", "flush")
	if eps := kernelEndpoints(); len(eps) != 0 {
		t.Errorf("after endpoint flush: kernel %+v", eps)
	}

	// Limits.
	mustCtlE2E(t, s, "limits", "set", "3", "4")
	l, err := k.Limits()
	if err != nil {
		t.Fatal(err)
	}
	type limits struct {
		Subflows        uint32 `json:"subflows"`
		AddAddrAccepted uint32 `json:"add_addr_accepted"`
	}
	if got := ctlJSON[limits](t, s, "limits"); l != (pm.Limits{Subflows: 3, AddAddrAccepted: 4}) || got != (limits{3, 4}) {
		t.Errorf("after limits set 3 4: kernel %+v, mptcpctl limits %+v", l, got)
	}

	// Addresses: every lab address usable, loopback and link-local
	// filtered out with their reason; the usable ones are what status counts.
	type address struct {
		Interface string `json:"interface"`
		Address   string `json:"address"`
		Usable    bool   `json:"usable"`
		Reason    string `json:"reason"`
	}
	var addrs []address
	want := map[string]bool{}
	for i, name := range cli.Ifaces {
		want[name+" "+cli.Addrs4[i].String()] = true
		want[name+" "+cli.Addrs6[i].String()] = true
	}
	eventually(t, 5*time.Second, "every lab address usable", func() bool {
		addrs = ctlJSON[[]address](t, s, "addresses")
		n := 0
		for _, a := range addrs {
			if a.Usable && want[a.Interface+" "+a.Address] {
				n++
			}
		}
		return n == len(want)
	})
	usable := 0
	reasons := map[string]bool{}
	for _, a := range addrs {
		if a.Usable {
			usable++
			continue
		}
		reasons[a.Reason] = true
		if ip := netip.MustParseAddr(a.Address); ip.IsLoopback() && a.Reason != "loopback" ||
			ip.IsLinkLocalUnicast() && a.Reason != "link-local" {
			t.Errorf("address %+v: want it filtered out as loopback or link-local", a)
		}
	}
	if !reasons["loopback"] || !reasons["link-local"] {
		t.Errorf("no loopback or link-local address filtered out: %+v", addrs)
	}
	type status struct {
		LocalAddresses []struct{} `json:"local_addresses"`
	}
	if st := ctlJSON[status](t, s, "status"); len(st.LocalAddresses) != usable {
		t.Errorf("status has %d usable addresses, addresses %d", len(st.LocalAddresses), usable)
	}
}

// TestMptcpctlAnnounce: `mptcpctl announce`, `connection show` and
// `remove` against the real daemon on a userspace-PM connection, checked
// against the kernel (the peer's in-kernel path manager joins the
// announced address; the connection's address list), with `monitor --json`
// seeing our announcement come and go.
func TestMptcpctlAnnounce(t *testing.T) {
	s := newSetup(t, pmtest.LabOptions{ClientPM: "userspace"})
	d := startDaemon(t, s.lab.Client, s.bus)
	k, err := pmnl.Dial(&pmnl.Config{NetNS: s.lab.Client.NSFD()})
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	mon := startBackground(t, ctlCommand(t, s.bus, "monitor", "--json"), `"monitoring"`)
	_, obj := s.established(t, d)
	n := strings.TrimPrefix(string(obj.Path), "/org/mptcp/PathManager1/connection/")
	addr := s.lab.Client.Addrs4[1]

	out := mustCtlE2E(t, s, "announce", n, addr.String())
	var port uint16
	var id uint8
	if _, err := fmt.Sscanf(out, "announced "+addr.String()+":%d with id %d", &port, &id); err != nil || port == 0 || id == 0 {
		t.Fatalf("announce printed %q (%v)", out, err)
	}
	type announced struct {
		ID      uint8  `json:"id"`
		Address string `json:"address"`
		Port    uint16 `json:"port"`
	}
	type subflow struct {
		LocalAddress string `json:"local_address"`
		LocalPort    uint16 `json:"local_port"`
	}
	type conn struct {
		Token     string      `json:"token"` // eight hex digits
		Announced []announced `json:"announced_addresses"`
		Subflows  []subflow   `json:"subflows"`
	}
	want := announced{id, addr.String(), port}
	eventually(t, 5*time.Second, "the peer joins the announced address", func() bool {
		c := ctlJSON[conn](t, s, "connection", "show", n)
		joined := slices.Contains(c.Subflows, subflow{addr.String(), port})
		return c.Token == fmt.Sprintf("%08x", obj.Token) && slices.Equal(c.Announced, []announced{want}) && joined
	})
	inKernel := func() bool {
		as, err := k.Addresses(obj.Token)
		if err != nil {
			t.Fatal(err)
		}
		return slices.ContainsFunc(as, func(a pm.Address) bool { return a.ID == id && a.Addr == addr && a.Port == port })
	}
	if !inKernel() {
		t.Errorf("the kernel's addresses of token %08x lack id %d %s:%d", obj.Token, id, addr, port)
	}

	mustCtlE2E(t, s, "remove", n, fmt.Sprint(id))
	if c := ctlJSON[conn](t, s, "connection", "show", n); len(c.Announced) != 0 {
		t.Errorf("after remove: announced %+v", c.Announced)
	}
	if inKernel() {
		t.Errorf("after remove the kernel still lists id %d", id)
	}

	out, _ = mon.stop(t)
	var events []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var ev struct {
			Event   string `json:"event"`
			ID      uint8  `json:"id"`
			Address string `json:"address"`
		}
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("monitor --json printed a line that is not JSON: %q", line)
		}
		if strings.HasPrefix(ev.Event, "local_") {
			events = append(events, fmt.Sprintf("%s %d %s", ev.Event, ev.ID, ev.Address))
		}
	}
	hp := netip.AddrPortFrom(addr, port).String()
	if wantEv := []string{fmt.Sprintf("local_announced %d %s", id, hp), fmt.Sprintf("local_removed %d %s", id, hp)}; !slices.Equal(events, wantEv) {
		t.Errorf("monitor --json saw %q, want %q", events, wantEv)
	}
}
