package config

import (
	"errors"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/policy"
	"github.com/mptcp-pmd/mptcp-pmd/service"
)

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "mptcp-pmd.toml")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadEmptyIsDefault(t *testing.T) {
	cfg, err := Load(writeConfig(t, "# nothing\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(cfg, service.DefaultConfig()) {
		t.Errorf("empty file:\n got %+v\nwant %+v", cfg, service.DefaultConfig())
	}
}

func TestLoadFull(t *testing.T) {
	cfg, err := Load(writeConfig(t, `
policy = "subflow-per-interface"
log_level = "debug"
set_path_manager = true
network_manager = "ignore"

[limits]
subflows = 4
add_addr_accepted = 2

[filter]
skip_loopback = false
skip_link_local = false
skip_tentative = false
require_default_route = true
interfaces_allow = ["eth*", "wlan0"]
interfaces_deny = []

[endpoints]
flags = ["subflow", "signal"]
remove_on_exit = false

[interfaces.wwan0]
flags = ["subflow", "backup"]

[interfaces.eth1]
`))
	if err != nil {
		t.Fatal(err)
	}
	want := service.Config{
		Policy:   service.PolicySubflowPerInterface,
		LogLevel: slog.LevelDebug,
		Limits:   &service.Limits{Subflows: 4, AddAddrAccepted: 2},
		Filter: policy.FilterConfig{
			RequireDefaultRoute: true,
			Allow:               []string{"eth*", "wlan0"},
			Deny:                []string{},
		},
		EndpointFlags:  pm.FlagSubflow | pm.FlagSignal,
		SetPathManager: true,
		NetworkManager: service.NetworkManagerIgnore,
		Handover:       service.HandoverConfig{StallTimeout: 200 * time.Millisecond, Hysteresis: 5 * time.Second},
		Interfaces: map[string]service.InterfaceConfig{
			"wwan0": {Flags: pm.FlagSubflow | pm.FlagBackup},
			"eth1":  {Flags: pm.FlagSubflow | pm.FlagSignal, FlagsDefault: true}, // the [endpoints] flags
		},
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("config:\n got %+v\nwant %+v", cfg, want)
	}
}

func TestLoadErrors(t *testing.T) {
	tests := []struct {
		name string
		text string
		want string // after "FILE:"
	}{
		{"unknown top-level key", "policy = \"none\"\npolicyy = \"none\"\n", `2: unknown key policyy`},
		{"unknown key in a table", "[filter]\nskip_loopback = true\nskip_lo = true\n", `3: unknown key filter.skip_lo`},
		{"unknown table, reported once", "\n[filters]\nskip_loopback = true\nx = 1\n", `2: unknown key filters`},
		{"unknown key in an interface", "[interfaces.wwan0]\nflags = []\nmetric = 3\n", `3: unknown key interfaces.wwan0.metric`},
		{"dotted unknown key", "filter.skip_all = true\n", `1: unknown key filter.skip_all`},
		{"unknown policy", "\n\npolicy = \"mesh\"\n", `3: policy: unknown policy "mesh"`},
		{"policy of the wrong type", "policy = 3\n", `1: policy: policy must be a string`},
		{"unknown network_manager", "\nnetwork_manager = \"off\"\n", `2: network_manager: network_manager must be "auto" or "ignore", not "off"`},
		{"unknown log level", "log_level = \"loud\"\n", `1: log_level: unknown log level "loud"`},
		{"unknown endpoint flag", "[endpoints]\nflags = [\"subflow\", \"bakup\"]\n", `2: endpoints.flags: unknown flag "bakup"`},
		{"unknown interface flag", "[interfaces.eth0]\n\nflags = [\"fulmesh\"]\n", `3: interfaces.eth0.flags: unknown flag "fulmesh"`},
		{"flags not strings", "[endpoints]\nflags = [1]\n", `2: endpoints.flags: want an array of strings`},
		{"signal and fullmesh", "[endpoints]\nflags = [\"signal\", \"fullmesh\"]\n", `2: endpoints.flags: signal and fullmesh together`},
		{"signal and fullmesh on an interface", "[interfaces.eth0]\n\nflags = [\"fullmesh\", \"signal\"]\n", `3: interfaces.eth0.flags: signal and fullmesh together`},
		{"implicit", "[endpoints]\nflags = [\"implicit\"]\n", `2: endpoints.flags: implicit is set by the kernel only`},
		{"remove_on_exit not a bool", "[endpoints]\nremove_on_exit = 1\n", `2: endpoints.remove_on_exit: incompatible types`},
		{"bad pattern", "[filter]\ninterfaces_deny = [\"eth[\"]\n", `2: filter.interfaces_deny: bad interface pattern "eth["`},
		{"wrong type", "[limits]\nsubflows = \"four\"\nadd_addr_accepted = 1\n", `2: limits.subflows: incompatible types`},
		{"bool of the wrong type", "[filter]\nskip_loopback = \"yes\"\n", `2: filter.skip_loopback: incompatible types`},
		{"half the limits", "policy = \"none\"\n[limits]\nsubflows = 4\n", `2: limits: set both`},
		{"syntax error", "policy = \"none\"\nlog_level = = \"info\"\n", `2: `},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := writeConfig(t, tt.text)
			_, err := Load(p)
			if err == nil {
				t.Fatal("no error")
			}
			if want := p + ":" + tt.want; !strings.HasPrefix(err.Error(), want) {
				t.Errorf("error\n  %s\nwant it to start with\n  %s", err, want)
			}
		})
	}
}

func TestLoadReportsEveryUnknownKey(t *testing.T) {
	p := writeConfig(t, "a = 1\n[filter]\nb = 2\n")
	_, err := Load(p)
	if err == nil {
		t.Fatal("no error")
	}
	want := p + ":1: unknown key a\n" + p + ":3: unknown key filter.b"
	if err.Error() != want {
		t.Errorf("error\n%s\nwant\n%s", err, want)
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "none.toml"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("error %v, want a not-exist error", err)
	}
}

func TestLoadRules(t *testing.T) {
	cfg, err := Load(writeConfig(t, `
policy = "subflow-per-interface"

[[rules]]
name = "ssh"
port = 22
policy = "none"

[[rules]]
name = "backups"
unit = "backup*.service"
destination = "10.9.0.0/16"
policy = "fullmesh"

[[rules]]
name = "one-host"
destination = "fd00::7"
cgroup = "/user.slice/*"
policy = "handover"
`))
	if err != nil {
		t.Fatal(err)
	}
	want := []service.Rule{
		{Name: "ssh", Port: 22, Policy: "none"},
		{Name: "backups", Unit: "backup*.service", Destination: netip.MustParsePrefix("10.9.0.0/16"), Policy: "fullmesh"},
		{Name: "one-host", Destination: netip.MustParsePrefix("fd00::7/128"), Cgroup: "/user.slice/*", Policy: "handover"},
	}
	if !reflect.DeepEqual(cfg.Rules, want) {
		t.Errorf("rules %+v\nwant %+v", cfg.Rules, want)
	}
	for _, tc := range []struct{ text, want string }{
		{"[[rules]]\nname = \"a\"\nport = 70000\npolicy = \"none\"\n", `3: rules.port: port must be a number from 1 to 65535`},
		{"[[rules]]\nname = \"a\"\npolicy = \"endpoints\"\n", `3: rules.policy: policy endpoints works for all connections at once`},
		{"[[rules]]\nname = \"a\"\ndestination = \"10.0.0.0/33\"\npolicy = \"none\"\n", `3: rules.destination: destination "10.0.0.0/33" is neither`},
		{"[[rules]]\nname = \"a\"\nunit = \"x[\"\npolicy = \"none\"\n", `3: rules.unit: bad pattern "x["`},
		{"\n[[rules]]\nport = 22\n", `2: rules: rule 1 needs a name and a policy`},
		{"[[rules]]\nname = \"a\"\npolicy = \"none\"\n[[rules]]\nname = \"a\"\npolicy = \"none\"\n", `4: rules: two rules are named "a"`},
		{"[[rules]]\nname = \"a\"\npolicy = \"none\"\nprogram = \"x\"\n", `4: unknown key rules.program`},
	} {
		p := writeConfig(t, tc.text)
		_, err := Load(p)
		if err == nil || !strings.HasPrefix(err.Error(), p+":"+tc.want) {
			t.Errorf("%q: %v\nwant it to start with %s:%s", tc.text, err, p, tc.want)
		}
	}
}
