package diag

import (
	"bufio"
	"encoding/hex"
	"net/netip"
	"os"
	"strings"
	"testing"
)

// Builders of hand-made kernel messages, in host byte order like the
// kernel's, for the decoder tests and the fuzz seeds.

// sockMsg is a struct inet_diag_msg to encode.
type sockMsg struct {
	family        uint8
	state         State
	local, remote netip.AddrPort
	ifindex       uint32
	cookie        uint64
	rqueue        uint32
	wqueue        uint32
	uid           uint32
	inode         uint32
	attrs         [][]byte
}

func (m sockMsg) bytes() []byte {
	b := make([]byte, diagMsgLen)
	b[0] = m.family
	b[1] = uint8(m.state)
	b[4], b[5] = byte(m.local.Port()>>8), byte(m.local.Port())
	b[6], b[7] = byte(m.remote.Port()>>8), byte(m.remote.Port())
	put := func(off int, a netip.Addr) {
		if !a.IsValid() {
			return
		}
		if m.family == afInet {
			a4 := a.As4()
			copy(b[off:], a4[:])
		} else {
			a16 := a.As16()
			copy(b[off:], a16[:])
		}
	}
	put(8, m.local.Addr())
	put(24, m.remote.Addr())
	ne.PutUint32(b[40:], m.ifindex)
	ne.PutUint32(b[44:], uint32(m.cookie))
	ne.PutUint32(b[48:], uint32(m.cookie>>32))
	ne.PutUint32(b[56:], m.rqueue)
	ne.PutUint32(b[60:], m.wqueue)
	ne.PutUint32(b[64:], m.uid)
	ne.PutUint32(b[68:], m.inode)
	for _, a := range m.attrs {
		b = append(b, a...)
	}
	return b
}

// attr encodes one netlink attribute with its padding.
func attr(typ uint16, val []byte) []byte {
	b := make([]byte, 4, 4+align4(len(val)))
	ne.PutUint16(b[0:], uint16(4+len(val)))
	ne.PutUint16(b[2:], typ)
	b = append(b, val...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// nest encodes a nested attribute; the kernel's sock_diag nests do not set
// NLA_F_NESTED, but a decoder must accept it.
func nest(typ uint16, attrs ...[]byte) []byte {
	var v []byte
	for _, a := range attrs {
		v = append(v, a...)
	}
	return attr(typ, v)
}

func u8b(v uint8) []byte { return []byte{v} }

func u16b(v uint16) []byte { b := make([]byte, 2); ne.PutUint16(b, v); return b }

func u32b(v uint32) []byte { b := make([]byte, 4); ne.PutUint32(b, v); return b }

func u64b(v uint64) []byte { b := make([]byte, 8); ne.PutUint64(b, v); return b }

// nlmsg frames a payload as a netlink message with its padding.
func nlmsg(typ uint16, flags uint16, seq uint32, payload []byte) []byte {
	b := make([]byte, nlmsgHdrLen, nlmsgHdrLen+align4(len(payload)))
	ne.PutUint32(b[0:], uint32(nlmsgHdrLen+len(payload)))
	ne.PutUint16(b[4:], typ)
	ne.PutUint16(b[6:], flags)
	ne.PutUint32(b[8:], seq)
	ne.PutUint32(b[12:], 4242)
	b = append(b, payload...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// captureFile holds real kernel messages captured by TestCaptureLab, one
// "name hex" per line. The decoder tests check them against the lab layout
// (addresses, flags) and against each other (tokens).
const captureFile = "testdata/captured.txt"

// loadCaptured reads testdata/captured.txt into a map of name to bytes.
func loadCaptured(tb testing.TB) map[string][]byte {
	tb.Helper()
	f, err := os.Open(captureFile)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	m := map[string][]byte{}
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, h, ok := strings.Cut(line, " ")
		b, err := hex.DecodeString(h)
		if !ok || err != nil {
			tb.Fatalf("%s: bad line %q: %v", captureFile, name, err)
		}
		m[name] = b
	}
	if err := sc.Err(); err != nil {
		tb.Fatal(err)
	}
	return m
}
