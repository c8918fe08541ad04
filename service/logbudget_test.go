package service

import (
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
)

func TestLogBudget(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	var b logBudget
	allowed := func(now time.Time, n int) int {
		k := 0
		for range n {
			if b.allow(now) {
				k++
			}
		}
		return k
	}
	if got := allowed(t0, logBurst+30); got != logBurst {
		t.Errorf("a burst of %d at once: %d allowed, want %d", logBurst+30, got, logBurst)
	}
	if due := b.summaryDue(); !due.Equal(t0.Add(logSummaryPeriod)) {
		t.Errorf("summary due at %v, want %v", due, t0.Add(logSummaryPeriod))
	}
	// A second refills logRate records.
	if got := allowed(t0.Add(time.Second), 100); got != logRate {
		t.Errorf("a second later: %d allowed, want %d", got, logRate)
	}
	if n, since := b.take(); n != 30+100-logRate || !since.Equal(t0) {
		t.Errorf("take = %d since %v, want %d since %v", n, since, 30+100-logRate, t0)
	}
	if n, _ := b.take(); n != 0 || !b.summaryDue().IsZero() {
		t.Errorf("after take: %d dropped, summary due %v", n, b.summaryDue())
	}
	// Quiet long enough, the full burst again, never more.
	if got := allowed(t0.Add(time.Hour), logBurst+1); got != logBurst {
		t.Errorf("after an hour: %d allowed, want %d", got, logBurst)
	}
}

// fakeClock is a clock tests move by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// actionRecords returns the lines of the log with msg.
func actionRecords(h *harness, msg string) []string {
	var out []string
	for _, l := range strings.Split(h.log.String(), "\n") {
		if strings.Contains(l, `msg="`+msg) {
			out = append(out, l)
		}
	}
	return out
}

// TestActionRecords: at the default level, each subflow the policy makes
// is an info record with the token as mptcpctl shows it and the policy's
// reason, within the budget; what the budget leaves out is counted in one
// record once its period is over. At the debug level nothing is left out;
// above info, nothing is written or counted.
func TestActionRecords(t *testing.T) {
	for _, level := range []slog.Level{slog.LevelInfo, slog.LevelDebug, slog.LevelWarn} {
		t.Run(level.String(), func(t *testing.T) {
			clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
			h := newHarness(t, withPolicy(PolicySubflowPerInterface), withLogLevel(level),
				withService(func(s *Service) { s.now = clock.Now }))
			h.sendNet(append(hostNet(3), synced)...)
			// Connections from c0, each wanting a subflow from c1 and c2.
			const conns = 150
			for i := range conns {
				tok := uint32(0x8fa80000 + i)
				h.k.AddConnection(tok, true, ap(fmt.Sprintf("10.55.0.1:%d", 40000+i)), ap("10.55.0.2:8080"))
				ev := pm.Event{Token: tok, Family: 2, LocalAddr: cliAddr, LocalPort: uint16(40000 + i), RemoteAddr: srvAddr, RemotePort: 8080}
				created, established := ev, ev
				created.Type, established.Type = pm.EventCreated, pm.EventEstablished
				h.send(created, established)
			}
			h.take()
			recs := actionRecords(h, "policy: subflow requested")
			want := logBurst
			switch level {
			case slog.LevelDebug:
				want = 2 * conns
			case slog.LevelWarn:
				want = 0
			}
			if len(recs) != want {
				t.Fatalf("%d subflow records for %d subflows, want %d", len(recs), 2*conns, want)
			}
			if level == slog.LevelWarn {
				var n int
				h.inspect(func() { n = h.s.actionLog.dropped })
				if n != 0 {
					t.Errorf("at the warn level, %d records counted as left out", n)
				}
				return
			}
			if r := recs[0]; !strings.Contains(r, "level=INFO") || !strings.Contains(r, "token=8fa80000 ") ||
				!strings.Contains(r, `why="interface c1 has no subflow"`) || !strings.Contains(r, "interface=c1") {
				t.Errorf("first record: %s", r)
			}
			// The period ends; the retry timer's work writes the summary.
			clock.Add(logSummaryPeriod)
			h.inspect(h.s.retryDue)
			sums := actionRecords(h, "policy: path-management records suppressed")
			switch {
			case level == slog.LevelDebug && len(sums) != 0:
				t.Errorf("at the debug level: %q", sums)
			case level == slog.LevelInfo && (len(sums) != 1 || !strings.Contains(sums[0], fmt.Sprintf("suppressed=%d ", 2*conns-logBurst)) ||
				!strings.Contains(sums[0], "period=10s") || !strings.Contains(sums[0], "since=")):
				t.Errorf("summary records %q, want one with suppressed=%d since=... period=10s", sums, 2*conns-logBurst)
			}
			// Once said, not again.
			clock.Add(logSummaryPeriod)
			h.inspect(h.s.retryDue)
			if n := len(actionRecords(h, "policy: path-management records suppressed")); n != len(sums) {
				t.Errorf("%d summaries after another period, want %d", n, len(sums))
			}
		})
	}
}
