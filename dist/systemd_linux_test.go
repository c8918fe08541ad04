package dist

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mptcp-pmd/mptcp-pmd/dist/sdtest"
	"github.com/mptcp-pmd/mptcp-pmd/pm/diag"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
)

// The systemd lane: the project installed by make install into a container
// that boots a real systemd (package sdtest), then the unit run as the
// README's install section says, and checked the way an administrator
// would: systemctl, busctl, journalctl, mptcpctl, polkit, and the kernel.
// The steps share one container and run in order; a failed step ends the
// lane, since the later ones build on it.

const (
	unitName = "mptcp-pmd.service"
	busName  = "org.mptcp.PathManager1"
	objPath  = "/org/mptcp/PathManager1"
	confPath = "/etc/mptcp-pmd/mptcp-pmd.toml"
	// maxLiveExposure is the highest "systemd-analyze security" exposure
	// accepted for the running unit, in tenths.
	maxLiveExposure = 17
	// clone3 is the one system call the unit's filter may deny: systemd
	// answers it with ENOSYS on purpose under RestrictNamespaces=, so that
	// glibc falls back to clone.
	sysClone3 = 435
)

// lane is the state the steps share.
type lane struct {
	top      *testing.T // the lane's test: what outlives a step is cleaned up with it
	c        *sdtest.Container
	cli, srv *pmtest.Host // the container's network namespace and a peer namespace of the test's
	srvAddrs []netip.Addr // the server's address on each path
	cliAddrs []netip.Addr // the client's address on each path
	uid      string       // mptcp-pm's uid in the container
	kmsgSeq  uint64       // the last kernel log record before the boot
	restarts int          // restarts systemd made so far (NRestarts)
	conns    []net.Conn   // live MPTCP connections from the container
}

func TestSystemd(t *testing.T) {
	sdtest.Require(t)
	pmtest.RequireMPTCP(t)
	for _, p := range []string{"setpriv", "busctl", "journalctl"} {
		pmtest.RequireProgram(t, p)
	}
	seq, err := lastKmsgSeq()
	if err != nil {
		pmtest.Unavailable(t, "cannot read the kernel log (/dev/kmsg): %v", err)
	}
	start := time.Now()
	c := sdtest.Boot(t, sdtest.Options{
		Project: projectRoot(t),
		// An empty configuration: the defaults.
		Files: map[string]string{confPath: "# the systemd lane's configuration\n"},
		// PID 1 has the kernel log each system call a unit's filter
		// denies (audit type 1326).
		Env: []string{"SYSTEMD_LOG_SECCOMP=1"},
	})
	t.Logf("make install and boot: %v (boot %v)", time.Since(start).Round(time.Millisecond), c.BootTime.Round(time.Millisecond))
	l := &lane{top: t, c: c, kmsgSeq: seq}
	steps := []struct {
		name string
		fn   func(*lane, *testing.T)
	}{
		{"README-install", (*lane).readmeInstall},
		{"ready", (*lane).ready},
		{"bus-name", (*lane).busName},
		{"sandbox", (*lane).sandbox},
		{"connections", (*lane).connections},
		{"kill-9", (*lane).kill9},
		{"reload", (*lane).reload},
		{"reload-invalid", (*lane).reloadInvalid},
		{"watchdog", (*lane).watchdog},
		{"activation", (*lane).activation},
		{"polkit", (*lane).polkit},
		{"seccomp", (*lane).seccomp},
		{"stop", (*lane).stop},
	}
	for _, s := range steps {
		t0 := time.Now()
		ok := t.Run(s.name, func(t *testing.T) { s.fn(l, t) })
		t.Logf("%-15s %-4s %v", s.name, map[bool]string{true: "ok", false: "FAIL"}[ok], time.Since(t0).Round(time.Millisecond))
		if !ok {
			t.Logf("journal of the unit:\n%s", tail(l.c.Run(t, "journalctl -u "+unitName+" --no-pager -o short-monotonic"), 40))
			break
		}
	}
	for _, cn := range l.conns {
		cn.Close()
	}
}

// readmeInstall runs the commands of the README's install section inside
// the container, but make (the files are installed already, as a package
// would have them), without sudo.
func (l *lane) readmeInstall(t *testing.T) {
	cmds := readmeInstallCommands(t)
	if len(cmds) == 0 {
		t.Fatal("README.md: no commands under \"## Install and run\"")
	}
	for _, cmd := range cmds {
		t.Logf("# %s", cmd)
		l.c.Run(t, cmd)
	}
	if st := l.prop(t, "ActiveState"); st != "active" {
		t.Errorf("after the README's commands the unit is %s", st)
	}
	if en := strings.TrimSpace(l.exec(t, "systemctl is-enabled "+unitName)); en != "enabled" {
		t.Errorf("is-enabled: %s", en)
	}
	l.uid = strings.TrimSpace(l.c.Run(t, "id -u mptcp-pm"))
}

// readmeInstallCommands returns the shell lines of the first sh block after
// "## Install and run" in README.md, without sudo and comments, and
// without the make lines.
func readmeInstallCommands(t *testing.T) []string {
	b, err := os.ReadFile(projectRoot(t) + "/README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "\n## Install and run\n")
	if !ok {
		return nil
	}
	_, rest, ok = strings.Cut(rest, "```sh\n")
	if !ok {
		return nil
	}
	block, _, _ := strings.Cut(rest, "```")
	var cmds []string
	for _, line := range strings.Split(block, "\n") {
		line, _, _ = strings.Cut(line, "#")
		line = strings.TrimSpace(strings.ReplaceAll(line, "sudo ", ""))
		if line == "" || strings.HasPrefix(line, "make ") || line == "make" {
			continue
		}
		cmds = append(cmds, line)
	}
	return cmds
}

// ready: Type=notify READY, the STATUS= line, and how long the start took.
func (l *lane) ready(t *testing.T) {
	if got, want := l.prop(t, "StatusText"), "Watching 0 connections, policy endpoints, control builtin"; got != want {
		t.Errorf("STATUS=%q, want %q", got, want)
	}
	if got := l.prop(t, "Type"); got != "notify" {
		t.Errorf("Type=%s", got)
	}
	start := l.propInt(t, "ExecMainStartTimestampMonotonic")
	active := l.propInt(t, "ActiveEnterTimestampMonotonic")
	t.Logf("start to READY: %v", time.Duration(active-start)*time.Microsecond)
	// The daemon's own record of its start, with its fields.
	recs := l.journal(t, "-u "+unitName, "mptcp-pmd running")
	if len(recs) == 0 {
		t.Fatal("no \"mptcp-pmd running\" record in the journal")
	}
	r := recs[len(recs)-1]
	if r["_UID"] != l.uid || r["POLICY"] != "endpoints" || r["BUS_NAME"] != busName || r["PRIORITY"] != "6" ||
		r["SYSLOG_IDENTIFIER"] != "mptcp-pmd" || r["VERSION"] == "" || r["CODE_FUNC"] == "" {
		t.Errorf("start record: %v", r)
	}
}

// busName: the name is owned by the main process, as mptcp-pm.
func (l *lane) busName(t *testing.T) {
	out := l.c.Run(t, "busctl --no-pager status "+busName)
	fields := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			fields[k] = v
		}
	}
	if fields["PID"] != l.prop(t, "MainPID") || fields["UID"] != l.uid || fields["EUID"] != l.uid {
		t.Errorf("owner of %s: PID=%s UID=%s EUID=%s; main PID %s, mptcp-pm is %s",
			busName, fields["PID"], fields["UID"], fields["EUID"], l.prop(t, "MainPID"), l.uid)
	}
	if out := l.c.Run(t, "busctl --no-pager introspect "+busName+" "+objPath); !strings.Contains(out, "org.mptcp.PathManager1.Manager") {
		t.Errorf("introspect %s: no Manager interface:\n%s", objPath, out)
	}
}

// sandbox: credentials of the main process, what it can write, and the
// exposure systemd-analyze gives the running unit.
func (l *lane) sandbox(t *testing.T) {
	pid := l.prop(t, "MainPID")
	st := statusFields(l.c.Run(t, "cat /proc/"+pid+"/status"))
	const netAdmin = "0000000000001000"
	want := map[string]string{
		"Uid": strings.Repeat(l.uid+" ", 4), "Gid": strings.Repeat(l.uid+" ", 4),
		"CapInh": netAdmin, "CapPrm": netAdmin, "CapEff": netAdmin, "CapBnd": netAdmin, "CapAmb": netAdmin,
		"NoNewPrivs": "1", "Seccomp": "2",
	}
	for k, v := range want {
		if got := strings.Join(strings.Fields(st[k]), " "); got != strings.TrimSpace(v) {
			t.Errorf("%s: %s, want %s", k, got, strings.TrimSpace(v))
		}
	}
	// Writes as root in the daemon's mount namespace: only a read-only
	// mount stops them, whatever the file modes say.
	for _, w := range []struct {
		path     string
		writable bool
	}{
		{"/etc/mptcp-pmd/mptcp-pmd.toml", false},
		{"/etc/mptcp-pmd/new-file", false},
		{"/etc/hostname", false},
		{"/usr/bin/new-file", false},
		{"/var/lib/new-file", false},
		{"/proc/sys/net/ipv4/ip_forward", false},
		{"/proc/sys/net/mptcp/enabled", true},
		{"/run/mptcp-pmd/new-file", true},
	} {
		// Append nothing: creates a missing file, changes no content.
		out, err := l.c.Exec(fmt.Sprintf("nsenter -t %s -m sh -c ': >>%s' 2>&1; r=$?; rm -f /run/mptcp-pmd/new-file; exit $r", pid, w.path))
		switch {
		case w.writable && err != nil:
			t.Errorf("%s: not writable for the daemon: %s", w.path, out)
		case !w.writable && err == nil:
			t.Errorf("%s: writable for the daemon", w.path)
		case !w.writable && !strings.Contains(out, "Read-only file system"):
			t.Errorf("%s: not a read-only mount: %s", w.path, out)
		}
	}
	out := l.c.Run(t, "systemd-analyze security --no-pager "+unitName+" | tail -1")
	i := strings.Index(out, ": ")
	exp, err := strconv.ParseFloat(strings.Fields(out[i+2:])[0], 64)
	if i < 0 || err != nil {
		t.Fatalf("systemd-analyze security: %q", out)
	}
	t.Logf("exposure: %s", strings.TrimSpace(out))
	if int(exp*10+0.5) > maxLiveExposure {
		t.Errorf("exposure %.1f, above %d.%d", exp, maxLiveExposure/10, maxLiveExposure%10)
	}
}

// connections: two veth paths from the container to a namespace of the
// test's; the daemon's default policy makes an endpoint per address, and
// the kernel a second subflow per connection; the daemon's objects are
// the kernel's connections.
func (l *lane) connections(t *testing.T) {
	l.cli = pmtest.AttachNamespace(l.top, l.c.Leader())
	l.srv = pmtest.NewNamespace(l.top)
	for i := 0; i < 2; i++ {
		c, s := fmt.Sprintf("sd%d", i), fmt.Sprintf("sd%dp", i)
		ca, sa := netip.AddrFrom4([4]byte{10, 77, byte(i), 1}), netip.AddrFrom4([4]byte{10, 77, byte(i), 2})
		l.cli.Run(t, "ip", "link", "add", c, "type", "veth", "peer", "name", s, "netns", l.srv.Name)
		l.cli.Run(t, "ip", "addr", "add", ca.String()+"/24", "dev", c)
		l.srv.Run(t, "ip", "addr", "add", sa.String()+"/24", "dev", s)
		l.srv.Run(t, "sysctl", "-qw", "net.ipv4.conf."+s+".rp_filter=0")
		l.cli.Run(t, "ip", "link", "set", c, "up")
		l.srv.Run(t, "ip", "link", "set", s, "up")
		l.cliAddrs, l.srvAddrs = append(l.cliAddrs, ca), append(l.srvAddrs, sa)
		l.cli.Run(t, "ip", "rule", "add", "from", ca.String(), "table", fmt.Sprint(100+i))
		l.route(t, i)
	}
	l.srv.Run(t, "ip", "mptcp", "limits", "set", "subflows", "8", "add_addr_accepted", "8")
	// The policy's endpoints: one per client address, "subflow".
	l.eventually(t, 10*time.Second, "an endpoint per address", func() string {
		eps := l.endpoints(t)
		if len(eps) != 2 || !slices.ContainsFunc(eps, func(e endpointJSON) bool { return e.Address == l.cliAddrs[1].String() }) {
			return fmt.Sprint(eps)
		}
		return ""
	})
	if !slices.ContainsFunc(l.journal(t, "-u "+unitName+" INTERFACE=sd1", "policy: endpoint added"), func(r map[string]string) bool {
		return r["ADDR"] == l.cliAddrs[1].String() && r["WHY"] == "usable address on sd1" && r["PRIORITY"] == "6"
	}) {
		t.Errorf("no info record of the endpoint added for sd1, with its reason")
	}
	srv := l.srv.Listen(l.top, netip.AddrPortFrom(l.srvAddrs[0], 0))
	for i := 0; i < 3; i++ {
		cn := l.cli.Dial(l.top, l.cliAddrs[0], srv.Addr)
		if _, err := cn.Write([]byte("hello")); err != nil {
			t.Fatal(err)
		}
		l.conns = append(l.conns, cn)
	}
	l.eventually(t, 10*time.Second, "two subflows on each connection", func() string {
		snap := l.snapshot(t)
		for _, c := range snap.Conns {
			if len(c.Subflows) != 2 {
				return fmt.Sprintf("%08x has %d subflows", c.Token, len(c.Subflows))
			}
		}
		return ""
	})
	l.sameAsKernel(t)
}

// route makes a subflow from the client's address on path i leave through
// path i whatever its destination.
func (l *lane) route(t *testing.T, i int) {
	l.cli.Run(t, "ip", "route", "replace", "10.77.0.0/16", "via", l.srvAddrs[i].String(), "dev", fmt.Sprintf("sd%d", i),
		"onlink", "table", fmt.Sprint(100+i))
}

// kill9: Restart=on-failure brings the daemon back, which finds the
// connections and its endpoints again; and, killed again, it removes the
// endpoint of an address that went while it was down.
func (l *lane) kill9(t *testing.T) {
	before := l.endpoints(t)
	pid := l.prop(t, "MainPID")
	l.c.Run(t, "kill -9 "+pid)
	l.waitRestart(t, pid, 15*time.Second)
	if r := l.prop(t, "Result"); r != "success" {
		t.Errorf("Result=%s after the restart", r)
	}
	after := l.endpoints(t)
	if fmt.Sprint(before) != fmt.Sprint(after) {
		t.Errorf("endpoints before kill -9: %v\nafter the restart: %v", before, after)
	}
	for _, e := range after {
		if e.Origin != "policy" {
			t.Errorf("endpoint %v: origin %q after the restart, want policy", e, e.Origin)
		}
	}
	if recs := l.journal(t, "-u "+unitName+" _PID="+l.prop(t, "MainPID"), "record of the daemon's endpoints read"); len(recs) != 1 {
		t.Errorf("the new process logged %d records of reading its endpoints' record, want 1", len(recs))
	}
	l.sameAsKernel(t)

	// Killed again, and sd1's address removed before the restart (the
	// kernel keeps the endpoint): the new process removes it.
	pid = l.prop(t, "MainPID")
	l.c.Run(t, "kill -9 "+pid)
	gone := l.cliAddrs[1].String() + "/24"
	l.cli.Run(t, "ip", "addr", "del", gone, "dev", "sd1")
	if eps := l.kernelEndpoints(t); len(eps) != 2 {
		t.Fatalf("the kernel's endpoints with the daemon down: %v", eps)
	}
	l.waitRestart(t, pid, 15*time.Second)
	l.eventually(t, 5*time.Second, "the stale endpoint removed", func() string {
		if eps := l.kernelEndpoints(t); len(eps) != 1 || eps[0].ID != before[0].ID || eps[0].Address != before[0].Address {
			return fmt.Sprint(eps)
		}
		return ""
	})
	l.cli.Run(t, "ip", "addr", "add", gone, "dev", "sd1")
	l.route(t, 1)
	l.eventually(t, 5*time.Second, "the endpoint of the address back", func() string {
		if eps := l.kernelEndpoints(t); len(eps) != 2 || eps[1].Address != l.cliAddrs[1].String() {
			return fmt.Sprint(eps)
		}
		return ""
	})
	l.sameAsKernel(t)
}

// reload: a valid configuration applies at once, in the same process: the
// subflow-per-interface policy with the path manager switched to
// userspace, which the daemon writes in /proc/sys/net/mptcp. A new
// connection then gets the policy's subflow, and the journal at the
// default level says so with the connection's token as mptcpctl shows it.
func (l *lane) reload(t *testing.T) {
	pid := l.prop(t, "MainPID")
	l.writeConfig(t, "policy = \"subflow-per-interface\"\nset_path_manager = true\n")
	l.c.Run(t, "systemctl reload "+unitName)
	l.eventually(t, 5*time.Second, "the new policy", func() string {
		if s := l.prop(t, "StatusText"); !strings.Contains(s, "policy subflow-per-interface") {
			return s
		}
		return ""
	})
	if got := l.prop(t, "MainPID"); got != pid {
		t.Errorf("reload changed the main PID %s to %s", pid, got)
	}
	if pm := strings.TrimSpace(l.cli.Run(t, "sysctl", "-n", "net.mptcp.path_manager")); pm != "userspace" {
		t.Errorf("net.mptcp.path_manager=%s after the reload, want userspace", pm)
	}
	cn := l.cli.Dial(l.top, l.cliAddrs[0], netip.AddrPortFrom(l.srvAddrs[0], l.conns[0].RemoteAddr().(*net.TCPAddr).AddrPort().Port()))
	l.conns = append(l.conns, cn)
	// Data from the client: the handshake completes (ESTABLISHED) with the
	// server's reply at the latest.
	if _, err := cn.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	local := cn.LocalAddr().(*net.TCPAddr).AddrPort()
	var token string
	l.eventually(t, 10*time.Second, "the policy's subflow on the new connection", func() string {
		for _, c := range l.ctlConnections(t) {
			if c.LocalAddress == local.Addr().String() && c.LocalPort == local.Port() {
				if len(c.Subflows) != 1 {
					return fmt.Sprintf("%+v", c)
				}
				token = c.Token
				return ""
			}
		}
		return "no object for " + local.String()
	})
	recs := l.journal(t, "-u "+unitName+" TOKEN="+token, "")
	if !slices.ContainsFunc(recs, func(r map[string]string) bool {
		return r["PRIORITY"] == "6" && strings.Contains(r["MESSAGE"], "subflow") && r["WHY"] != "" && r["INTERFACE"] == "sd1"
	}) {
		t.Errorf("journalctl TOKEN=%s (the token mptcpctl shows) at the default level: no info record of the policy's subflow on sd1 with a reason:\n%v", token, recs)
	}
}

// reloadInvalid: a configuration with an error is refused with file and
// line; the daemon keeps running with the old one.
func (l *lane) reloadInvalid(t *testing.T) {
	pid := l.prop(t, "MainPID")
	t0 := l.now(t)
	l.writeConfig(t, "set_path_manager = true\npolicy = \"no-such-policy\"\n")
	l.c.Run(t, "systemctl reload "+unitName)
	var errs []map[string]string
	l.eventually(t, 5*time.Second, "the refusal in the journal", func() string {
		errs = since(l.journal(t, "-u "+unitName+" -p err", ""), t0)
		if len(errs) == 0 {
			return "no error record"
		}
		return ""
	})
	if msg := errs[0]["MESSAGE"]; !strings.Contains(msg, confPath+":2") || !strings.Contains(msg, "no-such-policy") {
		t.Errorf("the refusal does not name the file, the line and the value: %q", msg)
	}
	if got, st := l.prop(t, "MainPID"), l.prop(t, "ActiveState"); got != pid || st != "active" {
		t.Errorf("after an invalid reload: %s, PID %s (was %s)", st, got, pid)
	}
	if s := l.prop(t, "StatusText"); !strings.Contains(s, "policy subflow-per-interface") {
		t.Errorf("after an invalid reload: STATUS=%q, want the old policy", s)
	}
	// Back to the default policy, and the kernel path manager.
	l.writeConfig(t, "set_path_manager = true\n")
	l.c.Run(t, "systemctl reload "+unitName)
	l.eventually(t, 5*time.Second, "the endpoints policy again", func() string {
		pm := strings.TrimSpace(l.cli.Run(t, "sysctl", "-n", "net.mptcp.path_manager"))
		if s := l.prop(t, "StatusText"); !strings.Contains(s, "policy endpoints") || pm != "kernel" {
			return s + ", path manager " + pm
		}
		return ""
	})
}

// watchdog: with WatchdogSec=4s the daemon pings every 2 s; stopped, it is
// killed by the watchdog and restarted.
func (l *lane) watchdog(t *testing.T) {
	const dropIn = "/run/systemd/system/" + unitName + ".d/50-sdtest-watchdog.conf"
	l.c.Run(t, "mkdir -p $(dirname "+dropIn+") && printf '[Service]\\nWatchdogSec=4s\\nTimeoutAbortSec=5s\\n' >"+dropIn+
		" && systemctl daemon-reload && systemctl restart "+unitName)
	l.restarts = l.propInt(t, "NRestarts") // restart resets nothing, but a manual one does not count
	var pings []int
	// Pings every 2 s: over 7 s, at least three, never 4 s apart (a
	// missed one would be a watchdog kill).
	for i := 0; i < 14; i++ {
		time.Sleep(500 * time.Millisecond)
		if p := l.propInt(t, "WatchdogTimestampMonotonic"); len(pings) == 0 || p != pings[len(pings)-1] {
			pings = append(pings, p)
		}
	}
	if len(pings) < 3 {
		t.Errorf("WatchdogTimestamp took %d values in 7 s with WatchdogSec=4s: the daemon does not ping every 2 s", len(pings))
	}
	for i := 1; i < len(pings); i++ {
		if d := time.Duration(pings[i]-pings[i-1]) * time.Microsecond; d > 3*time.Second {
			t.Errorf("watchdog pings %v apart with WatchdogSec=4s", d)
		}
	}
	pid := l.prop(t, "MainPID")
	t0 := l.now(t)
	l.c.Run(t, "kill -STOP "+pid)
	l.waitRestart(t, pid, 30*time.Second)
	if recs := since(l.journal(t, "_PID=1", "Watchdog timeout"), t0); len(recs) == 0 {
		t.Errorf("systemd logged no watchdog timeout")
	}
	l.c.Run(t, "rm "+dropIn+" && systemctl daemon-reload && systemctl restart "+unitName)
	l.sameAsKernel(t)
}

// activation: the enabled unit, stopped, is started by a call to its name;
// a clean stop removes the policy's endpoints, the start makes them again.
func (l *lane) activation(t *testing.T) {
	l.c.Run(t, "systemctl stop "+unitName)
	if st := l.prop(t, "ActiveState"); st != "inactive" {
		t.Fatalf("after stop: %s", st)
	}
	if eps := l.kernelEndpoints(t); len(eps) != 0 {
		t.Errorf("after a clean stop the policy's endpoints are left: %v", eps)
	}
	out := l.c.Run(t, "busctl --timeout=10 get-property "+busName+" "+objPath+" org.mptcp.PathManager1.Manager Policy")
	if strings.TrimSpace(out) != `s "endpoints"` {
		t.Errorf("Policy read by activation: %q", out)
	}
	if st := l.prop(t, "ActiveState"); st != "active" {
		t.Errorf("after a call to %s: %s", busName, st)
	}
	l.eventually(t, 10*time.Second, "the endpoints again", func() string {
		if eps := l.endpoints(t); len(eps) != 2 {
			return fmt.Sprint(eps)
		}
		return ""
	})
}

// polkit: the daemon, as mptcp-pm, asks the container's polkitd (itself
// started by D-Bus activation) about an unprivileged caller: no, then,
// with a rule for that user, yes.
func (l *lane) polkit(t *testing.T) {
	const nobody = "setpriv --reuid=65534 --regid=65534 --clear-groups "
	if out, err := l.c.Exec(nobody + "mptcpctl --timeout 10s limits"); err != nil {
		t.Errorf("mptcpctl limits as nobody: %v\n%s", err, out)
	}
	out, err := l.c.Exec(nobody + "mptcpctl --timeout 10s limits set 5 5")
	var ee interface{ ExitCode() int }
	if !errors.As(err, &ee) || ee.ExitCode() != 4 {
		t.Errorf("mptcpctl limits set as nobody: %v, want exit status 4 (permission denied)\n%s", err, out)
	}
	if lim := l.cli.Run(t, "ip", "mptcp", "limits", "show"); strings.Contains(lim, "subflows 5") {
		t.Errorf("the refused call changed the limits: %s", lim)
	}
	rule := `polkit.addRule(function(action, subject) {
	if (action.id == "org.mptcp.pathmanager1.control" && subject.user == "nobody")
		return polkit.Result.YES;
});
`
	if err := l.c.WriteFile("/etc/polkit-1/rules.d/50-sdtest.rules", rule); err != nil {
		t.Fatal(err)
	}
	l.c.Run(t, "systemctl try-restart polkit.service")
	if out, err := l.c.Exec(nobody + "mptcpctl --timeout 10s limits set 5 5"); err != nil {
		t.Errorf("mptcpctl limits set as nobody with a polkit rule for nobody: %v\n%s", err, out)
	}
	if lim := l.cli.Run(t, "ip", "mptcp", "limits", "show"); !strings.Contains(lim, "subflows 5") || !strings.Contains(lim, "add_addr_accepted 5") {
		t.Errorf("limits after the authorized call: %s", lim)
	}
}

// seccomp: over the whole lane, the unit's filter denied the daemon no
// system call but clone3.
func (l *lane) seccomp(t *testing.T) {
	recs, err := kmsgSince(l.kmsgSeq)
	if err != nil {
		t.Fatal(err)
	}
	var seen, denied []string
	for _, r := range recs {
		if !strings.Contains(r, "type=1326") {
			continue
		}
		seen = append(seen, r)
		if strings.Contains(r, `comm="mptcp-pmd"`) && !strings.Contains(r, fmt.Sprintf(" syscall=%d ", sysClone3)) {
			denied = append(denied, r)
		}
	}
	kinds := map[string]int{}
	for _, r := range seen {
		kinds[auditField(r, "comm")+" syscall "+auditField(r, "syscall")]++
	}
	t.Logf("seccomp records in the kernel log: %v; denials of the daemon's calls: %d", kinds, len(denied))
	if len(seen) == 0 {
		// systemd logs the denials of every unit with a filter (journald's
		// clone3 at least); none means the check sees nothing.
		t.Errorf("no seccomp record at all in the kernel log: SYSTEMD_LOG_SECCOMP=1 had no effect, the check is blind")
	}
	if len(denied) > 0 {
		t.Errorf("the unit's system-call filter denied the daemon:\n%s", strings.Join(denied, "\n"))
	}
}

// auditField returns the value of key=value in an audit record, unquoted.
func auditField(rec, key string) string {
	_, v, ok := strings.Cut(rec, " "+key+"=")
	if !ok {
		return ""
	}
	v, _, _ = strings.Cut(v, " ")
	return strings.Trim(v, `"`)
}

// stop: a clean stop, and no unit failed in the whole container.
func (l *lane) stop(t *testing.T) {
	l.c.Run(t, "systemctl stop "+unitName)
	if st, r := l.prop(t, "ActiveState"), l.prop(t, "Result"); st != "inactive" || r != "success" {
		t.Errorf("after stop: %s, result %s", st, r)
	}
	if failed := strings.TrimSpace(l.c.Run(t, "systemctl --failed --no-legend --plain")); failed != "" {
		t.Errorf("failed units:\n%s", failed)
	}
}

// sameAsKernel checks that the daemon's connection objects are the
// kernel's connections in the container, by token.
func (l *lane) sameAsKernel(t *testing.T) {
	t.Helper()
	l.eventually(t, 5*time.Second, "the daemon's connections equal the kernel's", func() string {
		var kernel, daemon []string
		for _, c := range l.snapshot(t).Conns {
			kernel = append(kernel, fmt.Sprintf("%08x", c.Token))
		}
		for _, c := range l.ctlConnections(t) {
			daemon = append(daemon, c.Token)
		}
		slices.Sort(kernel)
		slices.Sort(daemon)
		if !slices.Equal(kernel, daemon) || len(kernel) == 0 {
			return fmt.Sprintf("kernel %v, daemon %v", kernel, daemon)
		}
		return ""
	})
}

// waitRestart waits until systemd has restarted the unit after the death
// of process pid: a new main process, READY, one more restart counted.
func (l *lane) waitRestart(t *testing.T, pid string, limit time.Duration) {
	t.Helper()
	t0 := time.Now()
	l.eventually(t, limit, "the restart", func() string {
		if p, st := l.prop(t, "MainPID"), l.prop(t, "ActiveState"); p == pid || p == "0" || st != "active" {
			return fmt.Sprintf("%s, PID %s", st, p)
		}
		return ""
	})
	if n := l.propInt(t, "NRestarts"); n != l.restarts+1 {
		t.Errorf("NRestarts=%d, want %d", n, l.restarts+1)
	} else {
		l.restarts = n
	}
	t.Logf("restarted in %v (RestartSec=2s)", time.Since(t0).Round(100*time.Millisecond))
}

// writeConfig replaces the daemon's configuration file.
func (l *lane) writeConfig(t *testing.T, content string) {
	t.Helper()
	if err := l.c.WriteFile(confPath, content); err != nil {
		t.Fatal(err)
	}
}

// prop returns a property of the unit (systemctl show -P).
func (l *lane) prop(t *testing.T, name string) string {
	t.Helper()
	return strings.TrimSpace(l.c.Run(t, "systemctl show -P "+name+" "+unitName))
}

func (l *lane) propInt(t *testing.T, name string) int {
	t.Helper()
	n, err := strconv.Atoi(l.prop(t, name))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return n
}

// exec runs a command in the container and returns its output, whatever
// its exit status.
func (l *lane) exec(t *testing.T, cmd string) string {
	out, _ := l.c.Exec(cmd)
	return out
}

// now returns the container's clock in microseconds since the epoch, to
// compare with the records' __REALTIME_TIMESTAMP. (Not a cursor:
// journalctl 252 finds nothing with -u and --after-cursor together.)
func (l *lane) now(t *testing.T) uint64 {
	t.Helper()
	out := l.c.Run(t, "date +%s%6N")
	n, err := strconv.ParseUint(strings.TrimSpace(out), 10, 64)
	if err != nil {
		t.Fatalf("date: %q", out)
	}
	return n
}

// since keeps the records written at or after the time from now.
func since(recs []map[string]string, t0 uint64) []map[string]string {
	var out []map[string]string
	for _, r := range recs {
		if ts, err := strconv.ParseUint(r["__REALTIME_TIMESTAMP"], 10, 64); err == nil && ts >= t0 {
			out = append(out, r)
		}
	}
	return out
}

// journal returns the records journalctl ARGS -o json gives, those whose
// MESSAGE contains msg.
func (l *lane) journal(t *testing.T, args, msg string) []map[string]string {
	t.Helper()
	out := l.c.Run(t, "journalctl --no-pager -o json "+args)
	var recs []map[string]string
	for _, line := range strings.Split(out, "\n") {
		if line == "" || line == "-- No entries --" {
			continue
		}
		var raw map[string]any
		if err := json.Unmarshal([]byte(line), &raw); err != nil {
			t.Fatalf("journalctl -o json: %v: %q", err, line)
		}
		r := map[string]string{}
		for k, v := range raw {
			if s, ok := v.(string); ok {
				r[k] = s
			}
		}
		if strings.Contains(r["MESSAGE"], msg) {
			recs = append(recs, r)
		}
	}
	return recs
}

// endpointJSON is an endpoint as mptcpctl endpoints --json prints it.
type endpointJSON struct {
	ID      int      `json:"id"`
	Address string   `json:"address"`
	Flags   []string `json:"flags"`
	Origin  string   `json:"origin"`
}

func (l *lane) endpoints(t *testing.T) []endpointJSON {
	t.Helper()
	return l.decodeEndpoints(t, l.c.Run(t, "mptcpctl --json endpoints"))
}

// kernelEndpoints lists the endpoints with ip, not through the daemon
// (whose name a call to would start it again).
func (l *lane) kernelEndpoints(t *testing.T) []endpointJSON {
	t.Helper()
	return l.decodeEndpoints(t, l.cli.Run(t, "ip", "-j", "mptcp", "endpoint", "show"))
}

func (l *lane) decodeEndpoints(t *testing.T, out string) []endpointJSON {
	t.Helper()
	var eps []endpointJSON
	if strings.TrimSpace(out) == "" {
		return nil
	}
	if err := json.Unmarshal([]byte(out), &eps); err != nil {
		t.Fatalf("endpoints: %v: %s", err, out)
	}
	slices.SortFunc(eps, func(a, b endpointJSON) int { return a.ID - b.ID })
	return eps
}

// ctlConn is a connection as mptcpctl connections --json prints it.
type ctlConn struct {
	Token        string `json:"token"`
	LocalAddress string `json:"local_address"`
	LocalPort    uint16 `json:"local_port"`
	Subflows     []struct {
		LocalAddress string `json:"local_address"`
		Interface    string `json:"interface"`
	} `json:"subflows"`
}

func (l *lane) ctlConnections(t *testing.T) []ctlConn {
	t.Helper()
	var cs []ctlConn
	out := l.c.Run(t, "mptcpctl --json connections")
	if err := json.Unmarshal([]byte(out), &cs); err != nil {
		t.Fatalf("mptcpctl --json connections: %v: %s", err, out)
	}
	return cs
}

// snapshot lists the MPTCP connections of the container's network
// namespace through sock_diag.
func (l *lane) snapshot(t *testing.T) *diag.Snapshot {
	t.Helper()
	var snap *diag.Snapshot
	err := l.cli.Do(func() error {
		d, err := diag.Dial(nil)
		if err != nil {
			return err
		}
		defer d.Close()
		snap, err = d.Snapshot()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

// eventually polls check (which returns "" when satisfied, or what it saw)
// until limit.
func (l *lane) eventually(t *testing.T, limit time.Duration, what string, check func() string) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		got := check()
		if got == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %s", what, limit, got)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// statusFields parses /proc/PID/status.
func statusFields(s string) map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(s, "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// kmsgRecords reads the kernel log records now in the buffer (/dev/kmsg:
// "PRIORITY,SEQ,TIME,FLAGS;MESSAGE") and calls fn with each sequence number
// and message.
func kmsgRecords(fn func(seq uint64, msg string)) error {
	// Raw system calls: os.File would wait in the poller instead of
	// returning EAGAIN at the end of the buffer.
	fd, err := syscall.Open("/dev/kmsg", syscall.O_RDONLY|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	buf := make([]byte, 8192)
	for {
		n, err := syscall.Read(fd, buf)
		switch {
		case errors.Is(err, syscall.EAGAIN):
			return nil
		case errors.Is(err, syscall.EPIPE):
			continue // overwritten while read: the next one
		case errors.Is(err, syscall.EINTR):
			continue
		case err != nil:
			return err
		}
		head, msg, _ := strings.Cut(string(buf[:n]), ";")
		f := strings.Split(head, ",")
		if len(f) < 2 {
			continue
		}
		seq, _ := strconv.ParseUint(f[1], 10, 64)
		msg, _, _ = strings.Cut(msg, "\n") // continuation lines follow
		fn(seq, msg)
	}
}

func lastKmsgSeq() (uint64, error) {
	var last uint64
	err := kmsgRecords(func(seq uint64, _ string) { last = seq })
	return last, err
}

func kmsgSince(seq uint64) ([]string, error) {
	var out []string
	err := kmsgRecords(func(s uint64, msg string) {
		if s > seq {
			out = append(out, msg)
		}
	})
	return out, err
}
