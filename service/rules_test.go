package service

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

// TestRules: a rule by port (none: no subflow) and a rule by unit
// (fullmesh) choose the policy of the connections they match; the others
// keep the service's (subflow-per-interface); RuleOf tells which.
func TestRules(t *testing.T) {
	owners := map[uint32]string{3: "/system.slice/backup-daily.service", 4: "/user.slice/user-1000.slice/app-x.scope"}
	h := newHarness(t, withPolicy(PolicySubflowPerInterface), withConfig(func(c *Config) {
		c.Rules = []Rule{
			{Name: "ssh", Port: 22, Policy: PolicyNone},
			{Name: "backups", Unit: "backup*.service", Destination: netip.MustParsePrefix("10.55.0.0/16"), Policy: PolicyFullmesh},
		}
	}), withService(func(s *Service) {
		s.owner = func(token uint32) (string, error) {
			if p, ok := owners[token]; ok {
				return p, nil
			}
			return "", errors.New("no such connection")
		}
	}))
	h.sendNet(append(hostNet(3), synced)...)
	h.take()
	if err := h.s.SetLimits(bg, Caller{}, Limits{Subflows: 8, AddAddrAccepted: 8}); err != nil {
		t.Fatal(err)
	}
	count := func(mark int, token string) int {
		n := 0
		for _, c := range h.calls(mark, "CreateSubflow") {
			if strings.HasPrefix(c, "CreateSubflow "+token+" ") {
				n++
			}
		}
		return n
	}
	mark := h.mark()
	h.open(1, "10.55.0.1:40000", "10.55.0.2:22")   // ssh: none
	h.open(2, "10.55.0.1:40001", "10.55.0.2:8080") // no rule: subflow-per-interface
	h.open(3, "10.55.0.1:40002", "10.55.0.2:8080") // backup-daily.service: fullmesh
	h.open(4, "10.55.0.1:40003", "10.55.0.2:8080") // app-x.scope: no rule
	h.settle()
	if n := count(mark, "1"); n != 0 {
		t.Errorf("the ssh connection got %d subflows", n)
	}
	if n := count(mark, "2"); n != 2 {
		t.Errorf("a connection without rule got %d subflows, want 2 (subflow-per-interface)", n)
	}
	if n := count(mark, "3"); n != 2 {
		t.Errorf("the backup connection got %d subflows, want 2 (fullmesh, one peer address)", n)
	}
	for tok, want := range map[uint32][2]string{1: {"ssh", "none"}, 2: {"", ""}, 3: {"backups", "fullmesh"}, 4: {"", ""}} {
		if r, p := h.s.RuleOf(tok); r != want[0] || p != want[1] {
			t.Errorf("RuleOf(%d) = %q, %q; want %q", tok, r, p, want)
		}
	}
	// A rule's policy must be one a connection can have.
	bad := h.s.cfg
	bad.Rules = []Rule{{Name: "x", Policy: PolicyEndpoints}}
	if err := h.s.Reload(bg, bad); err == nil || !strings.Contains(err.Error(), "rule x") {
		t.Errorf("Reload with an endpoints rule: %v", err)
	}
}

func TestUnitOf(t *testing.T) {
	for in, want := range map[string]string{
		"/system.slice/nginx.service":                                     "nginx.service",
		"/user.slice/user-1000.slice/user@1000.service/app.slice/a.scope": "a.scope",
		"/user.slice/user-1000.slice/user@1000.service/app.slice":         "user@1000.service",
		"/mptcp-pmd-test-1": "", "": "", "/": "",
	} {
		if got := UnitOf(in); got != want {
			t.Errorf("UnitOf(%q) = %q, want %q", in, got, want)
		}
	}
}
