package service

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/policy"
)

// Names of the built-in policies (Config.Policy); policy.Names lists every
// registered one.
const (
	PolicyEndpoints           = policy.NameEndpoints
	PolicySubflowPerInterface = policy.NameSubflowPerInterface
	PolicyFullmesh            = policy.NameFullmesh
	PolicyHandover            = policy.NameHandover
	PolicyNone                = policy.NameNone
)

// Config is the daemon's configuration. Package service/config reads it
// from the TOML file /etc/mptcp-pmd/mptcp-pmd.toml.
type Config struct {
	Policy   string     // policy: a registered policy name (policy.Names)
	LogLevel slog.Level // log_level: debug, info, warn, error (for the daemon's logger)
	Limits   *Limits    // [limits]: set at start and reload; nil = leave the kernel's
	// Filter ([filter]) says which local addresses are usable: what
	// Manager.LocalAddresses shows and the policy works with. Its keys are
	// skip_loopback, skip_link_local, skip_tentative (tentative and
	// deprecated IPv6 addresses), require_default_route, interfaces_allow
	// and interfaces_deny (Allow and Deny).
	Filter        policy.FilterConfig
	EndpointFlags pm.Flags // [endpoints] flags: of the endpoints a policy makes
	// RemoveOnExit ([endpoints] remove_on_exit) removes the endpoints the
	// built-in policy made when the daemon stops cleanly.
	RemoveOnExit bool
	// SetPathManager (set_path_manager) lets the daemon set the network
	// namespace's path manager (net.mptcp.path_manager) to the one the
	// policy needs; otherwise it only says what to do.
	SetPathManager bool
	// Interfaces holds per-interface overrides ([interfaces.NAME]) by name.
	Interfaces map[string]InterfaceConfig
	// AuthGroups ([authorization] groups) are the groups, by name or gid,
	// whose members may call the mutating D-Bus methods, as root may.
	// Others need polkit's yes.
	AuthGroups []string
	// Rules ([[rules]]) choose the policy of the connections they match,
	// the first that matches; the others have Policy.
	Rules []Rule
	// Handover ([handover]) holds the handover policy's settings.
	Handover HandoverConfig
	// NetworkManager (network_manager) says how the daemon treats
	// NetworkManager: NetworkManagerAuto ("auto", also "") follows it while
	// it is on the bus, NetworkManagerIgnore ("ignore") does not.
	NetworkManager string
}

// InterfaceConfig overrides settings for one interface.
type InterfaceConfig struct {
	// Flags are the endpoint flags of the interface's addresses, unless
	// FlagsDefault (the [interfaces.NAME] table sets no flags): then the
	// [endpoints] flags apply, with backup added for an expensive or
	// backup interface.
	Flags        pm.Flags
	FlagsDefault bool
	// Preference (preference) is the interface's: cheap, expensive,
	// backup or off; unset falls back to NetworkManager's metered state and
	// the interface's kind (Service.preference).
	Preference policy.Preference
}

// The handover policy's defaults.
const (
	defaultStallTimeout = 200 * time.Millisecond
	defaultHysteresis   = 5 * time.Second
)

// HandoverConfig are the handover policy's settings ([handover]).
type HandoverConfig struct {
	Cold bool // standby = "cold": standby subflows only when no cheap path works
	// StallTimeout (stall_timeout): a subflow with data outstanding and
	// nothing acknowledged for this long (or three round trips, if
	// longer) has failed.
	StallTimeout time.Duration
	// Hysteresis (hysteresis): how long a cheap path must have worked
	// again before traffic moves back to it.
	Hysteresis time.Duration
}

// DefaultConfig returns the configuration used when the file sets nothing:
// the endpoints policy, policy.DefaultFilter, subflow endpoints removed on
// exit.
func DefaultConfig() Config {
	return Config{
		Policy:         PolicyEndpoints,
		LogLevel:       slog.LevelInfo,
		Filter:         policy.DefaultFilter(),
		EndpointFlags:  pm.FlagSubflow,
		RemoveOnExit:   true,
		Handover:       HandoverConfig{StallTimeout: defaultStallTimeout, Hysteresis: defaultHysteresis},
		NetworkManager: NetworkManagerAuto,
	}
}

// flagsFor returns the flags of the addresses of interface name: those of
// [interfaces.NAME] flags, else the endpoint flags, with backup added when
// the interface's preference is expensive or backup.
func (s *Service) flagsFor(name string) pm.Flags {
	if ic, ok := s.cfg.Interfaces[name]; ok && !ic.FlagsDefault {
		return ic.Flags
	}
	if s.preference(name).Standby() {
		return s.cfg.EndpointFlags | pm.FlagBackup
	}
	return s.cfg.EndpointFlags
}

// Validate checks a configuration made in code the way config.Load checks a
// file: a registered policy, well-formed interface patterns, endpoint flags
// the kernel accepts together.
func (c *Config) Validate() error {
	if _, err := policy.New(c.Policy); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if err := c.Filter.Validate(); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	switch c.NetworkManager {
	case "", NetworkManagerAuto, NetworkManagerIgnore:
	default:
		return fmt.Errorf("config: network_manager: %q is neither %q nor %q", c.NetworkManager, NetworkManagerAuto, NetworkManagerIgnore)
	}
	if err := pm.CheckEndpointFlags(c.EndpointFlags); err != nil {
		return fmt.Errorf("config: endpoints.flags: %w", err)
	}
	for name, ic := range c.Interfaces {
		if err := pm.CheckEndpointFlags(ic.Flags); err != nil {
			return fmt.Errorf("config: interfaces.%s.flags: %w", name, err)
		}
		if ic.Preference > policy.PreferOff {
			return fmt.Errorf("config: interfaces.%s.preference: %v", name, ic.Preference)
		}
	}
	for _, r := range c.Rules {
		if err := r.Validate(); err != nil {
			return fmt.Errorf("config: rules: %w", err)
		}
	}
	if c.Handover.StallTimeout < 0 || c.Handover.Hysteresis < 0 {
		return fmt.Errorf("config: handover: stall_timeout and hysteresis must be positive")
	}
	return nil
}
