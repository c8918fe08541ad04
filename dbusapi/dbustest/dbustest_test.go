package dbustest

import (
	"errors"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"testing"

	"github.com/godbus/dbus/v5"

	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
)

const (
	serviceName = "org.mptcp.PathManager1"
	nobody      = 65534
)

func TestProjectRoot(t *testing.T) {
	root, err := ProjectRoot()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"go.mod", PolicyPath} {
		if _, err := os.Stat(filepath.Join(root, f)); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}

func TestStartAndDial(t *testing.T) {
	b := StartBus(t)
	if !strings.HasPrefix(b.Address(), "unix:path=") {
		t.Errorf("address %q is not a unix path", b.Address())
	}
	c1, c2 := b.Dial(t), b.Dial(t)
	if c1.Names()[0] == c2.Names()[0] {
		t.Errorf("two clients share the unique name %s", c1.Names()[0])
	}
	var id string
	if err := c1.BusObject().Call("org.freedesktop.DBus.GetId", 0).Store(&id); err != nil || id == "" {
		t.Errorf("GetId = %q, %v", id, err)
	}
}

// TestStopKillsDaemon checks that the daemon is gone after the test's cleanup.
func TestStopKillsDaemon(t *testing.T) {
	pmtest.RequireProgram(t, "dbus-daemon")
	root, err := ProjectRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := start(config{policy: filepath.Join(root, PolicyPath)})
	if err != nil {
		t.Fatal(err)
	}
	b.stop()
	if _, err := dbus.Connect(b.Address()); err == nil {
		t.Error("the bus still answers after stop")
	}
	if _, err := os.Stat(b.dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the bus directory is still there: %v", err)
	}
}

// TestMalformedPolicy checks that a broken policy file stops the daemon from
// starting, and that start says why.
func TestMalformedPolicy(t *testing.T) {
	pmtest.RequireProgram(t, "dbus-daemon")
	bad := filepath.Join(t.TempDir(), "bad.conf")
	if err := os.WriteFile(bad, []byte("<busconfig><policy user=\"root\"><allow own=\"x\"></busconfig>"), 0o644); err != nil {
		t.Fatal(err)
	}
	b, err := start(config{policy: bad})
	if err == nil {
		b.stop()
		t.Fatal("dbus-daemon started with a malformed policy file")
	}
	if !strings.Contains(err.Error(), "bad.conf") {
		t.Errorf("error does not name the file: %v", err)
	}
	if _, err := start(config{policy: filepath.Join(t.TempDir(), "missing.conf")}); err == nil {
		t.Error("start succeeded with a missing policy file")
	}
}

// requestName asks for name as an unprivileged user: nobody through busctl
// when running as root, else this process itself. It returns the bus's
// answer: nil if the name was granted.
func requestNameUnprivileged(t *testing.T, b *Bus, name string) error {
	t.Helper()
	if os.Geteuid() != 0 {
		reply, err := b.Dial(t).RequestName(name, dbus.NameFlagDoNotQueue)
		if err == nil && reply != dbus.RequestNameReplyPrimaryOwner {
			t.Fatalf("RequestName(%s) = %v", name, reply)
		}
		return err
	}
	busctl := pmtest.RequireProgram(t, "busctl")
	out, err := b.CommandAs(t, nobody, nobody, busctl, "--address="+b.Address(),
		"call", "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
		"RequestName", "su", name, "4").CombinedOutput()
	if err != nil {
		return errors.New(strings.TrimSpace(string(out)))
	}
	if strings.TrimSpace(string(out)) != "u 1" {
		t.Fatalf("RequestName(%s) as nobody = %s", name, out)
	}
	return nil
}

// TestPolicyLoaded checks that the project's policy is in force: only root
// (and mptcp-pm) may own the service name, while other names stay free.
func TestPolicyLoaded(t *testing.T) {
	b := StartBus(t)
	err := requestNameUnprivileged(t, b, serviceName)
	if err == nil || !strings.Contains(err.Error(), "not allowed to own") && !strings.Contains(err.Error(), "Access denied") {
		t.Errorf("an unprivileged user may own %s: %v", serviceName, err)
	}
	if err := requestNameUnprivileged(t, b, "org.example.Free"); err != nil {
		t.Errorf("an unprivileged user may not own another name: %v", err)
	}
	if os.Geteuid() == 0 {
		reply, err := b.Dial(t).RequestName(serviceName, dbus.NameFlagDoNotQueue)
		if err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
			t.Errorf("root may not own %s: %v, %v", serviceName, reply, err)
		}
	}
}

// TestUnknownUser documents how dbus-daemon treats the rules for the user
// mptcp-pm on a machine without that user: it warns and ignores them (the
// daemon starts, and TestPolicyLoaded shows nobody else gains them).
func TestUnknownUser(t *testing.T) {
	if _, err := user.Lookup("mptcp-pm"); err == nil {
		t.Skip("user mptcp-pm exists here")
	}
	b := StartBus(t)
	b.Dial(t) // the daemon has read its configuration
	if !strings.Contains(b.Log(), `Unknown username "mptcp-pm"`) {
		t.Errorf("dbus-daemon did not warn about the unknown user; log:\n%s", b.Log())
	}
}

// TestSystemDefaults checks what the policy allows on a bus with the system
// bus's default policy: anyone may call the service, only the service's users
// may call Release on a client, and nothing else is opened.
func TestSystemDefaults(t *testing.T) {
	pmtest.RequireRoot(t)
	busctl := pmtest.RequireProgram(t, "busctl")
	b := StartBus(t, SystemDefaults())

	svc := b.Dial(t)
	if reply, err := svc.RequestName(serviceName, dbus.NameFlagDoNotQueue); err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("root may not own %s: %v, %v", serviceName, reply, err)
	}
	controller := b.Dial(t)
	released := make(chan string, 1)
	controller.ExportMethodTable(map[string]any{
		"Release": func(reason string) *dbus.Error { released <- reason; return nil },
	}, "/ctl", "org.mptcp.PathManager1.Controller")
	controller.ExportMethodTable(map[string]any{
		"Other": func() *dbus.Error { return nil },
	}, "/ctl", "org.example.Other")

	// Root, the service's user here, may call Release and nothing else.
	if err := svc.Object(controller.Names()[0], "/ctl").Call("org.mptcp.PathManager1.Controller.Release", 0, "revoked").Err; err != nil {
		t.Errorf("the service may not call Release: %v", err)
	} else if r := <-released; r != "revoked" {
		t.Errorf("Release(%q)", r)
	}
	if err := svc.Object(controller.Names()[0], "/ctl").Call("org.example.Other.Other", 0).Err; err == nil {
		t.Error("the policy lets the service call any method of a client")
	}

	nobodyCall := func(dest, path, iface, member string, args ...string) error {
		cmd := b.CommandAs(t, nobody, nobody, busctl, append([]string{"--address=" + b.Address(), "call", dest, path, iface, member}, args...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			return errors.New(strings.TrimSpace(string(out)))
		}
		return nil
	}
	// Anyone may call the service's interfaces (godbus answers Peer and
	// Introspect on every path).
	for _, iface := range []string{"org.freedesktop.DBus.Peer Ping", "org.freedesktop.DBus.Introspectable Introspect"} {
		f := strings.Fields(iface)
		if err := nobodyCall(serviceName, "/", f[0], f[1]); err != nil {
			t.Errorf("nobody may not call %s on the service: %v", iface, err)
		}
	}
	if err := nobodyCall(serviceName, "/", "org.example.Other", "Other"); err == nil || !strings.Contains(err.Error(), "denied") {
		t.Errorf("nobody may call another interface of the service: %v", err)
	}
	if err := nobodyCall(controller.Names()[0], "/ctl", "org.mptcp.PathManager1.Controller", "Release", "s", "x"); err == nil || !strings.Contains(err.Error(), "denied") {
		t.Errorf("nobody may call Release: %v", err)
	}
}
