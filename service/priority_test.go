package service

import (
	"context"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
)

// gatePublisher blocks the publication of ConnectionAdded for the token
// it is set to until the gate opens.
type gatePublisher struct {
	token   uint32
	entered chan struct{}
	gate    chan struct{}
}

func (g *gatePublisher) Publish(n Notification) {
	if a, ok := n.(ConnectionAdded); ok && a.Connection.Token == g.token {
		g.entered <- struct{}{}
		<-g.gate
	}
}

// TestEventsBeforeRequests checks that the loop takes a waiting kernel
// event before a waiting request: while the loop is busy, a request for
// connection B and then B's CREATED arrive; the request must find B. With
// the two taken in random order, 20 rounds would pass by chance once in
// a million.
func TestEventsBeforeRequests(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Policy = PolicyNone
	pub := &gatePublisher{entered: make(chan struct{}), gate: make(chan struct{})}
	s := New(cfg, Deps{
		Kernel:      pmtest.NewFakeKernel(),
		Publisher:   pub,
		PathManager: func() (string, error) { return "userspace", nil },
	})
	events := make(chan pm.Event, 4)
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- s.Run(ctx, events, make(chan NetEvent)) }()
	defer func() {
		cancel()
		if err := <-ran; err != nil {
			t.Error(err)
		}
	}()
	created := func(token uint32) pm.Event {
		return pm.Event{Type: pm.EventCreated, Token: token, Family: syscall.AF_INET,
			LocalAddr: netip.MustParseAddr("10.0.0.1"), LocalPort: 1000, RemoteAddr: netip.MustParseAddr("10.0.0.2"), RemotePort: 80}
	}
	for round := range uint32(20) {
		a, b := 100+2*round, 101+2*round
		pub.token = a // read by the loop only after the send below
		events <- created(a)
		<-pub.entered // the loop is busy publishing A
		found := make(chan error, 1)
		go func() {
			_, err := s.ConnectionByToken(ctx, b)
			found <- err
		}()
		time.Sleep(5 * time.Millisecond) // the request waits for the loop
		events <- created(b)
		close(pub.gate)
		if err := <-found; err != nil {
			t.Fatalf("round %d: the request was served before the waiting event: %v", round, err)
		}
		pub.gate = make(chan struct{})
	}
}
