package pmtest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Capture records when the TCP handshakes of a host's connections cross its
// interfaces, by the kernel's clock: the first SYN the host sends for a
// connection, the first SYN-ACK that answers it, and the first packet the
// peer sends after that. The
// times are the kernel's timestamps of the packets as they leave and
// arrive (an AF_PACKET socket with SO_TIMESTAMPNS), so unlike the time a
// program reads an event, they do not depend on when that program gets a
// processor: a listener reads the kernel's ESTABLISHED and the
// SUB_ESTABLISHED that follows it as one batch as often as not, and what a
// benchmark measures then is the listener's wake-up.
//
// For an MPTCP connection whose client sends data at once, the peer's
// first packet after the SYN-ACK (its acknowledgement with a DSS option)
// is the one that makes the connection fully established at the client:
// the kernel's ESTABLISHED event. For a join, the SYN-ACK is the packet on
// which the client's kernel reports SUB_ESTABLISHED.
type Capture struct {
	file *os.File

	mu      sync.Mutex
	flows   map[Flow]*Handshake
	changed chan struct{} // closed and replaced when a packet is recorded
	err     error         // why reading stopped
}

// Flow is a TCP connection's addresses and ports, seen from the host.
type Flow struct{ Local, Remote netip.AddrPort }

// Handshake holds the kernel's times of a flow's first packets; each is
// zero until seen.
type Handshake struct {
	SYN    time.Time // the host's SYN left
	SYNACK time.Time // the peer's SYN-ACK arrived
	Reply  time.Time // the peer's first packet after its SYN-ACK arrived
}

// Capture starts recording the handshakes of connections that h opens
// (those whose SYN leaves h), until the test ends.
func (h *Host) Capture(tb testing.TB) *Capture {
	tb.Helper()
	var fd int
	err := h.Do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		return err
	})
	if err != nil {
		tb.Fatalf("pmtest: capture in %s: %v", h.Name, err)
	}
	if err := setupCapture(fd); err != nil {
		unix.Close(fd)
		tb.Fatalf("pmtest: capture in %s: %v", h.Name, err)
	}
	c := &Capture{file: os.NewFile(uintptr(fd), "capture"), flows: map[Flow]*Handshake{}, changed: make(chan struct{})}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.read()
	}()
	tb.Cleanup(func() {
		c.file.Close()
		<-done
	})
	return c
}

func setupCapture(fd int) error {
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1); err != nil {
		return fmt.Errorf("SO_TIMESTAMPNS: %w", err)
	}
	// Room for every packet of a burst of connections while the reader
	// waits for a processor.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20); err != nil {
		return fmt.Errorf("SO_RCVBUFFORCE: %w", err)
	}
	return nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// read records packets until the socket is closed.
func (c *Capture) read() {
	rc, err := c.file.SyscallConn()
	if err != nil {
		c.stop(err)
		return
	}
	buf := make([]byte, 256) // the headers are all that is needed
	oob := make([]byte, unix.CmsgSpace(int(unsafe.Sizeof(unix.Timespec{}))))
	for {
		var n, oobn int
		var from unix.Sockaddr
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			n, oobn, _, from, rerr = unix.Recvmsg(int(fd), buf, oob, unix.MSG_TRUNC)
			return rerr != unix.EAGAIN
		})
		if err == nil {
			err = rerr
		}
		if err != nil {
			c.stop(err)
			return
		}
		ll, ok := from.(*unix.SockaddrLinklayer)
		if !ok {
			continue
		}
		at, ok := packetTime(oob[:oobn])
		if !ok {
			c.stop(errors.New("a packet without a kernel timestamp"))
			return
		}
		c.record(buf[:min(n, len(buf))], htons(ll.Protocol), ll.Pkttype == unix.PACKET_OUTGOING, at)
	}
}

func (c *Capture) stop(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.err = err
	close(c.changed)
	c.changed = make(chan struct{})
}

// packetTime returns the kernel's timestamp from a packet's control
// messages.
func packetTime(oob []byte) (time.Time, bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return time.Time{}, false
	}
	for _, m := range msgs {
		if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_TIMESTAMPNS && len(m.Data) >= 16 {
			sec := int64(binary.NativeEndian.Uint64(m.Data))
			nsec := int64(binary.NativeEndian.Uint64(m.Data[8:]))
			return time.Unix(sec, nsec), true
		}
	}
	return time.Time{}, false
}

// TCP flags.
const (
	tcpSYN = 0x02
	tcpACK = 0x10
)

// record notes a packet if it is a handshake packet of a flow the host
// opened, or the peer's first packet after one.
func (c *Capture) record(p []byte, proto uint16, out bool, at time.Time) {
	src, dst, tcp, ok := parseTCP(p, proto)
	if !ok {
		return
	}
	flags := tcp[13]
	f := Flow{Local: src, Remote: dst}
	if !out {
		f = Flow{Local: dst, Remote: src}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	h := c.flows[f]
	switch {
	case out && flags&(tcpSYN|tcpACK) == tcpSYN:
		if h == nil {
			h = &Handshake{SYN: at}
			c.flows[f] = h
		}
	case h == nil, out:
		return
	case flags&(tcpSYN|tcpACK) == tcpSYN|tcpACK:
		if h.SYNACK.IsZero() {
			h.SYNACK = at
		}
	case !h.SYNACK.IsZero() && h.Reply.IsZero():
		h.Reply = at
	default:
		return
	}
	close(c.changed)
	c.changed = make(chan struct{})
}

// parseTCP returns the addresses and ports of an IPv4 or IPv6 TCP packet
// and its TCP header.
func parseTCP(p []byte, proto uint16) (src, dst netip.AddrPort, tcp []byte, ok bool) {
	var sa, da netip.Addr
	switch proto {
	case unix.ETH_P_IP:
		if len(p) < 20 || p[0]>>4 != 4 || p[9] != unix.IPPROTO_TCP {
			return
		}
		ihl := int(p[0]&0x0f) * 4
		if ihl < 20 || len(p) < ihl+20 {
			return
		}
		sa, da, tcp = netip.AddrFrom4([4]byte(p[12:16])), netip.AddrFrom4([4]byte(p[16:20])), p[ihl:]
	case unix.ETH_P_IPV6:
		if len(p) < 60 || p[0]>>4 != 6 || p[6] != unix.IPPROTO_TCP {
			return
		}
		sa, da, tcp = netip.AddrFrom16([16]byte(p[8:24])), netip.AddrFrom16([16]byte(p[24:40])), p[40:]
	default:
		return
	}
	sp, dp := binary.BigEndian.Uint16(tcp), binary.BigEndian.Uint16(tcp[2:])
	return netip.AddrPortFrom(sa, sp), netip.AddrPortFrom(da, dp), tcp, true
}

// Wait returns flow f's handshake once ready says it is complete enough,
// waiting up to 10 s; the test fails if it is not by then.
func (c *Capture) Wait(tb testing.TB, f Flow, ready func(Handshake) bool) Handshake {
	tb.Helper()
	timeout := time.After(10 * time.Second)
	for {
		c.mu.Lock()
		var h Handshake
		if p := c.flows[f]; p != nil {
			h = *p
		}
		changed, err := c.changed, c.err
		c.mu.Unlock()
		if ready(h) {
			return h
		}
		if err != nil {
			tb.Fatalf("pmtest: capture stopped: %v", err)
		}
		select {
		case <-changed:
		case <-timeout:
			tb.Fatalf("pmtest: no complete handshake of %s -> %s within 10 s: %+v", f.Local, f.Remote, h)
		}
	}
}

// Flows returns the handshakes recorded so far.
func (c *Capture) Flows() map[Flow]Handshake {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[Flow]Handshake, len(c.flows))
	for f, h := range c.flows {
		out[f] = *h
	}
	return out
}
