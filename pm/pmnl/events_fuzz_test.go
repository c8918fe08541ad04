package pmnl_test

import (
	"encoding/hex"
	"errors"
	"testing"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmnl"
)

// FuzzDecodeEvent checks that DecodeEvent never panics and keeps its
// contract on any input: an error wraps pm.ErrInvalid and comes with the zero
// Event; a success carries the type, unmapped addresses and a ServerSide
// consistent with the flags, and does not change when an unknown attribute
// is appended.
func FuzzDecodeEvent(f *testing.F) {
	for _, c := range kernelCaptures {
		b, err := hex.DecodeString(c.hex)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(c.cmd, b)
	}
	f.Add(uint8(pm.EventSubClosed), concat(
		attr(1, u32(7)...), attr(2, u16(afInet6)...), attr(6, ip("::ffff:10.0.0.1")...),
		attr(8, ip("2001:db8::2")...), attr(9, be16(1)...), attr(10, be16(2)...), attr(11, 1),
		attr(12, 104), attr(13, u16(3)...), attr(14, u32(30)...), attr(15, u32(4)...),
		attr(16, u32(2)...), attr(17, u32(1)...), attr(18, 1)))
	f.Add(uint8(0), []byte{})
	f.Add(uint8(255), []byte{4, 0, 0, 0, 3, 0, 1})

	f.Fuzz(func(t *testing.T, cmd uint8, data []byte) {
		ev, err := pmnl.DecodeEvent(cmd, data)
		if err != nil {
			if !errors.Is(err, pm.ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			if ev != (pm.Event{}) {
				t.Fatalf("event %+v returned with error %v", ev, err)
			}
			return
		}
		if ev.Type != pm.EventType(cmd) {
			t.Fatalf("Type %d, want %d", ev.Type, cmd)
		}
		for _, a := range []struct {
			name string
			ok   bool
		}{
			{"LocalAddr", !ev.LocalAddr.Is4In6() && ev.LocalAddr.Zone() == ""},
			{"RemoteAddr", !ev.RemoteAddr.Is4In6() && ev.RemoteAddr.Zone() == ""},
		} {
			if !a.ok {
				t.Fatalf("%s not unmapped or has a zone: %+v", a.name, ev)
			}
		}
		if ev.Flags&pm.EventFlagServerSide != 0 && !ev.ServerSide {
			t.Fatalf("server-side flag set but ServerSide false: %+v", ev)
		}
		// Appending an unknown attribute changes nothing (unless the
		// last attribute lacked its padding, which the new one would
		// then be misaligned against).
		if len(data)%4 == 0 {
			more := append(append([]byte(nil), data...), attr(250, 1, 2, 3)...)
			ev2, err := pmnl.DecodeEvent(cmd, more)
			if err != nil || ev2 != ev {
				t.Fatalf("with an unknown attribute appended: %+v, %v; want %+v", ev2, err, ev)
			}
		}
	})
}
