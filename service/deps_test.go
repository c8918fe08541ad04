package service_test

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestCoreDependencies checks that the core (pm's vocabulary, policy and
// service) links nothing but the standard library and itself: no netlink,
// D-Bus or TOML code. The kernel, the bus and the configuration file are
// the edges' business (pm/pmnl, pm/diag, pm/netmon, dbusapi,
// service/config).
func TestCoreDependencies(t *testing.T) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to list dependencies with")
	}
	const mod = "github.com/mptcp-pmd/mptcp-pmd/"
	core := []string{mod + "pm", mod + "policy", mod + "service"}
	args := append([]string{"list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}"}, core...)
	out, err := exec.Command(gobin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		if !slices.Contains(core, dep) {
			t.Errorf("the core links %s", dep)
		}
	}
}
