package diag

import (
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestTCPInfoOffsets checks the tcp_info offsets against x/sys/unix's
// struct, and decodes one laid out by it.
func TestTCPInfoOffsets(t *testing.T) {
	var ti unix.TCPInfo
	for _, o := range []struct {
		name      string
		ours, sys uintptr
	}{
		{"snd_mss", tcpiSndMSS, unsafe.Offsetof(ti.Snd_mss)},
		{"rtt", tcpiRTT, unsafe.Offsetof(ti.Rtt)},
		{"rttvar", tcpiRTTVar, unsafe.Offsetof(ti.Rttvar)},
		{"snd_cwnd", tcpiSndCwnd, unsafe.Offsetof(ti.Snd_cwnd)},
		{"total_retrans", tcpiTotalRetrans, unsafe.Offsetof(ti.Total_retrans)},
		{"bytes_acked", tcpiBytesAcked, unsafe.Offsetof(ti.Bytes_acked)},
		{"bytes_received", tcpiBytesReceived, unsafe.Offsetof(ti.Bytes_received)},
		{"min_rtt", tcpiMinRTT, unsafe.Offsetof(ti.Min_rtt)},
		{"bytes_sent", tcpiBytesSent, unsafe.Offsetof(ti.Bytes_sent)},
		{"bytes_retrans", tcpiBytesRetrans, unsafe.Offsetof(ti.Bytes_retrans)},
	} {
		if o.ours != o.sys {
			t.Errorf("tcpi_%s at %d, x/sys/unix says %d", o.name, o.ours, o.sys)
		}
	}
	ti = unix.TCPInfo{Snd_mss: 1, Rtt: 2, Rttvar: 3, Snd_cwnd: 4, Total_retrans: 5, Bytes_acked: 6,
		Bytes_received: 7, Min_rtt: 8, Bytes_sent: 9, Bytes_retrans: 10}
	b := unsafe.Slice((*byte)(unsafe.Pointer(&ti)), unsafe.Sizeof(ti))
	got := decodeTCPInfo(b)
	want := TCPInfo{SndMSS: 1, RTT: 2000, RTTVar: 3000, SndCwnd: 4, TotalRetrans: 5, BytesAcked: 6,
		BytesReceived: 7, MinRTT: 8000, BytesSent: 9, BytesRetrans: 10}
	if got != want {
		t.Errorf("got %+v\nwant %+v", got, want)
	}
}
