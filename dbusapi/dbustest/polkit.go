package dbustest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
)

// Names of polkit's authority on the bus.
const (
	PolkitName      = "org.freedesktop.PolicyKit1"
	PolkitPath      = dbus.ObjectPath("/org/freedesktop/PolicyKit1/Authority")
	PolkitInterface = "org.freedesktop.PolicyKit1.Authority"
)

// PolkitdPath is where Debian and Fedora install polkit's daemon.
const PolkitdPath = "/usr/lib/polkit-1/polkitd"

// polkitPolicy lets root (a test's fake authority) and polkitd (the real
// one) own polkit's name, and everyone call it, as polkit's own bus policy
// does on a real system.
const polkitPolicy = `  <policy user="root">
    <allow own="` + PolkitName + `"/>
  </policy>
  <policy user="polkitd">
    <allow own="` + PolkitName + `"/>
  </policy>
  <policy context="default">
    <allow send_destination="` + PolkitName + `"/>
  </policy>`

// Polkit adds to the bus the policy polkit needs: root and the polkitd
// user may own org.freedesktop.PolicyKit1 and everyone may call it. Start
// a bus with SystemDefaults and Polkit for StartFakePolkit or StartPolkitd.
func Polkit() Option { return ExtraConfig(polkitPolicy) }

// PolkitDecision is what a fake authority answers to a CheckAuthorization:
// subject is the bus name of a "system-bus-name" subject, flags the call's
// flags (1 = AllowUserInteraction).
type PolkitDecision func(subject, action string, flags uint32) (authorized, challenge bool)

// polkitSubject and polkitResult are CheckAuthorization's (sa{sv}) and
// (bba{ss}).
type polkitSubject struct {
	Kind    string
	Details map[string]dbus.Variant
}

type polkitResult struct {
	Authorized bool
	Challenge  bool
	Details    map[string]string
}

// StartFakePolkit exports a fake polkit authority on the bus, owning
// org.freedesktop.PolicyKit1 until the test ends. Its CheckAuthorization
// answers with decide for a "system-bus-name" subject, and with the error
// org.freedesktop.PolicyKit1.Error.Failed for any other subject or a
// non-empty cancellation id. A bus with the SystemDefaults policy must have
// been started with Polkit.
func StartFakePolkit(tb testing.TB, b *Bus, decide PolkitDecision) {
	tb.Helper()
	conn := b.Dial(tb)
	check := func(subject polkitSubject, action string, _ map[string]string, flags uint32, cancel string) (polkitResult, *dbus.Error) {
		name, ok := subject.Details["name"].Value().(string)
		if subject.Kind != "system-bus-name" || !ok {
			return polkitResult{}, polkitFailed("unsupported subject %q %v", subject.Kind, subject.Details)
		}
		if cancel != "" {
			return polkitResult{}, polkitFailed("the fake does not support cancellation ids")
		}
		yes, challenge := decide(name, action, flags)
		return polkitResult{Authorized: yes, Challenge: challenge, Details: map[string]string{}}, nil
	}
	if err := conn.ExportMethodTable(map[string]any{"CheckAuthorization": check}, PolkitPath, PolkitInterface); err != nil {
		tb.Fatalf("dbustest: export the fake polkit: %v", err)
	}
	reply, err := conn.RequestName(PolkitName, dbus.NameFlagDoNotQueue)
	if err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		tb.Fatalf("dbustest: own %s (was the bus started with Polkit()?): %v %v", PolkitName, reply, err)
	}
}

func polkitFailed(format string, args ...any) *dbus.Error {
	return dbus.NewError("org.freedesktop.PolicyKit1.Error.Failed", []any{fmt.Sprintf(format, args...)})
}

// StartPolkitd runs the real polkitd on the bus until the test ends, in a
// mount namespace of its own where its actions directory holds only the
// given action files and its rules are only rules (JavaScript, as in a
// file of /etc/polkit-1/rules.d). It returns when polkitd owns its name.
// It needs root, polkitd (Debian: polkitd) and util-linux's unshare and
// mount; without them the test is skipped (or fails in CI). A bus with
// the SystemDefaults policy must have been started with Polkit.
func StartPolkitd(tb testing.TB, b *Bus, actions []string, rules string) {
	tb.Helper()
	pmtest.RequireRoot(tb)
	polkitd := pmtest.RequireProgram(tb, PolkitdPath)
	unshare := pmtest.RequireProgram(tb, "unshare")
	pmtest.RequireProgram(tb, "mount")

	// polkitd drops to its own user: it must be able to read the files.
	dir, err := os.MkdirTemp("", "dbustest-polkit-")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	actionsDir, rulesDir, emptyDir := filepath.Join(dir, "actions"), filepath.Join(dir, "rules"), filepath.Join(dir, "empty")
	for _, d := range []string{dir, actionsDir, rulesDir, emptyDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			tb.Fatal(err)
		}
		if err := os.Chmod(d, 0o755); err != nil {
			tb.Fatal(err)
		}
	}
	for _, a := range actions {
		data, err := os.ReadFile(a)
		if err != nil {
			tb.Fatalf("dbustest: polkit action: %v", err)
		}
		if err := os.WriteFile(filepath.Join(actionsDir, filepath.Base(a)), data, 0o644); err != nil {
			tb.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(rulesDir, "50-test.rules"), []byte(rules), 0o644); err != nil {
		tb.Fatal(err)
	}
	script := fmt.Sprintf("set -e; mount --bind %q /usr/share/polkit-1/actions; mount --bind %q /usr/share/polkit-1/rules.d; "+
		"mount --bind %q /etc/polkit-1/rules.d; exec %q --no-debug", actionsDir, emptyDir, rulesDir, polkitd)
	cmd := exec.Command(unshare, "--mount", "--propagation", "private", "sh", "-c", script)
	cmd.Env = append(os.Environ(), "DBUS_SYSTEM_BUS_ADDRESS="+b.Address())
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		tb.Fatalf("dbustest: start polkitd: %v", err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	tb.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})

	conn := b.Dial(tb)
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	for {
		var has bool
		err := conn.BusObject().CallWithContext(ctx, "org.freedesktop.DBus.NameHasOwner", 0, PolkitName).Store(&has)
		if err == nil && has {
			return
		}
		select {
		case <-exited:
			tb.Fatalf("dbustest: polkitd exited (%v): %s", cmd.ProcessState, strings.TrimSpace(out.String()))
		case <-ctx.Done():
			tb.Fatalf("dbustest: polkitd did not take its name within %v: %s", startTimeout, strings.TrimSpace(out.String()))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// CommandAsGroups is CommandAs with supplementary groups: the program runs
// with the user, the primary group gid and the groups.
func (b *Bus) CommandAsGroups(tb testing.TB, uid, gid uint32, groups []uint32, program string, args ...string) *exec.Cmd {
	tb.Helper()
	cmd := b.CommandAs(tb, uid, gid, program, args...)
	if len(groups) == 0 {
		return cmd
	}
	list := make([]string, len(groups))
	for i, g := range groups {
		list[i] = fmt.Sprint(g)
	}
	// CommandAs clears the supplementary groups; set them instead.
	for i, a := range cmd.Args {
		if a == "--clear-groups" {
			cmd.Args[i] = "--groups=" + strings.Join(list, ",")
			return cmd
		}
	}
	tb.Fatalf("dbustest: no --clear-groups in %v", cmd.Args)
	return nil
}
