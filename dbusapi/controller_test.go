package dbusapi

import (
	"fmt"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/mptcp-pmd/mptcp-pmd/service"
)

// matchRules returns how many match rules the server's connection has on
// the bus (dbus-daemon's Debug.Stats).
func matchRules(t *testing.T, h *harness) uint32 {
	t.Helper()
	var stats map[string]dbus.Variant
	err := h.client.Object("org.freedesktop.DBus", "/org/freedesktop/DBus").
		Call("org.freedesktop.DBus.Debug.Stats.GetConnectionStats", 0, h.srvConn.Names()[0]).Store(&stats)
	if err != nil {
		t.Fatalf("GetConnectionStats: %v", err)
	}
	n, ok := stats["MatchRules"].Value().(uint32)
	if !ok {
		t.Fatalf("GetConnectionStats has no MatchRules: %v", stats)
	}
	return n
}

// waitRules waits until the server has want match rules.
func waitRules(t *testing.T, h *harness, want uint32) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := matchRules(t, h)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the server has %d match rules, want %d", got, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func register(h *harness, ctl *dbus.Conn, path dbus.ObjectPath) error {
	return ctl.Object(h.dest, ManagerPath).Call(ManagerInterface+".RegisterController", 0, path, map[string]dbus.Variant{}).Err
}

// nextVanished returns the next name the server reported gone.
func nextVanished(t *testing.T, h *harness) string {
	t.Helper()
	select {
	case name := <-h.be.vanished:
		return name
	case <-time.After(10 * time.Second):
		t.Fatal("ControllerVanished not called within 10s")
		return ""
	}
}

// checkNoVanish checks that no departure but that of a fresh controller is
// reported: it registers one, disconnects it, and expects its name first.
func checkNoVanish(t *testing.T, h *harness, what string) {
	t.Helper()
	probe := h.bus.Dial(t)
	name := probe.Names()[0]
	if err := register(h, probe, "/probe"); err != nil {
		t.Fatal(err)
	}
	probe.Close()
	if got := nextVanished(t, h); got != name {
		t.Errorf("%s: ControllerVanished(%s) before the probe's %s", what, got, name)
	}
}

func TestControllerDisconnects(t *testing.T) {
	h := newHarness(t, Options{}, withState)
	base := matchRules(t, h)
	ctl := h.bus.Dial(t)
	name := ctl.Names()[0]
	if err := register(h, ctl, "/ctl"); err != nil {
		t.Fatal(err)
	}
	calls := h.be.takeCalls()
	if len(calls) != 1 || calls[0].Method != "RegisterController" || calls[0].Caller.Name != name || calls[0].Args[0] != "/ctl" {
		t.Fatalf("backend calls %v", calls)
	}
	if got := matchRules(t, h); got != base+1 {
		t.Errorf("%d match rules while registered, want %d", got, base+1)
	}
	ctl.Close()
	if got := nextVanished(t, h); got != name {
		t.Errorf("ControllerVanished(%s), want %s", got, name)
	}
	waitRules(t, h, base)
}

func TestControllerUnregisters(t *testing.T) {
	h := newHarness(t, Options{}, withState)
	base := matchRules(t, h)
	ctl := h.bus.Dial(t)
	if err := register(h, ctl, "/ctl"); err != nil {
		t.Fatal(err)
	}
	if err := ctl.Object(h.dest, ManagerPath).Call(ManagerInterface+".UnregisterController", 0, dbus.ObjectPath("/ctl")).Err; err != nil {
		t.Fatal(err)
	}
	if got := matchRules(t, h); got != base {
		t.Errorf("%d match rules after unregistering, want %d", got, base)
	}
	ctl.Close()
	checkNoVanish(t, h, "after UnregisterController")
}

func TestControllerRefused(t *testing.T) {
	h := newHarness(t, Options{}, withState)
	base := matchRules(t, h)
	ctl := h.bus.Dial(t)
	h.be.setErr(fmt.Errorf("%w by :1.1", service.ErrAlreadyControlled))
	if err := register(h, ctl, "/ctl"); errName(err) != ErrorAlreadyControlled {
		t.Errorf("RegisterController: %v, want AlreadyControlled", err)
	}
	if got := matchRules(t, h); got != base {
		t.Errorf("%d match rules after a refused registration, want %d", got, base)
	}
	// A refused UnregisterController keeps the watch of a real claim.
	h.be.setErr(nil)
	if err := register(h, ctl, "/ctl"); err != nil {
		t.Fatal(err)
	}
	h.be.setErr(fmt.Errorf("%w: another path", service.ErrNotController))
	if err := ctl.Object(h.dest, ManagerPath).Call(ManagerInterface+".UnregisterController", 0, dbus.ObjectPath("/other")).Err; errName(err) != ErrorNotController {
		t.Errorf("UnregisterController: %v, want NotController", err)
	}
	h.be.setErr(nil)
	name := ctl.Names()[0]
	ctl.Close()
	if got := nextVanished(t, h); got != name {
		t.Errorf("ControllerVanished(%s), want %s", got, name)
	}
	waitRules(t, h, base)
	// The refused registration left nothing watched.
	checkNoVanish(t, h, "after a refused registration")
}

// TestControllerDiesWhileRegistering makes the controller leave the bus
// while the backend registers it: the claim must still end.
func TestControllerDiesWhileRegistering(t *testing.T) {
	h := newHarness(t, Options{}, withState)
	base := matchRules(t, h)
	ctl := h.bus.Dial(t)
	name := ctl.Names()[0]
	h.be.mu.Lock()
	h.be.onReg = func() {
		ctl.Close()
		for {
			var has bool
			if err := h.client.BusObject().Call("org.freedesktop.DBus.NameHasOwner", 0, name).Store(&has); err != nil || !has {
				return
			}
			time.Sleep(time.Millisecond)
		}
	}
	h.be.mu.Unlock()
	ctl.Object(h.dest, ManagerPath).Go(ManagerInterface+".RegisterController", 0, nil, dbus.ObjectPath("/ctl"), map[string]dbus.Variant{})
	if got := nextVanished(t, h); got != name {
		t.Errorf("ControllerVanished(%s), want %s", got, name)
	}
	waitRules(t, h, base)
}

func TestRelease(t *testing.T) {
	h := newHarness(t, Options{}, withState)
	base := matchRules(t, h)
	ctl := h.bus.Dial(t)
	type release struct {
		reason string
		flags  dbus.Flags
		sender string
	}
	got := make(chan release, 1)
	err := ctl.ExportMethodTable(map[string]any{
		"Release": func(msg dbus.Message, reason string) *dbus.Error {
			got <- release{reason, msg.Flags, msgSender(msg)}
			return nil
		},
	}, "/ctl", ControllerInterface)
	if err != nil {
		t.Fatal(err)
	}
	if err := register(h, ctl, "/ctl"); err != nil {
		t.Fatal(err)
	}
	h.srv.Publish(service.ControllerReleased{Name: ctl.Names()[0], Path: "/ctl", Reason: "revoked"})
	select {
	case r := <-got:
		if r.reason != "revoked" || r.flags&dbus.FlagNoReplyExpected == 0 || r.sender != h.srvConn.Names()[0] {
			t.Errorf("Release(%q) flags %v from %s, want revoked, no reply expected, from %s", r.reason, r.flags, r.sender, h.srvConn.Names()[0])
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Release not received")
	}
	// The claim is over: its name is no longer watched.
	waitRules(t, h, base)
	ctl.Close()
	checkNoVanish(t, h, "after Release")

	// A controller that is gone or never answers does not hold Publish up.
	h.srv.Publish(service.ControllerReleased{Name: ":1.9999", Path: "/gone", Reason: "shutdown"})
	h.srv.Publish(service.ControllerReleased{Name: ":1.9999", Path: "not a path", Reason: "shutdown"})
}

func TestNameGone(t *testing.T) {
	for _, tc := range []struct {
		sig  dbus.Signal
		name string
		gone bool
	}{
		{dbus.Signal{Sender: "org.freedesktop.DBus", Name: "org.freedesktop.DBus.NameOwnerChanged", Body: []any{":1.5", ":1.5", ""}}, ":1.5", true},
		{dbus.Signal{Sender: "org.freedesktop.DBus", Name: "org.freedesktop.DBus.NameOwnerChanged", Body: []any{"a.b", "", ":1.5"}}, "", false},
		{dbus.Signal{Sender: ":1.7", Name: "org.freedesktop.DBus.NameOwnerChanged", Body: []any{":1.5", ":1.5", ""}}, "", false},
		{dbus.Signal{Sender: "org.freedesktop.DBus", Name: "org.freedesktop.DBus.NameLost", Body: []any{":1.5"}}, "", false},
		{dbus.Signal{Sender: "org.freedesktop.DBus", Name: "org.freedesktop.DBus.NameOwnerChanged", Body: []any{":1.5", uint32(1), ""}}, "", false},
		{dbus.Signal{Sender: "org.freedesktop.DBus", Name: "org.freedesktop.DBus.NameOwnerChanged", Body: []any{1, "", ""}}, "", false},
	} {
		name, gone := nameGone(&tc.sig)
		if gone != tc.gone || (gone && name != tc.name) {
			t.Errorf("nameGone(%v) = %q, %v; want %q, %v", tc.sig, name, gone, tc.name, tc.gone)
		}
	}
}
