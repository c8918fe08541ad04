package nmtest_test

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/mptcp-pmd/mptcp-pmd/dbusapi/dbustest"
	"github.com/mptcp-pmd/mptcp-pmd/pm/nmmon/nmtest"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
)

// deviceStates returns nmcli's DEVICE:STATE lines as a map.
func deviceStates(t *testing.T, nm *nmtest.NM) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(nm.Nmcli(t, "-t", "-f", "DEVICE,STATE", "device")), "\n") {
		if dev, st, ok := strings.Cut(l, ":"); ok {
			m[dev] = st
		}
	}
	return m
}

// TestStartStopRestart runs NetworkManager on a bus with the system bus's
// default policy and its own, checks which devices it manages, that a
// profile stays in the test's directory, and that it comes back after a
// restart with its connection still active.
func TestStartStopRestart(t *testing.T) {
	nmtest.Require(t)
	lab := pmtest.NewLab(t, pmtest.LabOptions{Paths: 2})
	bus := dbustest.StartBus(t, dbustest.SystemDefaults(), nmtest.Policy())
	_, err := os.Stat("/run/NetworkManager")
	hadRun := err == nil
	t0 := time.Now()
	nm := nmtest.Start(t, lab.Client, bus, nmtest.Options{Managed: []string{"c0"}})
	t.Logf("NetworkManager started in %v", time.Since(t0).Round(time.Millisecond))
	if nm.Pid() == 0 {
		t.Fatal("Pid() = 0 while running")
	}

	st := deviceStates(t, nm)
	if st["c0"] != "disconnected" || st["c1"] != "unmanaged" || st["lo"] != "unmanaged" {
		t.Fatalf("device states %v: want c0 disconnected, c1 and lo unmanaged", st)
	}
	nm.Nmcli(t, "connection", "add", "type", "ethernet", "con-name", "t0", "ifname", "c0", "autoconnect", "no",
		"ipv4.method", "manual", "ipv4.addresses", "10.55.0.1/24", "ipv6.method", "disabled")
	nm.Nmcli(t, "connection", "up", "t0")
	if _, err := os.Stat("/etc/NetworkManager/system-connections/t0.nmconnection"); err == nil {
		t.Error("the profile was written to the machine's /etc/NetworkManager")
	}
	if _, err := os.Stat("/run/NetworkManager"); err == nil && !hadRun {
		t.Error("the test made /run/NetworkManager on the machine")
	}

	nm.Restart(t)
	if st := deviceStates(t, nm); st["c0"] != "connected" {
		t.Errorf("after a restart c0 is %q, want connected (run state kept)", st["c0"])
	}
	nm.Stop(t)
	if nm.Pid() != 0 {
		t.Error("Pid() != 0 after Stop")
	}
	if out, err := nm.NmcliErr("-t", "-f", "RUNNING", "general"); err == nil {
		t.Errorf("nmcli still reaches NetworkManager after Stop: %s", out)
	}
	if !strings.Contains(nm.Log(), "NetworkManager") {
		t.Error("the log is empty")
	}
	// Stopping twice is harmless; the cleanup stops it a third time.
	nm.Stop(t)
}
