package service

import (
	"fmt"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/mptcp-pmd/mptcp-pmd/policy"
)

// Standing warnings (Manager.Warnings): conditions that keep MPTCP from
// working as configured, shown until they end. Each is logged once when it
// starts.

// warnings are the standing warnings by key ("rp_filter c1", "fight c1").
type warnings map[string]string

// setWarning raises (msg != "") or ends (msg == "") the warning key, and
// publishes a change.
func (s *Service) setWarning(key, msg string) {
	if s.warnings[key] == msg {
		return
	}
	if msg == "" {
		delete(s.warnings, key)
		s.log.Info("warning ended", "warning", key)
	} else {
		if s.warnings == nil {
			s.warnings = make(warnings)
		}
		s.warnings[key] = msg
		s.log.Warn(msg)
	}
	s.publishManager("Warnings")
}

// list returns the messages sorted by key.
func (w warnings) list() []string {
	out := make([]string, 0, len(w))
	for _, k := range slices.Sorted(maps.Keys(w)) {
		out = append(out, w[k])
	}
	return out
}

// readSysctl reads /proc/sys/NAME, trimmed.
func readSysctl(name string) (string, error) {
	b, err := os.ReadFile("/proc/sys/" + name)
	return strings.TrimSpace(string(b)), err
}

// rpFilter returns the reverse-path filter mode in force on interface
// name: the larger of net.ipv4.conf.all.rp_filter and the interface's, as
// the kernel applies them (0 off, 1 strict, 2 loose).
func (s *Service) rpFilter(name string) (int, error) {
	mode := 0
	for _, conf := range []string{"all", name} {
		v, err := s.sysctl("net/ipv4/conf/" + conf + "/rp_filter")
		if err != nil {
			return 0, err
		}
		n, err := strconv.Atoi(v)
		if err != nil {
			return 0, fmt.Errorf("rp_filter of %s: %q: %w", conf, v, err)
		}
		mode = max(mode, n)
	}
	return mode, nil
}

// checkRPFilter warns about each interface with a usable IPv4 address
// whose reverse-path filter is strict: replies that arrive on a subflow of
// that interface are dropped unless the route back to the peer leaves
// through it, which is seldom so for a second path.
func (s *Service) checkRPFilter() {
	strict := map[string]bool{}
	for _, a := range s.usable {
		if !a.Addr.Unmap().Is4() || strict[a.Interface] {
			continue
		}
		mode, err := s.rpFilter(a.Interface)
		strict[a.Interface] = err == nil && mode == 1
	}
	for key := range s.warnings {
		if name, ok := strings.CutPrefix(key, "rp_filter "); ok && !strict[name] {
			s.setWarning(key, "")
		}
	}
	for _, name := range slices.Sorted(maps.Keys(strict)) {
		if strict[name] {
			s.setWarning("rp_filter "+name, fmt.Sprintf("strict reverse-path filtering (rp_filter 1) on %s: "+
				"the peer's packets on subflows from %s are dropped unless the route back to the peer leaves through it; "+
				"set it loose, as NetworkManager does on its devices: sysctl net.ipv4.conf.%s.rp_filter=2", name, name, name))
		}
	}
}

// Another program removing the endpoints the policy makes, which the
// policy then adds again, is a fight between two endpoint managers.
const (
	fightWindow = time.Minute     // take-aways counted over this time
	fightCount  = 3               // take-aways in fightWindow that make a fight
	fightQuiet  = 5 * time.Minute // a fight warning ends after this long without one
)

// takeAways are the times, per interface, at which another program removed
// an endpoint the policy made.
type takeAways map[string][]time.Time

// noteTakeAways compares the endpoints the service expected (what it knew,
// with its own changes applied) with those the kernel lists, and counts the
// owned ones that vanished.
func (s *Service) noteTakeAways(expected, kernel []policy.Endpoint) {
	now := s.now()
	for _, e := range expected {
		if !e.Owned() || slices.ContainsFunc(kernel, func(k policy.Endpoint) bool { return k.ID == e.ID && keyOf(k.Address) == keyOf(e.Address) }) {
			continue
		}
		name := e.Interface
		if name == "" {
			name = e.Addr.String()
		}
		if s.takeAway == nil {
			s.takeAway = make(takeAways)
		}
		times := append(s.takeAway[name], now)
		times = slices.DeleteFunc(times, func(t time.Time) bool { return now.Sub(t) > fightWindow })
		s.takeAway[name] = times
		s.log.Info("another program removed an endpoint the policy made", "id", e.ID, "addr", e.Addr, "interface", e.Interface)
		if len(times) >= fightCount {
			s.setWarning("fight "+name, fmt.Sprintf("another program keeps removing the endpoints mptcp-pmd makes on %s "+
				"(%d times in %v), and the policy adds them again: two endpoint managers fight over %s; "+
				"leave the interface to one of them (for NetworkManager: network_manager = \"auto\" and the profile's "+
				"connection.mptcp-flags; otherwise [filter] interfaces_deny)", name, len(times), fightWindow, name))
		}
	}
	for name, times := range s.takeAway {
		if len(times) > 0 && now.Sub(times[len(times)-1]) > fightQuiet {
			delete(s.takeAway, name)
			s.setWarning("fight "+name, "")
		}
	}
}
