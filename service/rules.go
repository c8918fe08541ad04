package service

import (
	"fmt"
	"net/netip"
	"path"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/policy"
)

// Rule chooses the policy of the connections it matches ([[rules]] in the
// configuration): a policy per program and per destination. A rule matches
// when every condition it sets holds; the first rule that matches a
// connection at its ESTABLISHED decides, for the connection's life.
type Rule struct {
	Name string // for the log and the statistics
	// Port is the server's port: the remote port of a client connection,
	// the local one of a server connection; 0 = any.
	Port uint16
	// Destination holds the peer's address; the zero Prefix = any.
	Destination netip.Prefix
	// Unit and Cgroup are path.Match patterns on the systemd unit or
	// scope that owns the connection's socket ("backup*.service") and on
	// its cgroup path ("/user.slice/*"); "" = any. Matching them costs one
	// sock_diag lookup per connection.
	Unit, Cgroup string
	// Policy is the policy for the connections the rule matches: a
	// userspace one (subflow-per-interface, fullmesh, handover) or none
	// (no extra subflow, no announcement).
	Policy string
}

// Validate checks the rule: a name, a policy a connection can have, well
// formed patterns.
func (r Rule) Validate() error {
	if r.Name == "" {
		return fmt.Errorf("a rule needs a name")
	}
	p, err := policy.New(r.Policy)
	if err != nil {
		return fmt.Errorf("rule %s: %w", r.Name, err)
	}
	if p.PathManager() == policy.PathManagerKernel {
		return fmt.Errorf("rule %s: policy %s works for all connections at once (in-kernel endpoints); a rule chooses among the userspace policies and none", r.Name, r.Policy)
	}
	for _, pat := range []string{r.Unit, r.Cgroup} {
		if _, err := path.Match(pat, ""); err != nil {
			return fmt.Errorf("rule %s: bad pattern %q: %w", r.Name, pat, err)
		}
	}
	return nil
}

// Owner returns the cgroup path of the socket of the connection with the
// local token ("" when it cannot be told), for the rules on units and
// cgroups.
type Owner func(token uint32) (string, error)

func (r Rule) needsOwner() bool { return r.Unit != "" || r.Cgroup != "" }

// matchesAddr checks the rule's port and destination against c.
func (r Rule) matchesAddr(c *conn) bool {
	port := c.remote.Port()
	if c.serverSide {
		port = c.local.Port()
	}
	return (r.Port == 0 || r.Port == port) &&
		(!r.Destination.IsValid() || r.Destination.Contains(pm.CanonicalAddr(c.remote.Addr())))
}

// matchesOwner checks the rule's unit and cgroup patterns against a
// cgroup path.
func (r Rule) matchesOwner(cgroup string) bool {
	if cgroup == "" {
		return false
	}
	if r.Cgroup != "" {
		if ok, _ := path.Match(r.Cgroup, cgroup); !ok {
			return false
		}
	}
	if r.Unit != "" {
		if ok, _ := path.Match(r.Unit, UnitOf(cgroup)); !ok {
			return false
		}
	}
	return true
}

// UnitOf returns the systemd unit or scope a cgroup path belongs to: its
// deepest element that names one ("app-firefox-1.scope"), or "".
func UnitOf(cgroup string) string {
	for rest := cgroup; rest != ""; {
		dir, elem := path.Split(rest)
		if path.Ext(elem) == ".service" || path.Ext(elem) == ".scope" {
			return elem
		}
		rest = path.Clean(dir)
		if rest == "/" || rest == "." {
			break
		}
	}
	return ""
}

// applyRules chooses c's policy by the first rule that matches it, once,
// at its ESTABLISHED.
func (s *Service) applyRules(c *conn) {
	if len(s.cfg.Rules) == 0 || c.ruled {
		return
	}
	c.ruled = true
	cgroup, looked := "", false
	for _, r := range s.cfg.Rules {
		if !r.matchesAddr(c) {
			continue
		}
		if r.needsOwner() {
			if !looked {
				looked = true
				if s.owner != nil {
					var err error
					if cgroup, err = s.owner(c.token); err != nil {
						s.log.Debug("rules: the connection's owner is not known", "token", logToken(c.token), "err", err)
					}
				}
			}
			if !r.matchesOwner(cgroup) {
				continue
			}
		}
		p, err := policy.New(r.Policy)
		if err != nil { // Validate refused it
			continue
		}
		c.pol, c.rule = p, r.Name
		s.rules.Store(c.token, ruleChoice{r.Name, r.Policy})
		s.log.Debug("rules: connection matched", "token", logToken(c.token), "rule", r.Name, "policy", r.Policy, "cgroup", cgroup)
		return
	}
}

// polOf returns the policy deciding for c.
func (s *Service) polOf(c *conn) policy.Policy {
	if c.pol != nil {
		return c.pol
	}
	return s.pol
}

// ruleChoice is what a rule chose for a connection.
type ruleChoice struct{ rule, policy string }

// RuleOf returns the name of the rule that chose connection token's
// policy and that policy, or "" and "" when none did. Safe for concurrent
// use (the statistics read it off the loop).
func (s *Service) RuleOf(token uint32) (rule, policyName string) {
	if v, ok := s.rules.Load(token); ok {
		ch := v.(ruleChoice)
		return ch.rule, ch.policy
	}
	return "", ""
}
