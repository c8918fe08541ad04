package service

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/policy"
)

// Names of the built-in policies (Config.Policy); policy.Names lists every
// registered one.
const (
	PolicyEndpoints           = policy.NameEndpoints
	PolicySubflowPerInterface = policy.NameSubflowPerInterface
	PolicyFullmesh            = policy.NameFullmesh
	PolicyNone                = policy.NameNone
)

// Config is the daemon's configuration, from the TOML file
// /etc/mptcp-pmd/mptcp-pmd.toml.
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
}

// InterfaceConfig overrides settings for one interface.
type InterfaceConfig struct {
	Flags pm.Flags // endpoint flags for the interface's addresses
}

// DefaultConfig returns the configuration used when the file sets nothing:
// the endpoints policy, policy.DefaultFilter, subflow endpoints removed on
// exit.
func DefaultConfig() Config {
	return Config{
		Policy:        PolicyEndpoints,
		LogLevel:      slog.LevelInfo,
		Filter:        policy.DefaultFilter(),
		EndpointFlags: pm.FlagSubflow,
		RemoveOnExit:  true,
	}
}

// flagsFor returns the endpoint flags of the addresses of interface name.
func (c *Config) flagsFor(name string) pm.Flags {
	if ic, ok := c.Interfaces[name]; ok {
		return ic.Flags
	}
	return c.EndpointFlags
}

// Validate checks a configuration made in code the way LoadConfig checks a
// file: a registered policy, well-formed interface patterns, endpoint flags
// the kernel accepts together.
func (c *Config) Validate() error {
	if _, err := policy.New(c.Policy); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if err := c.Filter.Validate(); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if err := checkFlags(c.EndpointFlags); err != nil {
		return fmt.Errorf("config: endpoints.flags: %w", err)
	}
	for name, ic := range c.Interfaces {
		if err := checkFlags(ic.Flags); err != nil {
			return fmt.Errorf("config: interfaces.%s.flags: %w", name, err)
		}
	}
	return nil
}

// checkFlags refuses endpoint flags the kernel refuses together, or that
// only the kernel sets.
func checkFlags(f pm.Flags) error {
	switch {
	case f&pm.FlagSignal != 0 && f&pm.FlagFullmesh != 0:
		return errors.New("signal and fullmesh together are refused by the kernel")
	case f&pm.FlagImplicit != 0:
		return errors.New("implicit is set by the kernel only")
	}
	return nil
}

// LoadConfig reads the configuration file at path. Keys it does not set keep
// DefaultConfig's values. Decoding is strict: an unknown key, a value of the
// wrong type or a bad value (unknown policy or flag word, malformed pattern)
// is an error that names the file and line, as "FILE:LINE: unknown key x.y".
func LoadConfig(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	return parseConfig(path, string(data))
}

// The file's form. Values that need checking have their own types, whose
// UnmarshalTOML errors the decoder reports with the key's position.
type fileConfig struct {
	Policy         policyName                   `toml:"policy"`
	LogLevel       logLevel                     `toml:"log_level"`
	SetPathManager bool                         `toml:"set_path_manager"`
	Limits         *fileLimits                  `toml:"limits"`
	Filter         fileFilter                   `toml:"filter"`
	Endpoints      fileEndpoints                `toml:"endpoints"`
	Interfaces     map[string]fileInterfaceConf `toml:"interfaces"`

	Authorization fileAuthorization `toml:"authorization"`
}

type fileAuthorization struct {
	Groups groupList `toml:"groups"`
}

// groupList is a list of groups, each a name or a gid (a number, or a
// string of digits).
type groupList []string

func (g *groupList) UnmarshalTOML(v any) error {
	arr, ok := v.([]any)
	if !ok {
		return fmt.Errorf("want an array of group names or numbers, not %T", v)
	}
	out := make([]string, 0, len(arr))
	for _, e := range arr {
		switch e := e.(type) {
		case string:
			if e == "" || strings.ContainsAny(e, ": \t\n\r\x00") {
				return fmt.Errorf("bad group name %q", e)
			}
			out = append(out, e)
		case int64:
			if e < 0 || e >= 1<<32-1 {
				return fmt.Errorf("bad gid %d", e)
			}
			out = append(out, strconv.FormatInt(e, 10))
		default:
			return fmt.Errorf("want a group name or number, found %T", e)
		}
	}
	*g = out
	return nil
}

type fileLimits struct {
	Subflows        *uint32 `toml:"subflows"`
	AddAddrAccepted *uint32 `toml:"add_addr_accepted"`
}

type fileFilter struct {
	SkipLoopback        bool     `toml:"skip_loopback"`
	SkipLinkLocal       bool     `toml:"skip_link_local"`
	SkipTentative       bool     `toml:"skip_tentative"`
	RequireDefaultRoute bool     `toml:"require_default_route"`
	InterfacesAllow     patterns `toml:"interfaces_allow"`
	InterfacesDeny      patterns `toml:"interfaces_deny"`
}

type fileEndpoints struct {
	Flags        *flagWords `toml:"flags"`
	RemoveOnExit *bool      `toml:"remove_on_exit"`
}

type fileInterfaceConf struct {
	Flags *flagWords `toml:"flags"`
}

type policyName string

func (p *policyName) UnmarshalTOML(v any) error {
	s, ok := v.(string)
	if !ok {
		return fmt.Errorf("policy must be a string, not %T", v)
	}
	if !slices.Contains(policy.Names(), s) {
		return fmt.Errorf("unknown policy %q (want one of %s)", s, strings.Join(policy.Names(), ", "))
	}
	*p = policyName(s)
	return nil
}

type logLevel slog.Level

func (l *logLevel) UnmarshalTOML(v any) error {
	s, ok := v.(string)
	if !ok {
		return fmt.Errorf("log_level must be a string, not %T", v)
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(s)); err != nil {
		return fmt.Errorf("unknown log level %q (want debug, info, warn or error)", s)
	}
	*l = logLevel(lv)
	return nil
}

type flagWords pm.Flags

func (f *flagWords) UnmarshalTOML(v any) error {
	words, err := stringList(v)
	if err != nil {
		return err
	}
	var flags pm.Flags
	for _, w := range words {
		b, err := pm.ParseFlags([]string{w})
		if err != nil {
			return fmt.Errorf("unknown flag %q", w)
		}
		flags |= b
	}
	if err := checkFlags(flags); err != nil {
		return err
	}
	*f = flagWords(flags)
	return nil
}

type patterns []string

func (p *patterns) UnmarshalTOML(v any) error {
	list, err := stringList(v)
	if err != nil {
		return err
	}
	for _, s := range list {
		if _, err := path.Match(s, ""); err != nil {
			return fmt.Errorf("bad interface pattern %q: %w", s, err)
		}
	}
	*p = list
	return nil
}

// stringList converts a decoded TOML array of strings.
func stringList(v any) ([]string, error) {
	arr, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("want an array of strings, not %T", v)
	}
	out := make([]string, 0, len(arr))
	for _, e := range arr {
		s, ok := e.(string)
		if !ok {
			return nil, fmt.Errorf("want an array of strings, found %T", e)
		}
		out = append(out, s)
	}
	return out, nil
}

// parseConfig decodes the TOML text data of the file named name.
func parseConfig(name, data string) (Config, error) {
	def := DefaultConfig()
	fc := fileConfig{
		Policy:   policyName(def.Policy),
		LogLevel: logLevel(def.LogLevel),
		Filter: fileFilter{
			SkipLoopback:        def.Filter.SkipLoopback,
			SkipLinkLocal:       def.Filter.SkipLinkLocal,
			SkipTentative:       def.Filter.SkipTentative,
			RequireDefaultRoute: def.Filter.RequireDefaultRoute,
			InterfacesAllow:     def.Filter.Allow,
			InterfacesDeny:      def.Filter.Deny,
		},
	}
	md, err := toml.Decode(data, &fc)
	if err != nil {
		return Config{}, decodeError(name, err)
	}
	if err := unknownKeys(name, data, md.Undecoded()); err != nil {
		return Config{}, err
	}
	cfg := Config{
		Policy:   string(fc.Policy),
		LogLevel: slog.Level(fc.LogLevel),
		Filter: policy.FilterConfig{
			SkipLoopback:        fc.Filter.SkipLoopback,
			SkipLinkLocal:       fc.Filter.SkipLinkLocal,
			SkipTentative:       fc.Filter.SkipTentative,
			RequireDefaultRoute: fc.Filter.RequireDefaultRoute,
			Allow:               fc.Filter.InterfacesAllow,
			Deny:                fc.Filter.InterfacesDeny,
		},
		EndpointFlags:  def.EndpointFlags,
		RemoveOnExit:   def.RemoveOnExit,
		SetPathManager: fc.SetPathManager,
	}
	cfg.AuthGroups = fc.Authorization.Groups
	if fc.Endpoints.Flags != nil {
		cfg.EndpointFlags = pm.Flags(*fc.Endpoints.Flags)
	}
	if fc.Endpoints.RemoveOnExit != nil {
		cfg.RemoveOnExit = *fc.Endpoints.RemoveOnExit
	}
	if l := fc.Limits; l != nil {
		if l.Subflows == nil || l.AddAddrAccepted == nil {
			return Config{}, fmt.Errorf("%s:%d: limits: set both subflows and add_addr_accepted",
				name, keyLine(data, toml.Key{"limits"}))
		}
		cfg.Limits = &Limits{Subflows: *l.Subflows, AddAddrAccepted: *l.AddAddrAccepted}
	}
	for ifname, ic := range fc.Interfaces {
		if cfg.Interfaces == nil {
			cfg.Interfaces = make(map[string]InterfaceConfig)
		}
		flags := cfg.EndpointFlags
		if ic.Flags != nil {
			flags = pm.Flags(*ic.Flags)
		}
		cfg.Interfaces[ifname] = InterfaceConfig{Flags: flags}
	}
	return cfg, nil
}

// tomlLineErr matches the text of the errors BurntSushi/toml returns without
// a ParseError, such as a value of the wrong type.
var tomlLineErr = regexp.MustCompile(`^toml: line (\d+) \(last key "([^"]*)"\): (.*)$`)

// decodeError gives a decoding error the form "FILE:LINE: key: message".
func decodeError(name string, err error) error {
	var pe toml.ParseError
	if errors.As(err, &pe) {
		if pe.LastKey != "" {
			return fmt.Errorf("%s:%d: %s: %s", name, pe.Position.Line, pe.LastKey, pe.Message)
		}
		return fmt.Errorf("%s:%d: %s", name, pe.Position.Line, pe.Message)
	}
	if m := tomlLineErr.FindStringSubmatch(err.Error()); m != nil {
		return fmt.Errorf("%s:%s: %s: %s", name, m[1], m[2], m[3])
	}
	return fmt.Errorf("%s: %w", name, err)
}

// unknownKeys returns an error naming every undecoded key with its line,
// leaving out the keys inside an unknown table.
func unknownKeys(name, data string, keys []toml.Key) error {
	var errs []error
	var reported []string
	for _, k := range keys {
		s := k.String()
		if slices.ContainsFunc(reported, func(p string) bool { return strings.HasPrefix(s, p+".") }) {
			continue
		}
		reported = append(reported, s)
		errs = append(errs, fmt.Errorf("%s:%d: unknown key %s", name, keyLine(data, k), s))
	}
	return errors.Join(errs...)
}

// keyLine returns the line where key is defined in the TOML text data, or 0.
// The decoder knows every key's position but does not export it; it does
// report the position of a value that fails to decode, so keyLine decodes
// data into a struct, built for the purpose, that has only key's path and
// fails at its end.
func keyLine(data string, key toml.Key) int {
	t := reflect.TypeFor[failing]()
	for i := len(key) - 1; i >= 0; i-- {
		t = reflect.StructOf([]reflect.StructField{{
			Name: "F",
			Type: t,
			Tag:  reflect.StructTag("toml:" + strconv.Quote(key[i])),
		}})
	}
	_, err := toml.Decode(data, reflect.New(t).Interface())
	var pe toml.ParseError
	if errors.As(err, &pe) {
		return pe.Position.Line
	}
	return 0
}

// failing is a TOML value that never decodes.
type failing struct{}

func (failing) UnmarshalTOML(any) error { return errors.New("located") }
