package service

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net/netip"
	"os"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/policy"
)

// Interface preferences and the subflow health the handover policy needs.
//
// An interface's preference is, first found: the one set at run time
// (SetInterfacePreference, kept across restarts by Deps.Preferences), the
// configuration's ([interfaces.NAME] preference), expensive when
// NetworkManager says the device is metered, expensive for a mobile-data
// interface by its name (expensiveKinds), else cheap. Expensive and backup
// interfaces are backup paths for every policy; off ones are not used.

// expensiveKinds are the name patterns of interfaces that are mobile data
// by default: wwan0 and the predictable names of WWAN devices (wwp0s20u4),
// and Qualcomm's rmnet.
var expensiveKinds = []string{"ww*", "rmnet*"}

// Preferences keeps the preferences set at run time across restarts.
type Preferences interface {
	Load() (map[string]string, error)
	Save(map[string]string) error
}

// Reason ListAddresses gives an interface whose preference is off.
const reasonPrefOff = "preference off"

// preference returns interface name's preference (never unset).
func (s *Service) preference(name string) policy.Preference {
	if p, ok := s.prefs[name]; ok {
		return p
	}
	if ic, ok := s.cfg.Interfaces[name]; ok && ic.Preference != policy.PreferUnset {
		return ic.Preference
	}
	if s.net.nm[name].Metered {
		return policy.PreferExpensive
	}
	for _, p := range expensiveKinds {
		if ok, _ := path.Match(p, name); ok {
			return policy.PreferExpensive
		}
	}
	return policy.PreferCheap
}

// preferences returns the preference of every known interface but
// loopbacks, by name.
func (s *Service) preferences() map[string]string {
	out := make(map[string]string, len(s.net.links))
	for _, l := range s.net.links {
		if !l.Loopback && l.Name != "" {
			out[l.Name] = s.preference(l.Name).String()
		}
	}
	return out
}

// offInterfaces returns the names of the known interfaces whose preference
// is off.
func (s *Service) offInterfaces() map[string]bool {
	var off map[string]bool
	for _, l := range s.net.links {
		if s.preference(l.Name) == policy.PreferOff {
			if off == nil {
				off = make(map[string]bool)
			}
			off[l.Name] = true
		}
	}
	return off
}

// publishPreferences publishes InterfacePreferences when they changed.
func (s *Service) publishPreferences() {
	if p := s.preferences(); !maps.Equal(p, s.lastPrefs) {
		s.lastPrefs = p
		s.publishManager("InterfacePreferences")
	}
}

// loadPreferences reads the preferences set at run time before a restart.
func (s *Service) loadPreferences() {
	if s.prefStore == nil {
		return
	}
	saved, err := s.prefStore.Load()
	if err != nil {
		s.log.Warn("the interface preferences set at run time are lost", "err", err)
		return
	}
	for name, word := range saved {
		p, err := policy.ParsePreference(word)
		if err != nil || p == policy.PreferUnset || !ValidInterfaceName(name) {
			s.log.Warn("a saved interface preference is not valid: ignored", "interface", name, "preference", word)
			continue
		}
		if s.prefs == nil {
			s.prefs = make(map[string]policy.Preference)
		}
		s.prefs[name] = p
	}
	if len(s.prefs) > 0 {
		s.log.Info("interface preferences set at run time restored", "count", len(s.prefs))
	}
}

// ValidInterfaceName reports whether name can be a Linux interface name
// (at most 15 bytes, no '/', ':', white space or NUL).
func ValidInterfaceName(name string) bool {
	return name != "" && len(name) < 16 && name != "." && name != ".." && !strings.ContainsAny(name, "/: \t\n\x00")
}

// SetInterfacePreference sets interface name's preference at run time:
// "cheap", "expensive", "backup" or "off", or "" to go back to the
// configured or default one. It applies to live connections at once and
// is kept across restarts. The interface need not exist yet.
func (s *Service) SetInterfacePreference(ctx context.Context, c Caller, name, pref string) error {
	const op = "set interface preference"
	p, err := policy.ParsePreference(pref)
	switch {
	case pref == "default":
		p, err = policy.PreferUnset, nil
	case err != nil:
		return invalidf("%s: %q is not a preference (cheap, expensive, backup, off, or \"\" for the default)", op, pref)
	}
	if !ValidInterfaceName(name) {
		return invalidf("%s: %q is not an interface name", op, name)
	}
	return do(ctx, s, op, func() error {
		if _, err := s.authorize(op, c); err != nil {
			return err
		}
		was, had := s.prefs[name]
		if p == policy.PreferUnset {
			delete(s.prefs, name)
		} else {
			if s.prefs == nil {
				s.prefs = make(map[string]policy.Preference)
			}
			s.prefs[name] = p
		}
		if had == (p != policy.PreferUnset) && was == p {
			return nil
		}
		if s.prefStore != nil {
			words := make(map[string]string, len(s.prefs))
			for n, x := range s.prefs {
				words[n] = x.String()
			}
			if err := s.prefStore.Save(words); err != nil {
				s.log.Warn("the interface preference is not kept across restarts", "err", err)
			}
		}
		s.log.Info("interface preference set", "interface", name, "preference", s.preference(name).String(), "caller", c.Name)
		if s.updateUsable() {
			s.reconcile()
		}
		s.publishPreferences()
		return nil
	})
}

// health is what the probes of a subflow's TCP state say.
type health struct {
	stalled bool
	since   time.Time // healthy without a break since; zero while stalled
	// outstanding is when the probes first saw data outstanding without a
	// break since (zero: none): after an idle time the last
	// acknowledgement is old, but the data just sent has not waited.
	outstanding time.Time
}

// SubflowProbe is one subflow's TCP state, as the daemon's prober reads it
// with sock_diag for the handover policy.
type SubflowProbe struct {
	Token         uint32 // the connection's local token
	Local, Remote netip.AddrPort
	Unacked       uint32        // segments sent and not acknowledged
	LastAckRecv   time.Duration // since the last acknowledgement
	RTT           time.Duration // smoothed round-trip time
}

// ProbeTarget is a subflow the prober is to look at: one of a connection
// under the handover policy, with the interface its socket may be bound
// to (0 for none known).
type ProbeTarget struct {
	Token         uint32
	Local, Remote netip.AddrPort
	Ifindex       int32
}

// ProbeTargets returns the subflows of the connections under the handover
// policy that the service knows established, the initial one included,
// for the prober to look up one by one rather than list every socket of
// the host (a sock_diag dump walks the host's whole TCP table).
func (s *Service) ProbeTargets(ctx context.Context) ([]ProbeTarget, error) {
	return call(ctx, s, "probe targets", func() ([]ProbeTarget, error) {
		var out []ProbeTarget
		for _, c := range s.conns.byToken {
			if !c.established || s.polOf(c).Name() != policy.NameHandover {
				continue
			}
			if c.local.IsValid() && c.remote.IsValid() && !c.initialClosed {
				out = append(out, ProbeTarget{Token: c.token, Local: c.local, Remote: c.remote})
			}
			for _, sf := range c.subflows {
				t := ProbeTarget{Token: c.token, Local: netip.AddrPortFrom(sf.LocalAddress, sf.LocalPort),
					Remote: netip.AddrPortFrom(sf.RemoteAddress, sf.RemotePort)}
				if t.Local == c.local && t.Remote == c.remote {
					continue // the initial one
				}
				t.Ifindex, _ = s.net.linkIndex(sf.Interface)
				out = append(out, t)
			}
		}
		return out, nil
	})
}

// Prober interval bounds.
const (
	minProbe = 20 * time.Millisecond
	maxProbe = time.Second
)

// ProbeInterval says how often the daemon should probe the subflows'
// TCP state (ProbeSubflows): a third of the stall timeout while the
// handover policy has connections to decide on, 0 otherwise. Safe for
// concurrent use.
func (s *Service) ProbeInterval() time.Duration { return time.Duration(s.probeEvery.Load()) }

// updateProbing sets ProbeInterval from the policy and the connections.
// The loop calls it after every event: it reads only fields.
func (s *Service) updateProbing() {
	var every time.Duration
	if s.usesHandover && s.acting() && len(s.conns.byToken) > 0 {
		every = min(max(s.handover().StallTimeout/3, minProbe), maxProbe)
	}
	if int64(every) != s.probeEvery.Load() {
		s.probeEvery.Store(int64(every))
	}
}

// handoverInUse reports whether the handover policy decides for some
// connections: the service's policy, or a rule's. New and Reload keep it
// in s.usesHandover.
func (s *Service) handoverInUse() bool {
	if s.pol.Name() == policy.NameHandover {
		return true
	}
	for _, r := range s.cfg.Rules {
		if r.Policy == policy.NameHandover {
			return true
		}
	}
	return false
}

// handover returns the handover settings, zero values as the defaults.
// Every policy decision reads it (view): it allocates nothing.
func (s *Service) handover() HandoverConfig {
	h := s.cfg.Handover
	if h.StallTimeout <= 0 {
		h.StallTimeout = defaultStallTimeout
	}
	if h.Hysteresis <= 0 {
		h.Hysteresis = defaultHysteresis
	}
	return h
}

// ProbeSubflows applies the TCP state of the subflows the prober read:
// a subflow with data outstanding for the stall timeout (or three round
// trips, if longer), as the probes saw it, and nothing acknowledged
// meanwhile is stalled. The handover
// policy decides again on every connection it has.
func (s *Service) ProbeSubflows(ctx context.Context, probes []SubflowProbe) error {
	return do(ctx, s, "probe subflows", func() error {
		if !s.usesHandover {
			return nil
		}
		now := s.now()
		stall := s.handover().StallTimeout
		seen := make(map[*conn]map[tuple]bool)
		for _, p := range probes {
			c := s.conns.byToken[p.Token]
			if c == nil {
				continue
			}
			t := tuple{pm.CanonicalAddrPort(p.Local), pm.CanonicalAddrPort(p.Remote)}
			h, known := c.health[t]
			switch {
			case p.Unacked == 0:
				h.outstanding = time.Time{}
			case h.outstanding.IsZero():
				h.outstanding = now
			}
			waited := min(p.LastAckRecv, now.Sub(h.outstanding))
			stalled := p.Unacked > 0 && waited >= max(stall, 3*p.RTT)
			switch {
			case stalled && !h.stalled:
				if known || c.health != nil {
					s.log.Info("handover: no progress on a subflow", "token", logToken(c.token), "local", t.local,
						"remote", t.remote, "unacked", p.Unacked, "last_ack", p.LastAckRecv.Round(time.Millisecond))
				}
				h = health{stalled: true, outstanding: h.outstanding}
			case !stalled && (h.stalled || !known):
				h = health{since: now, outstanding: h.outstanding}
			}
			if c.health == nil {
				c.health = make(map[tuple]health)
			}
			c.health[t] = h
			if seen[c] == nil {
				seen[c] = make(map[tuple]bool)
			}
			seen[c][t] = true
		}
		// The handover policy's connections decide again (the health of
		// their subflows, and time, change their wish); no other policy
		// reads it.
		var hc []*conn
		for _, c := range s.conns.byID {
			if s.polOf(c).Name() == policy.NameHandover {
				hc = append(hc, c)
			}
		}
		slices.SortFunc(hc, func(a, b *conn) int { return cmp.Compare(a.id, b.id) })
		for _, c := range hc {
			for t := range c.health {
				if !seen[c][t] {
					delete(c.health, t) // closed
				}
			}
			s.reconcileConn(c)
		}
		return nil
	})
}

// healthOf returns the probed health of subflow t of c.
func (c *conn) healthOf(t tuple) (stalled bool, since time.Time) {
	h := c.health[tuple{pm.CanonicalAddrPort(t.local), pm.CanonicalAddrPort(t.remote)}]
	return h.stalled, h.since
}

// FilePreferences keeps the preferences set at run time in a JSON file
// (an object of interface names to preferences), written atomically. In
// the runtime directory they last across restarts of the daemon, not
// across reboots.
type FilePreferences struct{ Path string }

// Load reads the file; a missing one holds nothing.
func (f FilePreferences) Load() (map[string]string, error) {
	data, err := os.ReadFile(f.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	var m map[string]string
	if err == nil {
		err = json.Unmarshal(data, &m)
	}
	if err != nil {
		return nil, fmt.Errorf("preferences: %w", err)
	}
	return m, nil
}

// Save replaces the file's content with m.
func (f FilePreferences) Save(m map[string]string) error {
	data, err := json.MarshalIndent(m, "", "\t")
	if err == nil {
		err = writeFileAtomic(f.Path, append(data, '\n'))
	}
	if err != nil {
		return fmt.Errorf("preferences: %w", err)
	}
	return nil
}
