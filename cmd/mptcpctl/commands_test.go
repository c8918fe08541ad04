package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
)

// keyValues parses "Key:  value" lines, failing the test unless the values
// are aligned on one column.
func keyValues(t *testing.T, text string) map[string]string {
	t.Helper()
	out := map[string]string{}
	col := -1
	for _, line := range strings.Split(strings.TrimRight(text, "\n"), "\n") {
		if strings.HasPrefix(line, "  ") { // an item under the previous key
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			t.Fatalf("line %q is not Key: value", line)
		}
		at := len(k) + 1 + len(v) - len(strings.TrimLeft(v, " "))
		if col >= 0 && at != col {
			t.Fatalf("value of %q at column %d, others at %d:\n%s", k, at, col, text)
		}
		col = at
		out[k] = strings.TrimSpace(v)
	}
	return out
}

// hasLine reports whether text has a line with the words of line, however
// spaced.
func hasLine(text, line string) bool {
	for _, l := range strings.Split(text, "\n") {
		if slices.Equal(strings.Fields(l), strings.Fields(line)) {
			return true
		}
	}
	return false
}

func decodeJSON[T any](t *testing.T, text string) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(text), &v); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, text)
	}
	return v
}

func TestStatus(t *testing.T) {
	d := startDaemon(t, daemonOptions{})
	d.open(t, 0x1234abcd, false, "10.55.1.2:40000", "10.55.0.1:8080")
	mustCtl(t, "endpoint", "add", "10.55.1.2", "--flags", "subflow")

	kv := keyValues(t, mustCtl(t, "status"))
	want := map[string]string{
		"Daemon":           "mptcp-pmd 1.2.3-test",
		"Policy":           "none",
		"Control":          "built-in policy",
		"Kernel PM":        "kernel",
		"Limits":           "subflows 2, add_addr_accepted 0",
		"Endpoints":        "1",
		"Usable addresses": "2",
		"Connections":      "1",
	}
	for k, v := range want {
		if kv[k] != v {
			t.Errorf("status %s: %q, want %q", k, kv[k], v)
		}
	}
	if len(kv) != len(want) {
		t.Errorf("status shows %v, want the keys of %v", kv, want)
	}

	m := decodeJSON[manager](t, mustCtl(t, "status", "--json"))
	if m.Version != "1.2.3-test" || m.Policy != "none" || m.ControlMode != "builtin" || m.Controller != "" ||
		m.KernelPathManager != "kernel" || m.Limits != (limits{2, 0}) || len(m.Endpoints) != 1 ||
		len(m.LocalAddresses) != 2 || m.Connections != 1 {
		t.Errorf("status --json = %+v", m)
	}
	// --json before the command is the same.
	if g := decodeJSON[manager](t, mustCtl(t, "--json", "status")); g.Version != m.Version || g.Connections != m.Connections {
		t.Errorf("--json status = %+v, status --json = %+v", g, m)
	}
}

func TestConnections(t *testing.T) {
	d := startDaemon(t, daemonOptions{})
	n1 := d.open(t, 0x0000abcd, true, "10.55.1.2:40000", "10.55.0.1:8080")
	n2 := d.open(t, 0x8fa8e6a2, false, "[fd00::2]:40001", "[fd00::1]:443")
	// A second subflow on the first connection, made through mptcpctl.
	mustCtl(t, "subflow", "add", fmt.Sprint(n1), "10.55.2.2", "10.55.0.1:8080", "--interface", "c2", "--backup")
	d.sync(t)

	rows := tableRows(t, mustCtl(t, "connections"))
	want := [][]string{
		{"#", "TOKEN", "STATE", "SIDE", "LOCAL", "REMOTE", "SUBFLOWS"},
		{fmt.Sprint(n1), "0000abcd", "established", "client", "10.55.1.2:40000", "10.55.0.1:8080", "1"},
		{"", "", "subflow", "id 1/0", "10.55.2.2:40001", "10.55.0.1:8080", "dev c2 backup"},
		{fmt.Sprint(n2), "8fa8e6a2", "established", "client", "[fd00::2]:40001", "[fd00::1]:443", "0"},
	}
	// The fake kernel's ephemeral port: take it from the state.
	conns, err := d.svc.Connections(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(conns) != 2 || len(conns[0].Subflows) != 1 {
		t.Fatalf("state: %+v", conns)
	}
	sf := conns[0].Subflows[0]
	want[2][3] = fmt.Sprintf("id %d/%d", sf.LocalID, sf.RemoteID)
	want[2][4] = netip.AddrPortFrom(sf.LocalAddress, sf.LocalPort).String()
	if !slices.EqualFunc(rows, want, slices.Equal) {
		t.Errorf("connections:\n got %q\nwant %q", rows, want)
	}

	out := mustCtl(t, "connections", "--json")
	js := decodeJSON[[]connection](t, out)
	// Tokens in JSON are strings of eight hex digits, as in the table.
	if tok := fmt.Sprintf(`"token":"%08x"`, conns[0].Token); !strings.Contains(strings.ReplaceAll(out, " ", ""), tok) {
		t.Errorf("connections --json has no %s:\n%s", tok, out)
	}
	if len(js) != 2 {
		t.Fatalf("connections --json: %+v", js)
	}
	for i, c := range conns {
		j := js[i]
		if j.Number != c.ID || uint32(j.Token) != c.Token || j.State != c.State || j.LocalAddress != c.LocalAddress.String() ||
			j.LocalPort != c.LocalPort || j.RemoteAddress != c.RemoteAddress.String() || j.RemotePort != c.RemotePort ||
			len(j.Subflows) != len(c.Subflows) {
			t.Errorf("connections --json [%d] = %+v, state %+v", i, j, c)
		}
	}
	if s := js[0].Subflows[0]; s.LocalAddress != "10.55.2.2" || s.LocalPort != sf.LocalPort || !s.Backup || s.Interface != "c2" {
		t.Errorf("subflow in JSON %+v, state %+v", s, sf)
	}
}

func TestConnectionShow(t *testing.T) {
	d := startDaemon(t, daemonOptions{})
	n := d.open(t, 0x8fa8e6a2, true, "10.55.1.2:40000", "10.55.0.1:8080")
	d.send(pm.Event{Type: pm.EventAnnounced, Token: 0x8fa8e6a2, RemoteID: 3, RemoteAddr: netip.MustParseAddr("10.55.9.1"), RemotePort: 8080})
	out := mustCtl(t, "announce", fmt.Sprint(n), "10.55.2.2")
	d.sync(t)
	conns, err := d.svc.Connections(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ours := conns[0].AnnouncedAddresses
	if len(ours) != 1 {
		t.Fatalf("announced: %+v", ours)
	}
	// The announcement reports the port the daemon listens on.
	if want := fmt.Sprintf("announced 10.55.2.2:%d with id %d\n", ours[0].Port, ours[0].ID); out != want {
		t.Errorf("announce printed %q, want %q", out, want)
	}

	// By number, #number, token with and without 0x: the same connection.
	var shown []string
	for _, arg := range []string{fmt.Sprint(n), fmt.Sprintf("#%d", n), "8fa8e6a2", "0x8FA8E6A2"} {
		shown = append(shown, mustCtl(t, "connection", "show", arg))
	}
	for _, s := range shown[1:] {
		if s != shown[0] {
			t.Errorf("connection show differs by argument form:\n%s\n%s", shown[0], s)
		}
	}
	kv := keyValues(t, shown[0])
	for k, v := range map[string]string{
		"Connection":        fmt.Sprintf("%d (/org/mptcp/PathManager1/connection/%d)", n, n),
		"Token":             "8fa8e6a2",
		"State":             "established, client side",
		"Local":             "10.55.1.2:40000",
		"Remote":            "10.55.0.1:8080",
		"Deny join to id 0": "no",
		"Subflows":          "0",
		"Peer announced":    "1",
		"We announced":      "1",
	} {
		if kv[k] != v {
			t.Errorf("connection show %s: %q, want %q", k, kv[k], v)
		}
	}
	for _, line := range []string{"id 3 10.55.9.1:8080", fmt.Sprintf("id %d 10.55.2.2:%d", ours[0].ID, ours[0].Port)} {
		if !hasLine(shown[0], line) {
			t.Errorf("connection show lacks %q:\n%s", line, shown[0])
		}
	}
	c := decodeJSON[connection](t, mustCtl(t, "connection", "show", fmt.Sprint(n), "--json"))
	if c.Token != 0x8fa8e6a2 || len(c.RemoteAddresses) != 1 || c.RemoteAddresses[0] != (announced{3, "10.55.9.1", 8080}) ||
		len(c.AnnouncedAddresses) != 1 || c.AnnouncedAddresses[0] != (announced{ours[0].ID, "10.55.2.2", ours[0].Port}) {
		t.Errorf("connection show --json = %+v", c)
	}

	// remove withdraws our announcement.
	mustCtl(t, "remove", fmt.Sprint(n), fmt.Sprint(ours[0].ID))
	d.sync(t)
	if c := decodeJSON[connection](t, mustCtl(t, "connection", "show", "--json", fmt.Sprint(n))); len(c.AnnouncedAddresses) != 0 {
		t.Errorf("after remove: %+v", c.AnnouncedAddresses)
	}
}

func TestEndpoints(t *testing.T) {
	d := startDaemon(t, daemonOptions{})
	// One made by someone else (external), two by mptcpctl (admin).
	if _, err := d.k.AddEndpoint(pm.Address{ID: 7, Addr: netip.MustParseAddr("10.55.3.2"), Flags: pm.FlagSignal}); err != nil {
		t.Fatal(err)
	}
	out := mustCtl(t, "endpoint", "add", "10.55.1.2", "--flags", "subflow,backup", "--interface", "c1")
	id1, err := strconv.Atoi(strings.TrimPrefix(strings.TrimSpace(out), "added endpoint "))
	if err != nil {
		t.Fatalf("endpoint add printed %q", out)
	}
	js := decodeJSON[map[string]int](t, mustCtl(t, "endpoint", "add", "--json", "fd00::2", "--port", "8080", "--flags", "signal", "--id", "20"))
	if js["id"] != 20 {
		t.Errorf("endpoint add --id 20 --json = %v", js)
	}

	kernel := func() []pm.Address {
		eps, err := d.k.Endpoints()
		if err != nil {
			t.Fatal(err)
		}
		return eps
	}
	// The external endpoint is known after the daemon re-reads: a flags
	// change makes it do so.
	mustCtl(t, "endpoint", "set", "7", "signal,backup")
	eps := kernel()
	if len(eps) != 3 {
		t.Fatalf("kernel endpoints %+v", eps)
	}
	rows := tableRows(t, mustCtl(t, "endpoints"))
	if h := rows[0]; !slices.Equal(h, []string{"ID", "ADDRESS", "PORT", "FLAGS", "INTERFACE", "ORIGIN"}) {
		t.Errorf("header %q", h)
	}
	origin := map[uint8]string{uint8(id1): "admin", 20: "admin", 7: "external"}
	iface := map[uint8]string{uint8(id1): "c1", 20: "-", 7: "-"}
	for i, e := range eps {
		port := "-"
		if e.Port != 0 {
			port = fmt.Sprint(e.Port)
		}
		want := []string{fmt.Sprint(e.ID), e.Addr.String(), port, e.Flags.String(), iface[e.ID], origin[e.ID]}
		if !slices.Equal(rows[i+1], want) {
			t.Errorf("endpoints row %d: %q, want %q", i+1, rows[i+1], want)
		}
	}
	list := decodeJSON[[]endpoint](t, mustCtl(t, "endpoints", "--json"))
	if len(list) != len(eps) {
		t.Fatalf("endpoints --json: %+v", list)
	}
	for i, e := range eps {
		if j := list[i]; j.ID != e.ID || j.Address != e.Addr.String() || j.Port != e.Port ||
			!slices.Equal(j.Flags, e.Flags.Names()) || j.Origin != origin[e.ID] {
			t.Errorf("endpoints --json [%d] = %+v, kernel %+v", i, j, e)
		}
	}

	mustCtl(t, "endpoint", "del", fmt.Sprint(id1))
	if eps := kernel(); len(eps) != 2 || slices.ContainsFunc(eps, func(e pm.Address) bool { return e.ID == uint8(id1) }) {
		t.Errorf("after del: %+v", eps)
	}
	mustCtl(t, "endpoint", "set", "20", "none")
	if eps := kernel(); eps[1].ID != 20 || eps[1].Flags&pm.FlagBackup != 0 {
		t.Errorf("after set none: %+v", eps)
	}
	mustCtl(t, "endpoint", "flush")
	if eps := kernel(); len(eps) != 0 {
		t.Errorf("after flush: %+v", eps)
	}
	if rows := tableRows(t, mustCtl(t, "endpoints")); len(rows) != 1 {
		t.Errorf("endpoints after flush: %q", rows)
	}
}

func TestLimits(t *testing.T) {
	d := startDaemon(t, daemonOptions{})
	mustCtl(t, "limits", "set", "4", "3")
	l, err := d.k.Limits()
	if err != nil {
		t.Fatal(err)
	}
	if l != (pm.Limits{Subflows: 4, AddAddrAccepted: 3}) {
		t.Errorf("kernel limits %+v after limits set 4 3", l)
	}
	kv := keyValues(t, mustCtl(t, "limits"))
	if kv["Subflows"] != "4" || kv["ADD_ADDR accepted"] != "3" || len(kv) != 2 {
		t.Errorf("limits = %v", kv)
	}
	if js := decodeJSON[limits](t, mustCtl(t, "limits", "--json")); js != (limits{4, 3}) {
		t.Errorf("limits --json = %+v", js)
	}
	// The kernel's refusal is the daemon's: exit 1, with its words.
	r := ctl("limits", "set", "9", "0")
	if r.code != exitFailure || !strings.Contains(r.err, "invalid arguments") {
		t.Errorf("limits set 9 0: exit %d, %q", r.code, r.err)
	}
}

func TestAddresses(t *testing.T) {
	d := startDaemon(t, daemonOptions{})
	state, err := d.svc.Addresses(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := mustCtl(t, "addresses")
	rows := tableRows(t, out)
	if len(rows) != len(state)+1 {
		t.Fatalf("addresses:\n%s\nstate %+v", out, state)
	}
	usable := 0
	for i, a := range state {
		want := []string{a.Interface, a.Address.String(), "no", dash(a.Reason)}
		if a.Usable {
			want[2] = "yes"
			usable++
		}
		if !slices.Equal(rows[i+1], want) {
			t.Errorf("addresses row %d: %q, want %q", i+1, rows[i+1], want)
		}
	}
	if want := fmt.Sprintf("\n%d usable, %d filtered out.\n", usable, len(state)-usable); !strings.HasSuffix(out, want) {
		t.Errorf("addresses ends %q, want %q", out[strings.LastIndex(out[:len(out)-1], "\n"):], want)
	}
	// The filter's reasons reach the table: loopback, link-local, no carrier.
	for _, reason := range []string{"loopback", "link-local", "no carrier"} {
		if !slices.ContainsFunc(rows, func(r []string) bool { return r[3] == reason }) {
			t.Errorf("no address filtered out as %q:\n%s", reason, out)
		}
	}
	js := decodeJSON[[]addressInfo](t, mustCtl(t, "addresses", "--json"))
	if len(js) != len(state) {
		t.Fatalf("addresses --json: %+v", js)
	}
	for i, a := range state {
		if j := js[i]; j != (addressInfo{a.Interface, a.Address.String(), a.Usable, a.Reason}) {
			t.Errorf("addresses --json [%d] = %+v, state %+v", i, j, a)
		}
	}
}

func TestUserspaceActions(t *testing.T) {
	d := startDaemon(t, daemonOptions{})
	n := fmt.Sprint(d.open(t, 0x11112222, true, "10.55.1.2:40000", "10.55.0.1:8080"))
	mustCtl(t, "subflow", "add", n, "10.55.2.2:41000", "10.55.0.1:8080", "--local-id", "9")
	d.sync(t)
	c := decodeJSON[connection](t, mustCtl(t, "connection", "show", n, "--json"))
	if len(c.Subflows) != 1 || c.Subflows[0].LocalID != 9 || c.Subflows[0].LocalPort != 41000 || c.Subflows[0].Backup {
		t.Fatalf("after subflow add: %+v", c.Subflows)
	}
	mustCtl(t, "subflow", "backup", n, "10.55.2.2:41000", "10.55.0.1:8080", "on")
	d.sync(t)
	c = decodeJSON[connection](t, mustCtl(t, "connection", "show", n, "--json"))
	if len(c.Subflows) != 1 || !c.Subflows[0].Backup {
		t.Fatalf("after subflow backup on: %+v", c.Subflows)
	}
	mustCtl(t, "subflow", "del", n, "10.55.2.2:41000", "10.55.0.1:8080")
	d.sync(t)
	c = decodeJSON[connection](t, mustCtl(t, "connection", "show", n, "--json"))
	if len(c.Subflows) != 0 {
		t.Fatalf("after subflow del: %+v", c.Subflows)
	}
	calls := strings.Join(d.k.Calls(), "\n")
	for _, want := range []string{"CreateSubflow 286335522", "SetSubflowFlags 286335522", "DestroySubflow 286335522"} {
		if !strings.Contains(calls, want) {
			t.Errorf("the kernel was not asked %q:\n%s", want, calls)
		}
	}
}
