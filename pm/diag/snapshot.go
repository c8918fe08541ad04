package diag

import "fmt"

// ConnWithSubflows is an MPTCP connection with its subflows.
type ConnWithSubflows struct {
	Conn
	// Side is the end of the connection this socket is, by the rule in the
	// package documentation; SideUnknown when it cannot be told.
	Side     Side
	Subflows []Subflow // in dump order
}

// Snapshot is a view of a namespace's MPTCP sockets taken by
// Client.Snapshot. It is not atomic: it joins two dumps, the MPTCP sockets
// and then the TCP ones, and sockets may come and go in between.
type Snapshot struct {
	Conns     []ConnWithSubflows // the connections, every state but LISTEN, in dump order
	Listeners []Conn             // the listening MPTCP sockets
	// Unmatched holds the subflows whose connection is not in Conns: it
	// was created after the first dump or closed before the second.
	Unmatched []Subflow

	byToken map[uint32]int // index in Conns by token
	byInode map[uint64]int // index in Conns by socket inode
}

// Conn returns the connection with the given local token, or nil.
func (s *Snapshot) Conn(token uint32) *ConnWithSubflows {
	if i, ok := s.byToken[token]; ok && token != 0 {
		return &s.Conns[i]
	}
	return nil
}

// Snapshot lists the namespace's MPTCP sockets and subflows and joins each
// subflow to its connection: by token (Subflow.Token is the owning
// Conn.Token), or, for a subflow whose token matches nothing, by socket
// inode (a subflow reports the inode of its connection's socket while the
// application holds it).
func (c *Client) Snapshot() (*Snapshot, error) {
	s := newSnapshot(int(c.connHint.Load()))
	if err := c.eachConn(AllStates, s.add); err != nil {
		return nil, fmt.Errorf("diag: snapshot: %w", err)
	}
	sfs := make([]Subflow, 0, c.subflowHint.Load())
	if err := c.eachSubflow(NotListening, func(sf Subflow) { sfs = append(sfs, sf) }); err != nil {
		return nil, fmt.Errorf("diag: snapshot: %w", err)
	}
	s.attach(sfs)
	return s, nil
}

// join builds a Snapshot from the results of the two dumps.
func join(conns []Conn, sfs []Subflow) *Snapshot {
	s := newSnapshot(len(conns))
	for _, cn := range conns {
		s.add(cn)
	}
	s.attach(sfs)
	return s
}

func newSnapshot(hint int) *Snapshot {
	return &Snapshot{
		Conns:   make([]ConnWithSubflows, 0, hint),
		byToken: make(map[uint32]int, hint),
		byInode: make(map[uint64]int, hint),
	}
}

// add adds a socket of the MPTCP dump.
func (s *Snapshot) add(cn Conn) {
	if cn.State == StateListen {
		s.Listeners = append(s.Listeners, cn)
		return
	}
	i := len(s.Conns)
	s.Conns = append(s.Conns, ConnWithSubflows{Conn: cn})
	if cn.Token != 0 {
		s.byToken[cn.Token] = i
	}
	if cn.Inode != 0 {
		s.byInode[cn.Inode] = i
	}
}

// attach gives the connections their subflows and sides.
func (s *Snapshot) attach(sfs []Subflow) {
	// Find each subflow's connection, then hand the connections slices of
	// one backing array: two allocations, whatever the number of subflows.
	owner := make([]int32, len(sfs))
	counts := make([]int32, len(s.Conns))
	matched := 0
	for j, sf := range sfs {
		i, ok := s.byToken[sf.Token]
		if !ok || sf.Token == 0 {
			i, ok = s.byInode[sf.Inode]
			ok = ok && sf.Inode != 0
		}
		if !ok {
			owner[j] = -1
			s.Unmatched = append(s.Unmatched, sf)
			continue
		}
		owner[j] = int32(i)
		counts[i]++
		matched++
	}
	backing := make([]Subflow, matched)
	off := 0
	for i, n := range counts {
		s.Conns[i].Subflows = backing[off : off : off+int(n)]
		off += int(n)
	}
	for j, i := range owner {
		if i >= 0 {
			s.Conns[i].Subflows = append(s.Conns[i].Subflows, sfs[j])
		}
	}
	ls := listenerSet(s.Listeners)
	for i := range s.Conns {
		s.Conns[i].Side = sideOf(&s.Conns[i], ls)
	}
}

// listeners indexes listening sockets by port.
type listeners struct {
	ports map[uint16][]Conn
}

func listenerSet(ls []Conn) listeners {
	m := listeners{ports: make(map[uint16][]Conn, len(ls))}
	for _, l := range ls {
		m.ports[l.Local.Port()] = append(m.ports[l.Local.Port()], l)
	}
	return m
}

// listening reports whether one of the listeners accepts connections on
// the connection's local address and port.
func (m listeners) listening(c *Conn) bool {
	for _, l := range m.ports[c.Local.Port()] {
		la := l.Local.Addr()
		if la == c.Local.Addr() {
			return true
		}
		if la.IsUnspecified() && (la.Is6() || c.Local.Addr().Is4()) {
			// 0.0.0.0 takes IPv4 only; :: takes both unless IPV6_V6ONLY,
			// which sock_diag does not report for MPTCP sockets.
			return true
		}
	}
	return false
}

// sideOf tells which end of its connection c is:
//
//  1. The initial subflow records who sent the MP_CAPABLE SYN: the active
//     opener's has SubflowMPCapableLocal (kept after a fallback too), the
//     passive opener's only SubflowMPCapableRemote.
//  2. Without the initial subflow (it was closed), a connection whose local
//     address and port a listener of the snapshot accepts is taken for the
//     server's.
//  3. Otherwise the side is unknown. Join subflows do not tell: either end
//     may open them.
func sideOf(c *ConnWithSubflows, ls listeners) Side {
	for _, sf := range c.Subflows {
		if sf.Flags&SubflowMPCapableLocal != 0 {
			return SideClient
		}
		if sf.Flags&SubflowMPCapableRemote != 0 {
			return SideServer
		}
	}
	if ls.listening(&c.Conn) {
		return SideServer
	}
	return SideUnknown
}
