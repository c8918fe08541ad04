package diag

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

	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
)

// helperEnv makes the test binary an MPTCP server instead of running tests:
// BenchmarkLab runs one in the lab's server namespace so that the client's
// and the server's sockets do not share this process's open-file limit.
const helperEnv = "DIAG_HELPER_SERVER"

func TestMain(m *testing.M) {
	if addr := os.Getenv(helperEnv); addr != "" {
		os.Exit(helperServer(addr))
	}
	os.Exit(m.Run())
}

// helperServer listens on addr, prints the address it got, accepts and
// holds connections, and exits when its standard input closes.
func helperServer(addr string) int {
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

// startHelperServer runs helperServer in the namespace and returns its
// address; it is stopped when the test ends.
func startHelperServer(tb testing.TB, h *pmtest.Host, addr netip.AddrPort) netip.AddrPort {
	tb.Helper()
	exe, err := os.Executable()
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", h.Name, exe)
	cmd.Env = append(os.Environ(), helperEnv+"="+addr.String())
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
		tb.Fatalf("helper server: %v", err)
	}
	ap, err := netip.ParseAddrPort(strings.TrimSpace(line))
	if err != nil {
		tb.Fatalf("helper server said %q: %v", line, err)
	}
	return ap
}
