// This file holds the public Monitor type, its start-up and accessors, and
// the owner goroutine that applies the reader's inputs to the state and
// delivers the updates.

package netmon

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// groups are the rtnetlink groups the monitor listens to.
var groups = []uint{
	unix.RTNLGRP_LINK,
	unix.RTNLGRP_IPV4_IFADDR, unix.RTNLGRP_IPV6_IFADDR,
	unix.RTNLGRP_IPV4_ROUTE, unix.RTNLGRP_IPV6_ROUTE,
}

const (
	// eventBuffer is the receive buffer asked for the socket. Above
	// net.core.rmem_max it needs CAP_NET_ADMIN; without, the kernel's
	// maximum applies.
	eventBuffer = 4 << 20
	// updateBuffer is how many updates may wait for the consumer, beyond
	// the initial snapshot, before the monitor stops reading notifications.
	updateBuffer = 256
	// relistDelay is how long after a link comes up (or gets its first IPv4
	// address) its routes are listed again, leaving the kernel time to
	// finish what it does after sending the notification.
	relistDelay = 50 * time.Millisecond
)

// Monitor watches the links, addresses and default routes of a network
// namespace. Its methods are safe for concurrent use.
//
// One netlink socket carries both the notifications and the listings, so
// that they are in the kernel's order: a notification queued before the
// first answer of a listing is older than the listing and is dropped; one
// that comes while a listing runs is applied after it.
type Monitor struct {
	updates    chan Update
	sock       *nl.NetlinkSocket
	pid        uint32     // the socket's port id, to tell listing answers from notifications
	in         chan input // from the reader to the owner
	quit       chan struct{}
	readerDone chan struct{}
	hooks      hooks

	overflows atomic.Int64 // ENOBUFS seen, for tests

	dmu  sync.Mutex // guards dump, and sending on sock against its closing
	dump dump

	// relist fires when the routes must be listed again. Owner only.
	relist <-chan time.Time

	mu  sync.RWMutex // guards st (changed by the owner goroutine only) and err
	st  *state
	err error
}

// hooks let tests interfere with the monitor. The zero value interferes
// with nothing.
type hooks struct {
	beforeReceive func()                              // called by the reader before each receive
	afterReceive  func(msgs []syscall.NetlinkMessage) // called with what each receive got
	rcvbuf        int                                 // receive buffer of the socket, if not 0
}

// Start begins watching the namespace of opts.NetNS. It subscribes to the
// notifications first, then lists the current state on the same socket, so
// that nothing is missed. Updates delivers that state as LinkChanged,
// AddressAdded and RouteAdded updates, then one Synced, then the changes.
// The monitor stops when ctx ends.
func Start(ctx context.Context, opts Options) (*Monitor, error) {
	return start(ctx, opts, hooks{})
}

// start is Start with the hooks of the tests.
func start(ctx context.Context, opts Options, h hooks) (*Monitor, error) {
	if opts.NetNS < 0 {
		return nil, fmt.Errorf("netmon: start: invalid namespace descriptor %d", opts.NetNS)
	}
	ns := netns.None()
	if opts.NetNS > 0 {
		ns = netns.NsHandle(opts.NetNS)
	}
	sock, err := nl.SubscribeAt(ns, netns.None(), unix.NETLINK_ROUTE, groups...)
	if err != nil {
		return nil, fmt.Errorf("netmon: start: subscribe: %w", err)
	}
	if h.rcvbuf != 0 {
		err = sock.SetReceiveBufferSize(h.rcvbuf, false)
	} else if sock.SetReceiveBufferSize(eventBuffer, true) != nil {
		err = sock.SetReceiveBufferSize(eventBuffer, false)
	}
	var pid uint32
	if err == nil {
		pid, err = sock.GetPid()
	}
	if err != nil {
		sock.Close()
		return nil, fmt.Errorf("netmon: start: %w", err)
	}
	m := &Monitor{
		sock:       sock,
		pid:        pid,
		in:         make(chan input),
		quit:       make(chan struct{}),
		readerDone: make(chan struct{}),
		hooks:      h,
		st:         newState(),
	}
	// The listing starts before the reader, so that every notification
	// before its first answer is known to be older than it.
	if err := m.startDump(dumpAll); err != nil {
		sock.Close()
		return nil, fmt.Errorf("netmon: start: %w", err)
	}
	go m.read()
	var in input
	select {
	case in = <-m.in:
	case <-ctx.Done():
		in.err = ctx.Err()
	}
	if in.err == nil && in.snap == nil {
		in.err = errors.New("notification before the initial listing") // cannot happen
	}
	if in.err != nil {
		m.stop()
		return nil, fmt.Errorf("netmon: start: %w", in.err)
	}
	m.apply(in)
	m.updates = make(chan Update, len(m.st.out)+updateBuffer)
	go m.run(ctx)
	return m, nil
}

// Updates returns the channel of updates. It is closed when the context
// given to Start ends or the monitor fails; then Err says why.
func (m *Monitor) Updates() <-chan Update { return m.updates }

// Err returns nil while the monitor runs. Once Updates is closed it returns
// why: the context's error, or what made the monitor fail.
func (m *Monitor) Err() error {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.err
}

// Links returns the known links ordered by index. The view may be ahead of
// the updates received so far.
func (m *Monitor) Links() []Link {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.st.linkList()
}

// Link returns the link with the index, if it is known.
func (m *Monitor) Link(index int) (Link, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	l, ok := m.st.links[index]
	return l, ok
}

// Addresses returns the known addresses ordered by interface index and
// address. The view may be ahead of the updates received so far.
func (m *Monitor) Addresses() []Address {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.st.addrList()
}

// DefaultRoutes returns the known default routes ordered by interface
// index, family, table and metric. The view may be ahead of the updates
// received so far.
func (m *Monitor) DefaultRoutes() []Route {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.st.routeList()
}

// run is the owner goroutine: it alone changes the state and sends
// updates.
func (m *Monitor) run(ctx context.Context) {
	err := m.loop(ctx)
	m.stop()
	m.mu.Lock()
	m.err = err
	m.mu.Unlock()
	close(m.updates)
}

// stop ends the reader and closes the socket.
func (m *Monitor) stop() {
	close(m.quit)
	m.dmu.Lock() // no request is being sent on it
	m.sock.Close()
	m.dmu.Unlock()
	<-m.readerDone
}

// loop delivers the pending updates, then waits for an input from the
// reader or for the routes to be listed again, until ctx ends or the
// monitor fails.
func (m *Monitor) loop(ctx context.Context) error {
	for {
		if err := m.deliver(ctx); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case in := <-m.in:
			if in.err != nil {
				return fmt.Errorf("netmon: %w", in.err)
			}
			m.apply(in)
		case <-m.relist:
			m.relist = nil
			if err := m.startDump(dumpRoutes); err != nil {
				return fmt.Errorf("netmon: %w", err)
			}
		}
	}
}

// deliver sends the pending updates to the consumer.
func (m *Monitor) deliver(ctx context.Context) error {
	for i, u := range m.st.out {
		select {
		case m.updates <- u:
		case <-ctx.Done():
			return ctx.Err()
		}
		m.st.out[i] = Update{}
	}
	m.st.out = m.st.out[:0]
	return nil
}

// apply brings the state up to date with an input from the reader.
func (m *Monitor) apply(in input) {
	relist := false
	m.mu.Lock()
	switch in.kind {
	case dumpAll:
		m.st.sync(in.snap)
	case dumpRoutes:
		m.st.syncRoutes(in.snap.routes)
	}
	for i := range in.events {
		relist = m.st.apply(&in.events[i]) || relist
	}
	if in.kind == dumpAll {
		m.st.out = append(m.st.out, Update{Kind: Synced})
	}
	m.mu.Unlock()
	if relist && m.relist == nil {
		m.relist = time.After(relistDelay)
	}
}

// stopped reports whether stop has begun: the socket is closed or closing.
func (m *Monitor) stopped() bool {
	select {
	case <-m.quit:
		return true
	default:
		return false
	}
}
