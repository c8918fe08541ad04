package main

import (
	"bufio"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/mptcp-pmd/mptcp-pmd/dbusapi"
	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/pm/diag"
	"github.com/mptcp-pmd/mptcp-pmd/service"
)

// statsSource reads connection statistics for the D-Bus API with a
// sock_diag client of its own, off the service's loop.
//
// The kernel's listing is the cost of a call: the TCP dump walks the
// whole established-socket table, about 10 ms of kernel time at 2,000
// connections (make bench-stats), taken from the CPU the reaction to
// kernel events needs. So the calls within statsMaxAge of a listing's
// start share it, and callers that come while one is made wait for it:
// however many clients ask, however often, the daemon lists at most four
// times a second. A client that polls each second, as mptcpctl top does,
// always gets a fresh listing.
type statsSource struct {
	dc interface {
		Snapshot() (*diag.Snapshot, error)
	}
	cgroups *cgroupNames
	rules   interface {
		RuleOf(token uint32) (rule, policy string)
	} // which rule chose a connection's policy

	mu     sync.Mutex // held while listing
	last   *diag.Snapshot
	lastAt time.Time // when last's listing started
	forget *time.Timer
}

// statsMaxAge is how long a listing serves the statistics calls.
const statsMaxAge = 250 * time.Millisecond

var _ dbusapi.StatsSource = (*statsSource)(nil)

// snapshot returns a listing at most statsMaxAge old. The last one is
// forgotten when it is too old to serve (10,000 connections' is several
// megabytes).
func (s *statsSource) snapshot() (*diag.Snapshot, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.last != nil && time.Since(s.lastAt) < statsMaxAge {
		return s.last, nil
	}
	start := time.Now()
	snap, err := s.dc.Snapshot()
	if err != nil {
		return nil, err
	}
	s.last, s.lastAt = snap, start
	if s.forget == nil {
		s.forget = time.AfterFunc(statsMaxAge, func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.last != nil && time.Since(s.lastAt) >= statsMaxAge {
				s.last = nil
			}
		})
	} else {
		s.forget.Reset(statsMaxAge)
	}
	return snap, nil
}

// Stats implements dbusapi.StatsSource.
func (s *statsSource) Stats(tokens []uint32, owner bool) (map[uint32]dbusapi.ConnStats, error) {
	snap, err := s.snapshot()
	if err != nil {
		return nil, err
	}
	want := map[uint32]bool{}
	for _, t := range tokens {
		want[t] = true
	}
	names := map[uint32]string{}
	ifname := func(i uint32) string {
		if i == 0 {
			return ""
		}
		n, ok := names[i]
		if !ok {
			if ifc, err := net.InterfaceByIndex(int(i)); err == nil {
				n = linkName(ifc.Name)
			}
			names[i] = n
		}
		return n
	}
	out := make(map[uint32]dbusapi.ConnStats, len(snap.Conns))
	for _, c := range snap.Conns {
		if c.Token == 0 || tokens != nil && !want[c.Token] {
			continue
		}
		st := dbusapi.ConnStats{
			BytesSent: c.Info.BytesSent, BytesReceived: c.Info.BytesReceived, BytesAcked: c.Info.BytesAcked,
			BytesRetrans: c.Info.BytesRetrans, Retransmits: c.Info.Retransmits,
			LastDataSent: time.Duration(c.Info.LastDataSent) * time.Millisecond,
			LastDataRecv: time.Duration(c.Info.LastDataRecv) * time.Millisecond,
			LastAckRecv:  time.Duration(c.Info.LastAckRecv) * time.Millisecond,
			CgroupID:     c.CgroupID, UID: c.UID,
		}
		st.Cgroup = s.cgroups.path(c.CgroupID)
		if owner && c.Inode != 0 {
			st.PID, st.Command = socketOwner(c.Inode)
			if st.Cgroup == "" && st.PID != 0 {
				// The hierarchy is not visible here (a mount namespace
				// without it, as `ip netns exec` makes): the process's view.
				st.Cgroup = procCgroup(st.PID)
			}
		}
		st.Unit = service.UnitOf(st.Cgroup)
		if s.rules != nil {
			st.Rule, st.Policy = s.rules.RuleOf(c.Token)
		}
		for _, sf := range c.Subflows {
			if sf.State != diag.StateEstablished {
				continue
			}
			st.Subflows = append(st.Subflows, dbusapi.SubflowStats{
				Local: pm.CanonicalAddrPort(sf.Local), Remote: pm.CanonicalAddrPort(sf.Remote),
				Interface: ifname(sf.Ifindex), Backup: sf.Backup,
				RTT: sf.TCP.RTT, RTTVar: sf.TCP.RTTVar, Cwnd: sf.TCP.SndCwnd,
				BytesSent: sf.TCP.BytesSent, BytesAcked: sf.TCP.BytesAcked, BytesReceived: sf.TCP.BytesReceived,
				BytesRetrans: sf.TCP.BytesRetrans, Retransmits: sf.TCP.TotalRetrans,
			})
		}
		out[c.Token] = st
	}
	return out, nil
}

// cgroupNames resolves cgroup v2 ids to paths in the cgroup hierarchy: a
// cgroup's id is the inode number of its directory. The hierarchy is
// walked again when an id is not known, at most once a second.
type cgroupNames struct {
	mu     sync.Mutex
	root   string // the cgroup2 mount; "" until found
	byID   map[uint64]string
	walked time.Time
}

func (n *cgroupNames) path(id uint64) string {
	if id == 0 {
		return ""
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if p, ok := n.byID[id]; ok {
		return p
	}
	if time.Since(n.walked) < time.Second {
		return ""
	}
	n.walked = time.Now()
	if n.root == "" {
		n.root = cgroup2Mount()
		if n.root == "" {
			return ""
		}
	}
	n.byID = map[uint64]string{}
	filepath.WalkDir(n.root, func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		if fi, err := d.Info(); err == nil {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				rel := strings.TrimPrefix(p, n.root)
				if rel == "" {
					rel = "/"
				}
				n.byID[st.Ino] = rel
			}
		}
		return nil
	})
	return n.byID[id]
}

// cgroup2Mount returns where the cgroup v2 hierarchy is mounted
// (/sys/fs/cgroup, or /sys/fs/cgroup/unified on a hybrid host), or "".
func cgroup2Mount() string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS... - FSTYPE SOURCE SUPER
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok || !strings.HasPrefix(post, "cgroup2 ") {
			continue
		}
		if f := strings.Fields(pre); len(f) >= 5 {
			return f[4]
		}
	}
	return ""
}

// socketOwner returns the first process found holding the socket with the
// inode, and its command name, or 0 and "".
func socketOwner(inode uint64) (int, string) {
	want := "socket:[" + strconv.FormatUint(inode, 10) + "]"
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return 0, ""
	}
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		fds, err := os.ReadDir("/proc/" + p.Name() + "/fd")
		if err != nil {
			continue
		}
		for _, fd := range fds {
			if l, err := os.Readlink("/proc/" + p.Name() + "/fd/" + fd.Name()); err == nil && l == want {
				comm, _ := os.ReadFile("/proc/" + p.Name() + "/comm")
				return pid, strings.TrimSpace(string(comm))
			}
		}
	}
	return 0, ""
}

// procCgroup returns the cgroup v2 path of process pid ("0::PATH" in
// /proc/PID/cgroup), or "".
func procCgroup(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return p
		}
	}
	return ""
}

// ownerOf returns the cgroup path of the connection with the token, for
// the rules (service.Owner): the kernel's cgroup id of its socket resolved
// in the cgroup hierarchy, or where the hierarchy is not visible, the
// cgroup of the process holding the socket.
func ownerOf(dc *diag.Client, cgroups *cgroupNames) service.Owner {
	return func(token uint32) (string, error) {
		c, err := dc.ConnByToken(token)
		if err != nil {
			return "", err
		}
		if p := cgroups.path(c.CgroupID); p != "" {
			return p, nil
		}
		if c.Inode != 0 {
			if pid, _ := socketOwner(c.Inode); pid != 0 {
				return procCgroup(pid), nil
			}
		}
		return "", nil
	}
}
