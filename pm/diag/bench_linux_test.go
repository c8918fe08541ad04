package diag

import (
	"fmt"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
)

// BenchmarkLab lists live connections in a lab: none (the fixed cost),
// 1,000 and 10,000 (unless DIAG_BENCH_MAX=1000); -short skips the lab
// altogether. Each connection is one MPTCP socket and one subflow at each
// end; the listings are of the client's namespace (n connections, n
// subflows), the server being a helper process in the server namespace.
//
//	go test -run '^$' -bench Lab -benchmem ./pm/diag/
func BenchmarkLab(b *testing.B) {
	sizes := []int{0, 1000, 10000}
	if os.Getenv("DIAG_BENCH_MAX") == "1000" {
		sizes = sizes[:2]
	}
	for _, n := range sizes {
		b.Run(fmt.Sprintf("conns=%d", n), func(b *testing.B) {
			lab := pmtest.NewLab(b, pmtest.LabOptions{Paths: 1})
			raiseFileLimit(b, uint64(n+1000))
			addr := lab.Server.StartServer(b, netip.AddrPortFrom(lab.Server.Addrs4[0], 0))
			start := time.Now()
			dialMany(b, lab.Client, addr, n)
			d := dialNS(b, lab.Client)
			poll(b, "all connections listed", func() string {
				s, err := d.Snapshot()
				if err != nil {
					b.Fatal(err)
				}
				matched := 0
				for _, c := range s.Conns {
					matched += len(c.Subflows)
				}
				if len(s.Conns) != n || matched != n {
					return fmt.Sprintf("%d connections, %d subflows", len(s.Conns), matched)
				}
				return ""
			})
			b.Logf("%d connections set up in %v", n, time.Since(start).Round(time.Millisecond))

			b.Run("Connections", func(b *testing.B) {
				var dst []Conn
				b.ReportAllocs()
				for b.Loop() {
					var err error
					if dst, err = d.ListConnections(dst[:0], NotListening); err != nil || len(dst) != n {
						b.Fatalf("%d connections, %v", len(dst), err)
					}
				}
				if n > 0 {
					b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/conn")
				}
			})
			b.Run("Connections/fresh", func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if cs, err := d.Connections(); err != nil || len(cs) != n {
						b.Fatalf("%d connections, %v", len(cs), err)
					}
				}
			})
			b.Run("Subflows", func(b *testing.B) {
				var dst []Subflow
				b.ReportAllocs()
				for b.Loop() {
					var err error
					if dst, err = d.ListSubflows(dst[:0], NotListening); err != nil || len(dst) != n {
						b.Fatalf("%d subflows, %v", len(dst), err)
					}
				}
				if n > 0 {
					b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/subflow")
				}
			})
			b.Run("Snapshot", func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if s, err := d.Snapshot(); err != nil || len(s.Conns) != n {
						b.Fatalf("snapshot: %v", err)
					}
				}
			})
		})
	}
}

// raiseFileLimit makes room for n open files: both ends of every
// connection live in this process.
func raiseFileLimit(tb testing.TB, n uint64) {
	tb.Helper()
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		tb.Fatal(err)
	}
	if rl.Cur >= n {
		return
	}
	want := rl
	want.Cur = n
	if want.Max < n {
		want.Max = n
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
		pmtest.Unavailable(tb, "cannot raise the open file limit to %d: %v", n, err)
	}
}
