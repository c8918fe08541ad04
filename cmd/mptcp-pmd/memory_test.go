package main

import (
	"runtime"
	"testing"
)

var sink [][]byte

// TestTrimmer checks that heap grown by garbage is collected and returned
// once the allocations exceed the threshold, and that without allocations
// nothing is done.
func TestTrimmer(t *testing.T) {
	var tr trimmer
	tr.trim() // start from a trimmed heap
	for range 256 {
		sink = append(sink, make([]byte, 64<<10)) // 16 MiB in small pieces
	}
	runtime.KeepAlive(sink)
	sink = nil // garbage now, not collected yet
	before := residentHeap()
	if before < tr.base+8<<20 {
		t.Fatalf("resident heap %d after allocating 16 MiB, trimmed base %d", before, tr.base)
	}
	if tr.once(1<<20, 64<<10) {
		t.Fatal("the trimmer trimmed in the interval of a 16 MiB burst: wait until it is over")
	}
	if !tr.once(1<<20, 64<<10) {
		t.Fatal("the trimmer did nothing in the quiet interval after 16 MiB of allocations")
	}
	if after := residentHeap(); after > before/2 {
		t.Errorf("resident heap %d bytes before the trim, %d after; want the garbage returned", before, after)
	}
	if tr.once(1<<30, 64<<10) {
		t.Error("the trimmer acted without allocations beyond its threshold")
	}
}

// TestTrimmerAfterShrink: live memory that becomes garbage (connections
// that close) is returned even though the heap never grows past what the
// last trim left.
func TestTrimmerAfterShrink(t *testing.T) {
	var tr trimmer
	for range 256 {
		sink = append(sink, make([]byte, 64<<10)) // 16 MiB live
	}
	tr.trim() // trimmed with the 16 MiB live: the base is high
	high := tr.base
	sink = nil
	runtime.GC() // collected, but the freed spans stay resident
	var small [][]byte
	for range 64 {
		small = append(small, make([]byte, 32<<10)) // 2 MiB of work, inside the heap
	}
	runtime.KeepAlive(small)
	tr.once(1<<20, 64<<10) // the interval of the work
	if !tr.once(1<<20, 64<<10) {
		t.Fatal("the trimmer did nothing in the quiet interval after 2 MiB of allocations")
	}
	if tr.base > high/2 {
		t.Errorf("resident heap %d after the trim, %d with the 16 MiB live: the garbage was not returned", tr.base, high)
	}
}

// TestTrimmerUnderLoad: a daemon that keeps allocating a little every
// interval (a steady trickle of connections) is not trimmed, however much
// it allocated in all, and is trimmed at its first quiet interval.
func TestTrimmerUnderLoad(t *testing.T) {
	var tr trimmer
	tr.trim()
	for i := range 8 {
		for range 4 {
			sink = append(sink, make([]byte, 64<<10)) // 256 KiB an interval: 2 MiB in all
		}
		runtime.KeepAlive(sink)
		sink = nil
		if tr.once(1<<20, 64<<10) {
			t.Fatalf("interval %d: the trimmer trimmed a daemon that allocates 256 KiB an interval", i)
		}
	}
	if !tr.once(1<<20, 64<<10) {
		t.Fatal("the trimmer did nothing in the first quiet interval after 2 MiB of allocations")
	}
}
