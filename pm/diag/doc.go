// Package diag lists a network namespace's Multipath TCP connections and
// their TCP subflows through the kernel's sock_diag interface
// (NETLINK_SOCK_DIAG, inet_diag), as `ss -M` and `ss -ti` do.
//
// A Client works in the namespace it was dialled in: the calling thread's,
// or the one whose file descriptor Config.NetNS gives. Every listing is one
// dump request per address family (AF_INET, then AF_INET6), read into one
// reused buffer and decoded in place, so listing costs no per-socket
// request and no per-socket allocation.
//
// # What the kernel reports
//
// Connections come from an MPTCP dump (protocol IPPROTO_MPTCP, 262; it does
// not fit the request's 8-bit protocol field, so the request carries it in
// an INET_DIAG_REQ_PROTOCOL attribute, as ss does). Each MPTCP socket
// (struct mptcp_sock) is reported with the addresses of its initial
// subflow, its state, owner, inode and cookie, and its struct mptcp_info:
// the token, the subflow and ADD_ADDR counters and limits, the data-level
// sequence numbers and byte counters, and the fallback flag. The dump walks
// the kernel's token table and then, for LISTEN, the TCP listeners, so it
// lists the listening MPTCP sockets too (with token 0), the kernel's own
// included. ListConnections takes a StateMask; Connections leaves the
// listeners out and Listeners lists only them.
//
// Subflows come from a TCP dump asking for INET_DIAG_INFO: every TCP socket
// of the namespace is reported, and those whose upper-layer protocol is
// "mptcp" carry an INET_DIAG_ULP_INFO nest with the subflow's tokens,
// address ids, flags and mapping state; the others are skipped. Subflows
// are ordinary sockets of the TCP hash tables, so the dump sees every one
// of them, joins included. The kernel sends the ULP information only to a
// requester with CAP_NET_ADMIN over the namespace; without it Subflows
// finds nothing.
//
// Verified on Linux 6.18 (see the kernel tests and testdata/captured.txt):
//
//   - A subflow's MPTCP_SUBFLOW_ATTR_TOKEN_LOC is the local token of its
//     connection: Subflow.Token equals the owning Conn.Token (the
//     mptcpi_token) in the same namespace, and the token the path manager's
//     netlink events carry. The two ends of a connection have different
//     tokens: each end's token is its own, the one the peer puts in its
//     MP_JOINs. MPTCP_SUBFLOW_ATTR_TOKEN_REM (Subflow.RemoteToken) is the
//     peer's token, but the kernel keeps it only on the joins this end
//     opened; it is 0 on initial subflows and on accepted joins.
//   - A subflow also reports the inode of its connection's socket, which
//     Snapshot uses to join a subflow whose token matches no connection.
//   - The initial subflow has local and remote address id 0 on both ends; a
//     join opened from an in-kernel endpoint has the endpoint's id as local
//     id on the client, and as remote id on the server.
//   - A backup endpoint's subflow has SubflowBackupLocal (Subflow.Backup) on
//     the end that asked, SubflowBackupRemote (BackupRemote) on the other.
//   - mptcpi_subflows counts the additional subflows (1 with two subflows);
//     mptcpi_subflows_total (Linux 6.6) counts all of them.
//   - A connection that fell back to TCP after sending MP_CAPABLE is still
//     listed, with Fallback set and its token; its subflow still has the
//     "mptcp" ULP. A plain TCP client's connection to an MPTCP listener is
//     a plain TCP socket: it is in neither listing.
//
// Older kernels send a shorter struct mptcp_info (48 bytes before 6.5, 80
// from 6.5, 84 from 6.6, 96 from 6.10); the fields a kernel does not send
// are zero, and Conn.InfoSize says how much was sent.
//
// # Which end is the server
//
// sock_diag has no "server side" field (the path manager's events have
// one). Snapshot sets ConnWithSubflows.Side by this rule, verified against
// the events' server-side flag for IPv4, IPv6 and dual-stack listeners:
//
//  1. The initial subflow tells: the end that sent the MP_CAPABLE SYN has
//     SubflowMPCapableLocal on it (request_mptcp, kept after a fallback),
//     the end that accepted it only SubflowMPCapableRemote. This works
//     whether or not the listener still exists.
//  2. If the initial subflow is gone (a connection may outlive it), the
//     connection is the server's when a listener of the namespace accepts
//     its local address and port (same address, or 0.0.0.0 for IPv4, or
//     :: for both). A client socket bound to a listening port would be
//     misjudged, but the kernel refuses that bind unless SO_REUSEPORT.
//  3. Otherwise the side is unknown: join subflows do not tell, since
//     either end may open them, and the mptcp_info flags do not either
//     (both ends have MPTCP_INFO_FLAG_REMOTE_KEY_RECEIVED once the
//     handshake is done).
//
// # Limits
//
// A listing is not a snapshot of one instant: sockets are reported as the
// kernel walks its tables, and Snapshot joins two dumps taken one after the
// other (a connection made in between has its subflows in
// Snapshot.Unmatched). The TCP dump walks the whole TCP hash tables, which
// all namespaces share: it has a fixed cost of a few milliseconds however
// few sockets the namespace has (2.5 ms for both families on the test
// machine). Connections their application closed stay listed, in a closing
// state, until the kernel frees them; TIME_WAIT and request sockets carry
// no ULP information and are never listed as subflows.
package diag
