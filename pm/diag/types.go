package diag

import (
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// State is a socket state as the kernel numbers TCP states (include/net/tcp_states.h).
// MPTCP sockets use the same numbers.
type State uint8

// The TCP states.
const (
	StateEstablished   State = 1
	StateSynSent       State = 2
	StateSynRecv       State = 3
	StateFinWait1      State = 4
	StateFinWait2      State = 5
	StateTimeWait      State = 6
	StateClose         State = 7
	StateCloseWait     State = 8
	StateLastAck       State = 9
	StateListen        State = 10
	StateClosing       State = 11
	StateNewSynRecv    State = 12 // a request socket: a SYN received, no socket yet
	StateBoundInactive State = 13 // bound but neither listening nor connecting
)

var stateNames = [...]string{
	StateEstablished:   "ESTABLISHED",
	StateSynSent:       "SYN_SENT",
	StateSynRecv:       "SYN_RECV",
	StateFinWait1:      "FIN_WAIT1",
	StateFinWait2:      "FIN_WAIT2",
	StateTimeWait:      "TIME_WAIT",
	StateClose:         "CLOSE",
	StateCloseWait:     "CLOSE_WAIT",
	StateLastAck:       "LAST_ACK",
	StateListen:        "LISTEN",
	StateClosing:       "CLOSING",
	StateNewSynRecv:    "NEW_SYN_RECV",
	StateBoundInactive: "BOUND_INACTIVE",
}

// String returns the kernel's name of the state, as "ESTABLISHED" or
// "CLOSE_WAIT"; an unknown state is "STATE(n)".
func (s State) String() string {
	if int(s) < len(stateNames) && stateNames[s] != "" {
		return stateNames[s]
	}
	return fmt.Sprintf("STATE(%d)", uint8(s))
}

// StateMask is a set of states: bit 1<<s for state s, as in the
// idiag_states field of a sock_diag request.
type StateMask uint32

// Common state masks.
const (
	// AllStates selects every state.
	AllStates StateMask = ^StateMask(0)
	// NotListening selects every state but LISTEN: the connections.
	NotListening StateMask = AllStates &^ (1 << StateListen)
	// Listening selects the listening sockets only.
	Listening StateMask = 1 << StateListen
)

// States returns the mask that selects exactly the given states.
func States(states ...State) StateMask {
	var m StateMask
	for _, s := range states {
		if s < 32 {
			m |= 1 << s
		}
	}
	return m
}

// Has reports whether the mask selects s.
func (m StateMask) Has(s State) bool { return s < 32 && m&(1<<s) != 0 }

// InfoFlags are the flags of an MPTCP connection's struct mptcp_info
// (MPTCP_INFO_FLAG_*).
type InfoFlags uint32

// The MPTCP connection flags.
const (
	// InfoFlagFallback: the connection fell back to plain TCP.
	InfoFlagFallback InfoFlags = 1 << 0
	// InfoFlagRemoteKeyReceived: the peer's key is known (on a client after
	// the SYN-ACK, on a server from the SYN); set on both sides of an
	// established MPTCP connection.
	InfoFlagRemoteKeyReceived InfoFlags = 1 << 1
)

// String returns the flag names joined by commas, as
// "fallback,remote_key_received"; unknown bits are named "0x..".
func (f InfoFlags) String() string {
	return flagString(uint32(f), []string{"fallback", "remote_key_received"})
}

// Info is the kernel's struct mptcp_info of an MPTCP connection. Fields the
// running kernel does not send (older kernels send a shorter struct) are
// zero; Conn.InfoSize says how many bytes were sent.
type Info struct {
	Subflows           uint8 // established additional subflows (the initial one is not counted)
	AddAddrSignal      uint8 // ADD_ADDRs sent
	AddAddrAccepted    uint8 // ADD_ADDRs received and accepted
	SubflowsMax        uint8 // the path manager's limit on additional subflows
	AddAddrSignalMax   uint8 // the path manager's limit on ADD_ADDRs sent
	AddAddrAcceptedMax uint8 // the path manager's limit on ADD_ADDRs accepted
	Flags              InfoFlags
	Token              uint32 // the connection's local token
	WriteSeq           uint64 // next data sequence number to be written
	SndUna             uint64 // oldest unacknowledged data sequence number
	RcvNxt             uint64 // next expected data sequence number
	LocalAddrUsed      uint8  // local endpoints in use
	LocalAddrMax       uint8  // the path manager's local endpoint limit
	CsumEnabled        bool   // DSS checksums are in use
	Retransmits        uint32 // data-level retransmissions (since Linux 6.5)
	BytesRetrans       uint64 // bytes retransmitted at the data level (6.5)
	BytesSent          uint64 // bytes sent, on all subflows (6.5)
	BytesReceived      uint64 // bytes received, on all subflows (6.5)
	BytesAcked         uint64 // bytes acknowledged at the data level (6.5)
	SubflowsTotal      uint8  // all subflows, the initial one included (6.6)
	LastDataSent       uint32 // ms since data was last sent (6.10)
	LastDataRecv       uint32 // ms since data was last received (6.10)
	LastAckRecv        uint32 // ms since a data ack was last received (6.10)
}

// Conn is one MPTCP socket (a connection, or a listener) as sock_diag
// reports it.
type Conn struct {
	// Token is the connection's local token (mptcpi_token), the token the
	// path manager's netlink events and commands use for it in this
	// namespace. It is 0 when the kernel sent no struct mptcp_info, and for
	// listeners.
	Token  uint32
	Family uint8 // the socket's address family: unix.AF_INET or unix.AF_INET6
	State  State
	// Local and Remote are the addresses of the connection (those of its
	// initial subflow). IPv4-mapped IPv6 addresses are unmapped and zones
	// dropped; ports are in host byte order. A listener's Remote is the
	// unspecified address with port 0.
	Local, Remote netip.AddrPort
	Ifindex       uint32 // the bound interface (SO_BINDTODEVICE), 0 for none
	Inode         uint64 // the socket's inode; 0 when no file refers to it
	UID           uint32 // the socket owner's user id
	Cookie        uint64 // the kernel's socket cookie (SO_COOKIE)
	CgroupID      uint64 // cgroup v2 id of the socket (INET_DIAG_CGROUP_ID), 0 if not sent
	RecvQ, SendQ  uint32 // bytes queued; for a listener, accept queue length and backlog
	Info          Info   // zero if the kernel sent no struct mptcp_info
	InfoSize      int    // bytes of struct mptcp_info the kernel sent (0: none)
	Fallback      bool   // Info.Flags has InfoFlagFallback
}

// SubflowFlags are the flags of a subflow (MPTCP_SUBFLOW_FLAG_*).
type SubflowFlags uint32

// The subflow flags. "Local" flags describe what this end sent or asked
// for, "remote" ones what the peer did.
const (
	SubflowMPCapableRemote  SubflowFlags = 1 << 0 // MCAP_REM: the peer is MPTCP capable (initial subflow)
	SubflowMPCapableLocal   SubflowFlags = 1 << 1 // MCAP_LOC: this end sent MP_CAPABLE in a SYN: the active opener
	SubflowJoinRemote       SubflowFlags = 1 << 2 // JOIN_REM: the peer sent MP_JOIN in a SYN: the peer opened it
	SubflowJoinLocal        SubflowFlags = 1 << 3 // JOIN_LOC: this end sent MP_JOIN in a SYN: it opened it
	SubflowBackupRemote     SubflowFlags = 1 << 4 // BKUP_REM: the peer asked for this subflow to be a backup
	SubflowBackupLocal      SubflowFlags = 1 << 5 // BKUP_LOC: this end asked for it to be a backup
	SubflowFullyEstablished SubflowFlags = 1 << 6 // FULLY_ESTABLISHED: the path is validated
	SubflowConnected        SubflowFlags = 1 << 7 // CONNECTED: the TCP handshake finished
	SubflowMapValid         SubflowFlags = 1 << 8 // MAPVALID: a DSS mapping is in use
)

var subflowFlagNames = []string{
	"mcap_rem", "mcap_loc", "join_rem", "join_loc", "bkup_rem", "bkup_loc",
	"fully_established", "connected", "mapvalid",
}

// String returns the flag names joined by commas, as
// "mcap_rem,mcap_loc,connected"; unknown bits are named "0x..".
func (f SubflowFlags) String() string { return flagString(uint32(f), subflowFlagNames) }

func flagString(f uint32, names []string) string {
	var parts []string
	for i, n := range names {
		if f&(1<<i) != 0 {
			parts = append(parts, n)
			f &^= 1 << i
		}
	}
	if f != 0 {
		parts = append(parts, fmt.Sprintf("%#x", f))
	}
	return strings.Join(parts, ",")
}

// TCPInfo holds a few fields of a subflow's struct tcp_info. Fields the
// kernel did not send are zero.
type TCPInfo struct {
	Retransmits   uint8         // retransmission timeouts in a row (tcpi_retransmits)
	Unacked       uint32        // segments sent and not acknowledged (tcpi_unacked)
	LastDataSent  time.Duration // since data was last sent, to the millisecond (tcpi_last_data_sent)
	LastAckRecv   time.Duration // since an acknowledgement was last received (tcpi_last_ack_recv)
	RTT           time.Duration // smoothed round-trip time (tcpi_rtt)
	RTTVar        time.Duration // its variance (tcpi_rttvar)
	MinRTT        time.Duration // the minimum RTT seen (tcpi_min_rtt)
	SndMSS        uint32
	SndCwnd       uint32 // congestion window, in segments
	TotalRetrans  uint32 // segments retransmitted
	BytesAcked    uint64 // tcpi_bytes_acked
	BytesReceived uint64 // tcpi_bytes_received
	BytesSent     uint64 // tcpi_bytes_sent (Linux 4.19+)
	BytesRetrans  uint64 // tcpi_bytes_retrans (Linux 4.19+)
}

// Subflow is one TCP socket that is an MPTCP subflow (its ULP is "mptcp").
type Subflow struct {
	// Token is the local token of the MPTCP connection the subflow belongs
	// to (MPTCP_SUBFLOW_ATTR_TOKEN_LOC): it equals that connection's
	// Conn.Token in the same namespace.
	Token uint32
	// RemoteToken is the peer's token (MPTCP_SUBFLOW_ATTR_TOKEN_REM), the
	// Token of the same connection in the peer's namespace. The kernel
	// keeps it only on the joins this end opened (it sends it in their
	// MP_JOIN SYN); it is 0 on initial subflows and accepted joins.
	RemoteToken uint32
	// LocalID and RemoteID are the address ids of the two ends; the initial
	// subflow has local id 0.
	LocalID, RemoteID uint8
	Flags             SubflowFlags
	Backup            bool // this end asked for the subflow to be a backup (SubflowBackupLocal)
	BackupRemote      bool // the peer did (SubflowBackupRemote)
	Family            uint8
	State             State
	Local, Remote     netip.AddrPort
	Ifindex           uint32 // the bound interface, 0 for none
	Inode             uint64 // the inode of the connection's socket: subflows report their MPTCP socket's
	UID               uint32
	Cookie            uint64
	// Mapping state of the receive side: the data sequence numbers.
	RelWriteSeq   uint32 // MPTCP_SUBFLOW_ATTR_RELWRITE_SEQ
	MapSeq        uint64 // MPTCP_SUBFLOW_ATTR_MAP_SEQ
	MapSubflowSeq uint32 // MPTCP_SUBFLOW_ATTR_MAP_SFSEQ
	SSNOffset     uint32 // MPTCP_SUBFLOW_ATTR_SSN_OFFSET
	MapDataLen    uint16 // MPTCP_SUBFLOW_ATTR_MAP_DATALEN
	TCP           TCPInfo
}

// Side says which end of a connection a socket is.
type Side uint8

// The sides.
const (
	SideUnknown Side = iota
	SideClient       // the active opener: it sent the MP_CAPABLE SYN
	SideServer       // the passive opener: it accepted the connection
)

// String returns "unknown", "client" or "server".
func (s Side) String() string {
	switch s {
	case SideClient:
		return "client"
	case SideServer:
		return "server"
	}
	return "unknown"
}
