package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"
)

// The handover tests' host: wlan0 (cheap, 10.55.0.1) and wwan0 (expensive,
// 10.55.1.1); the connection starts on wlan0.
var (
	hoWLAN  = Address{Interface: "wlan0", Ifindex: 2, Addr: netip.MustParseAddr("10.55.0.1"), Preference: PreferCheap}
	hoWWAN  = Address{Interface: "wwan0", Ifindex: 3, Addr: netip.MustParseAddr("10.55.1.1"), Preference: PreferExpensive}
	hoEth   = Address{Interface: "eth0", Ifindex: 4, Addr: netip.MustParseAddr("10.55.2.1"), Preference: PreferCheap}
	hoPeer  = netip.MustParseAddrPort("10.66.0.2:443")
	hoStart = time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
)

func hoView(now time.Time, cold bool, addrs ...Address) View {
	return View{Addresses: addrs, Now: now, SubflowLimit: 4,
		Handover: HandoverSettings{Cold: cold, Hysteresis: 3 * time.Second}}
}

func hoConn(subflows ...Subflow) Connection {
	return Connection{Token: 7, Established: true, Local: netip.AddrPortFrom(hoWLAN.Addr, 40000), Remote: hoPeer, Subflows: subflows}
}

// hsf is an established subflow from a with the given health.
func hsf(a Address, port uint16, backup, stalled bool, healthySince time.Time) Subflow {
	return Subflow{Local: netip.AddrPortFrom(a.Addr, port), Remote: hoPeer, Interface: a.Interface,
		Backup: backup, Stalled: stalled, HealthySince: healthySince}
}

// brief describes actions as "kind iface backup".
func brief(acts []Action) []string {
	var out []string
	for _, a := range acts {
		out = append(out, fmt.Sprintf("%v %s %v", a.Kind, a.Interface, a.Backup))
	}
	return out
}

func TestHandover(t *testing.T) {
	long := hoStart.Add(-time.Minute) // healthy for long
	now := hoStart
	tests := []struct {
		name string
		v    View
		c    Connection
		want []string
	}{
		{"warm: a backup subflow on the expensive path", hoView(now, false, hoWLAN, hoWWAN),
			hoConn(hsf(hoWLAN, 40000, false, false, long)),
			[]string{"create-subflow wwan0 true"}},
		{"cold: none", hoView(now, true, hoWLAN, hoWWAN),
			hoConn(hsf(hoWLAN, 40000, false, false, long)), nil},
		{"warm, steady: nothing", hoView(now, false, hoWLAN, hoWWAN),
			hoConn(hsf(hoWLAN, 40000, false, false, long), hsf(hoWWAN, 41000, true, false, long)), nil},
		{"another cheap interface carries traffic too", hoView(now, false, hoEth, hoWLAN, hoWWAN),
			hoConn(hsf(hoWLAN, 40000, false, false, long), hsf(hoWWAN, 41000, true, false, long)),
			[]string{"create-subflow eth0 false"}},
		{"the initial path stalls: closed, the standby takes over, wlan0 probed again", hoView(now, false, hoWLAN, hoWWAN),
			hoConn(hsf(hoWLAN, 40000, false, true, time.Time{}), hsf(hoWWAN, 41000, true, false, long)),
			[]string{"destroy-subflow wlan0 false", "set-subflow-backup wwan0 false", "create-subflow wlan0 true"}},
		{"cold: the initial path stalls: a standby is made first", hoView(now, true, hoWLAN, hoWWAN),
			hoConn(hsf(hoWLAN, 40000, false, true, time.Time{})),
			[]string{"create-subflow wwan0 false"}},
		{"cold: then the dead initial subflow is closed", hoView(now, true, hoWLAN, hoWWAN),
			hoConn(hsf(hoWLAN, 40000, false, true, time.Time{}), hsf(hoWWAN, 41000, false, false, now)),
			[]string{"destroy-subflow wlan0 false", "create-subflow wlan0 true"}},
		{"the initial subflow's address is gone: closed", hoView(now, false, hoWWAN),
			hoConn(hsf(hoWLAN, 40000, false, false, long), hsf(hoWWAN, 41000, true, false, long)),
			[]string{"destroy-subflow  false", "set-subflow-backup wwan0 false"}},
		{"a joined cheap path stalls: closed, probed again as backup", hoView(now, false, hoEth, hoWLAN, hoWWAN),
			Connection{Token: 7, Established: true, Local: netip.AddrPortFrom(hoWWAN.Addr, 40000), Remote: hoPeer, Subflows: []Subflow{
				hsf(hoWWAN, 40000, true, false, long), hsf(hoEth, 41000, false, true, time.Time{}), hsf(hoWLAN, 42000, false, true, time.Time{})}},
			[]string{"destroy-subflow eth0 false", "destroy-subflow wlan0 false", "set-subflow-backup wwan0 false",
				"create-subflow eth0 true", "create-subflow wlan0 true"}},
		{"the cheap path is back, not for long: nothing yet", hoView(now, false, hoWLAN, hoWWAN),
			hoConn(hsf(hoWLAN, 40000, true, false, now.Add(-time.Second)), hsf(hoWWAN, 41000, false, false, long)), nil},
		{"back for the hysteresis: traffic moves back", hoView(now, false, hoWLAN, hoWWAN),
			hoConn(hsf(hoWLAN, 40000, true, false, now.Add(-3*time.Second)), hsf(hoWWAN, 41000, false, false, long)),
			[]string{"set-subflow-backup wlan0 false"}},
		{"then the standby is demoted", hoView(now, false, hoWLAN, hoWWAN),
			hoConn(hsf(hoWLAN, 40000, false, false, now.Add(-3*time.Second)), hsf(hoWWAN, 41000, false, false, long)),
			[]string{"set-subflow-backup wwan0 true"}},
		{"cold, back for the hysteresis: promoted first", hoView(now, true, hoWLAN, hoWWAN),
			hoConn(hsf(hoWLAN, 40000, true, false, now.Add(-3*time.Second)), hsf(hoWWAN, 41000, false, false, long)),
			[]string{"set-subflow-backup wlan0 false"}},
		{"cold, then the standby is closed", hoView(now, true, hoWLAN, hoWWAN),
			hoConn(hsf(hoWLAN, 40000, false, false, now.Add(-3*time.Second)), hsf(hoWWAN, 41000, false, false, long)),
			[]string{"destroy-subflow wwan0 false"}},
		{"started on the expensive path: a cheap one is made, then it takes over", hoView(now, true, hoWLAN, hoWWAN),
			Connection{Token: 7, Established: true, Local: netip.AddrPortFrom(hoWWAN.Addr, 40000), Remote: hoPeer, Subflows: []Subflow{
				hsf(hoWWAN, 40000, false, false, long)}},
			[]string{"create-subflow wlan0 true"}},
		{"the initial expensive path is demoted, not closed, once a cheap one settled", hoView(now, true, hoWLAN, hoWWAN),
			Connection{Token: 7, Established: true, Local: netip.AddrPortFrom(hoWWAN.Addr, 40000), Remote: hoPeer, Subflows: []Subflow{
				hsf(hoWWAN, 40000, false, false, long), hsf(hoWLAN, 41000, false, false, long)}},
			[]string{"set-subflow-backup wwan0 true"}},
		{"everything stalls: nothing to move to, nothing closed", hoView(now, false, hoWLAN),
			hoConn(hsf(hoWLAN, 40000, true, true, time.Time{})), nil},
		{"backup preference stands by like expensive", hoView(now, false, hoWLAN, Address{Interface: "eth9", Ifindex: 9,
			Addr: netip.MustParseAddr("10.55.9.1"), Preference: PreferBackup}),
			hoConn(hsf(hoWLAN, 40000, false, false, long)), []string{"create-subflow eth9 true"}},
		{"server side: announces", hoView(now, false, hoWLAN, hoWWAN),
			Connection{Token: 7, ServerSide: true, Established: true, Local: netip.AddrPortFrom(hoWLAN.Addr, 443),
				Remote: netip.MustParseAddrPort("10.66.0.2:40000")},
			[]string{"announce wwan0 false"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := brief(handover{}.Connection(tt.v, tt.c))
			if !slices.Equal(got, tt.want) {
				t.Errorf("got  %q\nwant %q", got, tt.want)
			}
		})
	}
}

// TestHandoverFlapping: a cheap path that fails and comes back every
// second, faster than the hysteresis, moves the traffic to the standby
// once and never back while it flaps; once it has held for the hysteresis
// the traffic moves back, once. The dead cheap subflows are closed and
// made again as backup probes, which come up while the path is up.
func TestHandoverFlapping(t *testing.T) {
	for _, cold := range []bool{false, true} {
		t.Run(fmt.Sprintf("cold=%v", cold), func(t *testing.T) {
			wlan := hsf(hoWLAN, 40000, false, false, hoStart.Add(-time.Minute))
			wwan := hsf(hoWWAN, 41000, true, false, hoStart.Add(-time.Minute))
			port := uint16(40000)
			var moves []string
			apply := func(now time.Time, acts []Action) {
				for _, a := range acts {
					switch {
					case a.Kind == SetSubflowBackup && a.Interface == "wlan0":
						wlan.Backup = a.Backup
					case a.Kind == SetSubflowBackup && a.Interface == "wwan0":
						wwan.Backup = a.Backup
					case a.Kind == DestroySubflow && a.Interface == "wlan0":
						wlan = Subflow{}
						continue // the dead path's, not a move of the traffic
					case a.Kind == CreateSubflow && a.Interface == "wlan0":
						port++
						wlan = Subflow{Local: netip.AddrPortFrom(hoWLAN.Addr, 0), Remote: hoPeer, Interface: "wlan0", Backup: a.Backup, Pending: true}
						continue
					case a.Kind == CreateSubflow && a.Interface == "wwan0":
						wwan = hsf(hoWWAN, 41000, a.Backup, false, now)
					case a.Kind == DestroySubflow && a.Interface == "wwan0":
						wwan = Subflow{}
					default:
						t.Fatalf("%v: unexpected at %v", a, now.Sub(hoStart))
					}
					if a.Kind != CreateSubflow || !a.Backup {
						moves = append(moves, fmt.Sprintf("%v %v %s %v", now.Sub(hoStart), a.Kind, a.Interface, a.Backup))
					}
				}
			}
			conn := func() Connection {
				c := Connection{Token: 7, Established: true, Local: netip.AddrPortFrom(hoWLAN.Addr, 40000), Remote: hoPeer}
				for _, s := range []Subflow{wlan, wwan} {
					if s.Local.IsValid() {
						c.Subflows = append(c.Subflows, s)
					}
				}
				return c
			}
			// 9 s of flapping, decided every 100 ms: down in even
			// seconds, up in odd ones; then up for good.
			for step := 0; step <= 150; step++ {
				now := hoStart.Add(time.Duration(step) * 100 * time.Millisecond)
				down := step < 90 && (step/10)%2 == 0
				switch {
				case !wlan.Local.IsValid():
				case wlan.Pending && !down: // a probe comes up while the path is
					wlan.Pending, wlan.Local, wlan.HealthySince = false, netip.AddrPortFrom(hoWLAN.Addr, port), now
				case wlan.Pending:
				case down && !wlan.Stalled:
					wlan.Stalled, wlan.HealthySince = true, time.Time{}
				case !down && wlan.Stalled:
					wlan.Stalled, wlan.HealthySince = false, now
				}
				apply(now, handover{}.Connection(hoView(now, cold, hoWLAN, hoWWAN), conn()))
			}
			// Up for good from 9 s: back 3 s later.
			want := []string{"0s set-subflow-backup wwan0 false", "12s set-subflow-backup wlan0 false", "12.1s set-subflow-backup wwan0 true"}
			if cold {
				want[2] = "12.1s destroy-subflow wwan0 false"
			}
			if !slices.Equal(moves, want) {
				t.Errorf("moves:\n  %q\nwant\n  %q", moves, want)
			}
		})
	}
}
