package policy

import (
	"fmt"
	"time"
)

// Preference is how a path through an interface should be used.
type Preference uint8

// Preferences. The zero value is "not set": the configuration falls back
// to the next source (see the service's rules), and a policy never sees
// it.
const (
	PreferUnset     Preference = iota
	PreferCheap                // carries traffic
	PreferExpensive            // costs: used when no cheap path works (metered, mobile data)
	PreferBackup               // kept as a backup path by every policy
	PreferOff                  // not used at all
)

var preferenceNames = [...]string{PreferUnset: "", PreferCheap: "cheap", PreferExpensive: "expensive",
	PreferBackup: "backup", PreferOff: "off"}

// String returns the preference's name: "cheap", "expensive", "backup",
// "off", or "" when unset.
func (p Preference) String() string {
	if int(p) < len(preferenceNames) {
		return preferenceNames[p]
	}
	return fmt.Sprintf("Preference(%d)", uint8(p))
}

// Standby reports whether an interface with the preference stands by
// rather than carries traffic: expensive and backup.
func (p Preference) Standby() bool { return p == PreferExpensive || p == PreferBackup }

// ErrBadPreference is wrapped by ParsePreference's errors.
var ErrBadPreference = fmt.Errorf("not a preference (cheap, expensive, backup or off)")

// ParsePreference parses a preference's name; "" is PreferUnset.
func ParsePreference(s string) (Preference, error) {
	for p, name := range preferenceNames {
		if name == s {
			return Preference(p), nil
		}
	}
	return PreferUnset, fmt.Errorf("policy: preference %q: %w", s, ErrBadPreference)
}

// HandoverSettings are the handover policy's settings.
type HandoverSettings struct {
	// Cold: standby subflows on expensive and backup paths are made only
	// when no cheap path works, and closed once one is back; otherwise
	// (warm) they are kept, as backup subflows, all the time.
	Cold bool
	// Hysteresis is how long a cheap path must have worked before traffic
	// moves back to it from a standby.
	Hysteresis time.Duration
}
