package pmnl

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
)

const (
	// eventSocketBuffer is the receive buffer asked for the event socket:
	// room for thousands of queued events (the kernel doubles it).
	eventSocketBuffer = 4 << 20
	// eventDatagramBuffer holds the datagrams of one receive: eventBatch
	// of eventSlot bytes. The kernel sends one event of at most a few
	// hundred bytes per datagram.
	eventDatagramBuffer = 32 << 10
	// eventBatch is how many datagrams one receive (recvmmsg) reads at
	// most: the events of a connection come in bursts (CREATED with
	// ESTABLISHED, the subflows together), and reading them one
	// recvfrom each cost a system call per event more, the one that
	// finds the socket empty included.
	eventBatch    = 8
	eventSlot     = eventDatagramBuffer / eventBatch
	genlHeaderLen = 4 // struct genlmsghdr: cmd, version, reserved
)

// EventListener is a socket joined to the mptcp_pm_events group; it only
// listens. Its events are those of the network namespace it was opened in.
type EventListener struct {
	conn   *genetlink.Conn
	raw    syscall.RawConn
	family uint16 // the mptcp_pm family id
	closed atomic.Bool

	mu     sync.Mutex // serialises Receive; guards the fields below
	buf    []byte     // eventBatch slots of eventSlot bytes, a datagram each
	hdrs   [eventBatch]unix.Mmsghdr
	iovs   [eventBatch]unix.Iovec
	froms  [eventBatch]unix.RawSockaddrNetlink
	n      int           // datagrams the last recvmmsg read
	errno  syscall.Errno // its error
	readFn func(fd uintptr) bool
}

// ListenEvents opens a netlink socket in the network namespace of cfg
// (cfg.NetNS 0 or a nil cfg: the caller's), resolves the mptcp_pm family and
// its mptcp_pm_events group by name and joins the group. The socket's
// receive buffer is made large (4 MiB, beyond the system limit when the
// caller may) so that bursts of events do not overflow it.
//
// Joining needs CAP_NET_ADMIN: without it the error wraps pm.ErrPermission. A
// kernel without MPTCP gives an error wrapping ErrFamilyNotFound.
func ListenEvents(cfg *Config) (*EventListener, error) {
	var nc netlink.Config
	if cfg != nil {
		nc.NetNS = cfg.NetNS
	}
	c, err := genetlink.Dial(&nc)
	if err != nil {
		return nil, fmt.Errorf("pm: listen events: dial: %w", err)
	}
	l, err := newEventListener(c)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("pm: listen events: %w", err)
	}
	return l, nil
}

func newEventListener(c *genetlink.Conn) (*EventListener, error) {
	f, err := c.GetFamily(FamilyName)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, ErrFamilyNotFound
		}
		return nil, fmt.Errorf("resolve family %s: %w", FamilyName, err)
	}
	var group uint32
	for _, g := range f.Groups {
		if g.Name == GroupEvents {
			group = g.ID
		}
	}
	if group == 0 {
		return nil, fmt.Errorf("family %s has no group %s: %w", FamilyName, GroupEvents, pm.ErrNotSupported)
	}
	// SetReadBuffer tries SO_RCVBUFFORCE first and falls back to SO_RCVBUF,
	// which the kernel caps at net.core.rmem_max.
	if err := c.SetReadBuffer(eventSocketBuffer); err != nil {
		return nil, fmt.Errorf("set receive buffer: %w", err)
	}
	if err := c.JoinGroup(group); err != nil {
		if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
			return nil, fmt.Errorf("join group %s: %w (%w)", GroupEvents, pm.ErrPermission, err)
		}
		return nil, fmt.Errorf("join group %s: %w", GroupEvents, err)
	}
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("raw socket: %w", err)
	}
	l := &EventListener{
		conn:   c,
		raw:    raw,
		family: f.ID,
		buf:    make([]byte, eventDatagramBuffer),
	}
	for i := range eventBatch {
		l.iovs[i].Base = &l.buf[i*eventSlot]
		l.iovs[i].SetLen(eventSlot)
		h := &l.hdrs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&l.froms[i]))
		h.Iov = &l.iovs[i]
		h.SetIovlen(1)
	}
	l.readFn = l.recvmmsg // bound once: Receive then allocates nothing
	return l, nil
}

// recvmmsg reads the datagrams queued, up to eventBatch, into l.buf's
// slots without blocking; it is the callback of syscall.RawConn.Read,
// which waits for the socket to become readable whenever it returns
// false. It uses the raw system call because the x/sys wrappers allocate,
// and RawSyscall6 because the call never blocks (the socket is
// non-blocking, and MSG_DONTWAIT): a Syscall tells the Go scheduler that
// the thread may block, which wakes the runtime's monitor thread when the
// process was idle, a futex and a series of its wake-ups for every burst
// of events. An error after some datagrams (an overflow) stays on the
// socket for the next call.
func (l *EventListener) recvmmsg(fd uintptr) bool {
	for i := range l.hdrs {
		l.hdrs[i].Hdr.Namelen = unix.SizeofSockaddrNetlink
		l.hdrs[i].Hdr.Flags = 0
		l.hdrs[i].Len = 0
	}
	for {
		n, _, e := unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&l.hdrs[0])), eventBatch,
			unix.MSG_TRUNC|unix.MSG_DONTWAIT, // each Len is the datagram's full length; never blocks
			0, 0)
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		l.n, l.errno = int(n), e
		return true
	}
}

// Receive blocks until events arrive and appends the events of one receive
// (the datagrams queued, up to 8) to buf[:0]. Event types this package does not know are skipped; so are
// messages not sent by the kernel.
//
// When the kernel dropped events because the socket's buffer was full, the
// error wraps ErrOverflow; the listener stays usable, and the caller must
// Discard what is still queued and resynchronise its state from the
// kernel. A malformed event is an error
// wrapping pm.ErrInvalid, returned with the events of the same receive that
// did decode. After the deadline set by SetDeadline the error wraps
// os.ErrDeadlineExceeded; after Close it wraps net.ErrClosed.
//
// Receive reuses its buffers and does not allocate on the success path.
// Calls from several goroutines are serialised.
func (l *EventListener) Receive(buf []pm.Event) ([]pm.Event, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	buf = buf[:0]
	for len(buf) == 0 {
		n, err := l.receive()
		if err != nil {
			return buf, err
		}
		if buf, err = l.batch(buf, n); err != nil {
			return buf, err
		}
	}
	return buf, nil
}

// Follow calls fn with the events of each receive, as Receive returns
// them, until fn returns false (Follow then returns nil), the listener is
// closed (an error wrapping net.ErrClosed), its deadline passes or reading
// fails. The slice fn gets is reused once fn returns. Calls of Receive,
// Discard and Follow are serialised, so those methods may not be called
// from fn.
//
// On an overflow Follow drops the events still queued, as Discard does,
// before it calls fn with an error wrapping ErrOverflow that says how many
// it dropped; the caller resynchronises its state from the kernel.
//
// Unlike a loop of Receive, Follow does not read the socket once more to
// find it empty after a receive that found fewer datagrams than it had room
// for: it waits for the socket to be signalled readable again, which it is
// for anything queued since, an overflow included. A loop of Receive pays
// that system call on almost every wake-up, before the caller can act on
// the events it got.
func (l *EventListener) Follow(fn func(evs []pm.Event, err error) bool) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	var (
		buf   = make([]pm.Event, 0, eventBatch)
		wait  bool // the last receive found the socket empty: wait for it to be signalled
		done  bool // fn returned false
		errno syscall.Errno
	)
	err := l.raw.Read(func(fd uintptr) bool {
		for {
			if wait {
				wait = false
				return false
			}
			if !l.recvmmsg(fd) {
				return false
			}
			var evs []pm.Event
			var err error
			switch l.errno {
			case 0:
				evs, err = l.batch(buf[:0], l.n)
				// A receive stops short only at an empty queue, or at an
				// error that the kernel signals and keeps for the next.
				wait = l.n < eventBatch
			case unix.ENOBUFS:
				n, e := l.drain(fd)
				if e != 0 {
					errno = e
					return true
				}
				err = fmt.Errorf("pm: receive events: %w (%d queued events dropped)", ErrOverflow, n)
				wait = true
			default:
				errno = l.errno
				return true
			}
			if len(evs) == 0 && err == nil {
				continue // only messages that are not the kernel's events
			}
			if !fn(evs, err) {
				done = true
				return true
			}
			buf = evs[:0]
		}
	})
	switch {
	case done:
		return nil
	case err != nil && l.closed.Load():
		return fmt.Errorf("pm: receive events: %w", net.ErrClosed)
	case err != nil:
		return fmt.Errorf("pm: receive events: %w", err)
	}
	return fmt.Errorf("pm: receive events: %w", os.NewSyscallError("recvmmsg", errno))
}

// batch appends the events of the n datagrams of the last receive to buf.
// A datagram that was truncated or does not decode is an error wrapping
// pm.ErrInvalid, returned with the events of the others.
func (l *EventListener) batch(buf []pm.Event, n int) ([]pm.Event, error) {
	var first, err error
	for i := range n {
		size := int(l.hdrs[i].Len)
		switch {
		case size > eventSlot:
			err = fmt.Errorf("pm: receive events: datagram of %d bytes truncated to %d: %w", size, eventSlot, pm.ErrInvalid)
		case l.froms[i].Pid != 0:
			continue // from a user-space socket, not from the kernel
		default:
			buf, err = l.decode(buf, l.buf[i*eventSlot:i*eventSlot+size])
		}
		if first == nil {
			first = err
		}
	}
	return buf, first
}

// receive reads the datagrams queued, up to eventBatch, into l.buf's slots
// and returns how many it read, at least one.
func (l *EventListener) receive() (int, error) {
	if err := l.raw.Read(l.readFn); err != nil {
		if l.closed.Load() {
			return 0, fmt.Errorf("pm: receive events: %w", net.ErrClosed)
		}
		return 0, fmt.Errorf("pm: receive events: %w", err)
	}
	switch {
	case l.errno == unix.ENOBUFS:
		return 0, fmt.Errorf("pm: receive events: %w", ErrOverflow)
	case l.errno != 0:
		return 0, fmt.Errorf("pm: receive events: %w", os.NewSyscallError("recvmmsg", l.errno))
	}
	return l.n, nil
}

// decode appends the known events of the netlink messages in b to evs.
func (l *EventListener) decode(evs []pm.Event, b []byte) ([]pm.Event, error) {
	var first error
	for len(b) > 0 {
		if len(b) < unix.SizeofNlMsghdr {
			return evs, fmt.Errorf("pm: receive events: %d trailing bytes: %w", len(b), pm.ErrInvalid)
		}
		n := int(binary.NativeEndian.Uint32(b[0:4]))
		typ := binary.NativeEndian.Uint16(b[4:6])
		if n < unix.SizeofNlMsghdr || n > len(b) {
			return evs, fmt.Errorf("pm: receive events: message length %d with %d bytes left: %w", n, len(b), pm.ErrInvalid)
		}
		msg := b[unix.SizeofNlMsghdr:n]
		b = b[min((n+3)&^3, len(b)):]
		if typ != l.family || len(msg) < genlHeaderLen {
			continue // NLMSG_NOOP and the like
		}
		cmd := msg[0]
		if !pm.EventType(cmd).Known() {
			continue
		}
		ev, err := DecodeEvent(cmd, msg[genlHeaderLen:])
		if err != nil {
			if first == nil {
				first = err
			}
			continue
		}
		evs = append(evs, ev)
	}
	return evs, first
}

// Discard drops every event queued on the socket, without waiting for
// more (a deadline set by SetDeadline still applies), and returns how many
// datagrams it dropped. The kernel reports an
// overflow before the events still queued, which are older than any state
// the caller re-reads after it: applied after the re-read, a stale CREATED
// whose CLOSED was lost would bring back a connection that is gone
// (docs/kernel-notes.md, "Event socket overflow").
func (l *EventListener) Discard() (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var n int
	var errno syscall.Errno
	err := l.raw.Read(func(fd uintptr) bool {
		n, errno = l.drain(fd)
		return true
	})
	switch {
	case err != nil && l.closed.Load():
		return n, fmt.Errorf("pm: discard events: %w", net.ErrClosed)
	case err != nil:
		return n, fmt.Errorf("pm: discard events: %w", err)
	case errno != 0:
		return n, fmt.Errorf("pm: discard events: %w", os.NewSyscallError("recvfrom", errno))
	}
	return n, nil
}

// drain reads and drops every datagram queued, without waiting for more,
// and returns how many it dropped.
func (l *EventListener) drain(fd uintptr) (int, syscall.Errno) {
	n := 0
	for {
		_, _, e := unix.Syscall6(unix.SYS_RECVFROM, fd,
			uintptr(unsafe.Pointer(&l.buf[0])), uintptr(len(l.buf)),
			unix.MSG_DONTWAIT|unix.MSG_TRUNC, 0, 0)
		switch e {
		case 0:
			n++
		case unix.EINTR, unix.ENOBUFS: // ENOBUFS: more were lost meanwhile; as good as discarded
		case unix.EAGAIN:
			return n, 0
		default:
			return n, e
		}
	}
}

// SetDeadline sets the time after which a pending or future Receive fails
// with an error wrapping os.ErrDeadlineExceeded; the zero time clears it.
func (l *EventListener) SetDeadline(t time.Time) error {
	if err := l.conn.SetReadDeadline(t); err != nil {
		return fmt.Errorf("pm: event listener deadline: %w", err)
	}
	return nil
}

// Close closes the socket. A pending Receive returns an error wrapping
// net.ErrClosed.
func (l *EventListener) Close() error {
	if l.closed.Swap(true) {
		return nil
	}
	if err := l.conn.Close(); err != nil {
		return fmt.Errorf("pm: close event listener: %w", err)
	}
	return nil
}
