//go:build linux

package pmnl_test

import (
	"testing"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
)

// TestReceiveBatch: events queued before a Receive come in order, several
// in one receive (up to 8 datagrams per system call), none lost or
// repeated across receives.
func TestReceiveBatch(t *testing.T) {
	h := pmtest.NewNamespace(t)
	l := listen(t, h)
	const n = 20 // listeners: 40 events
	if err := churnListeners(h, n); err != nil {
		t.Fatal(err)
	}
	var got []pm.Event
	receives := 0
	for len(got) < 2*n {
		evs, err := l.Receive(nil)
		if err != nil {
			t.Fatalf("Receive: %v", err)
		}
		receives++
		got = append(got, evs...)
	}
	if len(got) != 2*n {
		t.Fatalf("%d events, want %d", len(got), 2*n)
	}
	for i, ev := range got {
		want := pm.EventListenerCreated
		if i%2 == 1 {
			want = pm.EventListenerClosed
		}
		if ev.Type != want {
			t.Fatalf("event %d: %v, want %v", i, ev.Type, want)
		}
	}
	if receives > (2*n+7)/8 {
		t.Errorf("%d receives for %d queued events, want at most %d", receives, 2*n, (2*n+7)/8)
	}
}
