package main

// Helpers of the failover benchmarks (BenchmarkHandover,
// BenchmarkHandoverMechanics): a paced stream of timestamped records over
// one connection from a lab's client to its server, what its receiver saw,
// the failures of path 0 (carrier loss, blackhole), applied with netlink
// in the lab's namespaces so that their time is known to the microsecond,
// and a sampler of the bytes each path carried (sock_diag).

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/mptcp-pmd/mptcp-pmd/pm/diag"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
)

// The stream: a record of hbRecordSize bytes every hbInterval (2 Mbit/s).
// A record holds its sequence number and the time it was due (the sender
// writes record i at start + i*hbInterval, or at once when it is late: a
// write that blocked is followed by a burst that catches up, as an
// application with a playout buffer would).
const (
	hbRecordSize = 1000
	hbInterval   = 4 * time.Millisecond
	hbRate       = hbRecordSize * int(time.Second/hbInterval) // bytes per second: 250 kB/s
)

// hbStream is one paced stream: the client's connection, the server's, and
// what the server's reader saw.
type hbStream struct {
	client, server net.Conn
	local          netip.AddrPort // the client's end (its initial subflow)
	start          time.Time      // when record 0 was due

	stop     chan struct{} // closed to stop the sender
	sent     chan int      // the sender's count of records written, once it stopped
	recvDone chan struct{} // closed when the reader has ended (EOF or an error)

	mu      sync.Mutex
	arrived []time.Time // arrival time of each record at the reader, by sequence number
	err     error       // the first thing wrong: a record lost, reordered or corrupt, a write or read error
}

// hbListen opens a listener in h on addr, MPTCP or plain TCP. It is closed
// when the test ends.
func hbListen(tb testing.TB, h *pmtest.Host, addr netip.Addr, mptcp bool) net.Listener {
	tb.Helper()
	var ln net.Listener
	err := h.Do(func() (err error) {
		var lc net.ListenConfig
		lc.SetMultipathTCP(mptcp)
		ln, err = lc.Listen(context.Background(), "tcp", netip.AddrPortFrom(addr, 0).String())
		return err
	})
	if err != nil {
		tb.Fatalf("listen on %s in %s (mptcp %v): %v", addr, h.Name, mptcp, err)
	}
	tb.Cleanup(func() { ln.Close() })
	return ln
}

// startHBStream dials from local in the client host cli to ln (MPTCP or
// not, and checks which it got), and starts the paced sender and the
// server's reader. The stream runs until finish.
func startHBStream(tb testing.TB, cli *pmtest.Host, local netip.Addr, ln net.Listener, mptcp bool) *hbStream {
	tb.Helper()
	remote := addrPort(tb, ln.Addr())
	type accepted struct {
		c   net.Conn
		err error
	}
	acc := make(chan accepted, 1)
	go func() {
		c, err := ln.Accept()
		acc <- accepted{c, err}
	}()
	var c net.Conn
	err := cli.Do(func() (err error) {
		d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: local.AsSlice()}}
		d.SetMultipathTCP(mptcp)
		c, err = d.Dial("tcp", remote.String())
		return err
	})
	if err != nil {
		tb.Fatalf("dial %s from %s in %s: %v", remote, local, cli.Name, err)
	}
	if got, err := c.(*net.TCPConn).MultipathTCP(); err != nil || got != mptcp {
		c.Close()
		tb.Fatalf("connection to %s: MPTCP %v (%v), want %v", remote, got, err, mptcp)
	}
	var a accepted
	select {
	case a = <-acc:
	case <-time.After(5 * time.Second):
		c.Close()
		tb.Fatalf("the server at %s accepted nothing within 5 s", remote)
	}
	if a.err != nil {
		c.Close()
		tb.Fatalf("accept on %s: %v", remote, a.err)
	}
	s := &hbStream{
		client: c, server: a.c, local: addrPort(tb, c.LocalAddr()),
		start: time.Now().Add(hbInterval),
		stop:  make(chan struct{}), sent: make(chan int, 1), recvDone: make(chan struct{}),
	}
	go s.send()
	go s.receive()
	return s
}

// fail records the first thing that went wrong with the stream.
func (s *hbStream) fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err == nil {
		s.err = err
	}
}

// due returns when record seq was due.
func (s *hbStream) due(seq int) time.Time { return s.start.Add(time.Duration(seq) * hbInterval) }

// send writes record i at its due time (at once when late) until stop.
func (s *hbStream) send() {
	rec := make([]byte, hbRecordSize)
	seq := 0
	defer func() { s.sent <- seq }()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		if wait := time.Until(s.due(seq)); wait > 0 {
			timer.Reset(wait)
			select {
			case <-s.stop:
				return
			case <-timer.C:
			}
		} else {
			select {
			case <-s.stop:
				return
			default:
			}
		}
		binary.BigEndian.PutUint64(rec[0:], uint64(seq))
		binary.BigEndian.PutUint64(rec[8:], uint64(s.due(seq).UnixNano()))
		if _, err := s.client.Write(rec); err != nil {
			s.fail(fmt.Errorf("write record %d: %w", seq, err))
			return
		}
		seq++
	}
}

// receive reads the records in order and notes when each arrived; a
// record out of sequence or with the wrong due time is an error.
func (s *hbStream) receive() {
	defer close(s.recvDone)
	buf := make([]byte, hbRecordSize)
	for seq := 0; ; seq++ {
		if _, err := io.ReadFull(s.server, buf); err != nil {
			if !errors.Is(err, io.EOF) {
				s.fail(fmt.Errorf("read record %d: %w", seq, err))
			}
			return
		}
		now := time.Now()
		got, due := int(binary.BigEndian.Uint64(buf[0:])), int64(binary.BigEndian.Uint64(buf[8:]))
		if got != seq || due != s.due(seq).UnixNano() {
			s.fail(fmt.Errorf("record %d (due %v) arrived where record %d was expected: lost or reordered data",
				got, time.Unix(0, due).Sub(s.start), seq))
			return
		}
		s.mu.Lock()
		s.arrived = append(s.arrived, now)
		s.mu.Unlock()
	}
}

// lag returns how far behind the receiver is at now: now minus the due
// time of the last record that arrived (a few ms while the stream flows).
func (s *hbStream) lag(now time.Time) time.Duration {
	s.mu.Lock()
	n := len(s.arrived)
	s.mu.Unlock()
	return now.Sub(s.due(n - 1))
}

// received returns the records arrived by now.
func (s *hbStream) received() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.arrived)
}

// gap returns the longest time without a new record at the receiver in
// [from, to]: between from and the first arrival, between consecutive
// arrivals, and between the last one and to.
func (s *hbStream) gap(from, to time.Time) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := sort.Search(len(s.arrived), func(i int) bool { return s.arrived[i].After(from) })
	var g time.Duration
	prev := from
	for ; i < len(s.arrived) && !s.arrived[i].After(to); i++ {
		g = max(g, s.arrived[i].Sub(prev))
		prev = s.arrived[i]
	}
	return max(g, to.Sub(prev))
}

// firstAfter returns when the first record after t arrived, and its
// sequence number; ok is false when none has.
func (s *hbStream) firstAfter(t time.Time) (at time.Time, seq int, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := sort.Search(len(s.arrived), func(i int) bool { return s.arrived[i].After(t) })
	if i == len(s.arrived) {
		return time.Time{}, 0, false
	}
	return s.arrived[i], i, true
}

// errSoFar returns the stream's error so far.
func (s *hbStream) errSoFar() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// finish stops the sender, half-closes the client's end and waits until
// the reader has every record written, in order (the check of the whole
// run: nothing lost, nothing reordered), then closes both ends.
func (s *hbStream) finish(tb testing.TB, what string) {
	tb.Helper()
	defer s.client.Close()
	defer s.server.Close()
	close(s.stop)
	sent := <-s.sent
	if err := s.client.(*net.TCPConn).CloseWrite(); err != nil {
		tb.Fatalf("%s: half-close the stream: %v", what, err)
	}
	select {
	case <-s.recvDone:
	case <-time.After(15 * time.Second):
		tb.Fatalf("%s: the receiver has %d of %d records 15 s after the sender's end", what, s.received(), sent)
	}
	if err := s.errSoFar(); err != nil {
		tb.Fatalf("%s: the stream: %v", what, err)
	}
	if got := s.received(); got != sent {
		tb.Fatalf("%s: the receiver got %d records, the sender wrote %d", what, got, sent)
	}
}

// hbSteady waits, polling every 10 ms, until at least least has passed since
// from and the stream has kept up (lag under 100 ms) for the last 500 ms,
// or bound has passed since from. It returns when it stopped and whether
// the stream was steady then; extra, if not nil, is a further condition of
// the end (the traffic back on a path, say).
func hbSteady(s *hbStream, from time.Time, least, bound time.Duration, extra func(now time.Time) bool) (time.Time, bool) {
	const (
		keptUp = 100 * time.Millisecond
		hold   = 500 * time.Millisecond
	)
	var since time.Time // the stream keeps up since
	for {
		now := time.Now()
		if s.lag(now) < keptUp {
			if since.IsZero() {
				since = now
			}
		} else {
			since = time.Time{}
		}
		if now.Sub(from) >= least && !since.IsZero() && now.Sub(since) >= hold && (extra == nil || extra(now)) {
			return now, true
		}
		if now.Sub(from) >= bound {
			return now, false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// hbLab is a lab's path 0 and the netlink handles that fail it.
type hbLab struct {
	lab      *pmtest.Lab
	cli, srv *netlink.Handle // in the client's and the server's namespace
	c0, s0   netlink.Link
}

// newHBLab opens netlink handles in lab's namespaces for path 0's
// failures; they are closed when the test ends.
func newHBLab(tb testing.TB, lab *pmtest.Lab) *hbLab {
	tb.Helper()
	l := &hbLab{lab: lab}
	var err error
	if l.cli, err = netlink.NewHandleAt(netns.NsHandle(lab.Client.NSFD())); err != nil {
		tb.Fatalf("netlink in %s: %v", lab.Client.Name, err)
	}
	tb.Cleanup(l.cli.Close)
	if l.srv, err = netlink.NewHandleAt(netns.NsHandle(lab.Server.NSFD())); err != nil {
		tb.Fatalf("netlink in %s: %v", lab.Server.Name, err)
	}
	tb.Cleanup(l.srv.Close)
	if l.c0, err = l.cli.LinkByName(lab.Client.Ifaces[0]); err != nil {
		tb.Fatalf("%s in %s: %v", lab.Client.Ifaces[0], lab.Client.Name, err)
	}
	if l.s0, err = l.srv.LinkByName(lab.Server.Ifaces[0]); err != nil {
		tb.Fatalf("%s in %s: %v", lab.Server.Ifaces[0], lab.Server.Name, err)
	}
	return l
}

// hbFailure is a way path 0 fails.
type hbFailure string

const (
	// hbCarrier: the server's end of path 0 goes down (ip link set s0
	// down): the client's c0 loses its carrier, which user space hears of
	// after the kernel's linkwatch delay.
	hbCarrier hbFailure = "carrier"
	// hbBlackhole: both ends' neighbour entry for the other points at a
	// MAC address nobody has (ip neigh replace ... nud permanent): frames
	// go nowhere, the links stay up, nothing tells user space.
	hbBlackhole hbFailure = "blackhole"
)

// nowhere is the MAC address of the blackhole: locally administered, no
// interface has it.
var nowhere = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x01}

// fail applies f to path 0 (on true) or undoes it, and returns the time
// just before the first change.
func (l *hbLab) fail(tb testing.TB, f hbFailure, on bool) time.Time {
	tb.Helper()
	cli, srv := l.lab.Client, l.lab.Server
	neigh := func(link netlink.Link, ip netip.Addr) *netlink.Neigh {
		return &netlink.Neigh{LinkIndex: link.Attrs().Index, Family: netlink.FAMILY_V4, IP: ip.AsSlice(),
			State: netlink.NUD_PERMANENT, HardwareAddr: nowhere}
	}
	at := time.Now()
	var err error
	switch {
	case f == hbCarrier && on:
		err = l.srv.LinkSetDown(l.s0)
	case f == hbCarrier:
		err = l.srv.LinkSetUp(l.s0)
	case f == hbBlackhole && on:
		err = errors.Join(l.cli.NeighSet(neigh(l.c0, srv.Addrs4[0])), l.srv.NeighSet(neigh(l.s0, cli.Addrs4[0])))
	case f == hbBlackhole:
		// A missing entry is no error here: nothing had resolved it.
		for _, d := range []struct {
			h    *netlink.Handle
			link netlink.Link
			ip   netip.Addr
		}{{l.cli, l.c0, srv.Addrs4[0]}, {l.srv, l.s0, cli.Addrs4[0]}} {
			if e := d.h.NeighDel(neigh(d.link, d.ip)); e != nil && !errors.Is(e, syscall.ENOENT) {
				err = errors.Join(err, e)
			}
		}
	default:
		tb.Fatalf("unknown failure %q", f)
	}
	if err != nil {
		tb.Fatalf("%s on path 0 (on %v): %v", f, on, err)
	}
	return at
}

// waitCarrier waits until c0 has its carrier back (after a carrier loss).
func (l *hbLab) waitCarrier(tb testing.TB) {
	tb.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		link, err := l.cli.LinkByIndex(l.c0.Attrs().Index)
		if err != nil {
			tb.Fatalf("read %s: %v", l.lab.Client.Ifaces[0], err)
		}
		if link.Attrs().OperState == netlink.OperUp {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s has no carrier 5 s after %s came up (%v)", l.lab.Client.Ifaces[0], l.lab.Server.Ifaces[0], link.Attrs().OperState)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// hbSample is the bytes each path had carried (acknowledged by the peer,
// all subflows from that path's client address, closed ones included) at
// a time, and the subflows then.
type hbSample struct {
	at       time.Time
	bytes    [2]uint64
	subflows []diag.Subflow
	info     diag.Info // the MPTCP connection's counters
}

// hbPaths samples, every 50 ms, the bytes each subflow of one MPTCP
// connection of the client carried (sock_diag in the client's namespace),
// and adds them up by path.
type hbPaths struct {
	dc    *diag.Client
	addrs []netip.Addr // the client's address of each path
	local netip.AddrPort

	stop, done chan struct{}
	mu         sync.Mutex
	samples    []hbSample
	err        error
}

// startHBPaths starts sampling the subflows of the client's connection
// from local.
func startHBPaths(tb testing.TB, dc *diag.Client, lab *pmtest.Lab, local netip.AddrPort) *hbPaths {
	tb.Helper()
	p := &hbPaths{dc: dc, addrs: lab.Client.Addrs4, local: local, stop: make(chan struct{}), done: make(chan struct{})}
	go p.run()
	tb.Cleanup(p.end)
	return p
}

func (p *hbPaths) run() {
	defer close(p.done)
	last := map[string]uint64{} // bytes acked by subflow (local remote)
	var total [2]uint64
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		snap, err := p.dc.Snapshot()
		now := time.Now()
		if err != nil {
			p.mu.Lock()
			p.err = err
			p.mu.Unlock()
			return
		}
		var conn *diag.ConnWithSubflows
		for i := range snap.Conns {
			if snap.Conns[i].Local == p.local {
				conn = &snap.Conns[i]
			}
		}
		if conn != nil {
			for _, sf := range conn.Subflows {
				key := sockKey(sf.Local, sf.Remote)
				if d := sf.TCP.BytesAcked; d >= last[key] {
					if i := slices.Index(p.addrs, sf.Local.Addr().Unmap()); i >= 0 && i < len(total) {
						total[i] += d - last[key]
					}
					last[key] = d
				}
			}
			p.mu.Lock()
			p.samples = append(p.samples, hbSample{at: now, bytes: total, subflows: conn.Subflows, info: conn.Info})
			p.mu.Unlock()
		}
		select {
		case <-p.stop:
			return
		case <-tick.C:
		}
	}
}

// end stops the sampler (later calls do nothing).
func (p *hbPaths) end() {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	<-p.done
}

// last returns the latest sample (the zero sample before the first).
func (p *hbPaths) last() hbSample {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.samples) == 0 {
		return hbSample{}
	}
	return p.samples[len(p.samples)-1]
}

// at returns the latest sample taken at or before t (the first one if
// none).
func (p *hbPaths) at(t time.Time) hbSample {
	p.mu.Lock()
	defer p.mu.Unlock()
	i := sort.Search(len(p.samples), func(i int) bool { return p.samples[i].at.After(t) })
	if i > 0 {
		i--
	}
	if i >= len(p.samples) {
		return hbSample{}
	}
	return p.samples[i]
}

// carried returns the bytes path i carried between from and to (by the
// samples around them).
func (p *hbPaths) carried(i int, from, to time.Time) uint64 {
	a, b := p.at(from), p.at(to)
	if b.bytes[i] < a.bytes[i] {
		return 0
	}
	return b.bytes[i] - a.bytes[i]
}

// hbMoveWindow is the window over which carrying judges where the stream
// goes.
const hbMoveWindow = 400 * time.Millisecond

// carrying reports whether path i carried the stream in the window that
// ends at the latest sample taken by now and starts at the latest sample
// taken hbMoveWindow before that: at least 80% of the stream's bytes for
// the window's length, and the other path at most 20% (so that data that
// was stuck on a path and is acknowledged once the path is back does not
// count as the stream moving back). It also returns when the window began.
func (p *hbPaths) carrying(i int, now time.Time) (bool, time.Time) {
	end := p.at(now)
	start := p.at(end.at.Add(-hbMoveWindow))
	span := end.at.Sub(start.at)
	if span < hbMoveWindow {
		return false, start.at
	}
	full := uint64(hbRate) * uint64(span) / uint64(time.Second)
	this, other := end.bytes[i]-start.bytes[i], end.bytes[1-i]-start.bytes[1-i]
	return this >= full*8/10 && other <= full*2/10, start.at
}

// established reports whether a subflow from path i's client address is
// established in the latest sample, and whether it is a backup (this
// end's request).
func (p *hbPaths) established(i int) (up, backup bool) {
	for _, sf := range p.last().subflows {
		if sf.Local.Addr().Unmap() == p.addrs[i] && sf.State == diag.StateEstablished {
			return true, sf.Backup
		}
	}
	return false, false
}

// describe lists the subflows of the latest sample, for logs.
func (p *hbPaths) describe() string {
	var out []string
	for _, sf := range p.last().subflows {
		out = append(out, fmt.Sprintf("%s->%s %s backup=%v acked=%d", sf.Local, sf.Remote, sf.State, sf.Backup, sf.TCP.BytesAcked))
	}
	if len(out) == 0 {
		return "no subflows"
	}
	return strings.Join(out, "; ")
}

// carryingFrom returns the start of the first window (as carrying's) that
// starts at or after from in which path i carried the stream; ok is false
// when there is none by the latest sample.
func (p *hbPaths) carryingFrom(i int, from time.Time) (start time.Time, ok bool) {
	p.mu.Lock()
	samples := slices.Clone(p.samples)
	p.mu.Unlock()
	for _, s := range samples {
		if ok, start := p.carrying(i, s.at); ok && !start.Before(from) {
			return start, true
		}
	}
	return time.Time{}, false
}
