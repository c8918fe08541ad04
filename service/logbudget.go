package service

import (
	"fmt"
	"log/slog"
	"time"
)

// logToken is a connection token in log records: eight hex digits, as
// mptcpctl shows it, so that `journalctl TOKEN=7fe43687` finds what
// `mptcpctl connections` lists. Formatting waits until a record is written.
type logToken uint32

// LogValue returns the token as eight hex digits.
func (t logToken) LogValue() slog.Value { return slog.StringValue(fmt.Sprintf("%08x", uint32(t))) }

// The budget of the per-connection records of the policy's actions at the
// info level. A connection that gets its subflows writes a record or two;
// a busy server (thousands of connections a second under a subflow policy)
// would write thousands a second, more than an administrator can read and
// than journald lets a service write (10000 in 30 s by default). 20 a
// second is a steady stream that one can still follow, 200 lets a burst of
// connections (a browser opening a page, a reload reconciling every
// connection) through whole. Beyond, records are counted, and one record
// every logSummaryPeriod at most says how many were left out.
const (
	logRate          = 20  // records per second, on average
	logBurst         = 200 // records at once
	logSummaryPeriod = 10 * time.Second
)

// logBudget is a token bucket for log records; its owner (the service
// loop) calls it with the time.
type logBudget struct {
	tokens  float64
	last    time.Time // of the last call to allow; zero before the first
	dropped int       // records not written since the last summary
	since   time.Time // when the first of them came
}

// allow reports whether a record may be written at now, and counts it
// otherwise.
func (b *logBudget) allow(now time.Time) bool {
	if b.last.IsZero() {
		b.tokens = logBurst
	} else if d := now.Sub(b.last); d > 0 {
		b.tokens = min(logBurst, b.tokens+d.Seconds()*logRate)
	}
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return true
	}
	if b.dropped == 0 {
		b.since = now
	}
	b.dropped++
	return false
}

// summaryDue returns when the summary of the dropped records is due, or
// the zero time when none was dropped.
func (b *logBudget) summaryDue() time.Time {
	if b.dropped == 0 {
		return time.Time{}
	}
	return b.since.Add(logSummaryPeriod)
}

// take returns the number of records dropped since the last summary and
// when the first of them came, and starts counting again.
func (b *logBudget) take() (int, time.Time) {
	n, since := b.dropped, b.since
	b.dropped, b.since = 0, time.Time{}
	return n, since
}
