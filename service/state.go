package service

import (
	"cmp"
	"net/netip"
	"slices"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/policy"
)

// conn is the service's state of one MPTCP connection.
type conn struct {
	id          uint64
	token       uint32
	serverSide  bool
	denyJoinID0 bool
	userspace   bool
	established bool
	// adopted says the connection was listed before its CREATED was seen:
	// a CREATED still queued then is the same connection, not a reuse.
	adopted     bool
	local       netip.AddrPort
	remote      netip.AddrPort
	subflows    []Subflow
	remoteAddrs []AnnouncedAddress // by the peer, at most one per id
	announced   []announcement     // by us, at most one per id

	// The built-in policy's bookkeeping (policy.go).
	pending  []pendingSubflow // requested, not yet established or closed
	made     []tuple          // established subflows the policy requested
	closing  []tuple          // subflows the policy asked the kernel to close
	failures []failure        // local addresses in backoff
	// backupLocal holds the subflows this end asked to be backup (made
	// so, or set with SET_FLAGS): the events carry only the peer's
	// request. nil when there is none.
	backupLocal map[tuple]bool
	// health is what the probes say of the subflows, initial one
	// included, by canonical tuple (handover policy only).
	health map[tuple]health
	// The policy a rule chose for the connection (rules.go), and the
	// rule's name; nil and "" for the service's. ruled: the rules were
	// applied.
	pol   policy.Policy
	rule  string
	ruled bool
	// initialClosed: the initial subflow closed (the handover policy
	// closes a dead one); the connection goes on with its joins.
	initialClosed bool
}

// setBackupLocal records this end's backup request for subflow t.
func (c *conn) setBackupLocal(t tuple, backup bool) {
	switch {
	case backup && c.backupLocal == nil:
		c.backupLocal = map[tuple]bool{t: true}
	case backup:
		c.backupLocal[t] = true
	default:
		delete(c.backupLocal, t)
	}
}

// announcement is an address we announced on a connection and the listener
// reference it holds (none when ours is false).
type announcement struct {
	addr     AnnouncedAddress
	listener netip.AddrPort
	ours     bool
}

func (c *conn) snapshot() Connection {
	state := StateCreated
	if c.established {
		state = StateEstablished
	}
	ann := make([]AnnouncedAddress, len(c.announced))
	for i, a := range c.announced {
		ann[i] = a.addr
	}
	return Connection{
		ID:                 c.id,
		Token:              c.token,
		ServerSide:         c.serverSide,
		State:              state,
		LocalAddress:       c.local.Addr(),
		LocalPort:          c.local.Port(),
		RemoteAddress:      c.remote.Addr(),
		RemotePort:         c.remote.Port(),
		DenyJoinID0:        c.denyJoinID0,
		Userspace:          c.userspace,
		Subflows:           slices.Clone(c.subflows),
		RemoteAddresses:    slices.Clone(c.remoteAddrs),
		AnnouncedAddresses: ann,
	}
}

// subflowIndex returns the index of the subflow with the 4-tuple, or -1.
func (c *conn) subflowIndex(local, remote netip.AddrPort) int {
	return slices.IndexFunc(c.subflows, func(s Subflow) bool {
		return s.LocalAddress == local.Addr() && s.LocalPort == local.Port() &&
			s.RemoteAddress == remote.Addr() && s.RemotePort == remote.Port()
	})
}

// connTable holds the live connections by token and by object number, and a
// bounded memory of recently closed tokens.
type connTable struct {
	byToken map[uint32]*conn
	byID    map[uint64]*conn
	lastID  uint64
	closed  recentTokens
	peak    int // the most connections since the maps were made
}

// shrinkAbove is the number of entries above which a map of connections
// is made afresh when it empties: Go maps keep their size after deletes,
// so a burst would leave its memory behind; a small one is kept, or every
// connection on an idle host would allocate it again.
const shrinkAbove = 64

func newConnTable() *connTable {
	return &connTable{
		byToken: make(map[uint32]*conn),
		byID:    make(map[uint64]*conn),
		closed:  recentTokens{count: make(map[uint32]int)},
	}
}

// add makes a connection for token with the next object number.
func (t *connTable) add(token uint32) *conn {
	t.lastID++
	c := &conn{id: t.lastID, token: token}
	t.byToken[token] = c
	t.byID[c.id] = c
	t.peak = max(t.peak, len(t.byID))
	return c
}

func (t *connTable) remove(c *conn) {
	delete(t.byToken, c.token)
	delete(t.byID, c.id)
	if len(t.byID) == 0 && len(t.byToken) == 0 && t.peak > shrinkAbove {
		// Start afresh when the last connection of a burst goes, so that
		// it leaves no memory behind.
		t.byToken = make(map[uint32]*conn)
		t.byID = make(map[uint64]*conn)
		t.peak = 0
	}
}

// sorted returns the live connections by object number.
func (t *connTable) sorted() []*conn {
	out := make([]*conn, 0, len(t.byID))
	for _, c := range t.byID {
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b *conn) int { return cmp.Compare(a.id, b.id) })
	return out
}

// recentClosed is how many closed tokens the service remembers, to drop the
// ESTABLISHED the kernel can send after CLOSED (docs/kernel-notes.md, "Event
// order"). The late event follows within microseconds; this covers bursts
// of that many closings in between.
const recentClosed = 1024

// recentTokens is a ring of the last recentClosed closed tokens with a count
// of each, so both its memory and its lookup are bounded.
type recentTokens struct {
	ring  [recentClosed]uint32
	n     int // entries in use, up to recentClosed
	next  int // slot to write next
	count map[uint32]int
}

func (r *recentTokens) add(token uint32) {
	if r.n == recentClosed {
		old := r.ring[r.next]
		if r.count[old]--; r.count[old] == 0 {
			delete(r.count, old)
		}
	} else {
		r.n++
	}
	r.ring[r.next] = token
	r.next = (r.next + 1) % recentClosed
	r.count[token]++
}

func (r *recentTokens) contains(token uint32) bool { return r.count[token] > 0 }

// endpointKey identifies an endpoint the service made, to keep its origin
// across re-reads of the kernel's table.
type endpointKey struct {
	id   uint8
	addr netip.Addr
	port uint16
}

func keyOf(a pm.Address) endpointKey { return endpointKey{a.ID, a.Addr, a.Port} }

// controller is the registered controller's claim.
type controller struct {
	name string
	path string
}
