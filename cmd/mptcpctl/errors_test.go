package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/godbus/dbus/v5"

	"github.com/mptcp-pmd/mptcp-pmd/dbusapi/dbustest"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
)

// wantFail checks a run's exit code and that its error message has every
// one of the texts.
func wantFail(t *testing.T, r result, code int, texts ...string) {
	t.Helper()
	if r.code != code {
		t.Errorf("exit %d, want %d (stderr %q)", r.code, code, r.err)
	}
	for _, s := range texts {
		if !strings.Contains(r.err, s) {
			t.Errorf("stderr %q lacks %q", r.err, s)
		}
	}
}

func TestNotRunning(t *testing.T) {
	bus := dbustest.StartBus(t)
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", bus.Address())
	for _, args := range [][]string{{"status"}, {"monitor"}, {"endpoint", "flush"}, {"connection", "show", "0x12345678"}} {
		wantFail(t, ctl(args...), exitUnavailable, "mptcp-pmd is not running", "systemctl start mptcp-pmd")
	}
}

// TestInteractiveAuthorization: polkit's "authenticate first", which the
// daemon answers with the standard D-Bus error, is a permission denial
// (exit 4) that says what to do.
func TestInteractiveAuthorization(t *testing.T) {
	err := callError(dbus.Error{
		Name: "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired",
		Body: []any{"interactive authorization required: :1.21 (uid 65534) needs to authenticate"},
	})
	ee, ok := err.(*exitError)
	if !ok || ee.code != exitPermission || !strings.Contains(ee.Error(), "uid 65534") || !strings.Contains(ee.Error(), "sudo") {
		t.Errorf("callError = %#v (%v), want exit %d naming the caller and sudo", err, err, exitPermission)
	}
}

func TestNoBus(t *testing.T) {
	addr := "unix:path=" + filepath.Join(t.TempDir(), "no-bus")
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", addr)
	wantFail(t, ctl("connections"), exitUnavailable, "cannot reach the system bus at "+addr)
}

// TestPermissionDenied checks every mutating command against a daemon that
// refuses the caller.
func TestPermissionDenied(t *testing.T) {
	d := startDaemon(t, daemonOptions{})
	n := fmt.Sprint(d.open(t, 0x11112222, true, "10.55.1.2:40000", "10.55.0.1:8080"))
	d.auth.setDeny(true)
	for _, args := range [][]string{
		{"endpoint", "add", "10.55.1.2"},
		{"endpoint", "del", "1"},
		{"endpoint", "set", "1", "backup"},
		{"endpoint", "flush"},
		{"limits", "set", "2", "2"},
		{"subflow", "add", n, "10.55.2.2", "10.55.0.1:8080"},
		{"subflow", "del", n, "10.55.2.2:1", "10.55.0.1:8080"},
		{"subflow", "backup", n, "10.55.2.2", "10.55.0.1:8080", "on"},
		{"announce", n, "10.55.2.2"},
		{"remove", n, "1"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			wantFail(t, ctl(args...), exitPermission, "permission denied", "may not", "try sudo")
		})
	}
	// Reading needs no permission.
	mustCtl(t, "status")
}

// TestPermissionAsUser runs mptcpctl as nobody against a daemon with its
// default authorization (UID 0 only).
func TestPermissionAsUser(t *testing.T) {
	pmtest.RequireRoot(t)
	d := startDaemon(t, daemonOptions{rootOnly: true})
	r := d.ctlAs(t, 65534, 65534, "endpoint", "flush")
	wantFail(t, r, exitPermission, "permission denied", "uid 65534")
	r = d.ctlAs(t, 65534, 65534, "status", "--json")
	if r.code != exitOK || !strings.Contains(r.out, `"version": "1.2.3-test"`) {
		t.Errorf("status as nobody: exit %d, %s%s", r.code, r.out, r.err)
	}
}

func TestNotController(t *testing.T) {
	d := startDaemon(t, daemonOptions{})
	other := d.bus.Dial(t)
	if err := other.Object(busName, managerPath).Call(managerIface+".RegisterController", 0,
		dbus.ObjectPath("/ctl"), map[string]dbus.Variant{}).Err; err != nil {
		t.Fatal(err)
	}
	wantFail(t, ctl("endpoint", "flush"), exitFailure, "not the controller", other.Names()[0], "mptcpctl status")
	if kv := keyValues(t, mustCtl(t, "status")); kv["Control"] != "controller "+other.Names()[0] {
		t.Errorf("status Control: %q", kv["Control"])
	}
}

func TestNotSupported(t *testing.T) {
	d := startDaemon(t, daemonOptions{})
	n := fmt.Sprint(d.open(t, 0x11112222, false, "10.55.1.2:40000", "10.55.0.1:8080"))
	for _, args := range [][]string{
		{"subflow", "add", n, "10.55.2.2", "10.55.0.1:8080"},
		{"announce", n, "10.55.2.2"},
	} {
		wantFail(t, ctl(args...), exitFailure, "not supported", "not under the userspace path manager",
			"net.mptcp.path_manager=userspace")
	}
}

func TestNotFound(t *testing.T) {
	d := startDaemon(t, daemonOptions{})
	n := fmt.Sprint(d.open(t, 0x11112222, true, "10.55.1.2:40000", "10.55.0.1:8080"))
	for _, tc := range []struct {
		args []string
		text string
	}{
		{[]string{"connection", "show", "99"}, "no connection object /org/mptcp/PathManager1/connection/99"},
		{[]string{"connection", "show", "0xdeadbeef"}, "no connection with token"},
		{[]string{"subflow", "add", "#42", "10.55.2.2", "10.55.0.1:8080"}, "connection/42"},
		{[]string{"endpoint", "del", "99"}, "remove endpoint"},
		{[]string{"subflow", "del", n, "10.55.2.2:1", "10.55.0.1:8080"}, "destroy subflow"},
	} {
		wantFail(t, ctl(tc.args...), exitNotFound, "not found: ", tc.text)
	}
}

func TestRefused(t *testing.T) {
	startDaemon(t, daemonOptions{})
	mustCtl(t, "endpoint", "add", "10.55.1.2")
	wantFail(t, ctl("endpoint", "add", "10.55.1.2"), exitFailure, "already exists: add endpoint")
	wantFail(t, ctl("endpoint", "add", "10.55.2.2", "--interface", "nope0"), exitFailure,
		"invalid arguments: ", `unknown interface "nope0"`)
}

// TestUsage checks that bad command lines exit 2 with a message naming the
// problem, before anything is sent: the bus here does not exist.
func TestUsage(t *testing.T) {
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path="+filepath.Join(t.TempDir(), "no-bus"))
	for _, tc := range []struct {
		args []string
		text string
	}{
		{nil, "no command given"},
		{[]string{"--bogus"}, "unknown option --bogus"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"endpoint"}, "endpoint needs a subcommand: add, del, set, flush"},
		{[]string{"endpoint", "list"}, `unknown endpoint subcommand "list" (add, del, set, flush)`},
		{[]string{"status", "extra"}, "usage: mptcpctl status"},
		{[]string{"connections", "--bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"connection", "show"}, "usage: mptcpctl connection show CONN"},
		{[]string{"connection", "show", "xyz"}, `"xyz" is neither a connection number nor a token`},
		{[]string{"connection", "show", "0xzz"}, `"0xzz" is not a token`},
		{[]string{"endpoint", "add", "10.0.0.300"}, `"10.0.0.300" is not an IP address`},
		{[]string{"endpoint", "add", "10.0.0.1", "--flags", "signal,turbo"}, `unknown endpoint flag "turbo"`},
		{[]string{"endpoint", "add", "10.0.0.1", "--port", "70000"}, "--port must be 0..65535"},
		{[]string{"endpoint", "add", "10.0.0.1", "--port"}, "flag needs an argument: -port"},
		{[]string{"endpoint", "del", "0"}, `"0" is not an id (1..255)`},
		{[]string{"endpoint", "set", "3"}, "usage: mptcpctl endpoint set ID FLAG,...|none"},
		{[]string{"limits", "set", "2", "x"}, `"x" is not a limit`},
		{[]string{"subflow", "add", "1", "10.0.0.1", "10.0.0.2"}, `"10.0.0.2" is not ADDRESS:PORT`},
		{[]string{"subflow", "backup", "1", "10.0.0.1", "10.0.0.2:80", "maybe"}, `takes on or off, not "maybe"`},
		{[]string{"announce", "1", "10.0.0.1", "--id", "256"}, "--id must be 0..255"},
		{[]string{"remove", "1", "x"}, `"x" is not an id`},
		{[]string{"help", "frobnicate"}, `no command "frobnicate"`},
		{[]string{"--timeout", "banana", "status"}, `--timeout "banana": not a duration such as 5s, 500ms`},
		{[]string{"--timeout=banana", "status"}, `--timeout "banana": not a duration`},
		{[]string{"status", "--timeout", "banana"}, `--timeout "banana": not a duration`},
		{[]string{"status", "--timeout=5x"}, `--timeout "5x": not a duration`},
		{[]string{"--timeout", "0", "status"}, `--timeout "0": must be more than 0`},
		{[]string{"status", "--timeout", "-1s"}, `--timeout "-1s": must be more than 0`},
		{[]string{"--timeout"}, "--timeout needs a value"},
		{[]string{"status", "--timeout"}, "flag needs an argument: -timeout"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			wantFail(t, ctl(tc.args...), exitUsage, tc.text, "Run 'mptcpctl help' for usage.")
		})
	}
}
