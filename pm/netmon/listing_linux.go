// This file holds the listing state machine: the dump requests that make
// the initial snapshot, the route listings after a link comes up and the
// resynchronisation after lost notifications, and the taking of their
// answers.

package netmon

import (
	"fmt"
	"syscall"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// dumpAttempts bounds the listings started again because the kernel
// flagged them inconsistent (NLM_F_DUMP_INTR); the last one is used.
const dumpAttempts = 10

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

// dumpSteps are the requests of each kind of listing, in the order sent.
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
