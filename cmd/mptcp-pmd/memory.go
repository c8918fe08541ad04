package main

import (
	"context"
	"log/slog"
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
// is left alone.
const (
	trimInterval  = 10 * time.Second
	trimThreshold = 1 << 20
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
}

// once trims if more than threshold bytes were allocated since the last
// trim, and reports whether it did.
func (t *trimmer) once(threshold uint64) bool {
	if allocated() <= t.allocs+threshold {
		return false
	}
	debug.FreeOSMemory()
	t.base, t.allocs = residentHeap(), allocated()
	return true
}

// trimMemory runs a trimmer every interval until ctx ends.
func trimMemory(ctx context.Context, interval time.Duration, threshold uint64, log *slog.Logger) {
	var t trimmer
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			before := residentHeap()
			if t.once(threshold) {
				log.Debug("returned unused heap to the system", "resident_before", before, "resident_after", t.base)
			}
		}
	}
}
