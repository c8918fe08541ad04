package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/service"
)

// lockedBuffer is a bytes.Buffer for one writer and a polling reader.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) lines() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Split(strings.TrimSuffix(l.b.String(), "\n"), "\n")
}

// monitor runs `mptcpctl monitor args...` until the test ends.
type monitor struct {
	out    lockedBuffer
	cancel context.CancelFunc
	done   chan int
}

func startMonitor(t *testing.T, args ...string) *monitor {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	m := &monitor{cancel: cancel, done: make(chan int, 1)}
	var errb lockedBuffer
	go func() { m.done <- run(ctx, append([]string{"monitor"}, args...), &m.out, &errb) }()
	m.wait(t, 1) // the first line: subscribed
	t.Cleanup(func() {
		cancel()
		if code := <-m.done; code != exitOK {
			t.Errorf("monitor: exit %d: %s", code, errb.lines())
		}
	})
	return m
}

// wait returns the first n lines printed, failing the test if they do not
// come within 10s.
func (m *monitor) wait(t *testing.T, n int) []string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		lines := m.out.lines()
		if len(lines) >= n && lines[0] != "" {
			return lines[:n]
		}
		if time.Now().After(deadline) {
			t.Fatalf("monitor printed %d lines, want %d:\n%s", len(lines), n, strings.Join(lines, "\n"))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestMonitorJSON makes one of each change and checks the events the
// monitor prints, one JSON object per line.
func TestMonitorJSON(t *testing.T) {
	d := startDaemon(t, daemonOptions{})
	d.open(t, 0x01010101, false, "10.55.1.2:39999", "10.55.0.1:80") // before the monitor
	m := startMonitor(t, "--json")

	const tok = 0x8fa8e6a2
	n := d.open(t, tok, true, "10.55.1.2:40000", "10.55.0.1:8080")
	conn := fmt.Sprint(n)
	mustCtl(t, "announce", conn, "10.55.2.2", "--id", "5")
	d.send(pm.Event{Type: pm.EventAnnounced, Token: tok, RemoteID: 3, RemoteAddr: netip.MustParseAddr("10.55.9.1"), RemotePort: 8080})
	mustCtl(t, "subflow", "add", conn, "10.55.2.2:41000", "10.55.0.1:8080")
	d.sync(t)
	mustCtl(t, "subflow", "del", conn, "10.55.2.2:41000", "10.55.0.1:8080")
	d.sync(t)
	d.send(pm.Event{Type: pm.EventRemoved, Token: tok, RemoteID: 3})
	mustCtl(t, "remove", conn, "5")
	mustCtl(t, "endpoint", "add", "10.55.1.2", "--id", "4", "--flags", "subflow")
	mustCtl(t, "endpoint", "set", "4", "subflow,backup")
	mustCtl(t, "endpoint", "del", "4")
	mustCtl(t, "limits", "set", "3", "1")
	d.sendNet(service.NetEvent{Kind: service.NetLinkChanged, Link: service.Link{Index: 6, Name: "c3", Up: true, Carrier: true}})
	other := d.bus.Dial(t)
	mgr := other.Object(busName, managerPath)
	if err := mgr.Call(managerIface+".RegisterController", 0, dbus.ObjectPath("/ctl"), map[string]dbus.Variant{}).Err; err != nil {
		t.Fatal(err)
	}
	if err := mgr.Call(managerIface+".UnregisterController", 0, dbus.ObjectPath("/ctl")).Err; err != nil {
		t.Fatal(err)
	}
	d.k.CloseConnection(tok)
	d.sync(t)

	want := []string{
		"monitoring 1 connection open",
		"kernel_pm userspace", // the test daemon's namespace switched for the userspace connection
		"created " + conn + " 8fa8e6a2 10.55.1.2:40000 -> 10.55.0.1:8080 client side",
		"established " + conn + " 8fa8e6a2",
		"local_announced " + conn + " 8fa8e6a2 id 5 10.55.2.2:50001",
		"announced " + conn + " 8fa8e6a2 id 3 10.55.9.1:8080",
		"sf_established " + conn + " 8fa8e6a2 subflow 10.55.2.2:41000 -> 10.55.0.1:8080",
		"sf_closed " + conn + " 8fa8e6a2 subflow 10.55.2.2:41000 -> 10.55.0.1:8080",
		"removed " + conn + " 8fa8e6a2 id 3",
		"local_removed " + conn + " 8fa8e6a2 id 5 10.55.2.2:50001",
		"endpoint_added endpoint 4 10.55.1.2 subflow admin",
		"endpoint_changed endpoint 4 10.55.1.2 subflow,backup admin",
		"endpoint_removed endpoint 4 10.55.1.2 subflow,backup admin",
		"limits 3 1",
		"address_usable 10.55.3.2 c3",
		"control controller " + other.Names()[0],
		"control builtin",
		"closed " + conn + " 8fa8e6a2",
	}
	lines := m.wait(t, len(want))
	var got []string
	for _, l := range lines {
		var ev monitorEvent
		if err := json.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatalf("not one JSON object: %q: %v", l, err)
		}
		if _, err := time.Parse("15:04:05.000000", ev.Time); err != nil {
			t.Errorf("time %q: %v", ev.Time, err)
		}
		got = append(got, summary(ev))
	}
	if !slices.Equal(got, want) {
		t.Errorf("monitor --json:\n got %q\nwant %q", got, want)
	}
}

// summary is the gist of an event, for comparisons.
func summary(ev monitorEvent) string {
	s := []string{ev.Event}
	if ev.Connection != 0 {
		s = append(s, fmt.Sprint(ev.Connection))
	}
	if ev.Token != "" {
		s = append(s, ev.Token)
	}
	if ev.Subflow != nil {
		s = append(s, "subflow", hostPort(ev.Subflow.LocalAddress, ev.Subflow.LocalPort), "->",
			hostPort(ev.Subflow.RemoteAddress, ev.Subflow.RemotePort))
	}
	if ev.ID != nil {
		s = append(s, "id", fmt.Sprint(*ev.ID))
	}
	if e := ev.Endpoint; e != nil {
		s = append(s, "endpoint", fmt.Sprint(e.ID), e.Address, flagList(e.Flags), e.Origin)
	}
	if l := ev.Limits; l != nil {
		s = append(s, fmt.Sprint(l.Subflows), fmt.Sprint(l.AddAddrAccepted))
	}
	for _, f := range []string{ev.Address, ev.Interface, ev.Mode, ev.Controller, ev.Detail} {
		if f != "" {
			s = append(s, f)
		}
	}
	return strings.Join(s, " ")
}

// TestMonitorText checks the lines for a terminal.
func TestMonitorText(t *testing.T) {
	d := startDaemon(t, daemonOptions{})
	m := startMonitor(t)
	n := d.open(t, 0x8fa8e6a2, false, "10.55.1.2:40000", "10.55.0.1:8080")
	mustCtl(t, "limits", "set", "4", "2")
	lines := m.wait(t, 4)
	if lines[0] != "Monitoring mptcp-pmd (0 connections open); Ctrl-C ends." {
		t.Errorf("first line %q", lines[0])
	}
	for i, want := range []string{
		fmt.Sprintf("[         CREATED] conn %d token=8fa8e6a2 10.55.1.2:40000 -> 10.55.0.1:8080 client side", n),
		fmt.Sprintf("[     ESTABLISHED] conn %d token=8fa8e6a2", n),
		"[          LIMITS] subflows 4, add_addr_accepted 2",
	} {
		l := lines[i+1]
		if _, err := time.Parse("15:04:05.000000", l[:15]); err != nil || l[16:] != want {
			t.Errorf("line %d: %q, want the time and %q", i+1, l, want)
		}
	}
}

// TestMonitorDaemonRestart checks what the monitor makes of the daemon
// leaving and coming back: it says so and forgets the connections.
func TestMonitorDaemonRestart(t *testing.T) {
	st := newMonitorState()
	p := dbus.ObjectPath(connPathBase + "1")
	st.up = true
	st.tokens[p] = 7
	owner := func(old, new string) *dbus.Signal {
		return &dbus.Signal{Name: "org.freedesktop.DBus.NameOwnerChanged", Body: []any{busName, old, new}}
	}
	evs := st.describe(owner(":1.5", ""))
	if len(evs) != 1 || evs[0].Event != "daemon" || !strings.Contains(evs[0].Detail, "left") || st.up || len(st.tokens) != 0 {
		t.Errorf("daemon left: %+v, state up=%v tokens=%v", evs, st.up, st.tokens)
	}
	evs = st.describe(owner("", ":1.9"))
	if len(evs) != 1 || evs[0].Event != "daemon" || !strings.Contains(evs[0].Detail, "on the bus") || !st.up {
		t.Errorf("daemon back: %+v, up=%v", evs, st.up)
	}
	// Malformed or foreign signals are no events.
	for _, s := range []*dbus.Signal{
		{Name: connIface + ".SubflowEstablished", Path: p, Body: []any{"x"}},
		{Name: connIface + ".AddressAnnounced", Path: p, Body: []any{uint8(1)}},
		{Name: propsIface + ".PropertiesChanged", Path: managerPath, Body: []any{managerIface, map[string]dbus.Variant{"Limits": dbus.MakeVariant("x")}}},
		{Name: "org.example.Other.Signal", Path: p},
	} {
		if evs := st.describe(s); len(evs) != 0 {
			t.Errorf("%s %v: events %+v", s.Name, s.Body, evs)
		}
	}
}
