package pm

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// netstatPath holds the namespace's extended counters; the MPTCP ones are
// the MPTcpExt lines, as nstat shows them (MPTcpExtMPJoinSynRx).
const netstatPath = "/proc/net/netstat"

// TroubleCounters are the MPTcpExt counters whose increase means something
// went wrong: a connection or a join fell back or failed, an announcement
// or a subflow was dropped, a path blackholed.
var TroubleCounters = []string{
	"Blackhole", "MPFallbackTokenInit", "MPCapableFallbackACK", "MPCapableFallbackSYNACK",
	"AddAddrTxDrop", "RmAddrTxDrop", "MPJoinSynTxCreatSkErr", "MPJoinSynTxBindErr", "MPJoinSynTxConnectErr",
	"MPJoinNoTokenFound", "InfiniteMapRx", "DSSCorruptionFallback", "DSSCorruptionReset", "MPCapableSYNTXDrop",
}

// Counters reads the MPTcpExt counters of the calling process's network
// namespace, by name without the prefix ("MPJoinSynRx").
func Counters() (map[string]uint64, error) {
	f, err := os.Open(netstatPath)
	if err != nil {
		return nil, fmt.Errorf("pm: counters: %w", err)
	}
	defer f.Close()
	return parseCounters(f)
}

// parseCounters reads the MPTcpExt pair of lines (names, then values) of
// a /proc/net/netstat.
func parseCounters(r io.Reader) (map[string]uint64, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 16<<10), 1<<20)
	var names []string
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "MPTcpExt:")
		if !ok {
			continue
		}
		fields := strings.Fields(rest)
		if names == nil {
			names = fields
			continue
		}
		if len(fields) != len(names) {
			return nil, fmt.Errorf("pm: counters: %d names, %d values: %w", len(names), len(fields), ErrInvalid)
		}
		out := make(map[string]uint64, len(names))
		for i, n := range names {
			v, err := strconv.ParseUint(fields[i], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("pm: counters: %s: %q: %w", n, fields[i], ErrInvalid)
			}
			out[n] = v
		}
		return out, nil
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("pm: counters: %w", err)
	}
	return nil, fmt.Errorf("pm: counters: no MPTcpExt lines in %s (no MPTCP?): %w", netstatPath, ErrNotSupported)
}
