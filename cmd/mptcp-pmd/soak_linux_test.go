package main

// TestSoak is a seeded chaos soak of the built daemon. In a namespace lab
// (three paths) on a private bus that loads the project's policy, it runs a
// random sequence of steps against mptcp-pmd in the client namespace and,
// after each step, checks invariants against the kernel. It runs twice, as
// subtests:
//
//	TestSoak/subflow-per-interface   the userspace path manager, policy subflow-per-interface
//	TestSoak/endpoints               the in-kernel path manager, policy endpoints, and an
//	                                 endpoint made with `ip mptcp endpoint add` (external)
//
// Steps, chosen by weight from a math/rand/v2 PCG source seeded with the
// seed and the subtest's index (the first steps are every kind once, in a
// seeded order, "open" first, so that a short run covers them all):
//
//	open       6  1-20 MPTCP connections, IPv4 or IPv6, most from the client, some from the
//	              server namespace to a server in the client namespace (the daemon's
//	              server-side connections: it announces, and listens behind its announcements);
//	              some kept, the others closed within 300 ms
//	close      4  close some kept connections
//	address    3  delete an IPv4 or IPv6 address of c1/c2, or add a deleted one back (with its
//	              table 101/102 default route, as a DHCP client would)
//	carrier    2  `ip link set s1|s2 down|up` in the server namespace (c1/c2 lose or regain
//	              their carrier); the step waits for the kernel to report it
//	route      2  delete or restore the IPv4 or IPv6 default route of table 101/102
//	controller 1  dist/examples/controller.py registers, 0-2 connections meanwhile, SIGKILL;
//	              control must come back to the built-in policy within a second
//	restart    1  SIGKILL the daemon, maybe change something while it is down, start it again
//	bus        1  stop the dbus-daemon: mptcp-pmd must exit with a non-zero status within a
//	              second; a new bus at the same address; the daemon again
//	subscriber 1  a python3-dbus subscriber of uid 65534 is SIGSTOPped for 2-5 steps (it
//	              stops reading the daemon's signals), then SIGKILLed
//	flood      1  uid 65534 keeps 32-96 calls in flight for 0.5-1.5 s (reads, and mutating
//	              calls it may not make), with 4 mptcpctl at once; Ping meanwhile
//	reload     1  SIGHUP with a valid configuration: require_default_route, c1's endpoint
//	              flags or interfaces_deny changes
//	badreload  1  SIGHUP with an invalid configuration: refused and logged, the daemon runs on
//
// After each step (allowing the daemon soakConverge, one second, to
// converge, by polling):
//
//   - the daemon runs (a daemon that exits outside the restart and bus steps
//     is a failure) and its log has no data race or panic;
//   - Peer.Ping to org.mptcp.PathManager1 answers within 100 ms, right
//     after the step (after a restart, once the name is back) and after
//     the checks; during a flood, Pings every 20 ms answer within 1 s
//     (4 s under -race; the longest, and its excess over the bus's own
//     round trip, are logged);
//   - the daemon's VmRSS stays under 100 MB (400 MB under -race:
//     soakRaceFactor);
//   - its connection objects are sock_diag's connections (tokens), and each
//     object's Subflows are the kernel's joined subflows of the token, as
//     local and remote address:port pairs;
//   - MPTCP listeners in the client namespace are exactly the test's servers
//     and those behind the live announcements the kernel lists per
//     connection (userspace path manager): none left behind, none missing;
//   - under the endpoints policy, the kernel's endpoint table is one endpoint
//     per usable address (link up with carrier, global, not denied, with a
//     default route when require_default_route) with the configured flags,
//     plus the external one, untouched; and the daemon's Endpoints property
//     is that table with the right origins.
//
// At the end the daemon must stop on SIGTERM with status 0 (and, under
// endpoints, leave only the external endpoint).
//
// Environment:
//
//	SOAK_SEED=N       the seed (default soakDefaultSeed)
//	SOAK_STEPS=N      steps per subtest (default soakDefaultSteps: 20-25 s per subtest
//	                  under -race on 2 CPUs, so TestSoak stays within 2-3 minutes on
//	                  slower ones)
//	SOAK_KINDS=a,b    only these kinds of steps (and "open"), for a focused soak; the
//	                  sequence differs from the full one's
//	SOAK_LOGDIR=DIR   on failure, write the whole log of every daemon run there
//	SOAK_MINUTES=M    an upper bound on the wall time of the whole TestSoak (a decimal
//	                  number; default none): each subtest gets its share of what is left
//	                  and stops before a step once it has used it
//
// Every step is logged as it runs ("step 17/60 (seed 42): carrier down s2");
// a failure names the seed, the step and its description, and shows the
// end of the daemon's log. The sequence depends only on the seed and the
// subtest, not on SOAK_STEPS, so a failure replays with
//
//	SOAK_SEED=42 SOAK_STEPS=17 go test -count=1 -run 'TestSoak/endpoints$' -v ./cmd/mptcp-pmd
//
// A long run (raise go test's -timeout):
//
//	SOAK_STEPS=400 SOAK_SEED=7 go test -count=1 -timeout 2h -run TestSoak -v ./cmd/mptcp-pmd
//
// TestSoak is skipped under -short (make test-short).
//
// Found by the soak and fixed: subflows adopted at a restart while they
// were closing (seed 20251204, TestSoak/subflow-per-interface, step 9;
// commit e205316).

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/mptcp-pmd/mptcp-pmd/dbusapi"
	"github.com/mptcp-pmd/mptcp-pmd/dbusapi/dbustest"
	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/pm/diag"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmnl"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
)

const (
	soakDefaultSeed  = 20251204
	soakDefaultSteps = 100

	soakConverge   = time.Second            // for the daemon's view to become the kernel's after a step
	soakPingLimit  = 100 * time.Millisecond // for Peer.Ping
	soakRSSLimit   = 100 << 20              // bytes of VmRSS
	soakBusExit    = time.Second            // for the daemon to exit once its bus is gone
	soakMaxKept    = 60                     // connections kept open at most
	soakReloadLog  = 5 * time.Second        // for a SIGHUP's result to be in the log
	soakFloodStall = time.Second            // for any Ping during a flood
	// soakRaceFactor scales soakRSSLimit and soakFloodStall when the
	// daemon is built with -race (make test). The race detector's shadow
	// memory and its state for each goroutine ever made (godbus makes one
	// per call) grow the VmRSS of a race build by about 1.5 MB per flood,
	// where a plain build stays at 15-16 MB through 50 floods in a row;
	// and a race build is several times slower (during one flood of 400
	// steps, seed 6, two Pings took 510 and 409 ms).
	soakRaceFactor = 4
)

// soakConfig is one configuration of the soak (a subtest).
type soakConfig struct {
	name   string
	pm     string // the client namespace's path manager
	policy string
}

var soakConfigs = []soakConfig{
	{name: "subflow-per-interface", pm: "userspace", policy: "subflow-per-interface"},
	{name: "endpoints", pm: "kernel", policy: "endpoints"},
}

func TestSoak(t *testing.T) {
	if testing.Short() {
		t.Skip("skipped in -short mode: a chaos soak of the built daemon in a namespace lab")
	}
	seed := soakEnvUint(t, "SOAK_SEED", soakDefaultSeed)
	steps := int(soakEnvUint(t, "SOAK_STEPS", soakDefaultSteps))
	var deadline time.Time
	if v := os.Getenv("SOAK_MINUTES"); v != "" {
		m, err := strconv.ParseFloat(v, 64)
		if err != nil || m <= 0 {
			t.Fatalf("SOAK_MINUTES=%q: want a positive number of minutes", v)
		}
		deadline = time.Now().Add(time.Duration(m * float64(time.Minute)))
	}
	for i, cfg := range soakConfigs {
		t.Run(cfg.name, func(t *testing.T) {
			var until time.Time
			if !deadline.IsZero() {
				until = time.Now().Add(time.Until(deadline) / time.Duration(len(soakConfigs)-i))
			}
			runSoak(t, cfg, seed, uint64(i), steps, until)
		})
	}
}

func soakEnvUint(t *testing.T, name string, def uint64) uint64 {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		t.Fatalf("%s=%q: %v", name, v, err)
	}
	return n
}

// soak is one run: the lab, the bus, the daemon, and the model of what the
// steps did (the kept connections, the deleted addresses and routes, the
// lost carriers, the configuration), from which the next steps are chosen.
// The model only changes by the steps, so the sequence depends only on the
// seed.
type soak struct {
	t     *testing.T
	cfg   soakConfig
	seed  uint64
	rng   *rand.Rand
	step  int
	steps int
	desc  string

	cli, srv   *pmtest.Host
	bus        *dbustest.Bus
	conn       *dbus.Conn // the test's client on the current bus
	d          *testDaemon
	prev       *testDaemon   // the daemon before the last restart
	all        []*testDaemon // every daemon run, for SOAK_LOGDIR
	logOff     int           // how far d's log was scanned
	confPath   string
	conf       soakConf
	k          *pmnl.Client // the client namespace's path manager
	diag       *diag.Client // and its sock_diag
	kev        *kernelLog   // and its events, for the failure messages
	external   string       // the external endpoint, "ADDR [FLAGS]" (endpoints only)
	externalIP netip.Addr

	srvServers [2]netip.AddrPort // MPTCP servers in the server namespace: IPv4, IPv6
	cliServers [2]netip.AddrPort // and in the client namespace
	kept       []soakConn
	addrGone   [3][2]bool // [path][0 IPv4, 1 IPv6]: the client's address deleted
	routeGone  [3][2]bool // the default route of table 100+path gone
	carrierOff [3]bool    // s<path> set down
	sub        *soakSubscriber

	stats soakStats
}

type soakConn struct {
	c    net.Conn
	what string
}

type soakSubscriber struct {
	b    *background
	left int // steps until it is killed
}

type soakStats struct {
	kinds       map[string]int
	maxPing     time.Duration // after the steps
	maxPingAt   string
	maxFlood    time.Duration // during the floods
	maxExcess   time.Duration // during the floods, beyond the bus's own round trip
	pings       int
	maxRSS      int64
	maxConverge time.Duration
	maxConvAt   string
	busExit     []time.Duration
	opened      int
	maxObjects  int // connection objects at once
	maxJoins    int // joined subflows at once
	maxAnnounce int // listeners behind announcements at once
}

// soakConf is the daemon's configuration file as the model knows it.
type soakConf struct {
	policy              string
	requireDefaultRoute bool
	c1Backup            bool // [interfaces.c1] flags = ["subflow", "backup"]
	denyC2              bool // interfaces_deny = ["c2"]
}

func (c soakConf) text() string {
	var b strings.Builder
	fmt.Fprintf(&b, "policy = %q\n[filter]\nrequire_default_route = %t\n", c.policy, c.requireDefaultRoute)
	if c.denyC2 {
		b.WriteString("interfaces_deny = [\"c2\"]\n")
	}
	if c.c1Backup {
		b.WriteString("[interfaces.c1]\nflags = [\"subflow\", \"backup\"]\n")
	}
	return b.String()
}

func (c soakConf) String() string {
	return fmt.Sprintf("require_default_route=%t, c1 flags %s, interfaces_deny %s",
		c.requireDefaultRoute, map[bool]string{false: "default", true: "subflow,backup"}[c.c1Backup],
		map[bool]string{false: "default", true: "[c2]"}[c.denyC2])
}

func runSoak(t *testing.T, cfg soakConfig, seed, stream uint64, steps int, until time.Time) {
	requirePython(t)
	pmtest.RequireProgram(t, "setpriv")
	s := &soak{t: t, cfg: cfg, seed: seed, steps: steps, rng: rand.New(rand.NewPCG(seed, stream)),
		stats: soakStats{kinds: map[string]int{}}, conf: soakConf{policy: cfg.policy}}
	lab := pmtest.NewLab(t, pmtest.LabOptions{Paths: 3, ClientPM: cfg.pm})
	s.cli, s.srv = lab.Client, lab.Server
	// The server keeps its IPv6 addresses through a down, as in
	// TestPolicySubflowPerInterfaceClient.
	for _, ifc := range []string{"s1", "s2"} {
		s.srv.Run(t, "sysctl", "-qw", "net.ipv6.conf."+ifc+".keep_addr_on_down=1")
	}
	var err error
	if s.k, err = pmnl.Dial(&pmnl.Config{NetNS: s.cli.NSFD()}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.k.Close() })
	if s.diag, err = diag.Dial(&diag.Config{NetNS: s.cli.NSFD()}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.diag.Close() })
	s.kev = listenKernel(t, s.cli)
	if cfg.policy == "endpoints" {
		s.externalIP = s.cli.Addrs4[2]
		s.cli.Run(t, "ip", "mptcp", "endpoint", "add", s.externalIP.String(), "signal")
		s.external = s.externalIP.String() + " [signal]"
	}
	for i, a := range []netip.Addr{s.srv.Addrs4[0], s.srv.Addrs6[0]} {
		s.srvServers[i] = s.srv.Serve(t, netip.AddrPortFrom(a, 0))
	}
	// Bound to c0's addresses, so that the daemon's listeners behind its
	// announcements (other addresses, same port) do not clash with them.
	for i, a := range []netip.Addr{s.cli.Addrs4[0], s.cli.Addrs6[0]} {
		s.cliServers[i] = s.cli.Serve(t, netip.AddrPortFrom(a, 0))
	}
	s.bus = dbustest.StartBus(t, dbustest.SystemDefaults())
	s.conn = s.bus.Dial(t)
	s.confPath = filepath.Join(t.TempDir(), "mptcp-pmd.toml")
	writeFile(t, s.confPath, s.conf.text())
	t.Cleanup(s.cleanup) // before the bus and the lab go

	start := time.Now()
	s.desc = "the daemon starts"
	s.startDaemon()
	s.check()

	kinds := soakKinds()
	if v := os.Getenv("SOAK_KINDS"); v != "" {
		only := []soakKind{kinds[0]} // "open", always first
		for _, name := range strings.Split(v, ",") {
			i := slices.IndexFunc(kinds, func(k soakKind) bool { return k.name == strings.TrimSpace(name) })
			if i < 0 {
				t.Fatalf("SOAK_KINDS: no step kind %q", name)
			}
			if i > 0 && !slices.ContainsFunc(only, func(k soakKind) bool { return k.name == kinds[i].name }) {
				only = append(only, kinds[i])
			}
		}
		kinds = only
	}
	first := s.firstOrder(kinds)
	for s.step = 1; s.step <= steps; s.step++ {
		if !until.IsZero() && time.Now().After(until) {
			t.Logf("SOAK_MINUTES: this subtest's share of the time is used up after %d steps", s.step-1)
			break
		}
		var pre func()
		note := ""
		if s.sub != nil {
			if s.sub.left--; s.sub.left == 0 {
				sub := s.sub
				s.sub = nil
				note = " (and the stalled subscriber is killed)"
				pre = func() {
					if err := s.killSubscriber(sub); err != nil {
						s.failf("%v", err)
					}
				}
			}
		}
		kind := s.pick(kinds, first)
		desc, run := kind.plan(s)
		s.desc = desc + note
		t.Logf("step %d/%d (seed %d): %s", s.step, steps, seed, s.desc)
		s.stats.kinds[kind.name]++
		if pre != nil {
			pre()
		}
		run()
		s.check()
	}
	s.desc = "the end: the daemon stops on SIGTERM"
	s.finish()
	st := s.stats
	var kinds2 []string
	for _, k := range kinds {
		kinds2 = append(kinds2, fmt.Sprintf("%s %d", k.name, st.kinds[k.name]))
	}
	t.Logf("soak %s, seed %d: %d steps in %v (%s); %d connections opened, at most %d objects with %d joined subflows and %d listeners behind announcements at once; %d pings, the longest after a step %v (%s), during a flood %v (%v beyond the bus's); "+
		"max VmRSS %.1f MB; longest convergence %v (%s); daemon exit after the bus went: %v",
		cfg.name, seed, s.step-1, time.Since(start).Round(time.Millisecond), strings.Join(kinds2, ", "), st.opened, st.maxObjects, st.maxJoins, st.maxAnnounce,
		st.pings, st.maxPing, st.maxPingAt, st.maxFlood, st.maxExcess, float64(st.maxRSS)/(1<<20), st.maxConverge, st.maxConvAt, st.busExit)
}

// failf fails the test at the current step, naming the seed, the step and
// its description.
func (s *soak) failf(format string, args ...any) {
	s.t.Helper()
	s.t.Fatalf("step %d/%d (seed %d, %s): %s: %s", s.step, s.steps, s.seed, s.cfg.name, s.desc, fmt.Sprintf(format, args...))
}

// cleanup reports a failure's context and the daemon's log, and stops what
// the soak started.
func (s *soak) cleanup() {
	t := s.t
	if t.Failed() {
		kinds := ""
		if v := os.Getenv("SOAK_KINDS"); v != "" {
			kinds = "SOAK_KINDS=" + v + " "
		}
		t.Logf("FAILED at step %d/%d (seed %d, %s): %s\nreplay: %sSOAK_SEED=%d SOAK_STEPS=%d go test -count=1 -run 'TestSoak/%s$' -v ./cmd/mptcp-pmd",
			s.step, s.steps, s.seed, s.cfg.name, s.desc, kinds, s.seed, s.step, s.cfg.name)
		if s.prev != nil {
			t.Logf("log of the daemon before the last restart (pid %d):\n%s", s.prev.pid(), soakTail(s.prev.log.String(), 60))
		}
		if s.d != nil {
			t.Logf("log of the daemon (pid %d):\n%s", s.d.pid(), soakTail(s.d.log.String(), 250))
		}
		if dir := os.Getenv("SOAK_LOGDIR"); dir != "" {
			for i, d := range s.all {
				p := filepath.Join(dir, fmt.Sprintf("soak-%s-seed%d-daemon%d.log", s.cfg.name, s.seed, i+1))
				if err := os.WriteFile(p, []byte(d.log.String()), 0o644); err != nil {
					t.Log(err)
				}
			}
			t.Logf("the logs of the %d daemon runs are in %s", len(s.all), dir)
		}
	}
	if s.sub != nil {
		if err := s.killSubscriber(s.sub); err != nil {
			t.Error(err)
		}
	}
	for _, c := range s.kept {
		c.c.Close()
	}
	if s.d != nil {
		s.d.kill9(t) // a no-op after finish
	}
	if s.conn != nil {
		s.conn.Close()
	}
}

// finish ends the run as a service manager would: SIGTERM, status 0.
func (s *soak) finish() {
	t := s.t
	if s.sub != nil {
		if err := s.killSubscriber(s.sub); err != nil {
			s.failf("%v", err)
		}
		s.sub = nil
	}
	for _, c := range s.kept {
		c.c.Close()
	}
	s.kept = nil
	s.alive()
	s.d.stop(t)
	if t.Failed() {
		s.failf("the daemon did not stop cleanly")
	}
	if s.cfg.policy == "endpoints" {
		if got := endpointTable(t, s.k); !slices.Equal(got, []string{s.external}) {
			s.failf("endpoints after the daemon's exit: %v, want only the external %s (remove_on_exit)", got, s.external)
		}
	}
}

// startDaemon runs the built mptcp-pmd in the client namespace on the bus
// with the soak's configuration file and waits until it owns its name.
func (s *soak) startDaemon() {
	t := s.t
	cmd := exec.Command("ip", "netns", "exec", s.cli.Name, filepath.Join(binDir(t), "mptcp-pmd"),
		"--config="+s.confPath, "--log-level", "debug", "--runtime-dir="+runtimeDir(t, s.cli))
	cmd.Env = append(os.Environ(), "DBUS_SYSTEM_BUS_ADDRESS="+s.bus.Address())
	cmd.Dir = built.root
	d := &testDaemon{host: s.cli, cmd: cmd, log: &pmtest.SyncBuffer{}, done: make(chan struct{}), conn: s.conn}
	cmd.Stdout, cmd.Stderr = d.log, d.log
	if err := cmd.Start(); err != nil {
		s.failf("start mptcp-pmd: %v", err)
	}
	go func() {
		cmd.Wait()
		close(d.done)
	}()
	if s.d != nil {
		s.prev = s.d
	}
	s.d, s.logOff = d, 0
	s.all = append(s.all, d)
	deadline := time.Now().Add(nameTimeout)
	for {
		// The owner must be this process: the bus may not yet have seen
		// a killed predecessor go.
		var pid uint32
		err := s.conn.BusObject().Call("org.freedesktop.DBus.GetConnectionUnixProcessID", 0, dbusapi.BusName).Store(&pid)
		if err == nil && int(pid) == d.pid() {
			return
		}
		if err != nil && !isDBusError(err, "org.freedesktop.DBus.Error.NameHasNoOwner") {
			s.failf("GetConnectionUnixProcessID(%s): %v", dbusapi.BusName, err)
		}
		select {
		case <-d.done:
			s.failf("mptcp-pmd exited before owning %s: %v", dbusapi.BusName, d.cmd.ProcessState)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.failf("mptcp-pmd did not own %s within %v", dbusapi.BusName, nameTimeout)
		}
	}
}

// soakKind is a kind of step: plan makes every random choice of the step
// (and describes it) before run does it.
type soakKind struct {
	name   string
	weight int
	can    func(*soak) bool // nil: always
	plan   func(*soak) (desc string, run func())
}

func soakKinds() []soakKind {
	return []soakKind{
		{name: "open", weight: 6, plan: (*soak).planOpen},
		{name: "close", weight: 4, can: func(s *soak) bool { return len(s.kept) > 0 }, plan: (*soak).planClose},
		{name: "address", weight: 3, plan: (*soak).planAddress},
		{name: "carrier", weight: 2, plan: (*soak).planCarrier},
		{name: "route", weight: 2, plan: (*soak).planRoute},
		{name: "controller", weight: 1, plan: (*soak).planController},
		{name: "restart", weight: 1, plan: (*soak).planRestart},
		{name: "bus", weight: 1, plan: (*soak).planBusRestart},
		{name: "subscriber", weight: 1, can: func(s *soak) bool { return s.sub == nil }, plan: (*soak).planSubscriber},
		{name: "flood", weight: 1, plan: (*soak).planFlood},
		{name: "reload", weight: 1, plan: (*soak).planReload},
		{name: "badreload", weight: 1, plan: (*soak).planBadReload},
	}
}

// firstOrder returns the order of the first steps: every kind once, "open"
// first, the others shuffled.
func (s *soak) firstOrder(kinds []soakKind) []int {
	order := []int{0}
	for _, i := range s.rng.Perm(len(kinds) - 1) {
		order = append(order, i+1)
	}
	return order
}

// pick chooses the kind of the current step.
func (s *soak) pick(kinds []soakKind, first []int) soakKind {
	can := func(k soakKind) bool { return k.can == nil || k.can(s) }
	if i := s.step - 1; i < len(first) && can(kinds[first[i]]) {
		return kinds[first[i]]
	}
	total := 0
	for _, k := range kinds {
		if can(k) {
			total += k.weight
		}
	}
	n := s.rng.IntN(total)
	for _, k := range kinds {
		if !can(k) {
			continue
		}
		if n < k.weight {
			return k
		}
		n -= k.weight
	}
	panic("unreachable")
}

// dial opens an MPTCP connection on path 0 (which the soak never
// disturbs): from the client to a server in the server namespace, or with
// reverse from the server namespace to the client's server. It sends a
// few bytes, so the connection becomes fully established.
func (s *soak) dial(reverse, v6 bool) soakConn {
	fam := 0
	if v6 {
		fam = 1
	}
	from, local, remote := s.cli, s.cli.Addrs4[0], s.srvServers[fam]
	if v6 {
		local = s.cli.Addrs6[0]
	}
	if reverse {
		from, local, remote = s.srv, s.srv.Addrs4[0], s.cliServers[fam]
		if v6 {
			local = s.srv.Addrs6[0]
		}
	}
	c, err := from.DialErr(local, remote)
	if err != nil {
		s.failf("%v", err)
	}
	if _, err := c.Write([]byte("hello\n")); err != nil {
		c.Close()
		s.failf("write to %s: %v", remote, err)
	}
	s.stats.opened++
	return soakConn{c: c, what: fmt.Sprintf("%s -> %s", c.LocalAddr(), c.RemoteAddr())}
}

func (s *soak) planOpen() (string, func()) {
	n := 1 + s.rng.IntN(20)
	type spec struct{ reverse, v6, keep bool }
	specs := make([]spec, n)
	var nRev, n6, nKeep int
	for i := range specs {
		sp := spec{reverse: s.rng.IntN(4) == 0, v6: s.rng.IntN(4) == 0, keep: s.rng.IntN(2) == 0}
		sp.keep = sp.keep && len(s.kept)+nKeep < soakMaxKept
		specs[i] = sp
		if sp.reverse {
			nRev++
		}
		if sp.v6 {
			n6++
		}
		if sp.keep {
			nKeep++
		}
	}
	delay := time.Duration(s.rng.IntN(300)) * time.Millisecond
	desc := fmt.Sprintf("open %d connections (%d IPv6, %d from the server namespace), keep %d, close the others after %v",
		n, n6, nRev, nKeep, delay)
	return desc, func() {
		var soon []soakConn
		for _, sp := range specs {
			c := s.dial(sp.reverse, sp.v6)
			if sp.keep {
				s.kept = append(s.kept, c)
			} else {
				soon = append(soon, c)
			}
		}
		time.Sleep(delay)
		for _, c := range soon {
			c.c.Close()
		}
	}
}

func (s *soak) planClose() (string, func()) {
	n := 1 + s.rng.IntN(len(s.kept))
	pick := s.rng.Perm(len(s.kept))[:n]
	return fmt.Sprintf("close %d of the %d kept connections", n, len(s.kept)), func() {
		for _, i := range pick {
			s.kept[i].c.Close()
		}
		slices.Sort(pick)
		for _, i := range slices.Backward(pick) {
			s.kept = slices.Delete(s.kept, i, i+1)
		}
	}
}

// soakPathAddr names the client's address of path p (1 or 2) and family
// fam (0 IPv4, 1 IPv6): the address, its prefix length, the gateway of
// table 100+p.
func (s *soak) pathAddr(p, fam int) (addr netip.Addr, bits int, gw string) {
	if fam == 0 {
		return s.cli.Addrs4[p], 24, fmt.Sprintf("10.55.%d.2", p)
	}
	return s.cli.Addrs6[p], 64, fmt.Sprintf("fd00:55:%d::2", p)
}

func (s *soak) planAddress() (string, func()) {
	type pf struct{ p, fam int }
	var gone, present []pf
	for _, p := range []int{1, 2} {
		for _, fam := range []int{0, 1} {
			if s.addrGone[p][fam] {
				gone = append(gone, pf{p, fam})
			} else {
				present = append(present, pf{p, fam})
			}
		}
	}
	if len(present) == 0 || (len(gone) > 0 && s.rng.IntN(2) == 0) {
		a := gone[s.rng.IntN(len(gone))]
		addr, bits, gw := s.pathAddr(a.p, a.fam)
		dev, table := fmt.Sprintf("c%d", a.p), strconv.Itoa(100+a.p)
		return fmt.Sprintf("add %s/%d back to %s, with the default route of table %s", addr, bits, dev, table), func() {
			// The route first (onlink), as a DHCP client brings both.
			fl := soakFamilyFlag(a.fam)
			s.cli.Run(s.t, "ip", fl, "route", "replace", "default", "via", gw, "dev", dev, "onlink", "table", table)
			args := []string{"ip", fl, "addr", "add", fmt.Sprintf("%s/%d", addr, bits), "dev", dev}
			if a.fam == 1 {
				args = append(args, "nodad")
			}
			s.cli.Run(s.t, args...)
			s.addrGone[a.p][a.fam] = false
			s.routeGone[a.p][a.fam] = false
		}
	}
	a := present[s.rng.IntN(len(present))]
	addr, bits, _ := s.pathAddr(a.p, a.fam)
	dev := fmt.Sprintf("c%d", a.p)
	return fmt.Sprintf("delete %s/%d from %s", addr, bits, dev), func() {
		s.cli.Run(s.t, "ip", soakFamilyFlag(a.fam), "addr", "del", fmt.Sprintf("%s/%d", addr, bits), "dev", dev)
		s.addrGone[a.p][a.fam] = true
		if a.fam == 0 {
			// The link's last IPv4 address takes the link's IPv4 routes
			// with it; IPv6 keeps its gateway routes.
			s.routeGone[a.p][a.fam] = true
		}
	}
}

func soakFamilyFlag(fam int) string { return []string{"-4", "-6"}[fam] }

func (s *soak) planRoute() (string, func()) {
	p, fam := 1+s.rng.IntN(2), s.rng.IntN(2)
	_, _, gw := s.pathAddr(p, fam)
	dev, table, fl := fmt.Sprintf("c%d", p), strconv.Itoa(100+p), soakFamilyFlag(fam)
	v := []string{"IPv4", "IPv6"}[fam]
	if s.routeGone[p][fam] {
		return fmt.Sprintf("restore the %s default route of table %s", v, table), func() {
			s.cli.Run(s.t, "ip", fl, "route", "replace", "default", "via", gw, "dev", dev, "onlink", "table", table)
			s.routeGone[p][fam] = false
		}
	}
	return fmt.Sprintf("delete the %s default route of table %s", v, table), func() {
		s.cli.Run(s.t, "ip", fl, "route", "del", "default", "table", table)
		s.routeGone[p][fam] = true
	}
}

func (s *soak) planCarrier() (string, func()) {
	p := 1 + s.rng.IntN(2)
	down := !s.carrierOff[p]
	verb := map[bool]string{true: "down", false: "up"}[down]
	return fmt.Sprintf("carrier %s s%d (c%d's peer)", verb, p, p), func() {
		s.srv.Run(s.t, "ip", "link", "set", fmt.Sprintf("s%d", p), verb)
		s.carrierOff[p] = down
		// The kernel tells a carrier change up to a second late
		// (linkwatch): the daemon's second starts when it is told.
		dev := fmt.Sprintf("c%d", p)
		deadline := time.Now().Add(5 * time.Second)
		for soakLinks(s.t, s.cli)[dev].carrier() == down {
			if time.Now().After(deadline) {
				s.failf("the kernel did not report %s's carrier %s within 5 s", dev, verb)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

func (s *soak) planController() (string, func()) {
	n := s.rng.IntN(3)
	local := s.cli.Addrs4[1]
	desc := fmt.Sprintf("controller.py (root) registers, adding subflows from %s; %d connections meanwhile (kept); SIGKILL", local, n)
	return desc, func() {
		root, err := dbustest.ProjectRoot()
		if err != nil {
			s.failf("%v", err)
		}
		cmd := exec.Command(pythonPath, filepath.Join(root, "dist/examples/controller.py"), local.String())
		cmd.Env = append(os.Environ(), "DBUS_SYSTEM_BUS_ADDRESS="+s.bus.Address())
		b := startBackground(s.t, cmd, "registered as the controller")
		if mode := managerProp(s.t, s.d, "ControlMode"); mode != "controller" {
			s.failf("ControlMode %q while controller.py is registered", mode)
		}
		for range n {
			c := s.dial(false, false)
			if len(s.kept) < soakMaxKept {
				s.kept = append(s.kept, c)
			} else {
				c.c.Close()
			}
		}
		time.Sleep(200 * time.Millisecond)
		b.cmd.Process.Signal(syscall.SIGKILL)
		<-b.done
		killed := time.Now()
		for managerProp(s.t, s.d, "ControlMode") != "builtin" {
			if time.Since(killed) > soakConverge {
				s.failf("ControlMode is still %q %v after the controller was killed", managerProp(s.t, s.d, "ControlMode"), soakConverge)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

func (s *soak) planRestart() (string, func()) {
	desc := "SIGKILL the daemon and start it again"
	whileDown := func() {}
	var plan func() (string, func())
	switch s.rng.IntN(4) {
	case 1:
		if len(s.kept) > 0 {
			plan = s.planClose
		}
	case 2:
		plan = s.planOpen
	case 3:
		plan = s.planAddress
	}
	if plan != nil {
		var what string
		what, whileDown = plan()
		desc = "SIGKILL the daemon; while it is down: " + what + "; start it again"
	}
	return desc, func() {
		s.alive()
		s.d.kill9(s.t)
		whileDown()
		s.startDaemon()
	}
}

func (s *soak) planBusRestart() (string, func()) {
	return "bus restart: kill the dbus-daemon (mptcp-pmd must exit with a non-zero status within 1 s), a new one at the same address, start mptcp-pmd again", func() {
		d := s.d
		s.alive()
		s.bus.Kill()
		lost := time.Now()
		select {
		case <-d.done:
			took := time.Since(lost)
			s.stats.busExit = append(s.stats.busExit, took.Round(time.Millisecond))
			if code := d.cmd.ProcessState.ExitCode(); code <= 0 {
				s.failf("the daemon ended %v after the bus went, with %v: losing its bus, it must exit with a non-zero status", took, d.cmd.ProcessState)
			}
			s.t.Logf("the daemon exited %v after the bus went: %v", took.Round(time.Millisecond), d.cmd.ProcessState)
		case <-time.After(soakBusExit):
			d.kill9(s.t)
			s.failf("the daemon did not exit within %v of losing its bus connection (dbus-daemon stopped): "+
				"the daemon is specified to exit with a non-zero status within a second when it loses the bus", soakBusExit)
		}
		d.kill9(s.t) // it is gone: nothing to stop at the end
		s.conn.Close()
		s.bus.Restart(s.t)
		s.conn = s.bus.Dial(s.t)
		s.startDaemon()
	}
}

func (s *soak) planSubscriber() (string, func()) {
	left := 2 + s.rng.IntN(4)
	return fmt.Sprintf("a subscriber (python3-dbus, uid 65534) subscribes to the daemon's signals, then is SIGSTOPped for %d steps", left), func() {
		cmd := s.bus.CommandAs(s.t, 65534, 65534, pythonPath, "-c", soakSubscriberScript)
		b := startBackground(s.t, cmd, "subscribed")
		if err := b.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			s.failf("SIGSTOP the subscriber: %v", err)
		}
		s.sub = &soakSubscriber{b: b, left: left}
	}
}

// killSubscriber kills the stopped subscriber and waits for it to be gone.
func (s *soak) killSubscriber(sub *soakSubscriber) error {
	sub.b.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-sub.b.done:
		return nil
	case <-time.After(5 * time.Second):
		return fmt.Errorf("the stopped subscriber did not die of SIGKILL within 5 s")
	}
}

func (s *soak) planFlood() (string, func()) {
	dur := time.Duration(500+s.rng.IntN(1000)) * time.Millisecond
	width := 32 + s.rng.IntN(65)
	desc := fmt.Sprintf("flood: uid 65534 keeps %d calls in flight for %v, and runs 4 mptcpctl at once; Ping meanwhile", width, dur)
	return desc, func() { s.flood(dur, width) }
}

func (s *soak) flood(dur time.Duration, width int) {
	t := s.t
	ctlPath := filepath.Join(binDir(t), "mptcpctl")
	ctls := []struct {
		args []string
		code int
	}{
		{[]string{"status"}, 0},
		{[]string{"connections"}, 0},
		{[]string{"addresses"}, 0},
		{[]string{"limits", "set", "8", "8"}, 4}, // permission denied
	}
	type result struct {
		out  []byte
		err  error
		code int
	}
	results := make([]result, len(ctls)+1)
	var wg sync.WaitGroup
	run := func(i int, cmd *exec.Cmd) {
		defer wg.Done()
		out, err := cmd.CombinedOutput()
		code := -1
		if cmd.ProcessState != nil {
			code = cmd.ProcessState.ExitCode()
		}
		results[i] = result{out, err, code}
	}
	py := s.bus.CommandAs(t, 65534, 65534, pythonPath, "-c", soakFloodScript, strconv.FormatFloat(dur.Seconds(), 'f', 3, 64), strconv.Itoa(width))
	wg.Add(1)
	pyDone := make(chan struct{})
	go func() {
		defer close(pyDone)
		defer wg.Done()
		out, err := py.CombinedOutput()
		results[0] = result{out: out, err: err}
	}()
	for i, c := range ctls {
		wg.Add(1)
		go run(i+1, s.bus.CommandAs(t, 65534, 65534, ctlPath, append([]string{"--timeout", "10s"}, c.args...)...))
	}
	// Ping meanwhile, each followed by a call to the bus itself: on two
	// busy CPUs the bus (or this process) alone can take over 100 ms when
	// the flood's processes start, so what is held against the daemon is
	// the time beyond the bus's own round trip.
	var pings, busPings, excess []time.Duration
	for done := false; !done; {
		d, err := s.pingOnce()
		if err != nil {
			s.failf("Ping during the flood: %v", err)
		}
		b := s.busProbe()
		pings, busPings, excess = append(pings, d), append(busPings, b), append(excess, d-b)
		select {
		case <-pyDone:
			done = true
		case <-time.After(20 * time.Millisecond):
		}
	}
	wg.Wait()
	worst := slices.Max(pings)
	for _, d := range pings {
		s.notePing(d, "during a flood")
	}
	// The bound after each step is soakPingLimit (check). During the
	// flood, single Pings of over 100 ms happen on two busy CPUs (the
	// bus's own round trip shows the same outliers): what fails here is a
	// daemon that does not answer within soakFloodStall, which a flood
	// from one sender must not cause. The excess over the bus's round
	// trip is logged.
	i := slices.Index(excess, slices.Max(excess))
	s.stats.maxExcess = max(s.stats.maxExcess, excess[i])
	stall := soakFloodStall
	if raceEnabled() {
		stall *= soakRaceFactor
	}
	if worst > stall {
		s.failf("during the flood a Ping took %v (limit %v; the largest excess over the bus's own NameHasOwner right after: %v, ping %d of %d)\npings %v\nbus   %v",
			worst, stall, excess[i], i+1, len(pings), soakRound(pings), soakRound(busPings))
	}
	var fr soakFloodResult
	lines := strings.Split(strings.TrimSpace(string(results[0].out)), "\n")
	if results[0].err != nil || json.Unmarshal([]byte(lines[len(lines)-1]), &fr) != nil {
		s.failf("the flood client: %v: %s", results[0].err, results[0].out)
	}
	allowed := []string{"ok", dbusapi.ErrorPermissionDenied, dbusapi.ErrorBusy, dbusapi.ErrorNotFound}
	for name := range fr.Counts {
		if !slices.Contains(allowed, name) {
			s.failf("the flood got %s (want only %v): %+v", name, allowed, fr)
		}
	}
	if fr.Lost > 0 || fr.Counts["ok"] == 0 {
		s.failf("the flood: %d calls unanswered, %d answered: %+v", fr.Lost, fr.Counts["ok"], fr)
	}
	t.Logf("flood: %d calls: %v; Ping up to %v (%d pings), at most %v more than the bus's own NameHasOwner (up to %v)",
		fr.Sent, fr.Counts, worst, len(pings), excess[i], slices.Max(busPings))
	for i, c := range ctls {
		if r := results[i+1]; r.code != c.code {
			s.failf("mptcpctl %s as uid 65534 during the flood: status %d (%v), want %d: %s", strings.Join(c.args, " "), r.code, r.err, c.code, r.out)
		}
	}
}

func (s *soak) planReload() (string, func()) {
	c := s.conf
	switch s.rng.IntN(3) {
	case 0:
		c.requireDefaultRoute = !c.requireDefaultRoute
	case 1:
		c.c1Backup = !c.c1Backup
	case 2:
		c.denyC2 = !c.denyC2
	}
	return "SIGHUP with a valid configuration: " + c.String(), func() {
		writeFile(s.t, s.confPath, c.text())
		if !s.hup("configuration reloaded", "configuration reload refused") {
			s.failf("a valid configuration was refused:\n%s", c.text())
		}
		s.conf = c
	}
}

func (s *soak) planBadReload() (string, func()) {
	bad := []struct{ what, text string }{
		{"an unknown key", "bogus_key = true\n" + s.conf.text()},
		{"endpoint flags signal and fullmesh together", s.conf.text() + "[endpoints]\nflags = [\"signal\", \"fullmesh\"]\n"},
		{"a TOML syntax error", s.conf.text() + "[filter\n"},
		{"an unknown policy", soakConf{policy: "no-such-policy"}.text()},
	}[s.rng.IntN(4)]
	return "SIGHUP with an invalid configuration (" + bad.what + ")", func() {
		writeFile(s.t, s.confPath, bad.text)
		if !s.hup("configuration reload refused", "configuration reloaded") {
			s.failf("an invalid configuration (%s) was applied:\n%s", bad.what, bad.text)
		}
		// The file is valid again for the next start.
		writeFile(s.t, s.confPath, s.conf.text())
	}
}

// hup sends SIGHUP and reports whether the log then says want (true) or
// other (false) within soakReloadLog.
func (s *soak) hup(want, other string) bool {
	s.alive()
	log := s.d.log.String()
	nWant, nOther := strings.Count(log, want), strings.Count(log, other)
	s.d.cmd.Process.Signal(syscall.SIGHUP)
	deadline := time.Now().Add(soakReloadLog)
	for time.Now().Before(deadline) {
		log := s.d.log.String()
		if strings.Count(log, want) > nWant {
			return true
		}
		if strings.Count(log, other) > nOther {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	s.failf("neither %q nor %q in the daemon's log within %v of SIGHUP", want, other, soakReloadLog)
	return false
}

// alive fails unless the daemon runs.
func (s *soak) alive() {
	select {
	case <-s.d.done:
		s.failf("the daemon exited outside a restart step: %v", s.d.cmd.ProcessState)
	default:
	}
}

// check checks the invariants after a step.
func (s *soak) check() {
	s.alive()
	log := s.d.log.String()
	for _, bad := range []string{"WARNING: DATA RACE", "\npanic: ", "fatal error: "} {
		if strings.Contains(log[s.logOff:], bad) {
			s.failf("the daemon's log has %q", strings.TrimSpace(bad))
		}
	}
	s.logOff = len(log)
	s.ping("after the step")
	rss, err := soakRSS(s.d.pid())
	if err != nil {
		s.failf("the daemon's memory: %v", err)
	}
	s.stats.maxRSS = max(s.stats.maxRSS, rss)
	if limit := soakRSSLimitNow(); rss > limit {
		s.failf("the daemon's VmRSS is %.1f MB (limit %d MB)", float64(rss)/(1<<20), limit>>20)
	}
	start := time.Now()
	for {
		problems := s.problems()
		if len(problems) == 0 {
			if took := time.Since(start); took > s.stats.maxConverge {
				s.stats.maxConverge, s.stats.maxConvAt = took, fmt.Sprintf("step %d", s.step)
			}
			break
		}
		if time.Since(start) > soakConverge {
			s.failf("%v after the step, the daemon's view is not the kernel's:\n  %s", soakConverge, strings.Join(problems, "\n  "))
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.ping("after the checks")
	s.alive()
}

// soakRSSLimitNow is the bound on the daemon's VmRSS for this build.
func soakRSSLimitNow() int64 {
	if raceEnabled() {
		return soakRSSLimit * soakRaceFactor
	}
	return soakRSSLimit
}

func (s *soak) pingOnce() (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	err := s.conn.Object(dbusapi.BusName, dbusapi.ManagerPath).CallWithContext(ctx, "org.freedesktop.DBus.Peer.Ping", 0).Err
	return time.Since(start), err
}

func soakRound(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(100 * time.Microsecond)
	}
	return out
}

// busProbe returns how long the bus itself takes to answer a call
// (NameHasOwner), for comparison with the daemon's Ping.
func (s *soak) busProbe() time.Duration {
	start := time.Now()
	s.conn.BusObject().Call("org.freedesktop.DBus.NameHasOwner", 0, dbusapi.BusName)
	return time.Since(start)
}

func (s *soak) notePing(d time.Duration, when string) {
	s.stats.pings++
	if when == "during a flood" {
		s.stats.maxFlood = max(s.stats.maxFlood, d)
		return
	}
	if d > s.stats.maxPing {
		s.stats.maxPing, s.stats.maxPingAt = d, fmt.Sprintf("step %d, %s", s.step, when)
	}
}

func (s *soak) ping(when string) {
	d, err := s.pingOnce()
	if err != nil {
		s.failf("Ping %s: %v", when, err)
	}
	s.notePing(d, when)
	if d > soakPingLimit {
		s.failf("Ping %s took %v (limit %v)", when, d, soakPingLimit)
	}
}

// problems compares the daemon's view with the kernel's and returns the
// differences.
func (s *soak) problems() []string {
	t := s.t
	k := soakSnapshot(t, s.diag)
	var out []string
	byToken := map[uint32]dbus.ObjectPath{}
	for path, o := range s.d.managedObjects(t) {
		if other, dup := byToken[o.Token]; dup {
			out = append(out, fmt.Sprintf("token %08x has two objects, %s and %s", o.Token, other, path))
			continue
		}
		byToken[o.Token] = path
		kc, ok := k.conns[o.Token]
		if !ok {
			out = append(out, fmt.Sprintf("object %s (token %08x, %s:%d -> %s:%d, %s): the kernel has no such connection",
				path, o.Token, o.LocalAddress, o.LocalPort, o.RemoteAddress, o.RemotePort, o.State))
			continue
		}
		var got []string
		for _, sf := range o.Subflows {
			l, err1 := netip.ParseAddr(sf.LocalAddress)
			r, err2 := netip.ParseAddr(sf.RemoteAddress)
			if err1 != nil || err2 != nil {
				out = append(out, fmt.Sprintf("object %s: subflow %+v: bad address", path, sf))
				continue
			}
			got = append(got, netip.AddrPortFrom(l, sf.LocalPort).String()+" "+netip.AddrPortFrom(r, sf.RemotePort).String())
		}
		slices.Sort(got)
		if !slices.Equal(got, kc.subflows) {
			out = append(out, fmt.Sprintf("object %s (token %08x, %s -> %s): Subflows %q, the kernel's joined subflows %q (closing: %q, opening: %q)%s",
				path, o.Token, kc.Local, kc.Remote, got, kc.subflows, kc.closing, kc.opening, s.subflowEvents(o.Token, got, kc.subflows)))
		}
	}
	for tok, kc := range k.conns {
		if _, ok := byToken[tok]; !ok {
			side := map[bool]string{false: "client", true: "server"}[kc.serverSide]
			out = append(out, fmt.Sprintf("connection %08x (%s -> %s, %s, %s side, subflows %q): no object", tok, kc.Local, kc.Remote, kc.State, side, kc.subflows))
		}
	}
	if len(out) == 0 {
		joins := 0
		for _, kc := range k.conns {
			joins += len(kc.subflows)
		}
		s.stats.maxObjects = max(s.stats.maxObjects, len(byToken))
		s.stats.maxJoins = max(s.stats.maxJoins, joins)
		s.stats.maxAnnounce = max(s.stats.maxAnnounce, len(k.listeners)-len(s.cliServers))
	}
	out = append(out, s.listenerProblems(k)...)
	if s.cfg.policy == "endpoints" {
		out = append(out, s.endpointProblems()...)
	}
	slices.Sort(out)
	return out
}

// subflowEvents returns the kernel's events, as the test's own listener
// received them, of the subflows of token that are in only one of a and b.
func (s *soak) subflowEvents(token uint32, a, b []string) string {
	var diff []string
	for _, sf := range a {
		if !slices.Contains(b, sf) {
			diff = append(diff, sf)
		}
	}
	for _, sf := range b {
		if !slices.Contains(a, sf) {
			diff = append(diff, sf)
		}
	}
	var out strings.Builder
	s.kev.mu.Lock()
	lost := s.kev.lost
	s.kev.mu.Unlock()
	for _, ev := range s.kev.events() {
		if ev.Token != token || (ev.Type != pm.EventSubEstablished && ev.Type != pm.EventSubClosed) {
			continue
		}
		key := netip.AddrPortFrom(ev.LocalAddr.Unmap(), ev.LocalPort).String() + " " + netip.AddrPortFrom(ev.RemoteAddr.Unmap(), ev.RemotePort).String()
		if slices.Contains(diff, key) {
			fmt.Fprintf(&out, "\n      %s %v %s (error %d)", ev.At.Format("15:04:05.000000"), ev.Type, key, ev.Error)
		}
	}
	if out.Len() == 0 {
		return fmt.Sprintf("; the kernel sent no subflow event of them (events lost: %v)", lost)
	}
	return fmt.Sprintf("; the kernel's events of them (events lost: %v):%s", lost, out.String())
}

// listenerProblems checks that the client namespace's MPTCP listeners are
// the test's servers and those behind live announcements.
func (s *soak) listenerProblems(k soakKernel) []string {
	want := map[string]string{}
	for _, ap := range s.cliServers {
		want[ap.String()] = "a server of the test"
	}
	if s.cfg.pm == "userspace" {
		for tok, kc := range k.conns {
			addrs, err := s.k.Addresses(tok)
			if err != nil {
				continue // closed meanwhile
			}
			for _, a := range addrs {
				if a.Flags&pm.FlagSignal == 0 {
					continue // the local address of a subflow
				}
				port := a.Port
				if port == 0 { // announced without a port: the peer joins the connection's
					port = kc.Local.Port()
				}
				want[netip.AddrPortFrom(a.Addr, port).String()] = fmt.Sprintf("announced with id %d on connection %08x", a.ID, tok)
			}
		}
	}
	var out []string
	for _, l := range k.listeners {
		if _, ok := want[l]; !ok {
			out = append(out, "MPTCP listener "+l+" left behind: neither a server of the test nor behind a live announcement")
		}
	}
	for ap, why := range want {
		if !slices.Contains(k.listeners, ap) {
			out = append(out, "no MPTCP listener on "+ap+", "+why)
		}
	}
	return out
}

// endpointProblems checks the kernel's endpoint table against what the
// endpoints policy should make of the client's addresses, links and
// routes, and the daemon's Endpoints property against the table.
func (s *soak) endpointProblems() []string {
	t := s.t
	got := endpointTable(t, s.k)
	want := s.wantEndpoints()
	var out []string
	if !slices.Equal(got, want) {
		out = append(out, fmt.Sprintf("endpoints %q, the policy should have %q (%s)", got, want, s.conf))
	}
	eps, err := s.d.endpointsProperty()
	if err != nil {
		s.failf("%v", err)
	}
	var published []string
	for _, e := range eps {
		fl, err := pm.ParseFlags(e.Flags)
		if err != nil {
			out = append(out, fmt.Sprintf("Endpoints: %+v: %v", e, err))
		}
		origin := "policy"
		if e.Address == s.externalIP.String() {
			origin = "external"
		}
		if e.Origin != origin {
			out = append(out, fmt.Sprintf("Endpoints: %s has origin %q, want %q", e.Address, e.Origin, origin))
		}
		published = append(published, fmt.Sprintf("%s [%s]", e.Address, fl))
	}
	slices.Sort(published)
	if !slices.Equal(published, got) {
		out = append(out, fmt.Sprintf("the daemon's Endpoints property %q, the kernel's table %q", published, got))
	}
	return out
}

// wantEndpoints returns the table the endpoints policy should make: the
// external endpoint, and one per usable address of c0-c2 with its flags.
func (s *soak) wantEndpoints() []string {
	t := s.t
	links := soakLinks(t, s.cli)
	routes := map[string]map[string]bool{"inet": soakDefaultRoutes(t, s.cli, 4), "inet6": soakDefaultRoutes(t, s.cli, 6)}
	out := []string{s.external}
	for _, name := range []string{"c0", "c1", "c2"} {
		l, ok := links[name]
		if !ok || !l.carrier() || (s.conf.denyC2 && name == "c2") {
			continue
		}
		for _, a := range l.AddrInfo {
			if a.Scope != "global" || a.Tentative || a.Deprecated || a.Dadfailed {
				continue
			}
			if s.conf.requireDefaultRoute && !routes[a.Family][name] {
				continue
			}
			addr, err := netip.ParseAddr(a.Local)
			if err != nil {
				s.failf("ip addr: %q: %v", a.Local, err)
			}
			if addr == s.externalIP {
				continue // the external endpoint has it
			}
			flags := pm.FlagSubflow
			if name == "c1" && s.conf.c1Backup {
				flags |= pm.FlagBackup
			}
			out = append(out, fmt.Sprintf("%s [%s]", addr, flags))
		}
	}
	slices.Sort(out)
	return out
}
