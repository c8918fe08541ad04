package service

import (
	"context"
	"net/netip"
	"testing"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
)

type discard struct{ n int }

func (d *discard) Publish(Notification) { d.n++ }

// signal is a Publisher that tells when a SubflowEvent went out.
type signal chan struct{}

func (s signal) Publish(n Notification) {
	if _, ok := n.(SubflowEvent); ok {
		s <- struct{}{}
	}
}

// BenchmarkEventToNotification measures the cost of one kernel event, from
// pm.Event to the notifications it causes: "handle" is the state update and
// snapshot alone, over whole connection lifetimes (CREATED, ESTABLISHED,
// SUB_ESTABLISHED, SUB_CLOSED, CLOSED: one op is one event); "loop" goes
// through Run's channel and a publisher on another goroutine, one subflow
// event at a time, waiting for its SubflowEvent.
func BenchmarkEventToNotification(b *testing.B) {
	b.Run("handle", func(b *testing.B) {
		pub := &discard{}
		s := New(DefaultConfig(), Deps{Kernel: pmtest.NewFakeKernel(), Publisher: pub,
			PathManager: func() (string, error) { return "userspace", nil }})
		s.live = true
		var cycle [5]pm.Event
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if i%5 == 0 {
				token := uint32(i / 5)
				cycle = [5]pm.Event{created(token), established(token),
					subEvent(pm.EventSubEstablished, token, 1000, false),
					subEvent(pm.EventSubClosed, token, 1000, false), closed(token)}
			}
			s.handleEvent(cycle[i%5])
			s.flush()
		}
		if pub.n == 0 {
			b.Fatal("nothing published")
		}
	})
	b.Run("loop", func(b *testing.B) {
		done := make(signal, 1)
		s := New(DefaultConfig(), Deps{Kernel: pmtest.NewFakeKernel(), Publisher: done,
			PathManager: func() (string, error) { return "userspace", nil }})
		events := make(chan pm.Event)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go s.Run(ctx, events, nil)
		events <- created(1)
		events <- established(1)
		evs := [2]pm.Event{subEvent(pm.EventSubEstablished, 1, 1000, false), subEvent(pm.EventSubClosed, 1, 1000, false)}
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			events <- evs[i%2]
			<-done
		}
	})
}

// nullKernel accepts every command at once and emits nothing.
type nullKernel struct{ *pmtest.FakeKernel }

func (nullKernel) CreateSubflow(uint32, pm.Address, netip.AddrPort) error { return nil }

// BenchmarkPolicyReaction measures the service's own part of a policy's
// reaction: from a connection's ESTABLISHED to the CreateSubflow command
// of the subflow-per-interface policy (three interfaces, two subflows),
// without the kernel. One op is one connection: CREATED, ESTABLISHED,
// CLOSED.
func BenchmarkPolicyReaction(b *testing.B) {
	cfg := DefaultConfig()
	cfg.Policy = PolicySubflowPerInterface
	s := New(cfg, Deps{Kernel: nullKernel{pmtest.NewFakeKernel()}, Publisher: &discard{},
		PathManager: func() (string, error) { return "userspace", nil }})
	s.live = true
	for _, ev := range append(hostNet(3), synced) {
		s.handleNet(ev)
	}
	s.setLimits(Limits{Subflows: 8, AddAddrAccepted: 8})
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		token := uint32(i)
		s.handleEvent(created(token))
		s.handleEvent(established(token))
		s.handleEvent(closed(token))
		s.flush()
	}
}
