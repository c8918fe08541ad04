package pmnl

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"syscall"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
)

// Config says where a Client or an EventListener works.
type Config struct {
	// NetNS is a file descriptor of the network namespace to work in, as
	// for netlink.Config.NetNS; 0 means the caller's (the calling thread's).
	NetNS int
}

// receiveBuffer is the size of the buffer each reply datagram is read into:
// the largest datagram the kernel sends to a netlink socket (a dump part is
// at most 32 KiB minus the skb overhead). A fixed buffer spares the
// size-peeking system call per datagram.
const receiveBuffer = 32 << 10

// Client sends commands to the kernel's path manager over one generic
// netlink socket. It is safe for concurrent use: each command is one
// request and its replies, serialised on the socket.
type Client struct {
	conn    *genetlink.Conn
	family  uint16 // the mptcp_pm family id
	version uint8
	groups  map[string]uint32 // multicast group ids by name
}

// Dial opens a netlink socket in the network namespace of cfg (a nil cfg:
// the caller's) and resolves the mptcp_pm family and its multicast groups
// by name. The socket asks for extended acknowledgements, so kernel
// refusals carry the kernel's message. A kernel without MPTCP gives an error
// wrapping ErrFamilyNotFound.
func Dial(cfg *Config) (*Client, error) {
	nc := netlink.Config{Strict: true, MessageBufferSize: receiveBuffer}
	if cfg != nil {
		nc.NetNS = cfg.NetNS
	}
	conn, err := genetlink.Dial(&nc)
	if err != nil {
		return nil, fmt.Errorf("pm: dial: %w", err)
	}
	c, err := newClient(conn)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// newClient resolves the family on conn and returns a Client using it.
func newClient(conn *genetlink.Conn) (*Client, error) {
	f, err := conn.GetFamily(FamilyName)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("pm: dial: %w", ErrFamilyNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("pm: dial: resolve family %s: %w", FamilyName, err)
	}
	c := &Client{
		conn:    conn,
		family:  f.ID,
		version: f.Version,
		groups:  make(map[string]uint32, len(f.Groups)),
	}
	for _, g := range f.Groups {
		c.groups[g.Name] = g.ID
	}
	return c, nil
}

// Close closes the socket. Commands in progress fail.
func (c *Client) Close() error {
	if err := c.conn.Close(); err != nil {
		return fmt.Errorf("pm: close: %w", err)
	}
	return nil
}

// GroupID returns the id of the family's multicast group of that name, as
// resolved by Dial.
func (c *Client) GroupID(name string) (uint32, bool) {
	id, ok := c.groups[name]
	return id, ok
}

// AddEndpoint adds an endpoint to the in-kernel path manager and returns
// its id. When e.ID is 0 the kernel picks the id, which AddEndpoint then
// finds in the endpoint list by address and port. e.Addr must be valid; an
// IPv4-mapped address is added as IPv4, and a zone is ignored.
//
// Adding an address that already is an endpoint gives an error matching
// pm.ErrExists; an id already in use, one matching pm.ErrBusy (the kernel's
// EBUSY).
func (c *Client) AddEndpoint(e pm.Address) (uint8, error) {
	const op = "add endpoint"
	addr, err := checkAddr(op, e.Addr)
	if err != nil {
		return 0, err
	}
	e.Addr = addr
	_, err = c.execute(op, cmdAddAddr, netlink.Acknowledge, func(ae *netlink.AttributeEncoder) {
		encodeAddress(ae, pmAttrAddr, e, withFlags)
	})
	if err != nil || e.ID != 0 {
		return e.ID, err
	}
	eps, err := c.Endpoints()
	if err != nil {
		return 0, fmt.Errorf("pm: %s: added, but could not read its id: %w", op, err)
	}
	if id, ok := findEndpoint(eps, e.Addr, e.Port); ok {
		return id, nil
	}
	return 0, fmt.Errorf("pm: %s: added %s, but it is not in the endpoint list: %w", op, e.Addr, pm.ErrNotFound)
}

// findEndpoint returns the id of the endpoint with this address and port.
// The kernel drops the port of an endpoint that is not signal-only, so an
// endpoint with the address and port 0 matches when no exact one exists.
func findEndpoint(eps []pm.Address, addr netip.Addr, port uint16) (uint8, bool) {
	var portless []uint8
	for _, ep := range eps {
		if ep.Addr != addr {
			continue
		}
		if ep.Port == port {
			return ep.ID, true
		}
		if ep.Port == 0 {
			portless = append(portless, ep.ID)
		}
	}
	if len(portless) == 1 {
		return portless[0], true
	}
	return 0, false
}

// DeleteEndpoint deletes the in-kernel path manager's endpoint with this id.
// An unknown id gives an error matching pm.ErrNotFound.
func (c *Client) DeleteEndpoint(id uint8) error {
	_, err := c.execute("delete endpoint", cmdDelAddr, netlink.Acknowledge, func(ae *netlink.AttributeEncoder) {
		encodeAddress(ae, pmAttrAddr, pm.Address{ID: id}, 0)
	})
	return err
}

// GetEndpoint returns the in-kernel path manager's endpoint with this id.
// An unknown id gives an error matching pm.ErrNotFound.
func (c *Client) GetEndpoint(id uint8) (pm.Address, error) {
	const op = "get endpoint"
	msgs, err := c.execute(op, cmdGetAddr, 0, func(ae *netlink.AttributeEncoder) {
		encodeAddress(ae, pmAttrAddr, pm.Address{ID: id}, 0)
	})
	if err != nil {
		return pm.Address{}, err
	}
	if len(msgs) != 1 {
		return pm.Address{}, fmt.Errorf("pm: %s: %d replies, want 1: %w", op, len(msgs), pm.ErrInvalid)
	}
	a, err := decodeAddressMessage(msgs[0].Data)
	if err != nil {
		return pm.Address{}, fmt.Errorf("pm: %s: %w", op, err)
	}
	return a, nil
}

// Endpoints returns all endpoints of the in-kernel path manager.
func (c *Client) Endpoints() ([]pm.Address, error) {
	return c.dumpAddresses("list endpoints", nil)
}

// FlushEndpoints deletes all endpoints of the in-kernel path manager.
func (c *Client) FlushEndpoints() error {
	_, err := c.execute("flush endpoints", cmdFlushAddrs, netlink.Acknowledge, nil)
	return err
}

// SetLimits sets both limits of the in-kernel path manager. The kernel
// refuses values above its maximum (8) with an error matching pm.ErrInvalid.
func (c *Client) SetLimits(l pm.Limits) error {
	_, err := c.execute("set limits", cmdSetLimits, netlink.Acknowledge, func(ae *netlink.AttributeEncoder) {
		ae.Uint32(pmAttrRcvAddAddrs, l.AddAddrAccepted)
		ae.Uint32(pmAttrSubflows, l.Subflows)
	})
	return err
}

// Limits returns the limits of the in-kernel path manager.
func (c *Client) Limits() (pm.Limits, error) {
	const op = "get limits"
	msgs, err := c.execute(op, cmdGetLimits, 0, nil)
	if err != nil {
		return pm.Limits{}, err
	}
	if len(msgs) != 1 {
		return pm.Limits{}, fmt.Errorf("pm: %s: %d replies, want 1: %w", op, len(msgs), pm.ErrInvalid)
	}
	l, err := decodeLimits(msgs[0].Data)
	if err != nil {
		return pm.Limits{}, fmt.Errorf("pm: %s: %w", op, err)
	}
	return l, nil
}

// SetEndpointFlags sets the flags of the in-kernel path manager's endpoint
// with this id. The kernel changes only the backup and fullmesh flags; the
// others in f are ignored.
func (c *Client) SetEndpointFlags(id uint8, f pm.Flags) error {
	_, err := c.execute("set endpoint flags", cmdSetFlags, netlink.Acknowledge, func(ae *netlink.AttributeEncoder) {
		encodeAddress(ae, pmAttrAddr, pm.Address{ID: id, Flags: f}, withFlags)
	})
	return err
}

// Announce announces a local address to the peer of the userspace-PM
// connection with this token (an ADD_ADDR). a.ID must be non-zero and
// a.Addr valid, or the error wraps pm.ErrInvalid and nothing is sent; the
// signal flag is always set. The peer can only join an announced address
// if an MPTCP socket listens on it.
//
// A token the kernel does not know gives an error matching pm.ErrNotFound; a
// connection of the in-kernel path manager, one matching pm.ErrNotSupported.
func (c *Client) Announce(token uint32, a pm.Address) error {
	const op = "announce"
	if a.ID == 0 {
		return fmt.Errorf("pm: %s: address id 0: %w", op, pm.ErrInvalid)
	}
	addr, err := checkAddr(op, a.Addr)
	if err != nil {
		return err
	}
	a.Addr = addr
	a.Flags |= pm.FlagSignal
	_, err = c.execute(op, cmdAnnounce, netlink.Acknowledge, func(ae *netlink.AttributeEncoder) {
		ae.Uint32(pmAttrToken, token)
		encodeAddress(ae, pmAttrAddr, a, withFlags)
	})
	return err
}

// Remove withdraws the address with this local id from the userspace-PM
// connection with this token (a REMOVE_ADDR to the peer); the kernel also
// closes the connection's subflows that use it.
func (c *Client) Remove(token uint32, id uint8) error {
	_, err := c.execute("remove", cmdRemove, netlink.Acknowledge, func(ae *netlink.AttributeEncoder) {
		ae.Uint32(pmAttrToken, token)
		ae.Uint8(pmAttrLocID, id)
	})
	return err
}

// CreateSubflow asks the kernel to open a subflow of the userspace-PM
// connection with this token, from local (address, and optionally id, port,
// flags such as FlagBackup and interface) to remote. Both addresses must be
// valid and of the same family once IPv4-mapped addresses are unmapped, or
// the error wraps pm.ErrInvalid and nothing is sent.
//
// The command returns once the subflow's SYN is on its way; the subflow is
// up when the SUB_ESTABLISHED event comes. The kernel refuses while the
// connection is not yet fully established (ENOTCONN).
func (c *Client) CreateSubflow(token uint32, local pm.Address, remote netip.AddrPort) error {
	const op = "create subflow"
	laddr, raddr, err := checkPair(op, local.Addr, remote.Addr())
	if err != nil {
		return err
	}
	local.Addr = laddr
	_, err = c.execute(op, cmdSubflowCreate, netlink.Acknowledge, func(ae *netlink.AttributeEncoder) {
		ae.Uint32(pmAttrToken, token)
		encodeAddress(ae, pmAttrAddr, local, 0)
		encodeAddress(ae, pmAttrAddrRemote, pm.Address{Addr: raddr, Port: remote.Port()}, 0)
	})
	return err
}

// DestroySubflow closes the subflow of the userspace-PM connection with
// this token that goes from local to remote (both ports are needed).
func (c *Client) DestroySubflow(token uint32, local, remote netip.AddrPort) error {
	const op = "destroy subflow"
	laddr, raddr, err := checkPair(op, local.Addr(), remote.Addr())
	if err != nil {
		return err
	}
	_, err = c.execute(op, cmdSubflowDestroy, netlink.Acknowledge, func(ae *netlink.AttributeEncoder) {
		ae.Uint32(pmAttrToken, token)
		encodeAddress(ae, pmAttrAddr, pm.Address{Addr: laddr, Port: local.Port()}, 0)
		encodeAddress(ae, pmAttrAddrRemote, pm.Address{Addr: raddr, Port: remote.Port()}, 0)
	})
	return err
}

// SetSubflowFlags sets the backup flag (the only one the kernel changes) of
// the subflows of the userspace-PM connection with this token that go from
// local to remote, and tells the peer (MP_PRIO). A local port of 0 means
// every subflow from that address to remote.
func (c *Client) SetSubflowFlags(token uint32, local, remote netip.AddrPort, f pm.Flags) error {
	const op = "set subflow flags"
	laddr, raddr, err := checkPair(op, local.Addr(), remote.Addr())
	if err != nil {
		return err
	}
	_, err = c.execute(op, cmdSetFlags, netlink.Acknowledge, func(ae *netlink.AttributeEncoder) {
		ae.Uint32(pmAttrToken, token)
		encodeAddress(ae, pmAttrAddr, pm.Address{Addr: laddr, Port: local.Port(), Flags: f}, withFlags)
		encodeAddress(ae, pmAttrAddrRemote, pm.Address{Addr: raddr, Port: remote.Port()}, 0)
	})
	return err
}

// Addresses returns the local addresses of the userspace-PM connection with
// this token: those announced or used by its subflows.
func (c *Client) Addresses(token uint32) ([]pm.Address, error) {
	return c.dumpAddresses("list addresses", func(ae *netlink.AttributeEncoder) {
		ae.Uint32(pmAttrToken, token)
	})
}

// dumpAddresses sends a GET_ADDR dump and decodes every reply.
func (c *Client) dumpAddresses(op string, attrs func(*netlink.AttributeEncoder)) ([]pm.Address, error) {
	msgs, err := c.execute(op, cmdGetAddr, netlink.Dump, attrs)
	if err != nil {
		return nil, err
	}
	addrs := make([]pm.Address, 0, len(msgs))
	for _, m := range msgs {
		a, err := decodeAddressMessage(m.Data)
		if err != nil {
			return nil, fmt.Errorf("pm: %s: %w", op, err)
		}
		addrs = append(addrs, a)
	}
	return addrs, nil
}

// execute sends one command with the attributes attrs writes (nil: none)
// and the header flags flags besides Request, and returns the replies. A
// kernel refusal is returned as an *Error for op.
func (c *Client) execute(op string, cmd uint8, flags netlink.HeaderFlags, attrs func(*netlink.AttributeEncoder)) ([]genetlink.Message, error) {
	ae := netlink.NewAttributeEncoder()
	if attrs != nil {
		attrs(ae)
	}
	data, err := ae.Encode()
	if err != nil {
		return nil, fmt.Errorf("pm: %s: encode: %w", op, err)
	}
	req := genetlink.Message{
		Header: genetlink.Header{Command: cmd, Version: c.version},
		Data:   data,
	}
	msgs, err := c.conn.Execute(req, c.family, netlink.Request|flags)
	if err != nil {
		return nil, commandError(op, err)
	}
	return msgs, nil
}

// commandError turns an error of a command into the package's form: a
// refusal carried by a netlink error message becomes an *Error with the
// kernel's errno and message; other errors (socket, transport) are wrapped.
func commandError(op string, err error) error {
	var oe *netlink.OpError
	if errors.As(err, &oe) {
		if errno, ok := oe.Err.(syscall.Errno); ok {
			return fmt.Errorf("pm: %w", &pm.Error{Op: op, Errno: errno, Message: oe.Message})
		}
	}
	return fmt.Errorf("pm: %s: %w", op, err)
}

// checkAddr checks an address given by a caller and returns it unmapped and
// without zone.
func checkAddr(op string, a netip.Addr) (netip.Addr, error) {
	if !a.IsValid() {
		return netip.Addr{}, fmt.Errorf("pm: %s: no address: %w", op, pm.ErrInvalid)
	}
	return pm.CanonicalAddr(a), nil
}

// checkPair checks the local and remote address of a subflow command: both
// valid, and of one family once unmapped.
func checkPair(op string, local, remote netip.Addr) (netip.Addr, netip.Addr, error) {
	l, err := checkAddr(op, local)
	if err != nil {
		return l, l, fmt.Errorf("pm: %s: local address: %w", op, pm.ErrInvalid)
	}
	r, err := checkAddr(op, remote)
	if err != nil {
		return l, r, fmt.Errorf("pm: %s: remote address: %w", op, pm.ErrInvalid)
	}
	if l.Is4() != r.Is4() {
		return l, r, fmt.Errorf("pm: %s: local %s and remote %s are of different families: %w", op, l, r, pm.ErrInvalid)
	}
	return l, r, nil
}
