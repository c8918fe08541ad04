package pmtest

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// serverEnv makes a test binary a server process instead of running its
// tests (HelperMain).
const serverEnv = "PMTEST_SERVER"

// HelperMain turns this process into the server that Host.StartServer
// asked for, and exits, when it was started as one; otherwise it returns at
// once. A test package that uses StartServer calls it first in TestMain.
func HelperMain() {
	if addr := os.Getenv(serverEnv); addr != "" {
		os.Exit(holdServer(addr))
	}
}

// holdServer listens on addr (MPTCP), prints the address it got, accepts
// connections and holds them open, and exits when its standard input
// closes.
func holdServer(addr string) int {
	var lc net.ListenConfig
	lc.SetMultipathTCP(true)
	ln, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println(ln.Addr())
	go func() {
		io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}()
	var conns []net.Conn
	for {
		c, err := ln.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		conns = append(conns, c) // held open until exit
	}
}

// StartServer runs an MPTCP server on addr (port 0: one the kernel
// chooses) in h, in a process of its own: the test binary again, whose
// TestMain calls HelperMain. It accepts connections and holds them, so
// that a test can open thousands without the two ends sharing this
// process's open-file limit. It returns the address it listens on, and is
// stopped when the test ends.
func (h *Host) StartServer(tb testing.TB, addr netip.AddrPort) netip.AddrPort {
	tb.Helper()
	exe, err := os.Executable()
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", h.Name, exe)
	cmd.Env = append(os.Environ(), serverEnv+"="+addr.String())
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		tb.Fatalf("pmtest: server process in %s: %v", h.Name, err)
	}
	ap, err := netip.ParseAddrPort(strings.TrimSpace(line))
	if err != nil {
		tb.Fatalf("pmtest: server process in %s said %q: %v", h.Name, line, err)
	}
	return ap
}
