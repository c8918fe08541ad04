package diag

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/mdlayher/netlink"
)

// Config says where a Client works.
type Config struct {
	// NetNS is a file descriptor of the network namespace to list, as for
	// netlink.Config.NetNS; 0 means the caller's (the calling thread's at
	// Dial). The socket stays in that namespace for its whole life.
	NetNS int
}

// ErrNotSupported is wrapped by the error of a listing when the kernel
// cannot dump MPTCP sockets: it has no MPTCP, or no mptcp_diag
// (CONFIG_INET_MPTCP_DIAG).
var ErrNotSupported = errors.New("kernel cannot dump MPTCP sockets (no mptcp_diag)")

// recvBufferSize is the size of the buffer each reply datagram is read
// into. The kernel fills a dump datagram up to the reader's buffer size,
// capped at 32 KiB less the skb overhead; the margin covers a single
// socket's message that needs more (the kernel then grows the datagram).
const recvBufferSize = 64 << 10

// Client lists sockets over one NETLINK_SOCK_DIAG socket. It is safe for
// concurrent use; listings are serialised on the socket. A listing is one
// dump request per address family: the kernel walks its tables once, so
// the cost grows with the number of sockets, not with requests.
type Client struct {
	mu   sync.Mutex
	nc   *netlink.Conn
	rc   syscall.RawConn
	buf  []byte // a reply datagram
	req  []byte // the request being sent
	seq  uint32
	tail int // bytes of the last datagram, or -1 if it was truncated

	// Method values and their results, bound once so that a listing does
	// not allocate a closure per system call.
	readFn, writeFn func(fd uintptr) bool
	ioErr           error

	rawHook func(datagram []byte) // tests: sees each datagram received

	// The sizes of the last listings, to size Snapshot's slices.
	connHint, subflowHint atomic.Int64
}

// Dial opens a sock_diag netlink socket in the namespace of cfg (a nil cfg:
// the caller's).
func Dial(cfg *Config) (*Client, error) {
	var nc netlink.Config
	if cfg != nil {
		nc.NetNS = cfg.NetNS
	}
	conn, err := netlink.Dial(netlinkSockDiag, &nc)
	if err != nil {
		return nil, fmt.Errorf("diag: dial: %w", err)
	}
	rc, err := conn.SyscallConn()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("diag: dial: %w", err)
	}
	c := &Client{nc: conn, rc: rc, buf: make([]byte, recvBufferSize)}
	c.readFn = c.readOnce
	c.writeFn = c.writeOnce
	return c, nil
}

// Close closes the socket. A listing in progress fails.
func (c *Client) Close() error {
	if err := c.nc.Close(); err != nil {
		return fmt.Errorf("diag: close: %w", err)
	}
	return nil
}

// Connections lists the MPTCP connections of the namespace: the MPTCP
// sockets of both address families in every state but LISTEN.
func (c *Client) Connections() ([]Conn, error) {
	return c.ListConnections(nil, NotListening)
}

// Listeners lists the namespace's listening MPTCP sockets, the kernel's
// own (for endpoints with a port) included.
func (c *Client) Listeners() ([]Conn, error) {
	return c.ListConnections(nil, Listening)
}

// ListConnections appends to dst the MPTCP sockets of both address families
// whose state is in states and returns the extended slice. IPv4 sockets
// come first, then IPv6 ones (an IPv6 socket may carry an IPv4 connection:
// its addresses are then IPv4 and its Family AF_INET6). Reusing dst spares
// the allocations of the result.
func (c *Client) ListConnections(dst []Conn, states StateMask) ([]Conn, error) {
	err := c.eachConn(states, func(cn Conn) { dst = append(dst, cn) })
	if err != nil {
		return dst, fmt.Errorf("diag: list connections: %w", err)
	}
	return dst, nil
}

// eachConn calls fn with each MPTCP socket of both families whose state is
// in states. A Conn is passed by value: a pointer would make each one
// escape to the heap.
func (c *Client) eachConn(states StateMask, fn func(Conn)) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, fam := range [...]uint8{afInet, afInet6} {
		err := c.dump(fam, ipprotoMPTCP, extInfo, states, func(p []byte) error {
			conn, err := decodeConn(p)
			if err != nil {
				return err
			}
			if states.Has(conn.State) {
				fn(conn)
				n++
			}
			return nil
		})
		if err != nil {
			if errors.Is(err, syscall.ENOENT) {
				err = fmt.Errorf("%w: %w", ErrNotSupported, err)
			}
			return err
		}
	}
	c.connHint.Store(int64(n))
	return nil
}

// Subflows lists the MPTCP subflows of the namespace: the TCP sockets of
// both families in every state but LISTEN whose ULP is "mptcp". Plain TCP
// sockets are skipped.
//
// The kernel reports a socket's ULP only to a requester with CAP_NET_ADMIN
// in the namespace's user namespace; without it, Subflows finds none.
func (c *Client) Subflows() ([]Subflow, error) {
	return c.ListSubflows(nil, NotListening)
}

// ListSubflows appends to dst the subflows whose state is in states and
// returns the extended slice. With LISTEN in states it also lists the
// listening TCP sockets of MPTCP listeners, which have Token 0.
func (c *Client) ListSubflows(dst []Subflow, states StateMask) ([]Subflow, error) {
	err := c.eachSubflow(states, func(sf Subflow) { dst = append(dst, sf) })
	if err != nil {
		return dst, fmt.Errorf("diag: list subflows: %w", err)
	}
	return dst, nil
}

// eachSubflow calls fn with each subflow of both families whose state is
// in states.
func (c *Client) eachSubflow(states StateMask, fn func(Subflow)) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, fam := range [...]uint8{afInet, afInet6} {
		err := c.dump(fam, ipprotoTCP, extInfo, states, func(p []byte) error {
			sf, ok, err := decodeSubflow(p)
			if err != nil {
				return err
			}
			if ok && states.Has(sf.State) {
				fn(sf)
				n++
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	c.subflowHint.Store(int64(n))
	return nil
}

// dump sends one dump request and feeds the payload of each reply to fn.
// If fn fails, the rest of the dump is read and dropped, so the socket is
// ready for the next request. c.mu must be held.
func (c *Client) dump(family uint8, protocol uint16, ext uint8, states StateMask, fn func([]byte) error) error {
	c.seq++
	seq := c.seq
	c.req = appendRequest(c.req[:0], seq, family, protocol, ext, states)
	if err := c.rc.Write(c.writeFn); err != nil {
		return err
	}
	if c.ioErr != nil {
		return c.ioErr
	}
	var fnErr error
	deliver := func(p []byte) error {
		if fnErr != nil {
			return nil
		}
		fnErr = fn(p)
		return nil
	}
	for {
		if err := c.rc.Read(c.readFn); err != nil {
			return err
		}
		if c.ioErr != nil {
			return c.ioErr
		}
		if c.tail < 0 {
			// Lost a datagram: the rest of the dump is useless, but it
			// must be read for the socket to take another request.
			fnErr = errors.Join(fnErr, fmt.Errorf("%w: reply larger than %d bytes", errMalformed, len(c.buf)))
			continue
		}
		if c.rawHook != nil {
			c.rawHook(c.buf[:c.tail])
		}
		done, err := parseDump(c.buf[:c.tail], seq, deliver)
		if err != nil {
			// The kernel's error, or a datagram whose framing is broken
			// (whose end cannot be found): give up either way.
			return err
		}
		if done {
			return fnErr
		}
	}
}

func (c *Client) writeOnce(fd uintptr) bool {
	c.ioErr = nil
	for {
		err := sendRaw(fd, c.req)
		switch err {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		case nil:
		default:
			c.ioErr = os.NewSyscallError("write", err)
		}
		return true
	}
}

func (c *Client) readOnce(fd uintptr) bool {
	c.ioErr = nil
	for {
		n, err := recvRaw(fd, c.buf)
		switch err {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		case nil:
			if n > len(c.buf) {
				n = -1
			}
			c.tail = n
		default:
			c.ioErr = os.NewSyscallError("recvfrom", err)
		}
		return true
	}
}

// ErrNoSuchConn is wrapped by ConnByToken's error when the kernel has no
// connection with the token.
var ErrNoSuchConn = errors.New("no MPTCP connection with this token")

// ConnByToken returns the MPTCP connection with the local token, which the
// kernel looks up alone (mptcp_diag's lookup by token: no dump of every
// socket).
func (c *Client) ConnByToken(token uint32) (Conn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	var id []byte
	c.req, id = appendLookup(c.req[:0], c.seq, afInet, ipprotoMPTCP)
	ne.PutUint32(id[40:], token) // idiag_cookie[0]: mptcp_diag looks the token up
	ne.PutUint32(id[44:], 0)
	var out Conn
	err := c.exchange(c.seq, 1, func(p []byte, refused error) (err error) {
		if refused != nil {
			return refused
		}
		out, err = decodeConn(p)
		return err
	})
	switch {
	case errors.Is(err, syscall.ENOENT):
		return Conn{}, fmt.Errorf("diag: connection %08x: %w", token, ErrNoSuchConn)
	case err != nil:
		return Conn{}, fmt.Errorf("diag: connection %08x: %w", token, err)
	}
	return out, nil
}

// ErrNoSuchSubflow is wrapped by Subflow's error when the kernel has no
// MPTCP subflow with those addresses and ports.
var ErrNoSuchSubflow = errors.New("no MPTCP subflow with these addresses")

// SubflowKey names a subflow to look up: its addresses and ports, and the
// index of the interface its socket is bound to (0 for none). A subflow
// bound to an interface, as the joins the path managers make are, is
// found only with that index; 0 finds the unbound ones.
type SubflowKey struct {
	Local, Remote netip.AddrPort
	Ifindex       int32
}

// Subflow returns the MPTCP subflow of key, which the kernel looks up
// alone (LookupSubflows).
func (c *Client) Subflow(key SubflowKey) (Subflow, error) {
	sfs, missing, err := c.LookupSubflows(nil, []SubflowKey{key})
	switch {
	case err != nil:
		return Subflow{}, err
	case missing > 0:
		return Subflow{}, fmt.Errorf("diag: subflow %s -> %s: %w", key.Local, key.Remote, ErrNoSuchSubflow)
	}
	return sfs[0], nil
}

// LookupSubflows appends to dst the MPTCP subflows of keys that the kernel
// has, which it looks up alone (inet_diag's lookup by address and port),
// and returns how many it has not (closed, or not MPTCP subflows). The
// requests go in one datagram. A dump walks the host's whole table of TCP
// sockets, whatever the namespace and the number of subflows: 2.4 ms of
// kernel time on a VM with 24 GiB and no connection at all; a lookup is a
// hash probe.
func (c *Client) LookupSubflows(dst []Subflow, keys []SubflowKey) (_ []Subflow, missing int, _ error) {
	if len(keys) == 0 {
		return dst, 0, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	first := c.seq + 1
	c.req = c.req[:0]
	for _, k := range keys {
		c.seq++
		c.req = appendSubflowLookup(c.req, c.seq, k)
	}
	var refused error
	err := c.exchange(first, len(keys), func(p []byte, e error) error {
		switch {
		case errors.Is(e, syscall.ENOENT):
			missing++
		case e != nil:
			refused = cmp.Or(refused, e)
		default:
			sf, ok, err := decodeSubflow(p)
			if err != nil {
				return err
			}
			if ok {
				dst = append(dst, sf)
			} else {
				missing++ // a TCP socket, not an MPTCP subflow
			}
		}
		return nil
	})
	if err = cmp.Or(err, refused); err != nil {
		return dst, missing, fmt.Errorf("diag: look subflows up: %w", err)
	}
	return dst, missing, nil
}

// appendSubflowLookup appends a request for the TCP socket of k, with its
// information.
func appendSubflowLookup(b []byte, seq uint32, k SubflowKey) []byte {
	l, r := k.Local.Addr().Unmap(), k.Remote.Addr().Unmap()
	family := uint8(afInet6)
	if l.Is4() && r.Is4() {
		family = afInet
	}
	b, id := appendLookup(b, seq, family, ipprotoTCP)
	binary.BigEndian.PutUint16(id[0:], k.Local.Port())
	binary.BigEndian.PutUint16(id[2:], k.Remote.Port())
	if family == afInet {
		x, y := l.As4(), r.As4()
		copy(id[4:], x[:])
		copy(id[20:], y[:])
	} else {
		x, y := k.Local.Addr().As16(), k.Remote.Addr().As16()
		copy(id[4:], x[:])
		copy(id[20:], y[:])
	}
	ne.PutUint32(id[36:], uint32(k.Ifindex))
	ne.PutUint32(id[40:], ^uint32(0)) // INET_DIAG_NOCOOKIE
	ne.PutUint32(id[44:], ^uint32(0))
	return b
}

// appendLookup appends a request for one socket (not a dump) of family
// and protocol, with the socket's information, and returns it with its
// struct inet_diag_sockid for the caller to fill in.
func appendLookup(b []byte, seq uint32, family uint8, protocol uint16) (_, sockid []byte) {
	at := len(b)
	b = appendRequest(b, seq, family, protocol, extInfo, AllStates)
	ne.PutUint16(b[at+6:], nlmFRequest)
	return b, b[at+nlmsgHdrLen+8:]
}

// exchange sends the n requests in c.req, for one socket each, with the
// sequence numbers first to first+n-1, and calls reply with the payload
// of each answer, or with the kernel's refusal of it as a syscall.Errno,
// until every one has come or reply fails. c.mu is held.
func (c *Client) exchange(first uint32, n int, reply func(payload []byte, refused error) error) error {
	if err := c.rc.Write(c.writeFn); err != nil {
		return err
	}
	if c.ioErr != nil {
		return c.ioErr
	}
	for pending := n; pending > 0; {
		if err := c.rc.Read(c.readFn); err != nil {
			return err
		}
		if c.ioErr != nil {
			return c.ioErr
		}
		if c.tail < 0 {
			return fmt.Errorf("%w: reply too large", errMalformed)
		}
		err := walkMessages(c.buf[:c.tail], func(typ uint16, seq uint32, p []byte) error {
			if seq-first >= uint32(n) {
				return nil // not an answer to these requests (sequence numbers wrap)
			}
			switch typ {
			case sockDiagByFamily:
				pending--
				return reply(p, nil)
			case nlmsgError:
				if len(p) < 4 {
					return fmt.Errorf("%w: short NLMSG_ERROR", errMalformed)
				}
				if e := int32(ne.Uint32(p)); e < 0 {
					pending--
					return reply(nil, syscall.Errno(-e))
				}
			}
			return nil // an acknowledgement, which these requests do not ask for
		})
		if err != nil {
			return err
		}
	}
	return nil
}
