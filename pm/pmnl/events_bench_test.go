package pmnl_test

import (
	"encoding/hex"
	"testing"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmnl"
)

// BenchmarkDecodeEvent decodes the kernel captures in turn, a realistic mix
// of connection, subflow, address and listener events, IPv4 and IPv6.
func BenchmarkDecodeEvent(b *testing.B) {
	type msg struct {
		cmd  uint8
		data []byte
	}
	msgs := make([]msg, len(kernelCaptures))
	for i, c := range kernelCaptures {
		d, err := hex.DecodeString(c.hex)
		if err != nil {
			b.Fatal(err)
		}
		msgs[i] = msg{c.cmd, d}
	}
	b.ReportAllocs()
	var sink pm.Event
	i := 0
	for b.Loop() {
		m := msgs[i]
		ev, err := pmnl.DecodeEvent(m.cmd, m.data)
		if err != nil {
			b.Fatal(err)
		}
		sink = ev
		if i++; i == len(msgs) {
			i = 0
		}
	}
	_ = sink
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}
