package main

import (
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/mptcp-pmd/mptcp-pmd/dbusapi"
	"github.com/mptcp-pmd/mptcp-pmd/dbusapi/dbustest"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
)

// managerProp reads a property of the daemon's manager.
func managerProp(t *testing.T, d *testDaemon, name string) string {
	t.Helper()
	v, err := d.obj(dbusapi.ManagerPath).GetProperty(dbusapi.ManagerInterface + "." + name)
	if err != nil {
		t.Fatalf("Get %s: %v", name, err)
	}
	s, _ := v.Value().(string)
	return s
}

// TestController: the reference controller (dist/examples/controller.py)
// takes control from the subflow-per-interface policy, which then leaves
// new connections to it; a second registrant and a stranger are refused;
// when the controller is killed, the policy brings every live connection
// to its own state within a second; an endpoint made with `ip mptcp
// endpoint add` survives everything.
func TestController(t *testing.T) {
	requirePython(t)
	s := newSetup(t, pmtest.LabOptions{Paths: 3, ClientPM: "userspace"})
	cli, srv := s.lab.Client, s.lab.Server
	kev := listenKernel(t, cli)
	cli.Run(t, "ip", "mptcp", "endpoint", "add", cli.Addrs4[2].String(), "signal")
	d := startDaemon(t, cli, s.bus, "--policy", "subflow-per-interface")
	server := srv.Serve(t, netip.AddrPortFrom(srv.Addrs4[0], 0))
	full := paths(server.Addr(), cli.Addrs4[1], cli.Addrs4[2])

	// Before the controller: the policy's subflows.
	before := dial(t, cli, cli.Addrs4[0], server)
	tokBefore := connToken(t, kev, before, false)
	waitSubflows(t, kev, tokBefore, within(5*time.Second), "before the controller", full)

	// The controller registers and takes over.
	root, err := dbustest.ProjectRoot()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(pythonPath, filepath.Join(root, "dist/examples/controller.py"), cli.Addrs4[1].String())
	cmd.Env = append(cmd.Environ(), "DBUS_SYSTEM_BUS_ADDRESS="+s.bus.Address())
	ctl := startBackground(t, cmd, "registered as the controller")
	if mode := managerProp(t, d, "ControlMode"); mode != "controller" {
		t.Fatalf("ControlMode %q while the controller is registered", mode)
	}

	// A new connection gets the controller's subflow, and no other.
	during := dial(t, cli, cli.Addrs4[0], server)
	tokDuring := connToken(t, kev, during, false)
	only := paths(server.Addr(), cli.Addrs4[1])
	waitSubflows(t, kev, tokDuring, within(5*time.Second), "the controller's subflow", only)
	eventually(t, 5*time.Second, "the controller's report", func() bool {
		return strings.Contains(ctl.out.String(), "subflow "+cli.Addrs4[1].String()+" -> "+server.String())
	})
	// Meanwhile an address change does not wake the policy either.
	cli.Run(t, "ip", "addr", "add", "10.55.2.9/24", "dev", "c2")
	time.Sleep(300 * time.Millisecond)
	waitSubflows(t, kev, tokDuring, time.Now(), "while controlled", only)

	// A second registrant, and a stranger who tries to end the claim.
	other := s.bus.Dial(t)
	mgr := other.Object(dbusapi.BusName, dbusapi.ManagerPath)
	err = mgr.Call(dbusapi.ManagerInterface+".RegisterController", 0, dbus.ObjectPath("/org/example/Other"), map[string]dbus.Variant{}).Err
	if !isDBusError(err, dbusapi.ErrorAlreadyControlled) {
		t.Errorf("second RegisterController: %v, want %s", err, dbusapi.ErrorAlreadyControlled)
	}
	err = mgr.Call(dbusapi.ManagerInterface+".UnregisterController", 0, dbus.ObjectPath("/org/example/Controller")).Err
	if !isDBusError(err, dbusapi.ErrorNotController) {
		t.Errorf("a stranger's UnregisterController: %v, want %s", err, dbusapi.ErrorNotController)
	}
	if mode := managerProp(t, d, "ControlMode"); mode != "controller" {
		t.Fatalf("ControlMode %q after the refused calls", mode)
	}

	// The controller dies: within a second every live connection is in
	// the policy's state again.
	killed := time.Now()
	ctl.cmd.Process.Signal(syscall.SIGKILL)
	at := waitSubflows(t, kev, tokDuring, killed.Add(reaction), "after the controller died", full)
	waitSubflows(t, kev, tokBefore, time.Now(), "the older connection after the controller died", full)
	t.Logf("controller killed: the policy's subflow established %v later", at.Sub(killed))
	// The property changes once the loop has finished reconciling (the
	// kernel commands go out before the notifications), so it may lag the
	// subflows by a moment.
	eventually(t, time.Second, "ControlMode builtin after the controller died", func() bool {
		return managerProp(t, d, "ControlMode") == "builtin"
	})

	// The endpoint survives the daemon's exit too.
	d.stop(t)
	if out := cli.Run(t, "ip", "mptcp", "endpoint", "show"); !strings.HasPrefix(out, cli.Addrs4[2].String()+" ") || !strings.Contains(out, " signal") {
		t.Errorf("the ip mptcp endpoint is gone: %q", out)
	}
}

// TestRevokeController: an administrator takes control back from a
// controller with `mptcpctl revoke`: the controller hears Release
// "revoked", and the built-in policy acts again.
func TestRevokeController(t *testing.T) {
	requirePython(t)
	s := newSetup(t, pmtest.LabOptions{Paths: 2, ClientPM: "userspace"})
	cli, srv := s.lab.Client, s.lab.Server
	kev := listenKernel(t, cli)
	d := startDaemon(t, cli, s.bus, "--policy", "subflow-per-interface")
	root, err := dbustest.ProjectRoot()
	if err != nil {
		t.Fatal(err)
	}
	// The controller makes its subflow from the connection's own address,
	// which the policy would not use; the policy adds c1's once it acts.
	cmd := exec.Command(pythonPath, filepath.Join(root, "dist/examples/controller.py"), cli.Addrs4[0].String())
	cmd.Env = append(cmd.Environ(), "DBUS_SYSTEM_BUS_ADDRESS="+s.bus.Address())
	controller := startBackground(t, cmd, "registered as the controller")
	server := srv.Serve(t, netip.AddrPortFrom(srv.Addrs4[0], 0))
	c := dial(t, cli, cli.Addrs4[0], server)
	tok := connToken(t, kev, c, false)

	if out, errOut, code := ctl(t, s.bus, "revoke"); code != 0 {
		t.Fatalf("mptcpctl revoke: %d %s %s", code, out, errOut)
	}
	eventually(t, 5*time.Second, "the controller's Release", func() bool {
		return strings.Contains(controller.out.String(), "released by the daemon: revoked")
	})
	if mode := managerProp(t, d, "ControlMode"); mode != "builtin" {
		t.Errorf("ControlMode %q after revoke", mode)
	}
	waitSubflows(t, kev, tok, within(5*time.Second), "the policy's subflow after revoke",
		paths(server.Addr(), cli.Addrs4[0], cli.Addrs4[1]))
	if _, errOut, code := ctl(t, s.bus, "revoke"); code == 0 || !strings.Contains(errOut, "not the controller") {
		t.Errorf("a second revoke: exit %d, %q; want the NotController error", code, errOut)
	}
}
