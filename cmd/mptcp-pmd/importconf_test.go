package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/service"
	"github.com/mptcp-pmd/mptcp-pmd/service/config"
)

// loadTOML checks that the TOML is a valid mptcp-pmd configuration and
// returns it as the daemon would load it.
func loadTOML(t *testing.T, toml string) service.Config {
	t.Helper()
	p := filepath.Join(t.TempDir(), "mptcp-pmd.toml")
	if err := os.WriteFile(p, []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(p)
	if err != nil {
		t.Fatalf("the imported configuration does not load: %v\n%s", err, toml)
	}
	return cfg
}

func importFile(t *testing.T, path string) (toml, warnings string) {
	t.Helper()
	var out, warn bytes.Buffer
	if err := importMptcpdConf(path, &out, &warn); err != nil {
		t.Fatal(err)
	}
	return out.String(), warn.String()
}

// wantLines checks that text has a line containing each of the strings.
func wantLines(t *testing.T, what, text string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(text, w) {
			t.Errorf("%s lacks %q:\n%s", what, w, text)
		}
	}
}

func TestImportDebianConf(t *testing.T) {
	toml, warn := importFile(t, "testdata/mptcpd-debian.conf")
	cfg := loadTOML(t, toml)
	want := service.DefaultConfig()
	want.Policy = service.PolicyEndpoints
	if cfg.Policy != want.Policy || cfg.EndpointFlags != want.EndpointFlags ||
		cfg.Filter.SkipLoopback != want.Filter.SkipLoopback || cfg.Filter.SkipLinkLocal != want.Filter.SkipLinkLocal ||
		cfg.Filter.RequireDefaultRoute != want.Filter.RequireDefaultRoute {
		t.Errorf("imported %+v, want the defaults with policy endpoints %+v", cfg, want)
	}
	// log and plugin-dir have no equivalent: named on stderr, with the line,
	// and in the TOML.
	wantLines(t, "stderr", warn,
		"testdata/mptcpd-debian.conf:5: log=journal has no equivalent",
		"testdata/mptcpd-debian.conf:8: plugin-dir=/usr/lib/x86_64-linux-gnu/mptcpd has no equivalent")
	wantLines(t, "TOML", toml, "# log=journal: ", "# plugin-dir=/usr/lib/x86_64-linux-gnu/mptcpd: ", "# from path-manager=addr_adv")
	// Without notify-flags, mptcpd filtered nothing: the difference is named.
	wantLines(t, "stderr", warn, "testdata/mptcpd-debian.conf: notify-flags=(not set) has no equivalent")
	wantLines(t, "TOML", toml, "# notify-flags=(not set): ")
	if n := strings.Count(warn, "\n"); n != 3 {
		t.Errorf("%d warnings, want 3:\n%s", n, warn)
	}
}

func TestImportEveryOption(t *testing.T) {
	toml, warn := importFile(t, "testdata/mptcpd-all.conf")
	cfg := loadTOML(t, toml)
	if cfg.Policy != service.PolicySubflowPerInterface {
		t.Errorf("policy %q, want %q", cfg.Policy, service.PolicySubflowPerInterface)
	}
	if want := pm.FlagSubflow | pm.FlagSignal | pm.FlagBackup | pm.FlagLaminar; cfg.EndpointFlags != want {
		t.Errorf("endpoint flags %v, want %v", cfg.EndpointFlags, want)
	}
	f := cfg.Filter
	if !f.SkipLoopback || !f.SkipLinkLocal || !f.RequireDefaultRoute {
		t.Errorf("filter %+v, want loopback and link-local skipped and a default route required", f)
	}
	wantLines(t, "stderr", warn, "log=stderr has no equivalent", "plugin-dir=/usr/local/lib/mptcpd has no equivalent")
	wantLines(t, "TOML", toml, "net.mptcp.path_manager=userspace", "# from load-plugins=sspi,addr_adv")
	if n := strings.Count(warn, "\n"); n != 2 {
		t.Errorf("%d warnings, want 2:\n%s", n, warn)
	}
}

func TestImportMappings(t *testing.T) {
	for _, tc := range []struct {
		name, conf string
		check      func(*testing.T, service.Config)
		warn       []string // each must be on stderr
	}{
		{
			name: "notify flags absent from the list are off, as in mptcpd",
			conf: "[core]\nnotify-flags=skip_loopback\n",
			check: func(t *testing.T, c service.Config) {
				if !c.Filter.SkipLoopback || c.Filter.SkipLinkLocal || c.Filter.RequireDefaultRoute {
					t.Errorf("filter %+v, want only loopback skipped", c.Filter)
				}
			},
			warn: []string{"notify-flags=(without existing) has no equivalent"},
		},
		{
			name: "without path-manager, the first known loaded plugin",
			conf: "[core]\nload-plugins=foo,addr_adv,sspi\n",
			check: func(t *testing.T, c service.Config) {
				if c.Policy != service.PolicyEndpoints {
					t.Errorf("policy %q, want endpoints", c.Policy)
				}
			},
			warn: []string{"load-plugins=foo has no equivalent", "addr_adv was chosen"},
		},
		{
			name: "an unknown plugin leaves the default policy",
			conf: "[core]\npath-manager=my_plugin\n",
			check: func(t *testing.T, c service.Config) {
				if c.Policy != service.DefaultConfig().Policy {
					t.Errorf("policy %q, want the default", c.Policy)
				}
			},
			warn: []string{":2: path-manager=my_plugin has no equivalent"},
		},
		{
			name: "unknown flag words and keys are named, the rest kept",
			conf: "[core]\naddr-flags=fullmesh,bogus\nnotify-flags=existing,weird\nfoo=bar\n",
			check: func(t *testing.T, c service.Config) {
				if c.EndpointFlags != pm.FlagFullmesh {
					t.Errorf("flags %v, want fullmesh", c.EndpointFlags)
				}
			},
			warn: []string{"addr-flags=bogus has no equivalent", "notify-flags=weird has no equivalent", ":4: foo=bar has no equivalent"},
		},
		{
			name: "empty addr-flags give no flags; other groups are ignored",
			conf: "# x\n[core]\naddr-flags=\n[other]\nlog=null\n",
			check: func(t *testing.T, c service.Config) {
				if c.EndpointFlags != 0 {
					t.Errorf("flags %v, want none", c.EndpointFlags)
				}
			},
			warn: []string{":4: group [other] is not read by mptcpd"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			core, notes, err := parseMptcpdConf("test.conf", strings.NewReader(tc.conf))
			if err != nil {
				t.Fatal(err)
			}
			toml, lost := translateMptcpdConf("test.conf", core)
			tc.check(t, loadTOML(t, toml))
			wantLines(t, "warnings", strings.Join(append(notes, lost...), "\n"), tc.warn...)
		})
	}
}

func TestImportMalformed(t *testing.T) {
	for conf, want := range map[string]string{
		"log=journal\n":           "test.conf:1: key \"log\" before the [core] group",
		"[core]\njust words\n":    "test.conf:2: want key=value",
		"[core]\n=value\n":        "test.conf:2: want key=value",
		"[core\nlog=journal\n":    "test.conf:1: malformed group header",
		"# c\n[]\nlog=journal\n":  "test.conf:2: malformed group header",
		"[core]\n\n\n  \t\nlog\n": "test.conf:5: want key=value",
	} {
		_, _, err := parseMptcpdConf("test.conf", strings.NewReader(conf))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want %q", conf, err, want)
		}
	}
}

func TestImportMissingFile(t *testing.T) {
	err := importMptcpdConf(filepath.Join(t.TempDir(), "nope.conf"), &bytes.Buffer{}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "nope.conf") {
		t.Errorf("error %v, want one naming the file", err)
	}
}

func TestImportFlag(t *testing.T) {
	o, err := parseFlags([]string{"--import-mptcpd-conf", "/etc/mptcpd/mptcpd.conf"}, &bytes.Buffer{})
	if err != nil || o.importConf != "/etc/mptcpd/mptcpd.conf" {
		t.Errorf("parseFlags = %+v, %v", o, err)
	}
}
