package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/mptcp-pmd/mptcp-pmd/dbusapi"
	"github.com/mptcp-pmd/mptcp-pmd/dbusapi/dbustest"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
)

// statsClient is a Python MPTCP client: it connects from argv[1] to
// argv[2]:argv[3], sends "hello\n", prints "connected", waits for a line on its standard
// input, sends argv[4] bytes in chunks of 64 KiB, prints "sent", and keeps
// the connection open until its standard input closes.
const statsClient = `
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
s.bind((sys.argv[1], 0))
s.connect((sys.argv[2], int(sys.argv[3])))
s.sendall(b"hello\n")  # the connection is established with the first data
print("connected", flush=True)
sys.stdin.readline()
left = int(sys.argv[4])
chunk = b"x" * 65536
while left > 0:
    left -= s.send(chunk[:min(left, len(chunk))])
print("sent", flush=True)
sys.stdin.read()
`

// cgroupClient is statsClient run in a cgroup of the test's.
type cgroupClient struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  *bufio.Reader
	cgroup string // its path in the hierarchy ("/mptcp-pmd-test-123")
}

// startCgroupClient makes the cgroup name under the cgroup v2 hierarchy
// (removed when the test ends) and runs statsClient in it, in the lab's
// client namespace, sending size bytes to server; it returns once the
// client says it is connected.
func startCgroupClient(t *testing.T, cli *pmtest.Host, name string, server netip.AddrPort, size int) *cgroupClient {
	t.Helper()
	pmtest.RequireProgram(t, pythonPath)
	root := cgroup2Mount()
	if root == "" {
		pmtest.Unavailable(t, "no cgroup v2 hierarchy is mounted")
	}
	cg := filepath.Join(root, name)
	if err := os.Mkdir(cg, 0o755); err != nil {
		pmtest.Unavailable(t, "cannot make a cgroup: %v", err)
	}
	t.Cleanup(func() { os.Remove(cg) })
	// The shell moves itself into the cgroup, then becomes the client.
	cmd := exec.Command("sh", "-c", `echo $$ > "$0/cgroup.procs" && exec ip netns exec "$1" "$2" -c "$3" "$4" "$5" "$6" "$7"`,
		cg, cli.Name, pythonPath, statsClient, cli.Addrs4[0].String(), server.Addr().String(), strconv.Itoa(int(server.Port())), strconv.Itoa(size))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); cmd.Wait() })
	c := &cgroupClient{cmd: cmd, stdin: stdin, lines: bufio.NewReader(stdout), cgroup: strings.TrimPrefix(cg, root)}
	c.expect(t, "connected")
	return c
}

// expect reads the client's next line and fails the test unless it is
// want.
func (c *cgroupClient) expect(t *testing.T, want string) {
	t.Helper()
	if line, err := c.lines.ReadString('\n'); err != nil || strings.TrimSpace(line) != want {
		t.Fatalf("the client: %q, %v; want %q", line, err, want)
	}
}

// TestStatistics: a program in a cgroup of the test's sends 4 MB over a
// connection with two subflows; Connection.GetStatistics reports the bytes
// of each subflow (some on each), adding up to what it sent (the peer acknowledged them all,
// a little more for retransmissions), the program as the owner (process,
// cgroup), and Manager.GetStatistics has the connection too.
func TestStatistics(t *testing.T) {
	const total = 4 << 20
	s := newSetup(t, pmtest.LabOptions{Paths: 2, ClientPM: "userspace"})
	cli, srv := s.lab.Client, s.lab.Server
	d := startDaemon(t, cli, s.bus, "--policy", "subflow-per-interface")
	server := srv.Serve(t, netip.AddrPortFrom(srv.Addrs4[0], 0))
	client := startCgroupClient(t, cli, fmt.Sprintf("mptcp-pmd-test-%d", os.Getpid()), server, total)
	cmd := client.cmd
	var path dbus.ObjectPath
	eventually(t, 5*time.Second, "the connection object with its second subflow", func() bool {
		for p, c := range d.managedObjects(t) {
			if c.LocalAddress == cli.Addrs4[0].String() && c.RemotePort == server.Port() && len(c.Subflows) == 1 {
				path = p
				return true
			}
		}
		return false
	})
	if _, err := client.stdin.Write([]byte("go\n")); err != nil {
		t.Fatal(err)
	}
	client.expect(t, "sent")
	var st map[string]dbus.Variant
	eventually(t, 10*time.Second, "every byte acknowledged on two subflows", func() bool {
		if err := d.obj(path).Call(dbusapi.ConnectionInterface+".GetStatistics", 0).Store(&st); err != nil {
			t.Fatal(err)
		}
		sfs, _ := st["subflows"].Value().([]map[string]dbus.Variant)
		acked, _ := st["bytes_acked"].Value().(uint64)
		return len(sfs) == 2 && acked >= total
	})
	sfs := st["subflows"].Value().([]map[string]dbus.Variant)
	var sum uint64
	for _, sf := range sfs {
		n := sf["bytes_acked"].Value().(uint64)
		t.Logf("subflow %v:%v -> %v:%v dev %q: %d bytes acknowledged, rtt %v µs, cwnd %v",
			sf["local_address"].Value(), sf["local_port"].Value(), sf["remote_address"].Value(), sf["remote_port"].Value(),
			sf["interface"].Value(), n, sf["rtt_us"].Value(), sf["cwnd"].Value())
		// How the kernel's scheduler splits the data is its own choice:
		// under load the second subflow was seen to carry 0.5% of it. That
		// each one reports its own bytes, and that they add up, is ours.
		if n == 0 {
			t.Errorf("subflow %v reports no bytes acknowledged", sf["local_address"].Value())
		}
		sum += n
	}
	if sum < total || sum > total+total/20 {
		t.Errorf("the subflows' acknowledged bytes add up to %d, the program sent %d", sum, total)
	}
	if got := st["bytes_sent"].Value().(uint64); got < total || got > total+total/20 {
		t.Errorf("bytes_sent %d, the program sent %d", got, total)
	}
	wantCgroup := client.cgroup
	if st["cgroup"].Value() != wantCgroup || st["pid"].Value() != uint32(cmd.Process.Pid) || st["command"].Value() != "python3" {
		t.Errorf("owner: cgroup %v (want %s), pid %v (want %d), command %v", st["cgroup"].Value(), wantCgroup,
			st["pid"].Value(), cmd.Process.Pid, st["command"].Value())
	}

	// What a user sees.
	num := string(path[strings.LastIndexByte(string(path), '/')+1:])
	out, _, code := ctl(t, s.bus, "connection", "show", num, "--stats")
	if code != 0 || !strings.Contains(out, "Owner:") || !strings.Contains(out, fmt.Sprintf("python3 (pid %d)", cmd.Process.Pid)) ||
		!regexp.MustCompile(`(?m)^Per subflow: +2$`).MatchString(out) {
		t.Errorf("mptcpctl connection show %s --stats (exit %d):\n%s", num, code, out)
	}
	if testing.Verbose() {
		t.Logf("$ mptcpctl connection show %s --stats\n%s", num, out)
	}

	start := time.Now()
	var all map[dbus.ObjectPath]map[string]dbus.Variant
	if err := d.obj(dbusapi.ManagerPath).Call(dbusapi.ManagerInterface+".GetStatistics", 0).Store(&all); err != nil {
		t.Fatal(err)
	}
	t.Logf("Manager.GetStatistics: %d connections in %v", len(all), time.Since(start).Round(time.Microsecond))
	if got := all[path]; got == nil || got["cgroup_id"].Value() != st["cgroup_id"].Value() || got["cgroup_id"].Value() == uint64(0) {
		t.Errorf("Manager.GetStatistics[%s] = %v", path, got)
	}
}

// BenchmarkStatistics10000 measures Manager.GetStatistics with 10000 live
// connections, read by a godbus client that decodes the reply (ms/call)
// and by a client that only reads it (raw-ms/call: the daemon and the
// bus), and the daemon's own share (its CPU time per godbus call);
// interleaved with a Peer.Ping round trip as the baseline.
func BenchmarkStatistics10000(b *testing.B) {
	const n = 10000
	lab := pmtest.NewLab(b, pmtest.LabOptions{Paths: 1})
	bus := dbustest.StartBus(b, dbustest.SystemDefaults())
	openHeld(b, lab, n)
	d := startDaemon(b, lab.Client, bus)
	eventually(b, 30*time.Second, "every connection object", func() bool { return len(d.objectTokens(b)) == n })
	var call, raw, ping, cpu time.Duration
	var size int
	b.ResetTimer()
	for range b.N {
		// Each call lists the sockets anew: the daemon shares a listing
		// between the calls of statsMaxAge.
		time.Sleep(statsMaxAge)
		r, sz := rawCall(b, bus.Address(), dbusapi.ManagerInterface, "GetStatistics")
		raw += r
		size = sz
		t0 := time.Now()
		if err := d.conn.Object(dbusapi.BusName, "/").Call("org.freedesktop.DBus.Peer.Ping", 0).Err; err != nil {
			b.Fatal(err)
		}
		ping += time.Since(t0)
		time.Sleep(statsMaxAge)
		c0 := procCPU(b, d.pid())
		t1 := time.Now()
		var all map[dbus.ObjectPath]map[string]dbus.Variant
		if err := d.obj(dbusapi.ManagerPath).Call(dbusapi.ManagerInterface+".GetStatistics", 0).Store(&all); err != nil {
			b.Fatal(err)
		}
		call += time.Since(t1)
		cpu += procCPU(b, d.pid()) - c0
		if len(all) != n {
			b.Fatalf("%d connections in the statistics, want %d", len(all), n)
		}
	}
	b.ReportMetric(float64(call.Milliseconds())/float64(b.N), "ms/call")
	b.ReportMetric(float64(raw.Milliseconds())/float64(b.N), "raw-ms/call")
	b.ReportMetric(float64(size)/1e6, "reply-MB")
	b.ReportMetric(float64(cpu.Milliseconds())/float64(b.N), "daemon-cpu-ms/call")
	b.ReportMetric(float64(call)/float64(ping), "call/ping")
}

// TestCounterIncreased: an MPTCP connection to a plain TCP listener falls
// back (MPCapableFallbackSYNACK grows in the client's namespace): the
// daemon signals CounterIncreased, once within the quiet time however
// often it grows; mptcpctl counters shows the counter.
func TestCounterIncreased(t *testing.T) {
	s := newSetup(t, pmtest.LabOptions{Paths: 1})
	cli, srv := s.lab.Client, s.lab.Server
	startDaemon(t, cli, s.bus, "--counter-interval", "100ms")
	var ln net.Listener
	if err := srv.Do(func() (err error) {
		var lc net.ListenConfig
		lc.SetMultipathTCP(false) // plain TCP (Go listens with MPTCP by default)
		ln, err = lc.Listen(context.Background(), "tcp", netip.AddrPortFrom(srv.Addrs4[0], 0).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	fallback := func() {
		t.Helper()
		if err := cli.Do(func() error {
			d := net.Dialer{Timeout: 5 * time.Second}
			d.SetMultipathTCP(true)
			c, err := d.Dial("tcp", ln.Addr().String())
			if err == nil {
				c.Close()
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	mark := s.rec.mark()
	fallback()
	sig := s.rec.waitAfter(t, mark, "CounterIncreased", func(sig *dbus.Signal) bool {
		return sig.Name == dbusapi.ManagerInterface+".CounterIncreased" && sig.Body[0] == "MPCapableFallbackSYNACK"
	})
	if sig.Body[2] != uint64(1) {
		t.Errorf("CounterIncreased %v: want an increase of 1", sig.Body)
	}
	mark = s.rec.mark()
	fallback()
	time.Sleep(time.Second)
	for _, sig := range s.rec.signals(mark) {
		if sig.Name == dbusapi.ManagerInterface+".CounterIncreased" {
			t.Errorf("a second CounterIncreased within the quiet time: %v", sig.Body)
		}
	}
	out, _, code := ctl(t, s.bus, "counters")
	if code != 0 || !regexp.MustCompile(`(?m)^MPTcpExtMPCapableFallbackSYNACK +2$`).MatchString(out) {
		t.Errorf("mptcpctl counters (exit %d):\n%s", code, out)
	}

	// The bug report has them too, and the rest.
	report := filepath.Join(t.TempDir(), "report.txt")
	if out, errOut, code := ctl(t, s.bus, "diagnose", "--output", report); code != 0 || !strings.Contains(out, "wrote "+report) {
		t.Fatalf("mptcpctl diagnose (exit %d): %s %s", code, out, errOut)
	}
	b, err := os.ReadFile(report)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"===== kernel =====", "===== net.mptcp sysctls =====", "enabled = 1",
		"===== the daemon =====", `"policy": "none"`, "MPTcpExtMPCapableFallbackSYNACK 2", "===== ss -Mni ====="} {
		if !strings.Contains(string(b), want) {
			t.Errorf("the report lacks %q:\n%s", want, b)
		}
	}
}

// TestRulesByPortAndCgroup: a rule by port and a rule by cgroup each give
// the connections they match no extra subflow (policy none), while another
// connection gets its subflow from the daemon's policy; the statistics
// name the rule.
func TestRulesByPortAndCgroup(t *testing.T) {
	s := newSetup(t, pmtest.LabOptions{Paths: 2, ClientPM: "userspace"})
	cli, srv := s.lab.Client, s.lab.Server
	quiet := srv.Serve(t, netip.AddrPortFrom(srv.Addrs4[0], 0))
	other := srv.Serve(t, netip.AddrPortFrom(srv.Addrs4[0], 0))
	d := startDaemon(t, cli, s.bus, "--policy", "subflow-per-interface", configArg(t, fmt.Sprintf(`
[[rules]]
name = "quiet-port"
port = %d
policy = "none"

[[rules]]
name = "quiet-cgroup"
cgroup = "/mptcp-pmd-rules-*"
policy = "none"
`, quiet.Port())))

	byPort := dial(t, cli, cli.Addrs4[0], quiet)
	plain := dial(t, cli, cli.Addrs4[0], other)
	startCgroupClient(t, cli, fmt.Sprintf("mptcp-pmd-rules-%d", os.Getpid()), other, 1000)
	ports := map[uint16]string{
		addrPort(t, byPort.LocalAddr()).Port(): "quiet-port",
		addrPort(t, plain.LocalAddr()).Port():  "",
	}
	var objs map[dbus.ObjectPath]connObject
	eventually(t, 5*time.Second, "the plain connection's subflow", func() bool {
		objs = d.managedObjects(t)
		for _, c := range objs {
			if c.LocalPort == addrPort(t, plain.LocalAddr()).Port() {
				return len(c.Subflows) == 1
			}
		}
		return false
	})
	time.Sleep(500 * time.Millisecond) // the others had their chance
	objs = d.managedObjects(t)
	if len(objs) != 3 {
		t.Fatalf("%d connection objects, want 3", len(objs))
	}
	for path, c := range objs {
		want, known := ports[c.LocalPort]
		if !known {
			want = "quiet-cgroup" // the Python client's
		}
		if n := len(c.Subflows); (want == "") != (n == 1) {
			t.Errorf("connection from port %d (rule %q): %d extra subflows", c.LocalPort, want, n)
		}
		var st map[string]dbus.Variant
		if err := d.obj(path).Call(dbusapi.ConnectionInterface+".GetStatistics", 0).Store(&st); err != nil {
			t.Fatal(err)
		}
		if st["rule"].Value() != want {
			t.Errorf("connection from port %d: statistics say rule %v, want %q", c.LocalPort, st["rule"].Value(), want)
		}
	}
}

// BenchmarkStatisticsLoad measures whether statistics calls slow the
// reaction path: two labs run the subflow-per-interface daemon, each with
// STATS_HELD (default 2000) live connections; in one ("polled") a client
// calls Manager.GetStatistics every STATS_INTERVAL (default 1 s, the rate
// of mptcpctl top; 1ms makes it call back to back), reading the replies
// without decoding them. New connections are interleaved between the labs
// one by one, as in BenchmarkLab (LAB_CONNS per lab, default 600). It
// reports, per lab, the median and 99th percentile from ESTABLISHED to
// the first and to both extra subflows, and the polled lab's as ratios to
// the other's.
func BenchmarkStatisticsLoad(b *testing.B) {
	conns, held, interval := 600, 2000, time.Second
	if v, err := strconv.Atoi(os.Getenv("LAB_CONNS")); err == nil && v > 0 {
		conns = v
	}
	if v, err := strconv.Atoi(os.Getenv("STATS_HELD")); err == nil && v >= 0 {
		held = v
	}
	if v, err := time.ParseDuration(os.Getenv("STATS_INTERVAL")); err == nil && v > 0 {
		interval = v
	}
	var modes []*labMode
	var buses []*dbustest.Bus
	for _, name := range []string{"quiet", "polled"} {
		m := newLabMode(b, name, "userspace")
		openHeld(b, m.lab, held)
		bus := dbustest.StartBus(b, dbustest.SystemDefaults())
		d := startDaemon(b, m.lab.Client, bus, "--policy", "subflow-per-interface", "--log-level", "warn")
		eventually(b, 60*time.Second, name+": every held connection's object", func() bool { return len(d.objectTokens(b)) == held })
		m.pid = d.pid()
		modes, buses = append(modes, m), append(buses, bus)

	}
	stop := make(chan struct{})
	var calls int
	var callTime time.Duration
	var size int
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			d, n := rawCall(b, buses[1].Address(), dbusapi.ManagerInterface, "GetStatistics")
			calls, callTime, size = calls+1, callTime+d, n
		}
	}()
	for b.Loop() {
		interleave(b, modes, conns, 2*time.Millisecond)
	}
	close(stop)
	<-done
	if calls == 0 {
		b.Fatal("no statistics call was made")
	}
	quiet, polled := modes[0], modes[1]
	var table strings.Builder
	fmt.Fprintf(&table, "%d connections per lab beside %d live ones; %d GetStatistics calls to the polled daemon (every %v), %.1f ms and %.2f MB each\n",
		conns, held, calls, interval, float64(callTime.Microseconds())/1000/float64(calls), float64(size)/1e6)
	fmt.Fprintf(&table, "%-8s %9s %9s %9s %9s\n", "lab", "1st p50", "1st p99", "both p50", "both p99")
	for _, m := range modes {
		fmt.Fprintf(&table, "%-8s %9.0f %9.0f %9.0f %9.0f\n", m.name,
			quantileUS(m.first, .5), quantileUS(m.first, .99), quantileUS(m.both, .5), quantileUS(m.both, .99))
	}
	for _, x := range []struct {
		name string
		p    float64
		f    func(*labMode) []time.Duration
	}{
		{"first-p50", .5, func(m *labMode) []time.Duration { return m.first }},
		{"first-p99", .99, func(m *labMode) []time.Duration { return m.first }},
		{"both-p50", .5, func(m *labMode) []time.Duration { return m.both }},
		{"both-p99", .99, func(m *labMode) []time.Duration { return m.both }},
	} {
		r := quantileUS(x.f(polled), x.p) / quantileUS(x.f(quiet), x.p)
		fmt.Fprintf(&table, "polled/quiet %s: %.2f\n", x.name, r)
		b.ReportMetric(r, "polled/quiet-"+x.name)
	}
	b.ReportMetric(float64(calls), "stats-calls")
	b.Log("\n" + table.String())
}
