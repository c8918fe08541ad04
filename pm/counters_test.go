package pm

import (
	"errors"
	"os"
	"strings"
	"testing"
)

func TestParseCounters(t *testing.T) {
	in := "TcpExt: SyncookiesSent X\nTcpExt: 1 2\nMPTcpExt: MPCapableSYNRX MPJoinSynRx Blackhole\nMPTcpExt: 3 17 0\nIpExt: A\nIpExt: 1\n"
	got, err := parseCounters(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got["MPJoinSynRx"] != 17 || got["MPCapableSYNRX"] != 3 {
		t.Errorf("counters %v", got)
	}
	for _, bad := range []string{"", "MPTcpExt: A B\nMPTcpExt: 1\n", "MPTcpExt: A\nMPTcpExt: -1\n", "MPTcpExt: A\n"} {
		if _, err := parseCounters(strings.NewReader(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
	if _, err := parseCounters(strings.NewReader("TcpExt: A\nTcpExt: 1\n")); !errors.Is(err, ErrNotSupported) {
		t.Errorf("without MPTcpExt: %v", err)
	}
}

func FuzzParseCounters(f *testing.F) {
	f.Add("MPTcpExt: A B\nMPTcpExt: 1 2\n")
	f.Add("MPTcpExt:\nMPTcpExt:\n")
	f.Fuzz(func(t *testing.T, s string) {
		m, err := parseCounters(strings.NewReader(s))
		if err == nil && m == nil {
			t.Error("nil map without an error")
		}
	})
}

func TestCountersHere(t *testing.T) {
	m, err := Counters()
	if errors.Is(err, ErrNotSupported) {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI: %v", err)
		}
		t.Skip("no MPTCP counters here:", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := m["MPJoinSynRx"]; !ok {
		t.Errorf("no MPJoinSynRx in %v", m)
	}
}
