// Package config reads the daemon's TOML configuration file into a
// service.Config. Decoding is strict, and every error names the file and the
// line, as "FILE:LINE: unknown key x.y". It is the only package that links
// the TOML decoder: the service works with the decoded Config.
package config

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/policy"
	"github.com/mptcp-pmd/mptcp-pmd/service"
)

// Load reads the configuration file at path. Keys it does not set keep
// service.DefaultConfig's values. Decoding is strict: an unknown key, a value of the
// wrong type or a bad value (unknown policy or flag word, malformed pattern)
// is an error that names the file and line, as "FILE:LINE: unknown key x.y".
func Load(path string) (service.Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return service.Config{}, fmt.Errorf("config: %w", err)
	}
	return parse(path, string(data))
}

// The file's form. Values that need checking have their own types, whose
// UnmarshalTOML errors the decoder reports with the key's position.
type fileConfig struct {
	Policy         policyName                   `toml:"policy"`
	LogLevel       logLevel                     `toml:"log_level"`
	SetPathManager bool                         `toml:"set_path_manager"`
	NetworkManager nmSetting                    `toml:"network_manager"`
	Limits         *fileLimits                  `toml:"limits"`
	Filter         fileFilter                   `toml:"filter"`
	Endpoints      fileEndpoints                `toml:"endpoints"`
	Interfaces     map[string]fileInterfaceConf `toml:"interfaces"`
	Handover       fileHandover                 `toml:"handover"`
	Rules          []fileRule                   `toml:"rules"`

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
	Flags      *flagWords     `toml:"flags"`
	Preference preferenceWord `toml:"preference"`
}

type fileRule struct {
	Name        string      `toml:"name"`
	Port        portNumber  `toml:"port"`
	Destination prefixValue `toml:"destination"`
	Unit        pattern     `toml:"unit"`
	Cgroup      pattern     `toml:"cgroup"`
	Policy      rulePolicy  `toml:"policy"`
}

// portNumber is a TCP port, 1 to 65535.
type portNumber uint16

func (p *portNumber) UnmarshalTOML(v any) error {
	n, ok := v.(int64)
	if !ok || n < 1 || n > 65535 {
		return fmt.Errorf("port must be a number from 1 to 65535, not %v", v)
	}
	*p = portNumber(n)
	return nil
}

// prefixValue is an address prefix ("10.0.0.0/8") or an address.
type prefixValue netip.Prefix

func (p *prefixValue) UnmarshalTOML(v any) error {
	s, ok := v.(string)
	if !ok {
		return fmt.Errorf("destination must be a string, not %T", v)
	}
	if a, err := netip.ParseAddr(s); err == nil && a.Zone() == "" {
		*p = prefixValue(netip.PrefixFrom(a, a.BitLen()))
		return nil
	}
	x, err := netip.ParsePrefix(s)
	if err != nil {
		return fmt.Errorf("destination %q is neither an address nor a prefix", s)
	}
	*p = prefixValue(x.Masked())
	return nil
}

// pattern is a shell pattern (path.Match).
type pattern string

func (p *pattern) UnmarshalTOML(v any) error {
	s, ok := v.(string)
	if !ok {
		return fmt.Errorf("want a pattern string, not %T", v)
	}
	if _, err := path.Match(s, ""); err != nil || s == "" {
		return fmt.Errorf("bad pattern %q", s)
	}
	*p = pattern(s)
	return nil
}

// rulePolicy is a rule's policy: a userspace policy or none.
type rulePolicy string

func (p *rulePolicy) UnmarshalTOML(v any) error {
	s, ok := v.(string)
	if !ok {
		return fmt.Errorf("policy must be a string, not %T", v)
	}
	if err := (service.Rule{Name: "x", Policy: s}).Validate(); err != nil {
		return errors.New(strings.TrimPrefix(err.Error(), "rule x: "))
	}
	*p = rulePolicy(s)
	return nil
}

type fileHandover struct {
	Standby      standbyWord `toml:"standby"`
	StallTimeout *duration   `toml:"stall_timeout"`
	Hysteresis   *duration   `toml:"hysteresis"`
}

// preferenceWord is an interface's preference: cheap, expensive, backup
// or off.
type preferenceWord policy.Preference

func (p *preferenceWord) UnmarshalTOML(v any) error {
	s, ok := v.(string)
	if !ok {
		return fmt.Errorf("preference must be a string, not %T", v)
	}
	pref, err := policy.ParsePreference(s)
	if err != nil || pref == policy.PreferUnset {
		return fmt.Errorf("preference must be cheap, expensive, backup or off, not %q", s)
	}
	*p = preferenceWord(pref)
	return nil
}

// standbyWord is the handover policy's standby: "warm" or "cold".
type standbyWord string

func (w *standbyWord) UnmarshalTOML(v any) error {
	s, ok := v.(string)
	if !ok || s != "warm" && s != "cold" {
		return fmt.Errorf("standby must be \"warm\" or \"cold\", not %v", v)
	}
	*w = standbyWord(s)
	return nil
}

// duration is a Go duration string ("150ms", "3s"), positive.
type duration time.Duration

func (d *duration) UnmarshalTOML(v any) error {
	s, ok := v.(string)
	if !ok {
		return fmt.Errorf("want a duration such as \"500ms\", not %T", v)
	}
	x, err := time.ParseDuration(s)
	if err != nil || x <= 0 {
		return fmt.Errorf("want a positive duration such as \"500ms\", not %q", s)
	}
	*d = duration(x)
	return nil
}

// nmSetting is network_manager: "auto" or "ignore".
type nmSetting string

func (n *nmSetting) UnmarshalTOML(v any) error {
	s, ok := v.(string)
	if !ok {
		return fmt.Errorf("network_manager must be a string, not %T", v)
	}
	if s != service.NetworkManagerAuto && s != service.NetworkManagerIgnore {
		return fmt.Errorf("network_manager must be %q or %q, not %q", service.NetworkManagerAuto, service.NetworkManagerIgnore, s)
	}
	*n = nmSetting(s)
	return nil
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
	if err := pm.CheckEndpointFlags(flags); err != nil {
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

// parse decodes the TOML text data of the file named name.
func parse(name, data string) (service.Config, error) {
	def := service.DefaultConfig()
	fc := fileConfig{
		Policy:         policyName(def.Policy),
		LogLevel:       logLevel(def.LogLevel),
		NetworkManager: nmSetting(def.NetworkManager),
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
		return service.Config{}, decodeError(name, err)
	}
	if err := unknownKeys(name, data, md.Undecoded()); err != nil {
		return service.Config{}, err
	}
	cfg := service.Config{
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
		NetworkManager: string(fc.NetworkManager),
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
			return service.Config{}, fmt.Errorf("%s:%d: limits: set both subflows and add_addr_accepted",
				name, keyLine(data, toml.Key{"limits"}))
		}
		cfg.Limits = &service.Limits{Subflows: *l.Subflows, AddAddrAccepted: *l.AddAddrAccepted}
	}
	for ifname, ic := range fc.Interfaces {
		if cfg.Interfaces == nil {
			cfg.Interfaces = make(map[string]service.InterfaceConfig)
		}
		c := service.InterfaceConfig{Flags: cfg.EndpointFlags, FlagsDefault: true, Preference: policy.Preference(ic.Preference)}
		if ic.Flags != nil {
			c.Flags, c.FlagsDefault = pm.Flags(*ic.Flags), false
		}
		cfg.Interfaces[ifname] = c
	}
	for i, r := range fc.Rules {
		if r.Name == "" || r.Policy == "" {
			return service.Config{}, fmt.Errorf("%s:%d: rules: rule %d needs a name and a policy", name, keyLine(data, toml.Key{"rules"}), i+1)
		}
		if slices.ContainsFunc(fc.Rules[:i], func(o fileRule) bool { return o.Name == r.Name }) {
			return service.Config{}, fmt.Errorf("%s:%d: rules: two rules are named %q", name, keyLine(data, toml.Key{"rules"}), r.Name)
		}
		cfg.Rules = append(cfg.Rules, service.Rule{Name: r.Name, Port: uint16(r.Port), Destination: netip.Prefix(r.Destination),
			Unit: string(r.Unit), Cgroup: string(r.Cgroup), Policy: string(r.Policy)})
	}
	cfg.Handover = def.Handover
	cfg.Handover.Cold = fc.Handover.Standby == "cold"
	if d := fc.Handover.StallTimeout; d != nil {
		cfg.Handover.StallTimeout = time.Duration(*d)
	}
	if d := fc.Handover.Hysteresis; d != nil {
		cfg.Handover.Hysteresis = time.Duration(*d)
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
	// A table on the way may be an array of tables ([[rules]]): try each
	// way (bit i of arrays: key[i] is an array).
	for arrays := 0; arrays < 1<<max(len(key)-1, 0); arrays++ {
		t := reflect.TypeFor[failing]()
		for i := len(key) - 1; i >= 0; i-- {
			if i < len(key)-1 && arrays&(1<<i) != 0 {
				t = reflect.SliceOf(t)
			}
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
	}
	return 0
}

// failing is a TOML value that never decodes.
type failing struct{}

func (failing) UnmarshalTOML(any) error { return errors.New("located") }
