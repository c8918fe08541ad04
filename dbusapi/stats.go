package dbusapi

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/mptcp-pmd/mptcp-pmd/service"
)

// Statistics on request: what each connection and each of its subflows
// carries, and who owns it, read from the kernel (sock_diag) when a client
// asks, not as properties that would change with every packet. The reads
// run in the caller's method handler, never in the service's loop.

// ConnStats are the statistics of one MPTCP connection.
type ConnStats struct {
	// Data-level counters of struct mptcp_info (Linux 6.5+).
	BytesSent, BytesReceived, BytesAcked, BytesRetrans uint64
	Retransmits                                        uint32
	// Since data was last sent, received, and acknowledged (Linux 6.10+).
	LastDataSent, LastDataRecv, LastAckRecv time.Duration
	// The owner: the socket's cgroup (v2 id, and its path under the cgroup
	// hierarchy, "" when not found), the systemd unit or scope that
	// cgroup belongs to ("" if none), the socket owner's uid, and the
	// process holding the socket (0 and "" when not looked up or found).
	CgroupID uint64
	Cgroup   string
	Unit     string
	UID      uint32
	PID      int
	Command  string
	// Rule is the name of the configuration's rule that chose the
	// connection's policy, and Policy that policy; "" when none did.
	Rule, Policy string
	Subflows     []SubflowStats // established subflows, the initial one included
}

// SubflowStats are the statistics of one subflow (struct tcp_info).
type SubflowStats struct {
	Local, Remote netip.AddrPort
	Interface     string
	Backup        bool // this end asked for the subflow to be a backup
	RTT, RTTVar   time.Duration
	Cwnd          uint32 // segments
	// Bytes sent, acknowledged by the peer, received, and retransmitted.
	BytesSent, BytesAcked, BytesReceived, BytesRetrans uint64
	Retransmits                                        uint32 // segments retransmitted
}

// StatsSource reads the statistics of MPTCP connections.
type StatsSource interface {
	// Stats returns the statistics of the connections with the given
	// local tokens, or of every connection when tokens is nil, by token;
	// owner says to look up the process too (costly: a walk of /proc).
	Stats(tokens []uint32, owner bool) (map[uint32]ConnStats, error)
}

// statsWire is a connection's statistics as GetStatistics returns them.
func statsWire(c ConnStats) map[string]dbus.Variant {
	sfs := make([]map[string]dbus.Variant, 0, len(c.Subflows))
	for _, s := range c.Subflows {
		sfs = append(sfs, map[string]dbus.Variant{
			"local_address":       dbus.MakeVariant(addrString(s.Local.Addr())),
			"local_port":          dbus.MakeVariant(s.Local.Port()),
			"remote_address":      dbus.MakeVariant(addrString(s.Remote.Addr())),
			"remote_port":         dbus.MakeVariant(s.Remote.Port()),
			"interface":           dbus.MakeVariant(s.Interface),
			"backup":              dbus.MakeVariant(s.Backup),
			"rtt_us":              dbus.MakeVariant(uint32(s.RTT.Microseconds())),
			"rtt_var_us":          dbus.MakeVariant(uint32(s.RTTVar.Microseconds())),
			"cwnd":                dbus.MakeVariant(s.Cwnd),
			"bytes_sent":          dbus.MakeVariant(s.BytesSent),
			"bytes_acked":         dbus.MakeVariant(s.BytesAcked),
			"bytes_received":      dbus.MakeVariant(s.BytesReceived),
			"bytes_retransmitted": dbus.MakeVariant(s.BytesRetrans),
			"retransmissions":     dbus.MakeVariant(s.Retransmits),
		})
	}
	out := map[string]dbus.Variant{
		"bytes_sent":          dbus.MakeVariant(c.BytesSent),
		"bytes_received":      dbus.MakeVariant(c.BytesReceived),
		"bytes_acked":         dbus.MakeVariant(c.BytesAcked),
		"bytes_retransmitted": dbus.MakeVariant(c.BytesRetrans),
		"retransmissions":     dbus.MakeVariant(c.Retransmits),
		"last_data_sent_ms":   dbus.MakeVariant(uint32(c.LastDataSent.Milliseconds())),
		"last_data_recv_ms":   dbus.MakeVariant(uint32(c.LastDataRecv.Milliseconds())),
		"last_ack_recv_ms":    dbus.MakeVariant(uint32(c.LastAckRecv.Milliseconds())),
		"cgroup_id":           dbus.MakeVariant(c.CgroupID),
		"cgroup":              dbus.MakeVariant(c.Cgroup),
		"unit":                dbus.MakeVariant(c.Unit),
		"uid":                 dbus.MakeVariant(c.UID),
		"subflows":            dbus.MakeVariant(sfs),
		"rule":                dbus.MakeVariant(c.Rule),
		"policy":              dbus.MakeVariant(c.Policy),
	}
	if c.PID != 0 {
		out["pid"] = dbus.MakeVariant(uint32(c.PID))
		out["command"] = dbus.MakeVariant(c.Command)
	}
	return out
}

// getConnectionStatistics is Connection.GetStatistics: the statistics of
// the connection, with its owning process.
func (s *Server) getConnectionStatistics(msg dbus.Message) (map[string]dbus.Variant, *dbus.Error) {
	c, derr := s.connection(msgPath(msg))
	if derr != nil {
		return nil, derr
	}
	if s.stats == nil {
		return nil, dbusError(fmt.Errorf("%w: no statistics source", service.ErrNotSupported))
	}
	var all map[uint32]ConnStats
	var err error
	s.heavy(func() { all, err = s.stats.Stats([]uint32{c.Token}, true) }) // a listing of every socket
	if err != nil {
		return nil, dbusError(fmt.Errorf("%w: statistics: %v", service.ErrFailed, err))
	}
	st, ok := all[c.Token]
	if !ok {
		return nil, dbus.NewError(ErrorNotFound, []any{fmt.Sprintf("the kernel no longer lists connection %08x", c.Token)})
	}
	return statsWire(st), nil
}

// getStatistics is Manager.GetStatistics: the statistics of every
// connection, by object path, in the order of the objects' ids. On a
// connection that Connect made the reply is written here, encoded
// straight from the statistics (statsReply), as GetManagedObjects is:
// through godbus the reply of 10,000 connections took 0.5 s to encode.
func (s *Server) getStatistics(msg dbus.Message) (out map[dbus.ObjectPath]map[string]dbus.Variant, derr *dbus.Error) {
	if s.stats == nil {
		return nil, s.refused(msg, dbusError(fmt.Errorf("%w: no statistics source", service.ErrNotSupported)))
	}
	s.heavy(func() { out, derr = s.allStatistics(msg) })
	return out, derr
}

// allStatistics is getStatistics's work.
func (s *Server) allStatistics(msg dbus.Message) (map[dbus.ObjectPath]map[string]dbus.Variant, *dbus.Error) {
	all, err := s.stats.Stats(nil, false)
	if err != nil {
		return nil, s.refused(msg, dbusError(fmt.Errorf("%w: statistics: %v", service.ErrFailed, err)))
	}
	s.mu.RLock()
	out := make(statsReply, 0, len(all))
	for id, c := range s.conns {
		if st, ok := all[c.Token]; ok {
			out = append(out, statsEntry{id: id, st: st})
		}
	}
	s.mu.RUnlock()
	slices.SortFunc(out, func(a, b statsEntry) int { return cmp.Compare(a.id, b.id) })
	if w := s.em.wire; w != nil && w.takeOwed(msgSender(msg), msg.Serial()) {
		var path []byte
		if err := w.replyArray(msgSender(msg), msg.Serial(), statsSignature, len(out), func(e *encoder, i int) {
			path = e.statsEntry(&out[i], path)
		}); err != nil {
			s.log.Warn("dbusapi: GetStatistics reply", "to", msgSender(msg), "err", err)
		}
		return nil, nil
	}
	return toGodbus([]any{out})[0].(map[dbus.ObjectPath]map[string]dbus.Variant), nil
}

// refused returns derr, for godbus to send (it sends errors whatever the
// call's flags), having forgotten that the server owed the reply.
func (s *Server) refused(msg dbus.Message, derr *dbus.Error) *dbus.Error {
	s.forgetOwed(msg)
	return derr
}

// statsSignature is the signature of a Manager.GetStatistics reply.
var statsSignature = []byte("a{oa{sv}}")

// statsReply is a Manager.GetStatistics reply's body (a{oa{sv}}): the
// statistics of connection objects, by their ids.
type statsReply []statsEntry

type statsEntry struct {
	id uint64
	st ConnStats
}

// statsEntry appends the dict entry {oa{sv}} of x, which starts at an
// 8-aligned offset. scratch is for the path; it is returned for reuse.
func (e *encoder) statsEntry(x *statsEntry, scratch []byte) []byte {
	scratch = strconv.AppendUint(append(scratch[:0], ConnectionsPath+"/"...), x.id, 10)
	e.u32(uint32(len(scratch)))
	e.b = append(e.b, scratch...)
	e.b = append(e.b, 0)
	e.connStats(&x.st)
	return scratch
}

// connStats appends what statsWire(*c) would be (a{sv}).
func (e *encoder) connStats(c *ConnStats) {
	at, start := e.beginArray(8)
	u64 := func(name string, v uint64) {
		e.propHeader(name, "t")
		e.u64(v)
	}
	u32 := func(name string, v uint32) {
		e.propHeader(name, "u")
		e.u32(v)
	}
	str := func(name, v string) {
		e.propHeader(name, "s")
		e.str(v)
	}
	u64("bytes_sent", c.BytesSent)
	u64("bytes_received", c.BytesReceived)
	u64("bytes_acked", c.BytesAcked)
	u64("bytes_retransmitted", c.BytesRetrans)
	u32("retransmissions", c.Retransmits)
	u32("last_data_sent_ms", uint32(c.LastDataSent.Milliseconds()))
	u32("last_data_recv_ms", uint32(c.LastDataRecv.Milliseconds()))
	u32("last_ack_recv_ms", uint32(c.LastAckRecv.Milliseconds()))
	u64("cgroup_id", c.CgroupID)
	str("cgroup", c.Cgroup)
	str("unit", c.Unit)
	u32("uid", c.UID)
	e.propHeader("subflows", "aa{sv}")
	sat, sstart := e.beginArray(4)
	for i := range c.Subflows {
		sf := &c.Subflows[i]
		fat, fstart := e.beginArray(8)
		e.propHeader("local_address", "s")
		e.addr(sf.Local.Addr())
		e.propHeader("local_port", "q")
		e.u16(sf.Local.Port())
		e.propHeader("remote_address", "s")
		e.addr(sf.Remote.Addr())
		e.propHeader("remote_port", "q")
		e.u16(sf.Remote.Port())
		str("interface", sf.Interface)
		e.propHeader("backup", "b")
		e.boolean(sf.Backup)
		u32("rtt_us", uint32(sf.RTT.Microseconds()))
		u32("rtt_var_us", uint32(sf.RTTVar.Microseconds()))
		u32("cwnd", sf.Cwnd)
		u64("bytes_sent", sf.BytesSent)
		u64("bytes_acked", sf.BytesAcked)
		u64("bytes_received", sf.BytesReceived)
		u64("bytes_retransmitted", sf.BytesRetrans)
		u32("retransmissions", sf.Retransmits)
		e.endArray(fat, fstart)
	}
	e.endArray(sat, sstart)
	str("rule", c.Rule)
	str("policy", c.Policy)
	if c.PID != 0 {
		u32("pid", uint32(c.PID))
		str("command", c.Command)
	}
	e.endArray(at, start)
}
