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

// The rtnetlink groups the monitor listens to.
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
	// dumpAttempts bounds the listings started again because the kernel
	// flagged them inconsistent (NLM_F_DUMP_INTR); the last one is used.
	dumpAttempts = 10
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

// input is what the reader hands to the owner, in the socket's order:
// notifications, or a finished listing followed by the notifications that
// came while it ran, or the error that ended reading.
type input struct {
	events []event
	snap   *snapshot
	kind   dumpKind // of snap
	err    error
}

// dumpKind says what a listing covers. A larger kind covers a smaller.
type dumpKind uint8

const (
	dumpNone   dumpKind = iota
	dumpRoutes          // the routes of both families
	dumpAll             // links, addresses and routes
)

// dumpReq is one listing request: a GET message type and a family.
type dumpReq struct {
	get    uint16
	family uint8
}

var dumpSteps = map[dumpKind][]dumpReq{
	dumpRoutes: {{unix.RTM_GETROUTE, unix.AF_INET}, {unix.RTM_GETROUTE, unix.AF_INET6}},
	dumpAll: {
		{unix.RTM_GETLINK, unix.AF_UNSPEC},
		{unix.RTM_GETADDR, unix.AF_INET}, {unix.RTM_GETADDR, unix.AF_INET6},
		{unix.RTM_GETROUTE, unix.AF_INET}, {unix.RTM_GETROUTE, unix.AF_INET6},
	},
}

// dump is the listing in progress, if any. A listing is a sequence of dump
// requests sent one after the other on the socket.
type dump struct {
	kind     dumpKind  // running, or dumpNone
	next     dumpKind  // to run after it
	steps    []dumpReq // requests still to send
	seq      uint32    // of the request whose answers are awaited
	started  bool      // an answer of this listing has come
	intr     bool      // the kernel flagged it inconsistent
	attempts int
	snap     *snapshot
	held     []event // notifications that came while it ran
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

// resync lists everything again as after lost notifications: the owner
// then queues only the differences, and a Synced.
func (m *Monitor) resync() error { return m.startDump(dumpAll) }

// startDump starts a listing of the kind, or, if one is running, arranges
// for it to run after.
func (m *Monitor) startDump(kind dumpKind) error {
	m.dmu.Lock()
	defer m.dmu.Unlock()
	if m.stopped() {
		return nil // the socket is closed or closing
	}
	d := &m.dump
	if d.kind != dumpNone {
		// A running complete listing that has not answered yet covers
		// anything before now; otherwise another one must follow.
		if kind > d.next && !(d.kind >= kind && !d.started) {
			d.next = kind
		}
		return nil
	}
	*d = dump{kind: kind}
	return m.beginDump()
}

// beginDump (re)starts the listing of m.dump.kind. m.dmu is held.
func (m *Monitor) beginDump() error {
	d := &m.dump
	d.steps = dumpSteps[d.kind]
	d.snap = new(snapshot)
	d.intr = false
	d.attempts++
	return m.sendStep()
}

// sendStep sends the next request of the listing. m.dmu is held.
func (m *Monitor) sendStep() error {
	d := &m.dump
	r := d.steps[0]
	d.steps = d.steps[1:]
	var hdr []byte
	switch r.get {
	case unix.RTM_GETLINK:
		hdr = make([]byte, unix.SizeofIfInfomsg)
	case unix.RTM_GETADDR:
		hdr = make([]byte, unix.SizeofIfAddrmsg)
	case unix.RTM_GETROUTE:
		hdr = make([]byte, unix.SizeofRtMsg)
	}
	hdr[0] = r.family
	req := nl.NewNetlinkRequest(int(r.get), unix.NLM_F_DUMP)
	req.AddRawData(hdr)
	d.seq = req.Seq
	// Not sock.Send: it addresses the message to the socket's own address,
	// which names the groups it listens to, and the kernel would multicast
	// the request to every listener of them (and refuse it without
	// CAP_NET_ADMIN).
	kernel := &unix.SockaddrNetlink{Family: unix.AF_NETLINK}
	if err := unix.Sendto(m.sock.GetFd(), req.Serialize(), 0, kernel); err != nil {
		return fmt.Errorf("list (type %d, family %d): %w", r.get, r.family, err)
	}
	return nil
}

// read receives from the socket until the monitor stops or receiving
// fails, and hands what it got to the owner.
func (m *Monitor) read() {
	defer close(m.readerDone)
	for {
		if m.hooks.beforeReceive != nil {
			m.hooks.beforeReceive()
		}
		msgs, from, err := m.sock.Receive()
		if m.hooks.afterReceive != nil {
			m.hooks.afterReceive(msgs)
		}
		var ins []input
		switch {
		case m.stopped():
			return
		case errors.Is(err, unix.ENOBUFS):
			// Notifications were lost: list everything again.
			m.overflows.Add(1)
			if err := m.startDump(dumpAll); err != nil {
				ins = append(ins, input{err: err})
			}
		case err != nil:
			ins = append(ins, input{err: fmt.Errorf("receive: %w", err)})
		case from.Pid != 0:
			continue // not from the kernel
		default:
			ins = m.classify(msgs)
		}
		for _, in := range ins {
			select {
			case m.in <- in:
			case <-m.quit:
				return
			}
			if in.err != nil {
				return
			}
		}
	}
}

// classify sorts the messages of one receive into inputs for the owner: the
// answers to a listing go to it, notifications to the listing's held
// events while it runs, or straight on otherwise. Messages that cannot be
// decoded are skipped, as a listing would skip them.
func (m *Monitor) classify(msgs []syscall.NetlinkMessage) []input {
	m.dmu.Lock()
	defer m.dmu.Unlock()
	d := &m.dump
	var ins []input
	var evs []event
	for _, msg := range msgs {
		h := msg.Header
		switch {
		case d.kind != dumpNone && h.Pid == m.pid && h.Seq == d.seq:
			done, err := m.answer(msg)
			if err != nil {
				return append(ins, input{events: evs}, input{err: err})
			}
			if done != nil {
				if len(evs) > 0 {
					ins = append(ins, input{events: evs})
					evs = nil
				}
				ins = append(ins, *done)
			}
		case d.kind == dumpAll && !d.started:
			// Older than the listing, which supersedes it.
		case d.kind != dumpNone && d.started:
			d.held, _ = decode(d.held, h.Type, h.Flags, msg.Data)
		default:
			evs, _ = decode(evs, h.Type, h.Flags, msg.Data)
		}
	}
	if len(evs) > 0 {
		ins = append(ins, input{events: evs})
	}
	return ins
}

// answer takes one answer to the listing. When the listing is complete it
// returns the input that carries it, and starts the next one if any.
// m.dmu is held.
func (m *Monitor) answer(msg syscall.NetlinkMessage) (*input, error) {
	d := &m.dump
	d.started = true
	if msg.Header.Flags&unix.NLM_F_DUMP_INTR != 0 {
		d.intr = true
	}
	switch msg.Header.Type {
	case unix.RTM_NEWLINK:
		if l, ok, _ := decodeLink(msg.Data); ok {
			d.snap.links = append(d.snap.links, l)
		}
		return nil, nil
	case unix.RTM_NEWADDR:
		if a, ok, _ := decodeAddr(msg.Data); ok {
			d.snap.addrs = append(d.snap.addrs, a)
		}
		return nil, nil
	case unix.RTM_NEWROUTE:
		evs, _ := decodeRoute(nil, msg.Header.Type, 0, msg.Data)
		for _, e := range evs {
			if !e.noRoute {
				d.snap.routes = append(d.snap.routes, e.route)
			}
		}
		return nil, nil
	case unix.NLMSG_ERROR, unix.NLMSG_DONE:
		// Both end the answer with an error code, 0 or negative.
		var errno syscall.Errno
		if len(msg.Data) >= 4 {
			errno = syscall.Errno(-int32(native.Uint32(msg.Data)))
		}
		if errno == unix.ENOBUFS && msg.Header.Type == unix.NLMSG_ERROR {
			// The request came while the receive queue was full: the
			// kernel keeps the listing pending and produces it as the
			// queue drains (netlink_dump from netlink_recvmsg).
			return nil, nil
		}
		if errno > 0 {
			return nil, fmt.Errorf("list: %w", errno)
		}
	default:
		return nil, nil
	}
	// The request is answered.
	if len(d.steps) > 0 {
		return nil, m.sendStep()
	}
	if d.intr && d.attempts < dumpAttempts {
		return nil, m.beginDump()
	}
	done := &input{snap: d.snap, kind: d.kind, events: d.held}
	next := d.next
	*d = dump{}
	if next != dumpNone {
		d.kind = next
		return done, m.beginDump()
	}
	return done, nil
}

func (m *Monitor) stopped() bool {
	select {
	case <-m.quit:
		return true
	default:
		return false
	}
}
