package main

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mptcp-pmd/mptcp-pmd/pm/diag"
)

// countingLister counts its listings, each of which takes a while.
type countingLister struct{ n atomic.Int32 }

func (l *countingLister) Snapshot() (*diag.Snapshot, error) {
	l.n.Add(1)
	time.Sleep(20 * time.Millisecond)
	return &diag.Snapshot{}, nil
}

// TestStatsShareListings: calls that come together share one listing of
// the kernel's sockets, a call after statsMaxAge gets a new one, and the
// last listing is not kept once it is too old to serve.
func TestStatsShareListings(t *testing.T) {
	l := &countingLister{}
	s := &statsSource{dc: l, cgroups: &cgroupNames{}}
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := s.Stats(nil, false); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if n := l.n.Load(); n != 1 {
		t.Errorf("8 calls at once made %d listings, want 1", n)
	}
	time.Sleep(statsMaxAge + 50*time.Millisecond)
	s.mu.Lock()
	kept := s.last != nil
	s.mu.Unlock()
	if kept {
		t.Error("the listing is kept after statsMaxAge")
	}
	if _, err := s.Stats([]uint32{1}, true); err != nil {
		t.Fatal(err)
	}
	if n := l.n.Load(); n != 2 {
		t.Errorf("a call after statsMaxAge: %d listings in all, want 2", n)
	}
}
