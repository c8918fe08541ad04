package main

import (
	"runtime"
	"sync"
	"testing"
)

// TestSpareProcessor: while heavy work runs, the process has two
// processors, however many such calls overlap; after the last, it has as
// many as before. Without oneProcessor's setting it changes nothing.
func TestSpareProcessor(t *testing.T) {
	before := runtime.GOMAXPROCS(1)
	defer runtime.GOMAXPROCS(before)
	p := &spareProcessor{on: true}
	var wg sync.WaitGroup
	inside := make(chan int, 4)
	release := make(chan struct{})
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.run(func() {
				inside <- runtime.GOMAXPROCS(0)
				<-release
			})
		}()
	}
	for range 4 {
		if n := <-inside; n != 2 {
			t.Errorf("GOMAXPROCS %d during heavy work, want 2", n)
		}
	}
	close(release)
	wg.Wait()
	if n := runtime.GOMAXPROCS(0); n != 1 {
		t.Errorf("GOMAXPROCS %d after the work, want 1 as before", n)
	}
	off := &spareProcessor{}
	off.run(func() {
		if n := runtime.GOMAXPROCS(0); n != 1 {
			t.Errorf("GOMAXPROCS %d with the daemon's setting off, want 1", n)
		}
	})
}
