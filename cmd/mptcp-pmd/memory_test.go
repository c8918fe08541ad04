package main

import (
	"runtime"
	"testing"
)

var sink [][]byte

// TestTrimmer checks that heap grown by garbage is collected and returned
// once it exceeds the threshold, and that without growth nothing is done.
func TestTrimmer(t *testing.T) {
	var tr trimmer
	tr.once(0) // start from a trimmed heap
	for range 256 {
		sink = append(sink, make([]byte, 64<<10)) // 16 MiB in small pieces
	}
	runtime.KeepAlive(sink)
	sink = nil // garbage now, not collected yet
	before := residentHeap()
	if before < tr.base+8<<20 {
		t.Fatalf("resident heap %d after allocating 16 MiB, trimmed base %d", before, tr.base)
	}
	if !tr.once(1 << 20) {
		t.Fatal("the trimmer did nothing after the heap grew by more than 8 MiB")
	}
	if after := residentHeap(); after > before/2 {
		t.Errorf("resident heap %d bytes before the trim, %d after; want the garbage returned", before, after)
	}
	if tr.once(1 << 30) {
		t.Error("the trimmer acted without growth beyond its threshold")
	}
}
