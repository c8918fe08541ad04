package pmtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// LabOptions shape a lab.
type LabOptions struct {
	Paths    int    // veth pairs between the namespaces, 1..3; 0 means 2
	ClientPM string // path manager of the client namespace: "kernel" (default) or "userspace"
	ServerPM string // likewise for the server namespace
}

// Lab is two network namespaces, a client and a server, joined by veth
// pairs. Path i joins client interface "ci" (10.55.i.1/24, fd00:55:i::1/64)
// to server interface "si" (10.55.i.2/24, fd00:55:i::2/64). The client has
// source-address policy routing, so a subflow bound to 10.55.i.1 leaves
// through path i whatever its destination. Both namespaces allow 8 subflows
// and 8 accepted ADD_ADDRs and have no endpoints.
type Lab struct {
	Client, Server *Host
}

// Host is one network namespace of a lab.
type Host struct {
	Name   string       // the namespace's name for `ip netns`
	Ifaces []string     // veth names by path index
	Addrs4 []netip.Addr // IPv4 address of each path
	Addrs6 []netip.Addr // IPv6 address of each path

	fd       netns.NsHandle
	attached bool // the namespace is another's (AttachNamespace): never kill its processes
	mu       sync.Mutex
	fns      []func()
}

// NewLab builds a lab, or skips the test (fails it in CI) when this machine
// cannot. Everything it made is removed when the test ends, pass or fail.
func NewLab(tb testing.TB, opts LabOptions) *Lab {
	tb.Helper()
	RequireLab(tb)
	paths := opts.Paths
	if paths == 0 {
		paths = 2
	}
	if paths < 1 || paths > 3 {
		tb.Fatalf("pmtest: lab paths must be 1..3, got %d", paths)
	}
	prefix := uniquePrefix(tb)
	cli := newHost(tb, prefix+"-cli")
	srv := newHost(tb, prefix+"-srv")
	for i := 0; i < paths; i++ {
		c, s := fmt.Sprintf("c%d", i), fmt.Sprintf("s%d", i)
		run(tb, "ip", "-n", cli.Name, "link", "add", c, "type", "veth", "peer", "name", s, "netns", srv.Name)
		for _, side := range []struct {
			h     *Host
			ifc   string
			host  int
			other int
		}{{cli, c, 1, 2}, {srv, s, 2, 1}} {
			a4 := netip.AddrFrom4([4]byte{10, 55, byte(i), byte(side.host)})
			a6 := netip.MustParseAddr(fmt.Sprintf("fd00:55:%d::%d", i, side.host))
			side.h.Run(tb, "sysctl", "-qw", "net.ipv4.conf."+side.ifc+".rp_filter=0")
			side.h.Run(tb, "ip", "addr", "add", a4.String()+"/24", "dev", side.ifc)
			side.h.Run(tb, "ip", "-6", "addr", "add", a6.String()+"/64", "dev", side.ifc, "nodad")
			side.h.Run(tb, "ip", "link", "set", side.ifc, "up")
			side.h.Ifaces = append(side.h.Ifaces, side.ifc)
			side.h.Addrs4 = append(side.h.Addrs4, a4)
			side.h.Addrs6 = append(side.h.Addrs6, a6)
		}
		table, pref := fmt.Sprint(100+i), fmt.Sprint(1000+i)
		cli.Run(tb, "ip", "route", "replace", "default", "via", fmt.Sprintf("10.55.%d.2", i), "dev", c, "table", table)
		cli.Run(tb, "ip", "-6", "route", "replace", "default", "via", fmt.Sprintf("fd00:55:%d::2", i), "dev", c, "table", table)
		cli.Run(tb, "ip", "rule", "add", "pref", pref, "from", fmt.Sprintf("10.55.%d.1", i), "table", table)
		cli.Run(tb, "ip", "-6", "rule", "add", "pref", pref, "from", fmt.Sprintf("fd00:55:%d::1", i), "table", table)
	}
	cli.SetPathManager(tb, orDefault(opts.ClientPM, "kernel"))
	srv.SetPathManager(tb, orDefault(opts.ServerPM, "kernel"))
	for _, h := range []*Host{cli, srv} {
		h.Run(tb, "ip", "mptcp", "limits", "set", "subflows", "8", "add_addr_accepted", "8")
		h.waitCarrier(tb)
	}
	return &Lab{Client: cli, Server: srv}
}

// NewNamespace makes one fresh network namespace with loopback up, MPTCP
// enabled and no other link; it is removed when the test ends.
func NewNamespace(tb testing.TB) *Host {
	tb.Helper()
	RequireLab(tb)
	return newHost(tb, uniquePrefix(tb)+"-ns")
}

// AttachNamespace returns a Host for the network namespace of process pid,
// which someone else made (a container's, say), under a name of its own for
// `ip netns`. When the test ends the name goes; the namespace and its
// processes are left alone, and its settings are not changed.
func AttachNamespace(tb testing.TB, pid int) *Host {
	tb.Helper()
	RequireLab(tb)
	name := uniquePrefix(tb) + "-att"
	run(tb, "ip", "netns", "attach", name, fmt.Sprint(pid))
	h := &Host{Name: name, fd: -1, attached: true}
	tb.Cleanup(h.destroy)
	fd, err := netns.GetFromName(name)
	if err != nil {
		tb.Fatalf("pmtest: open namespace %s: %v", name, err)
	}
	h.fd = fd
	return h
}

func newHost(tb testing.TB, name string) *Host {
	tb.Helper()
	run(tb, "ip", "netns", "add", name)
	h := &Host{Name: name, fd: -1}
	tb.Cleanup(h.destroy)
	fd, err := netns.GetFromName(name)
	if err != nil {
		tb.Fatalf("pmtest: open namespace %s: %v", name, err)
	}
	h.fd = fd
	h.Run(tb, "ip", "link", "set", "lo", "up")
	for _, kv := range []string{
		"net.mptcp.enabled=1",
		"net.ipv4.conf.all.rp_filter=0",
		"net.ipv4.conf.default.rp_filter=0",
		"net.ipv6.conf.all.accept_dad=0",
		"net.ipv6.conf.default.accept_dad=0",
		"net.ipv6.conf.all.accept_ra=0",
		"net.ipv6.conf.default.accept_ra=0",
	} {
		h.Run(tb, "sysctl", "-qw", kv)
	}
	return h
}

// NSFD returns a file descriptor of the namespace, for netlink.Config.NetNS
// or netns.NsHandle. It stays valid until the test's cleanup.
func (h *Host) NSFD() int { return int(h.fd) }

// Do runs fn on a locked OS thread switched into the namespace. Sockets fn
// opens belong to the namespace for their whole life.
func (h *Host) Do(fn func() error) error {
	errc := make(chan error, 1)
	// A fresh goroutine whose thread is discarded if it cannot switch back,
	// so no other goroutine ever runs in the wrong namespace.
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("pmtest: current namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(h.fd); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("pmtest: enter namespace %s: %w", h.Name, err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("pmtest: leave namespace %s: %w", h.Name, err))
			return // the thread stays locked and dies with the goroutine
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Run runs a program inside the namespace and returns its combined output;
// a failure ends the test.
func (h *Host) Run(tb testing.TB, args ...string) string {
	tb.Helper()
	return run(tb, append([]string{"ip", "netns", "exec", h.Name}, args...)...)
}

// SetPathManager selects the namespace's MPTCP path manager, "kernel" or
// "userspace". Connections keep the one in force when they were created.
func (h *Host) SetPathManager(tb testing.TB, pm string) {
	tb.Helper()
	t := map[string]string{"kernel": "0", "userspace": "1"}[pm]
	if t == "" {
		tb.Fatalf("pmtest: path manager must be kernel or userspace, got %q", pm)
	}
	h.Run(tb, "sysctl", "-qw", "net.mptcp.pm_type="+t)
}

// Server is an MPTCP listener that Listen opened in a namespace.
type Server struct {
	Addr     netip.AddrPort // the address it is bound to
	accepted chan struct{}
}

// Accepted gets a value for each connection the server accepted (it drops
// values nobody reads beyond 64). A test that needs the peer's in-kernel
// path manager to open joins from the server side waits for it: until its
// application accepts a connection, the kernel cannot create subflows for
// it (MPJoinSynTxCreatSkErr) and does not try again.
func (s *Server) Accepted() <-chan struct{} { return s.accepted }

// Serve is Listen that returns only the address.
func (h *Host) Serve(tb testing.TB, addr netip.AddrPort) netip.AddrPort {
	tb.Helper()
	return h.Listen(tb, addr).Addr
}

// Listen opens an MPTCP listener on addr inside the namespace that accepts
// connections, discards what they send and closes each one when its client
// does, so a client's close ends the connection at both ends. Port 0 picks
// a port. Everything is closed when the test ends.
func (h *Host) Listen(tb testing.TB, addr netip.AddrPort) *Server {
	tb.Helper()
	var ln net.Listener
	err := h.Do(func() (err error) {
		var lc net.ListenConfig
		lc.SetMultipathTCP(true)
		ln, err = lc.Listen(context.Background(), "tcp", addr.String())
		return err
	})
	if err != nil {
		tb.Fatalf("pmtest: listen on %s in %s: %v", addr, h.Name, err)
	}
	srv := &Server{Addr: netip.MustParseAddrPort(ln.Addr().String()), accepted: make(chan struct{}, 64)}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]bool{}
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			select {
			case srv.accepted <- struct{}{}:
			default:
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				io.Copy(io.Discard, c)
				c.Close()
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
			}()
		}
	}()
	h.onCleanup(tb, func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return srv
}

// Dial opens an MPTCP connection inside the namespace from local (the
// invalid Addr means any) to remote. The connection is closed when the test
// ends; the test fails if it cannot be made or does not use MPTCP.
func (h *Host) Dial(tb testing.TB, local netip.Addr, remote netip.AddrPort) net.Conn {
	tb.Helper()
	c, err := h.DialErr(local, remote)
	if err != nil {
		tb.Fatal(err)
	}
	h.onCleanup(tb, func() { c.Close() })
	return c
}

// DialErr is Dial for a goroutine other than the test's: it returns the
// error, and the caller closes the connection.
func (h *Host) DialErr(local netip.Addr, remote netip.AddrPort) (net.Conn, error) {
	var c net.Conn
	err := h.Do(func() (err error) {
		d := net.Dialer{Timeout: 5 * time.Second}
		d.SetMultipathTCP(true)
		if local.IsValid() {
			d.LocalAddr = &net.TCPAddr{IP: local.AsSlice()}
		}
		c, err = d.Dial("tcp", remote.String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("pmtest: dial %s from %s in %s: %w", remote, local, h.Name, err)
	}
	if tc, ok := c.(*net.TCPConn); ok {
		if mp, err := tc.MultipathTCP(); err != nil || !mp {
			c.Close()
			return nil, fmt.Errorf("pmtest: connection to %s fell back to TCP (mptcp=%v, %v)", remote, mp, err)
		}
	}
	return c, nil
}

// onCleanup registers fn to run before the namespace goes, and with the test.
func (h *Host) onCleanup(tb testing.TB, fn func()) {
	var once sync.Once
	f := func() { once.Do(fn) }
	h.mu.Lock()
	h.fns = append(h.fns, f)
	h.mu.Unlock()
	tb.Cleanup(f)
}

func (h *Host) waitCarrier(tb testing.TB) {
	tb.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for _, ifc := range h.Ifaces {
		for {
			out := h.Run(tb, "ip", "-br", "link", "show", "dev", ifc)
			if strings.Contains(out, " UP ") {
				break
			}
			if time.Now().After(deadline) {
				tb.Fatalf("pmtest: %s in %s has no carrier: %s", ifc, h.Name, out)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// destroy ends what runs in the namespace and deletes it. It never fails
// the test: a namespace that cannot be deleted is reported on stderr.
func (h *Host) destroy() {
	h.mu.Lock()
	fns := h.fns
	h.fns = nil
	h.mu.Unlock()
	for i := len(fns) - 1; i >= 0; i-- {
		fns[i]()
	}
	if out, err := exec.Command("ip", "netns", "pids", h.Name).Output(); err == nil && !h.attached {
		for _, f := range strings.Fields(string(out)) {
			var pid int
			if _, err := fmt.Sscan(f, &pid); err == nil {
				if p, err := os.FindProcess(pid); err == nil {
					p.Kill()
				}
			}
		}
	}
	if h.fd >= 0 {
		h.fd.Close()
	}
	if out, err := exec.Command("ip", "netns", "del", h.Name).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "pmtest: delete namespace %s: %v: %s\n", h.Name, err, out)
	}
}

func run(tb testing.TB, args ...string) string {
	tb.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		tb.Fatalf("pmtest: %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func uniquePrefix(tb testing.TB) string {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		tb.Fatalf("pmtest: random: %v", err)
	}
	return "pmt" + hex.EncodeToString(b[:])
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
