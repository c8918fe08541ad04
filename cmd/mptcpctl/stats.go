package main

import (
	"fmt"

	"github.com/godbus/dbus/v5"
)

// connStats are a connection's statistics (Connection.GetStatistics).
type connStats struct {
	BytesSent      uint64         `json:"bytes_sent"`
	BytesReceived  uint64         `json:"bytes_received"`
	BytesAcked     uint64         `json:"bytes_acked"`
	BytesRetrans   uint64         `json:"bytes_retransmitted"`
	Retransmits    uint32         `json:"retransmissions"`
	LastDataSentMS uint32         `json:"last_data_sent_ms"`
	LastDataRecvMS uint32         `json:"last_data_recv_ms"`
	CgroupID       uint64         `json:"cgroup_id"`
	Cgroup         string         `json:"cgroup"`
	Unit           string         `json:"unit"`
	UID            uint32         `json:"uid"`
	PID            uint32         `json:"pid,omitempty"`
	Command        string         `json:"command,omitempty"`
	Rule           string         `json:"rule"`
	Policy         string         `json:"policy"`
	Subflows       []subflowStats `json:"subflows"`
}

type subflowStats struct {
	LocalAddress  string `json:"local_address"`
	LocalPort     uint16 `json:"local_port"`
	RemoteAddress string `json:"remote_address"`
	RemotePort    uint16 `json:"remote_port"`
	Interface     string `json:"interface"`
	Backup        bool   `json:"backup"`
	RTTus         uint32 `json:"rtt_us"`
	RTTVarUs      uint32 `json:"rtt_var_us"`
	Cwnd          uint32 `json:"cwnd"`
	BytesSent     uint64 `json:"bytes_sent"`
	BytesAcked    uint64 `json:"bytes_acked"`
	BytesReceived uint64 `json:"bytes_received"`
	BytesRetrans  uint64 `json:"bytes_retransmitted"`
	Retransmits   uint32 `json:"retransmissions"`
}

// statistics reads the statistics of the connection at path. Keys it does
// not know are ignored; missing ones stay zero (older daemons).
func (c *client) statistics(path dbus.ObjectPath) (connStats, error) {
	var m map[string]dbus.Variant
	if err := c.call(c.conn.Object(busName, path), connIface+".GetStatistics").Store(&m); err != nil {
		return connStats{}, callError(err)
	}
	var st connStats
	err := storeProps(m, map[string]any{
		"bytes_sent": &st.BytesSent, "bytes_received": &st.BytesReceived, "bytes_acked": &st.BytesAcked,
		"bytes_retransmitted": &st.BytesRetrans, "retransmissions": &st.Retransmits,
		"last_data_sent_ms": &st.LastDataSentMS, "last_data_recv_ms": &st.LastDataRecvMS,
		"cgroup_id": &st.CgroupID, "cgroup": &st.Cgroup, "unit": &st.Unit, "uid": &st.UID,
		"pid": &st.PID, "command": &st.Command, "rule": &st.Rule, "policy": &st.Policy,
	})
	if err != nil {
		return st, err
	}
	var sfs []map[string]dbus.Variant
	if v, ok := m["subflows"]; ok {
		if err := dbus.Store([]any{v.Value()}, &sfs); err != nil {
			return st, fmt.Errorf("statistics: subflows: %w", err)
		}
	}
	for _, sm := range sfs {
		var s subflowStats
		if err := storeProps(sm, map[string]any{
			"local_address": &s.LocalAddress, "local_port": &s.LocalPort, "remote_address": &s.RemoteAddress,
			"remote_port": &s.RemotePort, "interface": &s.Interface, "backup": &s.Backup, "rtt_us": &s.RTTus,
			"rtt_var_us": &s.RTTVarUs, "cwnd": &s.Cwnd, "bytes_sent": &s.BytesSent, "bytes_acked": &s.BytesAcked,
			"bytes_received": &s.BytesReceived, "bytes_retransmitted": &s.BytesRetrans, "retransmissions": &s.Retransmits,
		}); err != nil {
			return st, err
		}
		st.Subflows = append(st.Subflows, s)
	}
	if st.Subflows == nil {
		st.Subflows = []subflowStats{}
	}
	return st, nil
}

// owner describes who owns a connection: "curl (pid 4242), uid 1000,
// unit app-firefox-1.scope, cgroup /user.slice/...".
func (st connStats) owner() string {
	s := fmt.Sprintf("uid %d", st.UID)
	if st.PID != 0 {
		s = fmt.Sprintf("%s (pid %d), %s", st.Command, st.PID, s)
	}
	if st.Unit != "" {
		s += ", unit " + st.Unit
	}
	if st.Cgroup != "" {
		s += ", cgroup " + st.Cgroup
	}
	return s
}
