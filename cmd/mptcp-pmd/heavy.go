package main

import (
	"runtime"
	"sync"
)

// heavy runs the D-Bus calls whose work grows with the number of
// connections (GetManagedObjects, GetStatistics).
var heavy spareProcessor

// spareProcessor gives the daemon a second processor while such work runs.
// On one processor (oneProcessor) a goroutine that lists the kernel's
// sockets for 100 ms keeps the event reader from running: it never blocks
// (each read of the dump returns at once), so nothing polls the event
// socket until the runtime's monitor does, up to 10 ms later. make
// bench-stats measured a 99th percentile of 8.8-9.5 ms from ESTABLISHED
// to the extra subflows of connections made while mptcpctl top polled a
// daemon with 2,000 connections, against 2.0-3.1 ms without the calls and
// 2.7-2.9 ms with a second processor.
type spareProcessor struct {
	mu  sync.Mutex
	on  bool // the daemon set GOMAXPROCS to 1 (oneProcessor)
	n   int  // work running
	old int  // GOMAXPROCS before the first
}

// run runs work, with a second processor if the daemon runs on one.
func (p *spareProcessor) run(work func()) {
	p.mu.Lock()
	if p.on && p.n == 0 {
		p.old = runtime.GOMAXPROCS(2)
	}
	p.n++
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.n--; p.on && p.n == 0 {
			runtime.GOMAXPROCS(p.old)
		}
	}()
	work()
}
