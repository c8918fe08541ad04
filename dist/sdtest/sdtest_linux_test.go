package sdtest

import (
	"strings"
	"testing"

	"github.com/mptcp-pmd/mptcp-pmd/dbusapi/dbustest"
)

// TestBoot boots a container and finds the installed unit in it.
func TestBoot(t *testing.T) {
	root, err := dbustest.ProjectRoot()
	if err != nil {
		t.Fatal(err)
	}
	c := Boot(t, Options{Project: root, Files: map[string]string{"/etc/sdtest-file": "hello\n"}})
	t.Logf("booted in %v", c.BootTime)
	if out := c.Run(t, "cat /etc/sdtest-file; systemctl show -P LoadState mptcp-pmd.service; readlink /proc/1/exe"); out != "hello\nloaded\n/usr/lib/systemd/systemd\n" {
		t.Errorf("inside: %q", out)
	}
	if _, err := c.Exec("exit 3"); err == nil || !strings.Contains(err.Error(), "exit status 3") {
		t.Errorf("Exec of a failing command: %v", err)
	}
}
