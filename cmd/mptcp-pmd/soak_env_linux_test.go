package main

// What TestSoak (soak_linux_test.go) needs beyond the e2e harness: a
// private bus that can be stopped and started again at the same address,
// the kernel's view of the client namespace (sock_diag, the endpoint
// table, addresses, routes and links) and the small Python clients it runs
// as an unprivileged user.

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/mptcp-pmd/mptcp-pmd/pm/diag"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
)

// soakSubscriberScript subscribes to every signal of the daemon and reads
// them (until it is stopped). It prints "subscribed" once its match rule is
// in place.
const soakSubscriberScript = `
import dbus, dbus.mainloop.glib
from gi.repository import GLib
dbus.mainloop.glib.DBusGMainLoop(set_as_default=True)
bus = dbus.SystemBus()
seen = [0]
def on_signal(*args, **kw):
    seen[0] += 1
bus.add_signal_receiver(on_signal, bus_name="org.mptcp.PathManager1", path_keyword="path", member_keyword="member")
bus.get_name_owner("org.freedesktop.DBus")  # a round trip: the AddMatch went before it
print("subscribed", flush=True)
GLib.MainLoop().run()
`

// soakFloodScript keeps WIDTH calls to the daemon in flight for SECONDS
// (argv 1 and 2): reads, and mutating calls it is not allowed to make.
// It then waits for the replies and prints one JSON line: the calls sent,
// the replies by error name ("ok" for success), and the calls still
// unanswered 10 s after the end ("lost").
const soakFloodScript = `
import json, sys, time
import dbus, dbus.mainloop.glib
from gi.repository import GLib
dbus.mainloop.glib.DBusGMainLoop(set_as_default=True)
bus = dbus.SystemBus()
NAME = "org.mptcp.PathManager1"
MGR = NAME + ".Manager"
obj = bus.get_object(NAME, "/org/mptcp/PathManager1", introspect=False)
duration, width = float(sys.argv[1]), int(sys.argv[2])
counts, st = {}, {"inflight": 0, "sent": 0}
deadline = time.monotonic() + duration
loop = GLib.MainLoop()
def finished(key):
    counts[key] = counts.get(key, 0) + 1
    st["inflight"] -= 1
    pump()
def ok(*a):
    finished("ok")
def err(e):
    finished(e.get_dbus_name() or "unnamed")
kw = dict(reply_handler=ok, error_handler=err, timeout=10)
calls = [
    lambda: obj.GetManagedObjects(dbus_interface="org.freedesktop.DBus.ObjectManager", **kw),
    lambda: obj.ListAddresses(dbus_interface=MGR, **kw),
    lambda: obj.GetAll(MGR, dbus_interface="org.freedesktop.DBus.Properties", **kw),
    lambda: obj.AddEndpoint("10.55.1.1", dbus.UInt16(0), dbus.Array(["subflow"], signature="s"), "", dbus.Byte(0), dbus_interface=MGR, **kw),
    lambda: obj.SetLimits(dbus.UInt32(8), dbus.UInt32(8), dbus_interface=MGR, **kw),
    lambda: obj.GetConnectionByToken(dbus.UInt32(1), dbus_interface=MGR, **kw),
    lambda: obj.Introspect(dbus_interface="org.freedesktop.DBus.Introspectable", **kw),
]
def pump():
    while st["inflight"] < width and time.monotonic() < deadline:
        calls[st["sent"] % len(calls)]()
        st["sent"] += 1
        st["inflight"] += 1
    if st["inflight"] == 0 and time.monotonic() >= deadline:
        loop.quit()
def tick():
    pump()
    return True
def give_up():
    loop.quit()
    return False
GLib.timeout_add(20, tick)
GLib.timeout_add(int(duration * 1000) + 10000, give_up)
pump()
loop.run()
print(json.dumps({"sent": st["sent"], "counts": counts, "lost": st["inflight"]}), flush=True)
`

// soakFloodResult is what soakFloodScript prints.
type soakFloodResult struct {
	Sent   int            `json:"sent"`
	Counts map[string]int `json:"counts"`
	Lost   int            `json:"lost"`
}

// soakKernel is the kernel's view of a namespace that the invariants are
// checked against.
type soakKernel struct {
	// conns are the live connections by token (a token, and not closed by
	// its application) with their joined subflows, as sorted
	// "local remote" address pairs with ports.
	conns map[uint32]soakKernelConn
	// listeners are the listening MPTCP sockets, as address:port.
	listeners []string
}

type soakKernelConn struct {
	diag.Conn
	serverSide bool
	subflows   []string
	// closing are the joins whose close has begun (FIN_WAIT1 and after:
	// the kernel sent their SUB_CLOSED), opening those in their handshake,
	// as "local remote STATE", for the failure messages.
	closing, opening []string
}

// soakSnapshot lists the namespace's MPTCP sockets through sock_diag.
func soakSnapshot(t *testing.T, c *diag.Client) soakKernel {
	t.Helper()
	snap, err := c.Snapshot()
	if err != nil {
		t.Fatalf("sock_diag: %v", err)
	}
	k := soakKernel{conns: map[uint32]soakKernelConn{}}
	for _, cn := range snap.Conns {
		if cn.Token == 0 || soakClosedByApp(cn.Conn) {
			continue
		}
		kc := soakKernelConn{Conn: cn.Conn, serverSide: cn.Side == diag.SideServer}
		for _, sf := range cn.Subflows {
			// Joins only (the initial subflow is the connection's own), and
			// only while they carry data: not in their handshake (no
			// SUB_ESTABLISHED yet), not after their close started.
			if sf.Flags&(diag.SubflowJoinLocal|diag.SubflowJoinRemote) == 0 {
				continue
			}
			key := sf.Local.String() + " " + sf.Remote.String()
			switch sf.State {
			case diag.StateEstablished, diag.StateCloseWait:
			case diag.StateSynSent, diag.StateSynRecv:
				kc.opening = append(kc.opening, key+" "+sf.State.String())
				continue
			default:
				kc.closing = append(kc.closing, key+" "+sf.State.String())
				continue
			}
			kc.subflows = append(kc.subflows, key)
		}
		slices.Sort(kc.subflows)
		k.conns[cn.Token] = kc
	}
	for _, l := range snap.Listeners {
		k.listeners = append(k.listeners, l.Local.String())
	}
	slices.Sort(k.listeners)
	return k
}

// soakClosedByApp reports whether a connection's application has closed
// it: it has no file any more and is in a closing state. The kernel sent
// its CLOSED then, but lists it until its FIN exchange ends.
func soakClosedByApp(c diag.Conn) bool {
	if c.Inode != 0 {
		return false
	}
	switch c.State {
	case diag.StateFinWait1, diag.StateFinWait2, diag.StateClosing, diag.StateLastAck, diag.StateTimeWait, diag.StateClose:
		return true
	}
	return false
}

// soakLink is a link of `ip -j addr show` with its addresses.
type soakLink struct {
	Ifname    string   `json:"ifname"`
	Flags     []string `json:"flags"`
	Operstate string   `json:"operstate"`
	AddrInfo  []struct {
		Family     string `json:"family"`
		Local      string `json:"local"`
		Scope      string `json:"scope"`
		Tentative  bool   `json:"tentative"`
		Deprecated bool   `json:"deprecated"`
		Dadfailed  bool   `json:"dadfailed"`
	} `json:"addr_info"`
}

// carrier reports whether the link is up with a carrier, and the kernel
// has told its listeners so (the operational state follows linkwatch,
// which reports a carrier change up to a second late).
func (l soakLink) carrier() bool {
	return slices.Contains(l.Flags, "UP") && slices.Contains(l.Flags, "LOWER_UP") && l.Operstate == "UP"
}

// soakLinks returns h's links with their addresses.
func soakLinks(t *testing.T, h *pmtest.Host) map[string]soakLink {
	t.Helper()
	var links []soakLink
	soakIPJSON(t, &links, "-n", h.Name, "-j", "addr", "show")
	out := make(map[string]soakLink, len(links))
	for _, l := range links {
		out[l.Ifname] = l
	}
	return out
}

// soakDefaultRoutes returns the interfaces with a default route of the
// family (4 or 6) in any routing table of h.
func soakDefaultRoutes(t *testing.T, h *pmtest.Host, family int) map[string]bool {
	t.Helper()
	var routes []struct {
		Dst string `json:"dst"`
		Dev string `json:"dev"`
	}
	soakIPJSON(t, &routes, "-n", h.Name, "-"+strconv.Itoa(family), "-j", "route", "show", "table", "all")
	out := map[string]bool{}
	for _, r := range routes {
		if r.Dst == "default" {
			out[r.Dev] = true
		}
	}
	return out
}

func soakIPJSON(t *testing.T, v any, args ...string) {
	t.Helper()
	out, err := exec.Command("ip", args...).Output()
	if err != nil {
		t.Fatalf("ip %s: %v", strings.Join(args, " "), err)
	}
	if err := json.Unmarshal(out, v); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// soakRSS returns the resident set size of the process, from
// /proc/PID/status.
func soakRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "VmRSS:" && f[2] == "kB" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

// soakTail returns the last n lines of s.
func soakTail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("[... %d lines before]", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}
