package dist

import (
	"bufio"
	"bytes"
	"encoding/xml"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/mptcp-pmd/mptcp-pmd/dbusapi"
	"github.com/mptcp-pmd/mptcp-pmd/dbusapi/dbustest"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
	"github.com/mptcp-pmd/mptcp-pmd/service"
	"github.com/mptcp-pmd/mptcp-pmd/service/config"
)

// The files under test, relative to this directory.
const (
	unitFile       = "systemd/mptcp-pmd.service"
	busPolicyFile  = "dbus-1/system.d/org.mptcp.PathManager1.conf"
	activationFile = "dbus-1/system-services/org.mptcp.PathManager1.service"
	polkitFile     = "polkit-1/actions/org.mptcp.pathmanager1.policy"
	sysusersFile   = "sysusers.d/mptcp-pmd.conf"
	exampleConfig  = "mptcp-pmd.toml"
	polkitAction   = "org.mptcp.pathmanager1.control"
	serviceUser    = "mptcp-pm"
)

// tmpRoot is a directory the tests share, removed by TestMain.
var tmpRoot string

func TestMain(m *testing.M) {
	code := m.Run()
	if tmpRoot != "" {
		os.RemoveAll(tmpRoot)
	}
	os.Exit(code)
}

// unitFileKeys reads a systemd-style file (the unit, the activation file):
// values by section and key, in order; comments and blank lines skipped.
func unitFileKeys(tb testing.TB, path string) map[string]map[string][]string {
	tb.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	out := map[string]map[string][]string{}
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case line[0] == '[' && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
			out[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				tb.Fatalf("%s:%d: not key=value in a section: %q", path, n, line)
			}
			out[section][k] = append(out[section][k], v)
		}
	}
	return out
}

// one returns the single value of key in section, failing the test if it
// is missing or given more than once.
func one(tb testing.TB, keys map[string]map[string][]string, section, key string) string {
	tb.Helper()
	v := keys[section][key]
	if len(v) != 1 {
		tb.Fatalf("[%s] %s: %d values %q, want one", section, key, len(v), v)
	}
	return v[0]
}

// TestNamesAgree checks that the files name the same user, bus name and
// unit: the unit's User= and Group= are the sysusers.d user, which the bus
// policy lets own the name and polkit lets ask; the activation file names
// the unit's bus name and its alias.
func TestNamesAgree(t *testing.T) {
	unit := unitFileKeys(t, unitFile)
	act := unitFileKeys(t, activationFile)

	sysusers, err := os.ReadFile(sysusersFile)
	if err != nil {
		t.Fatal(err)
	}
	var user string
	for _, line := range strings.Split(string(sysusers), "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[0] == "u" {
			user = f[1]
		}
	}
	if user != serviceUser {
		t.Errorf("sysusers.d creates user %q, want %q", user, serviceUser)
	}
	for _, k := range []string{"User", "Group"} {
		if got := one(t, unit, "Service", k); got != user {
			t.Errorf("unit %s=%s, want the sysusers.d user %s", k, got, user)
		}
	}
	policy, err := os.ReadFile(busPolicyFile)
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`<policy user="` + user + `">\s*<allow own="` + regexp.QuoteMeta(dbusapi.BusName) + `"/>`).Match(policy) {
		t.Errorf("the bus policy does not let %s own %s", user, dbusapi.BusName)
	}
	if got := polkitOwner(t); got != "unix-user:"+user {
		t.Errorf("polkit owner annotation %q, want unix-user:%s", got, user)
	}

	if got := one(t, unit, "Service", "BusName"); got != dbusapi.BusName {
		t.Errorf("unit BusName=%s, want %s", got, dbusapi.BusName)
	}
	if got := one(t, act, "D-BUS Service", "Name"); got != dbusapi.BusName {
		t.Errorf("activation Name=%s, want %s", got, dbusapi.BusName)
	}
	if base := filepath.Base(activationFile); base != dbusapi.BusName+".service" {
		t.Errorf("activation file %s: the system bus wants NAME.service", base)
	}
	svc := one(t, act, "D-BUS Service", "SystemdService")
	if svc != filepath.Base(unitFile) && !slices.Contains(unit["Install"]["Alias"], svc) {
		t.Errorf("activation SystemdService=%s is neither the unit nor one of its aliases %v", svc, unit["Install"]["Alias"])
	}
}

// TestUnitPrivileges checks the unit's least-privilege settings: the static
// user, CAP_NET_ADMIN as the only capability, and no settings that break
// the daemon (DynamicUser= cannot own a bus name; LimitNPROC= breaks Go).
func TestUnitPrivileges(t *testing.T) {
	unit := unitFileKeys(t, unitFile)
	svc := unit["Service"]
	for k, want := range map[string]string{
		"Type":                    "notify",
		"AmbientCapabilities":     "CAP_NET_ADMIN",
		"CapabilityBoundingSet":   "CAP_NET_ADMIN",
		"NoNewPrivileges":         "yes",
		"ProtectSystem":           "strict",
		"ProtectKernelTunables":   "yes",
		"ReadWritePaths":          "-/proc/sys/net/mptcp",
		"RestrictAddressFamilies": "AF_UNIX AF_NETLINK AF_INET AF_INET6",
	} {
		if got := one(t, unit, "Service", k); got != want {
			t.Errorf("%s=%s, want %s", k, got, want)
		}
	}
	for _, k := range []string{"DynamicUser", "LimitNPROC", "PrivateUsers", "PrivateNetwork", "ProcSubset"} {
		if v, ok := svc[k]; ok {
			t.Errorf("%s=%v: must not be set (see the comments in the unit)", k, v)
		}
	}
	if !strings.HasPrefix(one(t, unit, "Service", "ExecStart"), "/usr/bin/mptcp-pmd") {
		t.Errorf("ExecStart=%s, want /usr/bin/mptcp-pmd (make install rewrites it)", svc["ExecStart"])
	}
}

// install runs make install with args into a fresh directory under
// tmpRoot and returns that directory.
func install(tb testing.TB, name string, args ...string) string {
	tb.Helper()
	pmtest.RequireProgram(tb, "make")
	pmtest.RequireProgram(tb, "go")
	if tmpRoot == "" {
		dir, err := os.MkdirTemp("", "mptcp-pmd-dist-")
		if err != nil {
			tb.Fatal(err)
		}
		tmpRoot = dir
	}
	dir := filepath.Join(tmpRoot, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	root := projectRoot(tb)
	run(tb, root, "make", append([]string{"-s", "install", "BIN=" + filepath.Join(dir, "build")}, expand(args, dir)...)...)
	return dir
}

// expand replaces @DIR@ in args.
func expand(args []string, dir string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = strings.ReplaceAll(a, "@DIR@", dir)
	}
	return out
}

func projectRoot(tb testing.TB) string {
	tb.Helper()
	root, err := dbustest.ProjectRoot()
	if err != nil {
		tb.Fatal(err)
	}
	return root
}

func run(tb testing.TB, dir, name string, args ...string) string {
	tb.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		tb.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// installed is make install with PREFIX in a temporary directory, made
// once: the unit's ExecStart then names the installed binary.
var installed struct {
	once   sync.Once
	prefix string
}

func installedPrefix(tb testing.TB) string {
	tb.Helper()
	installed.once.Do(func() {
		installed.prefix = filepath.Join(install(tb, "prefix", "PREFIX=@DIR@/usr"), "usr")
	})
	if installed.prefix == "" {
		tb.Fatal("make install failed in an earlier test")
	}
	return installed.prefix
}

// wantInstalled is where make install puts each file (relative to PREFIX),
// with its source (relative to the project root) and mode.
func wantInstalled(tb testing.TB) map[string]struct {
	src  string
	mode fs.FileMode
} {
	tb.Helper()
	type file = struct {
		src  string
		mode fs.FileMode
	}
	want := map[string]file{
		"bin/mptcp-pmd":                                               {"", 0o755},
		"bin/mptcpctl":                                                {"", 0o755},
		"lib/systemd/system/mptcp-pmd.service":                        {"dist/" + unitFile, 0o644},
		"lib/sysusers.d/mptcp-pmd.conf":                               {"dist/" + sysusersFile, 0o644},
		"share/dbus-1/system.d/org.mptcp.PathManager1.conf":           {"dist/" + busPolicyFile, 0o644},
		"share/dbus-1/system-services/org.mptcp.PathManager1.service": {"dist/" + activationFile, 0o644},
		"share/polkit-1/actions/org.mptcp.pathmanager1.policy":        {"dist/" + polkitFile, 0o644},
		"share/man/man1/mptcpctl.1":                                   {"dist/man/mptcpctl.1", 0o644},
		"share/man/man5/mptcp-pmd.toml.5":                             {"dist/man/mptcp-pmd.toml.5", 0o644},
		"share/man/man8/mptcp-pmd.8":                                  {"dist/man/mptcp-pmd.8", 0o644},
		"share/doc/mptcp-pmd/mptcp-pmd.toml":                          {"dist/" + exampleConfig, 0o644},
		"share/doc/mptcp-pmd/examples/nm-dispatcher.py":               {"dist/examples/nm-dispatcher.py", 0o755},
		"share/bash-completion/completions/mptcpctl":                  {"dist/completion/mptcpctl.bash", 0o644},
	}
	xmls, err := filepath.Glob(filepath.Join(projectRoot(tb), "introspection", "*.xml"))
	if err != nil || len(xmls) == 0 {
		tb.Fatalf("no introspection XML: %v", err)
	}
	for _, x := range xmls {
		want["share/dbus-1/interfaces/"+filepath.Base(x)] = file{"introspection/" + filepath.Base(x), 0o644}
	}
	return want
}

// filesUnder lists the regular files under dir, relative to it.
func filesUnder(tb testing.TB, dir string) map[string]fs.FileMode {
	tb.Helper()
	got := map[string]fs.FileMode{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		got[rel] = info.Mode()
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	return got
}

// TestInstall checks what make install puts where, with which mode and
// content, for PREFIX=/usr with DESTDIR, and that make uninstall removes it
// all; and that with another PREFIX the unit starts the binary installed
// there.
func TestInstall(t *testing.T) {
	root := projectRoot(t)
	want := wantInstalled(t)
	dest := install(t, "destdir", "DESTDIR=@DIR@/root")
	destRoot := filepath.Join(dest, "root")
	got := filesUnder(t, destRoot)
	for rel, w := range want {
		p := filepath.Join("usr", rel)
		mode, ok := got[p]
		if !ok {
			t.Errorf("make install did not install /%s", p)
			continue
		}
		delete(got, p)
		if mode.Perm() != w.mode {
			t.Errorf("/%s: mode %v, want %v", p, mode.Perm(), w.mode)
		}
		if w.src == "" {
			continue
		}
		inst, err := os.ReadFile(filepath.Join(destRoot, p))
		if err != nil {
			t.Fatal(err)
		}
		src, err := os.ReadFile(filepath.Join(root, w.src))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(inst, src) {
			t.Errorf("/%s differs from %s", p, w.src)
		}
	}
	for p := range got {
		t.Errorf("make install put an unexpected file /%s", p)
	}
	out := run(t, root, filepath.Join(destRoot, "usr/bin/mptcp-pmd"), "--version")
	if !strings.HasPrefix(out, "mptcp-pmd ") {
		t.Errorf("installed mptcp-pmd --version: %q", out)
	}

	run(t, root, "make", "-s", "uninstall", "DESTDIR="+destRoot)
	if left := filesUnder(t, destRoot); len(left) != 0 {
		t.Errorf("make uninstall left %v", left)
	}

	prefix := installedPrefix(t)
	unit := unitFileKeys(t, filepath.Join(prefix, "lib/systemd/system/mptcp-pmd.service"))
	if got, want := one(t, unit, "Service", "ExecStart"), filepath.Join(prefix, "bin/mptcp-pmd"); got != want {
		t.Errorf("with PREFIX=%s: ExecStart=%s, want %s", prefix, got, want)
	}
}

// TestUnitVerify runs systemd-analyze verify on the installed unit: its
// ExecStart names the installed binary and its Documentation= the
// installed man pages (MANPATH), so those are checked too.
func TestUnitVerify(t *testing.T) {
	analyze := pmtest.RequireProgram(t, "systemd-analyze")
	pmtest.RequireProgram(t, "man")
	prefix := installedPrefix(t)
	cmd := exec.Command(analyze, "verify", filepath.Join(prefix, "lib/systemd/system/mptcp-pmd.service"))
	cmd.Env = append(os.Environ(), "MANPATH="+filepath.Join(prefix, "share/man"))
	out, err := cmd.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) != 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// maxExposure is the highest systemd-analyze security exposure accepted
// for the unit, in tenths (2.0: "OK").
const maxExposure = 20

// TestUnitSecurity runs systemd-analyze security on the unit file and
// fails above maxExposure.
func TestUnitSecurity(t *testing.T) {
	analyze := pmtest.RequireProgram(t, "systemd-analyze")
	out, err := exec.Command(analyze, "security", "--no-pager", "--offline=yes",
		fmt.Sprintf("--threshold=%d", maxExposure), unitFile).CombinedOutput()
	var overall string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "Overall exposure level") {
			overall = strings.TrimSpace(l)
		}
	}
	if overall == "" {
		t.Fatalf("systemd-analyze security printed no overall exposure (%v):\n%s", err, out)
	}
	t.Log(overall)
	if err != nil {
		t.Errorf("exposure above %d.%d: %v\n%s", maxExposure/10, maxExposure%10, err, out)
	}
}

// TestSysusers creates the user with systemd-sysusers in an empty root.
func TestSysusers(t *testing.T) {
	sysusers := pmtest.RequireProgram(t, "systemd-sysusers")
	root := t.TempDir()
	for _, d := range []string{"etc", "usr/lib/sysusers.d"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	data, err := os.ReadFile(sysusersFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "usr/lib/sysusers.d/mptcp-pmd.conf"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(sysusers, "--root="+root).CombinedOutput(); err != nil {
		t.Fatalf("systemd-sysusers: %v\n%s", err, out)
	}
	passwd, err := os.ReadFile(filepath.Join(root, "etc/passwd"))
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`(?m)^` + serviceUser + `:x:(\d+):(\d+):MPTCP path manager:/:([^\n]*)$`)
	m := re.FindStringSubmatch(string(passwd))
	if m == nil {
		t.Fatalf("no %s system user in /etc/passwd:\n%s", serviceUser, passwd)
	}
	if !strings.HasSuffix(m[3], "nologin") {
		t.Errorf("%s's shell is %s, want nologin", serviceUser, m[3])
	}
	group, err := os.ReadFile(filepath.Join(root, "etc/group"))
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^` + serviceUser + `:x:` + m[2] + `:`).Match(group) {
		t.Errorf("no %s group with GID %s:\n%s", serviceUser, m[2], group)
	}
}

// TestActivationFile loads the activation file into dbus-daemon (with the
// bus policy): the name becomes activatable.
func TestActivationFile(t *testing.T) {
	dir, err := filepath.Abs(filepath.Dir(activationFile))
	if err != nil {
		t.Fatal(err)
	}
	bus := dbustest.StartBus(t, dbustest.ExtraConfig("<servicedir>"+dir+"</servicedir>"))
	var names []string
	if err := bus.Dial(t).BusObject().Call("org.freedesktop.DBus.ListActivatableNames", 0).Store(&names); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(names, dbusapi.BusName) {
		t.Errorf("activatable names %v lack %s; bus log:\n%s", names, dbusapi.BusName, bus.Log())
	}
}

// policyconfig is the polkit action file's form (policyconfig-1.dtd).
type policyconfig struct {
	XMLName xml.Name `xml:"policyconfig"`
	Actions []struct {
		ID          string   `xml:"id,attr"`
		Description []string `xml:"description"`
		Message     []string `xml:"message"`
		Defaults    struct {
			Any      string `xml:"allow_any"`
			Inactive string `xml:"allow_inactive"`
			Active   string `xml:"allow_active"`
		} `xml:"defaults"`
		Annotate []struct {
			Key   string `xml:"key,attr"`
			Value string `xml:",chardata"`
		} `xml:"annotate"`
	} `xml:"action"`
}

func readPolkit(tb testing.TB) policyconfig {
	tb.Helper()
	data, err := os.ReadFile(polkitFile)
	if err != nil {
		tb.Fatal(err)
	}
	if !bytes.Contains(data, []byte(`<!DOCTYPE policyconfig PUBLIC "-//freedesktop//DTD PolicyKit Policy Configuration 1.0//EN"`)) {
		tb.Error("the polkit file lacks the policyconfig DOCTYPE")
	}
	var pc policyconfig
	d := xml.NewDecoder(bytes.NewReader(data))
	d.Strict = true
	if err := d.Decode(&pc); err != nil {
		tb.Fatalf("%s: %v", polkitFile, err)
	}
	return pc
}

func polkitOwner(tb testing.TB) string {
	tb.Helper()
	for _, a := range readPolkit(tb).Actions {
		for _, an := range a.Annotate {
			if an.Key == "org.freedesktop.policykit.owner" {
				return strings.TrimSpace(an.Value)
			}
		}
	}
	return ""
}

// TestPolkitAction checks the action file against policyconfig-1.dtd's
// rules and the documented defaults.
func TestPolkitAction(t *testing.T) {
	pc := readPolkit(t)
	if len(pc.Actions) != 1 || pc.Actions[0].ID != polkitAction {
		t.Fatalf("actions %+v, want one: %s", pc.Actions, polkitAction)
	}
	a := pc.Actions[0]
	if len(a.Description) == 0 || strings.TrimSpace(a.Description[0]) == "" ||
		len(a.Message) == 0 || strings.TrimSpace(a.Message[0]) == "" {
		t.Error("the action needs a description and a message")
	}
	for name, got := range map[string]string{
		"allow_any": a.Defaults.Any, "allow_inactive": a.Defaults.Inactive, "allow_active": a.Defaults.Active,
	} {
		want := map[string]string{"allow_any": "auth_admin", "allow_inactive": "auth_admin", "allow_active": "auth_admin_keep"}[name]
		if strings.TrimSpace(got) != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
}

// settingLine is a commented-out setting in the example configuration:
// "#key = value" or "#[table]" (prose comments start with "# ").
var settingLine = regexp.MustCompile(`^#(\[\[?[a-z_.0-9]+\]\]?|[a-z_]+ = .*)$`)

// uncommented returns the example configuration with its settings
// uncommented.
func uncommented(tb testing.TB) string {
	tb.Helper()
	data, err := os.ReadFile(exampleConfig)
	if err != nil {
		tb.Fatal(err)
	}
	lines := strings.Split(string(data), "\n")
	n := 0
	for i, l := range lines {
		if settingLine.MatchString(l) {
			lines[i] = l[1:]
			n++
		}
	}
	if n == 0 {
		tb.Fatal("the example configuration has no commented-out settings")
	}
	return strings.Join(lines, "\n")
}

// TestExampleConfig parses the example configuration with the daemon's
// parser: as installed (every setting commented out) it is the defaults;
// with its settings uncommented every key is known, every value valid,
// and the values shown are the defaults, but for the tables that have
// none ([limits], [interfaces.NAME]), which hold examples.
func TestExampleConfig(t *testing.T) {
	cfg, err := config.Load(exampleConfig)
	if err != nil {
		t.Fatal(err)
	}
	if !sameConfig(cfg, service.DefaultConfig()) {
		t.Errorf("the example as installed is not the defaults:\n got %+v\nwant %+v", cfg, service.DefaultConfig())
	}

	p := filepath.Join(t.TempDir(), "uncommented.toml")
	if err := os.WriteFile(p, []byte(uncommented(t)), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err = config.Load(p)
	if err != nil {
		t.Fatalf("the example's settings: %v", err)
	}
	if cfg.Limits == nil || len(cfg.Interfaces) == 0 || len(cfg.Rules) == 0 {
		t.Errorf("the example shows no [limits], [interfaces.NAME] or [[rules]]: %+v", cfg)
	}
	cfg.Limits, cfg.Interfaces, cfg.Rules = nil, nil, nil
	if !sameConfig(cfg, service.DefaultConfig()) {
		t.Errorf("the example's values are not the defaults:\n got %+v\nwant %+v", cfg, service.DefaultConfig())
	}
}

// TestExampleConfigComplete checks that the example shows every key the
// parser knows: the toml tags in the service package's source.
func TestExampleConfigComplete(t *testing.T) {
	srcs, err := filepath.Glob(filepath.Join(projectRoot(t), "service", "config", "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	tag := regexp.MustCompile("`toml:\"([a-z_]+)\"`")
	example := uncommented(t)
	var keys int
	for _, src := range srcs {
		if strings.HasSuffix(src, "_test.go") {
			continue
		}
		data, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range tag.FindAllStringSubmatch(string(data), -1) {
			keys++
			k := m[1]
			if !regexp.MustCompile(`(?m)^(` + k + ` = |\[` + k + `[].]|\[\[` + k + `\]\])`).MatchString(example) {
				t.Errorf("%s: the example configuration does not show the key %s", filepath.Base(src), k)
			}
		}
	}
	if keys == 0 {
		t.Fatal("no toml tags found in the service/config package")
	}
}

// sameConfig compares configurations, taking an empty list or map for
// none, as the daemon does.
func sameConfig(a, b service.Config) bool { return fmt.Sprintf("%+v", a) == fmt.Sprintf("%+v", b) }

// manText returns a man page's text with roff's escapes for '-' and the
// font changes removed, and its lines.
func manText(tb testing.TB, name string) (string, []string) {
	tb.Helper()
	data, err := os.ReadFile(filepath.Join("man", name))
	if err != nil {
		tb.Fatal(err)
	}
	s := regexp.MustCompile(`\\f[BIRP]`).ReplaceAllString(string(data), "")
	s = strings.ReplaceAll(s, `\-`, "-")
	return s, strings.Split(s, "\n")
}

// TestManPages checks the man pages with groff's warnings, and that they
// document what exists: every key of the example configuration, every
// option of mptcp-pmd, every command of mptcpctl.
func TestManPages(t *testing.T) {
	groff := pmtest.RequireProgram(t, "groff")
	pages, err := filepath.Glob("man/*.[0-9]")
	if err != nil || len(pages) != 3 {
		t.Fatalf("man pages %v, %v", pages, err)
	}
	for _, p := range pages {
		cmd := exec.Command(groff, "-man", "-ww", "-z", "-Tutf8", p)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil || stderr.Len() > 0 {
			t.Errorf("groff %s: %v\n%s", p, err, stderr.String())
		}
	}

	// mptcp-pmd.toml(5): every table and key of the example.
	text, _ := manText(t, "mptcp-pmd.toml.5")
	for _, l := range strings.Split(uncommented(t), "\n") {
		if l == "" || l[0] == '#' {
			continue
		}
		key, _, _ := strings.Cut(l, " = ")
		if strings.HasPrefix(key, "[interfaces.") {
			key = "[interfaces.NAME]"
		}
		if !strings.Contains(text, key) {
			t.Errorf("mptcp-pmd.toml.5 does not document %s", key)
		}
	}

	prefix := installedPrefix(t)
	// mptcp-pmd(8): every option --help lists.
	text, _ = manText(t, "mptcp-pmd.8")
	help, _ := exec.Command(filepath.Join(prefix, "bin/mptcp-pmd"), "--help").CombinedOutput()
	opts := regexp.MustCompile(`(?m)^  -([a-z-]+)`).FindAllStringSubmatch(string(help), -1)
	if len(opts) == 0 {
		t.Fatalf("mptcp-pmd --help lists no options:\n%s", help)
	}
	for _, o := range opts {
		if !strings.Contains(text, "--"+o[1]) {
			t.Errorf("mptcp-pmd.8 does not document --%s", o[1])
		}
	}

	// mptcpctl(1): every command mptcpctl help lists, as a tagged
	// paragraph that starts with its name.
	_, lines := manText(t, "mptcpctl.1")
	var tags []string
	for _, l := range lines {
		for _, m := range []string{".B ", ".BI ", ".BR "} {
			if strings.HasPrefix(l, m) {
				tags = append(tags, strings.ReplaceAll(strings.TrimPrefix(l, m), `"`, ""))
			}
		}
	}
	help, _ = exec.Command(filepath.Join(prefix, "bin/mptcpctl"), "help").CombinedOutput()
	cmds := ctlCommands(string(help))
	if len(cmds) == 0 {
		t.Fatalf("mptcpctl help lists no commands:\n%s", help)
	}
	for _, c := range cmds {
		if !slices.ContainsFunc(tags, func(tag string) bool { return tag == c || strings.HasPrefix(tag, c+" ") }) {
			t.Errorf("mptcpctl.1 does not document the command %q", c)
		}
	}
}

// ctlCommands returns the command names of mptcpctl help's list: the
// lower-case words that start each entry.
func ctlCommands(help string) []string {
	var out []string
	in := false
	for _, l := range strings.Split(help, "\n") {
		switch {
		case l == "Commands:":
			in = true
		case in && l == "":
			return out
		case in && strings.HasPrefix(l, "  ") && !strings.HasPrefix(l, "   "):
			var words []string
			for _, w := range strings.Fields(strings.SplitN(strings.TrimSpace(l), "  ", 2)[0]) {
				if strings.ToLower(w) != w || strings.ContainsAny(w, "[]-") {
					break
				}
				words = append(words, w)
			}
			if len(words) > 0 {
				out = append(out, strings.Join(words, " "))
			}
		}
	}
	return out
}
