package main

import (
	"context"
	"log/slog"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// The Go runtime collects garbage only as the heap grows and returns freed
// memory to the system only slowly, so after a burst of connections an
// otherwise idle daemon would stay several MiB above its idle size. Every
// trimInterval, if the daemon allocated more than trimThreshold since the
// last trim, the trimmer collects and returns the unused heap at once (one
// collection of a small heap, a few milliseconds at 10,000 connections).
// Allocation, not growth, is the sign: when 10,000 connections close, the
// work of their events fits in the heap they leave, which does not grow,
// yet most of it is garbage (make bench-lab: 15 MiB that stayed a minute
// after they closed, with the growth rule). A daemon that allocates nothing
// is left alone, and so is one at work: it trims only after an interval
// in which it allocated no more than quietThreshold, as an idle daemon
// does. A trim while connections keep coming, even a few dozen a second,
// only makes the runtime fault the pages back in: with "less than
// trimThreshold in the interval" as the quiet rule, make bench-lab's
// steady 50 connections a second (about 1 MiB per interval) were trimmed
// now and then, and page faults were 11% of the daemon's CPU per event.
const (
	trimInterval   = 2 * time.Second
	trimThreshold  = 1 << 20
	quietThreshold = 64 << 10
)

// allocsMetric is the bytes allocated on the heap since the start.
const allocsMetric = "/gc/heap/allocs:bytes"

var heapMetrics = []string{
	"/memory/classes/heap/objects:bytes", // live objects and garbage not yet collected
	"/memory/classes/heap/unused:bytes",  // free space in spans in use
	"/memory/classes/heap/free:bytes",    // free spans still resident
}

// residentHeap returns the bytes of heap the runtime holds resident.
func residentHeap() uint64 {
	s := make([]metrics.Sample, len(heapMetrics))
	for i, n := range heapMetrics {
		s[i].Name = n
	}
	metrics.Read(s)
	var sum uint64
	for _, v := range s {
		if v.Value.Kind() == metrics.KindUint64 {
			sum += v.Value.Uint64()
		}
	}
	return sum
}

// allocated returns the bytes allocated on the heap since the start.
func allocated() uint64 {
	s := []metrics.Sample{{Name: allocsMetric}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}

// trimmer returns unused heap to the system after the daemon allocated.
type trimmer struct {
	base   uint64 // resident heap right after the last trim
	allocs uint64 // allocated() at the last trim
	last   uint64 // allocated() at the last call of once
}

// once, called every interval, trims if more than threshold bytes were
// allocated since the last trim but no more than quiet since the last call
// (the daemon is idle), and reports whether it did.
func (t *trimmer) once(threshold, quiet uint64) bool {
	now := allocated()
	busy := now > t.last+quiet
	t.last = now
	if busy || now <= t.allocs+threshold {
		return false
	}
	t.trim()
	return true
}

// trim returns the unused heap now.
func (t *trimmer) trim() {
	debug.FreeOSMemory()
	t.base, t.allocs = residentHeap(), allocated()
	t.last = t.allocs
}

// trimMemory trims once at once, then runs a trimmer every interval until
// ctx ends, with trimThreshold and quietThreshold.
//
// The first trim returns the start-up's garbage (the introspection data
// parsed, the kernel's state read) and makes the runtime's first
// collection now rather than under the first connections: the first
// collection maps the collector's own metadata (0.7 MB measured, which
// stays for the life of the process), and page faults cost much on a
// virtual machine (20 µs each in make bench-lab). The idle daemon then
// holds what it holds after any collection, and what a burst of
// connections leaves behind is measured against that.
//
// It also stops the sampling of allocations for heap profiles, which the
// daemon never serves (it has no profiling endpoint): each new allocation
// site sampled adds a bucket, memory the runtime never returns, and
// touches a page of its 1.4 MB profile hash table (about 0.5 MB of what
// a burst of 10,000 connections left behind in make bench-lab).
func trimMemory(ctx context.Context, interval time.Duration, threshold uint64, log *slog.Logger) {
	runtime.MemProfileRate = 0
	var t trimmer
	t.trim()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			before := residentHeap()
			if t.once(threshold, min(quietThreshold, threshold)) {
				log.Debug("returned unused heap to the system", "resident_before", before, "resident_after", t.base)
			}
		}
	}
}
