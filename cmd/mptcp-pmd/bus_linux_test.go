package main

// Tests of the daemon against a bus that misbehaves: a subscriber that
// never reads, and a bus that goes away.

import (
	"bufio"
	"context"
	"errors"
	"net/netip"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mptcp-pmd/mptcp-pmd/dbusapi"
	"github.com/mptcp-pmd/mptcp-pmd/dbusapi/dbustest"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmnl"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
)

// stuckSubscriber is a Python client as uid 65534 that subscribes to the
// daemon's signals and never reads them.
const stuckSubscriber = `
import dbus, sys, time
bus = dbus.bus.BusConnection(sys.argv[1])
bus.add_match_string("type='signal',sender='org.mptcp.PathManager1'")
print("subscribed", flush=True)
time.sleep(3600)
`

// startStuckSubscriber runs stuckSubscriber on bus and waits until it has
// subscribed; it is killed when the test ends (or by the returned func).
func startStuckSubscriber(t *testing.T, bus *dbustest.Bus) func() {
	t.Helper()
	requirePython(t)
	cmd := bus.CommandAs(t, 65534, 65534, "/usr/bin/python3", "-c", stuckSubscriber, bus.Address())
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	kill := sync.OnceFunc(func() { cmd.Process.Kill(); cmd.Wait() })
	t.Cleanup(kill)
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "subscribed" {
		t.Fatalf("stuck subscriber: %q, %v", line, err)
	}
	return kill
}

// pinger pings the daemon every interval from its own connection and
// keeps the round-trip times.
type pinger struct {
	mu    sync.Mutex
	rtts  []time.Duration
	fails int
	errs  []error
	stop  chan struct{}
	done  chan struct{}
}

func startPinger(t *testing.T, bus *dbustest.Bus, interval time.Duration) *pinger {
	t.Helper()
	conn := bus.Dial(t)
	p := &pinger{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		obj := conn.Object(dbusapi.BusName, dbusapi.ManagerPath)
		for {
			select {
			case <-p.stop:
				return
			case <-time.After(interval):
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			start := time.Now()
			err := obj.CallWithContext(ctx, "org.freedesktop.DBus.Peer.Ping", 0).Err
			cancel()
			p.mu.Lock()
			if err != nil {
				p.fails++
				p.errs = append(p.errs, err)
			} else {
				p.rtts = append(p.rtts, time.Since(start))
			}
			p.mu.Unlock()
		}
	}()
	return p
}

// finish stops the pinger and returns the sorted round trips and the
// number of calls that failed or took more than 5 s.
func (p *pinger) finish() ([]time.Duration, int) {
	close(p.stop)
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	sort.Slice(p.rtts, func(i, j int) bool { return p.rtts[i] < p.rtts[j] })
	return p.rtts, p.fails
}

// rss returns a process's resident set in bytes.
func rss(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

// TestStuckSubscriber: a local user subscribes to the daemon's signals and
// never reads them, while 10,000 connections open and close, on a bus with
// small limits (the bus drops what a full client queue cannot take, before
// the daemon's own allowance is used up): the daemon keeps answering, its
// policy keeps making subflows, its memory stays bounded, and once the
// subscriber is gone a client reads the right state.
func TestStuckSubscriber(t *testing.T) {
	lab := pmtest.NewLab(t, pmtest.LabOptions{Paths: 2, ClientPM: "userspace"})
	bus := dbustest.StartBus(t, dbustest.SystemDefaults(), dbustest.ExtraConfig(`
  <limit name="max_incoming_bytes">4000000</limit>
  <limit name="max_outgoing_bytes">1000000</limit>`))
	cli, srv := lab.Client, lab.Server
	kev := listenKernel(t, cli)
	d := startDaemon(t, cli, bus, "--policy", "subflow-per-interface", "--log-level", "info")
	kill := startStuckSubscriber(t, bus)
	server := srv.Serve(t, netip.AddrPortFrom(srv.Addrs4[0], 0))
	p := startPinger(t, bus, 20*time.Millisecond)

	const churn = 10000
	start := time.Now()
	var maxRSS int64
	for i := range churn {
		c, err := cli.DialErr(cli.Addrs4[0], server)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("x"))
		c.Close()
		if i%1000 == 999 {
			maxRSS = max(maxRSS, rss(t, d.pid()))
		}
	}
	t.Logf("%d connections opened and closed in %v", churn, time.Since(start))
	// The policy still acts: a new connection gets its subflow.
	c := dial(t, cli, cli.Addrs4[0], server)
	waitSubflows(t, kev, connToken(t, kev, c, false), within(5*time.Second), "subflow while the subscriber is stuck",
		paths(server.Addr(), cli.Addrs4[1]))
	rtts, fails := p.finish()
	if fails > 0 || len(rtts) == 0 {
		t.Fatalf("Ping failed %d times (of %d) while the subscriber was stuck", fails, fails+len(rtts))
	}
	t.Logf("Ping during the churn: %d calls, median %v, p99 %v, max %v; daemon RSS at most %d MiB",
		len(rtts), rtts[len(rtts)/2], rtts[len(rtts)*99/100], rtts[len(rtts)-1], maxRSS>>20)
	// Liveness, not speed (the figures above are for the note): a Ping
	// that waits for seconds means the daemon was blocked.
	if worst := rtts[len(rtts)-1]; worst > 3*time.Second {
		t.Errorf("a Ping took %v: the daemon was blocked", worst)
	}
	limit := int64(100 << 20)
	if raceEnabled() {
		limit *= 4 // the race detector's shadow memory
	}
	if maxRSS > limit {
		t.Errorf("daemon RSS reached %d MiB", maxRSS>>20)
	}
	kill()
	eventually(t, reaction, "objects equal to the kernel's connections once the subscriber is gone", func() bool {
		return slices.Equal(d.objectTokens(t), listed(t, cli))
	})
}

// TestBusLoss: when dbus-daemon goes away, the daemon exits with status 1
// and says why, within a second, instead of running on unreachable.
func TestBusLoss(t *testing.T) {
	lab := pmtest.NewLab(t, pmtest.LabOptions{Paths: 1})
	bus := dbustest.StartBus(t, dbustest.SystemDefaults())
	cli := lab.Client
	k, err := pmnl.Dial(&pmnl.Config{NetNS: cli.NSFD()})
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	want := []string{cli.Addrs4[0].String() + " [subflow]", cli.Addrs6[0].String() + " [subflow]"}
	slices.Sort(want)
	d := startDaemon(t, cli, bus, "--policy", "endpoints")
	eventually(t, reaction, "the policy's endpoints", func() bool { return slices.Equal(endpointTable(t, k), want) })
	start := time.Now()
	bus.Kill()
	code, err := d.wait(t, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("the daemon exited %v after the bus went", time.Since(start))
	if code != 1 || !strings.Contains(d.log.String(), "lost the connection to the system bus") {
		t.Errorf("exit status %d, log:\n%s", code, d.log.String())
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("the daemon took %v to notice that the bus went", took)
	}
	// An exit for a restart keeps the policy's endpoints (remove_on_exit
	// is for a clean stop).
	if got := endpointTable(t, k); !slices.Equal(got, want) {
		t.Errorf("endpoints after the exit: %v, want %v", got, want)
	}
	// Restarted on the new bus, as systemd would, it finds its state.
	bus.Restart(t)
	d = startDaemon(t, cli, bus, "--policy", "endpoints")
	out, _, code := ctl(t, bus, "endpoints", "--json")
	if code != 0 || strings.Count(strings.Join(strings.Fields(out), ""), `"origin":"policy"`) != 2 {
		t.Errorf("endpoints after the restart (want both of origin policy): %d\n%s", code, out)
	}
	if got := endpointTable(t, k); !slices.Equal(got, want) {
		t.Errorf("endpoints after the restart: %v, want %v", got, want)
	}
}

// wait waits for the daemon to exit by itself, at most timeout, and
// returns its exit status; the end of the test then expects nothing more
// of it.
func (d *testDaemon) wait(tb testing.TB, timeout time.Duration) (int, error) {
	tb.Helper()
	var code int
	var err error
	d.stopOnce.Do(func() {
		select {
		case <-d.done:
			code = d.cmd.ProcessState.ExitCode()
		case <-time.After(timeout):
			d.cmd.Process.Kill()
			<-d.done
			err = errors.New("the daemon did not exit within " + timeout.String())
		}
	})
	return code, err
}

// TestStuckBusRestarts: on a bus whose limits let a client that never
// reads hold the daemon's whole allowance (dbus-daemon's defaults: equal
// max_incoming_bytes and max_outgoing_bytes), the bus stops reading the
// daemon and no reply can get out. The daemon notices, exits with the
// reason for its service manager to restart it, and the new process is
// not stuck: the bus now drops what the full client queue cannot take.
func TestStuckBusRestarts(t *testing.T) {
	lab := pmtest.NewLab(t, pmtest.LabOptions{Paths: 1})
	bus := dbustest.StartBus(t, dbustest.SystemDefaults(), dbustest.ExtraConfig(`
  <limit name="max_incoming_bytes">1000000</limit>
  <limit name="max_outgoing_bytes">1000000</limit>`))
	cli, srv := lab.Client, lab.Server
	d := startDaemon(t, cli, bus, "--log-level", "info")
	startStuckSubscriber(t, bus)
	server := srv.Serve(t, netip.AddrPortFrom(srv.Addrs4[0], 0))
	churn := func(n int) {
		for range n {
			c, err := cli.DialErr(cli.Addrs4[0], server)
			if err != nil {
				t.Fatal(err)
			}
			c.Close()
		}
	}
	// Churn until the daemon's replies no longer get out, then wait.
	ping := bus.Dial(t).Object(dbusapi.BusName, dbusapi.ManagerPath)
	start := time.Now()
	for {
		churn(300)
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		err := ping.CallWithContext(ctx, "org.freedesktop.DBus.Peer.Ping", 0).Err
		cancel()
		if err != nil {
			t.Logf("the bus stopped reading the daemon %v after the churn began: %v", time.Since(start), err)
			break
		}
		if time.Since(start) > 30*time.Second {
			t.Fatal("the bus never stopped reading the daemon: the test proves nothing")
		}
	}
	code, err := d.wait(t, stallLimit+busCloseWait+5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if code != 1 || !strings.Contains(d.log.String(), "has not taken a message") {
		t.Fatalf("exit status %d, log:\n%s", code, tail(d.log.String(), 20))
	}
	t.Logf("the daemon exited %v after the churn began", time.Since(start))
	// The bus does not notice the hang-up of a connection it stopped
	// reading until it writes to it: the name may still be the dead
	// process's. The new daemon pings the owner to make the bus notice.
	// (startDaemon returns at once: the name has an owner.)
	d = startDaemon(t, cli, bus, "--log-level", "info")
	check := bus.Dial(t).BusObject()
	eventually(t, 10*time.Second, "the new daemon owns the name", func() bool {
		var pid uint32
		return check.Call("org.freedesktop.DBus.GetConnectionUnixProcessID", 0, dbusapi.BusName).Store(&pid) == nil &&
			int(pid) == d.pid()
	})
	p := startPinger(t, bus, 20*time.Millisecond)
	churn(3000)
	rtts, fails := p.finish()
	if fails > 0 || len(rtts) == 0 {
		t.Fatalf("after the restart, Ping failed %d times (of %d) with the subscriber still stuck: %v", fails, fails+len(rtts), p.errs)
	}
	t.Logf("after the restart: Ping median %v, max %v", rtts[len(rtts)/2], rtts[len(rtts)-1])
}
