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
// is left alone, and so is one under load: a trim while connections keep
// coming only makes the runtime fault the pages back in (9% of the
// daemon's CPU per event in make bench-lab); it waits for the first
// interval with less than trimThreshold allocated.
const (
	trimInterval  = 2 * time.Second
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
	last   uint64 // allocated() at the last call of once
}

// once, called every interval, trims if more than threshold bytes were
// allocated since the last trim but no more than threshold since the last
// call (the daemon is quiet), and reports whether it did.
func (t *trimmer) once(threshold uint64) bool {
	now := allocated()
	busy := now > t.last+threshold
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
