package main

import (
	"net/netip"
	"reflect"
	"testing"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/pm/diag"
)

func TestFromSnapshot(t *testing.T) {
	ap := netip.MustParseAddrPort
	initial := diag.Subflow{Flags: diag.SubflowMPCapableLocal | diag.SubflowMPCapableRemote, State: diag.StateEstablished,
		Local: ap("10.0.0.1:4000"), Remote: ap("10.0.0.2:80")}
	join := diag.Subflow{Flags: diag.SubflowJoinLocal, LocalID: 3, RemoteID: 1, State: diag.StateEstablished,
		Backup: false, BackupRemote: true, Ifindex: 7,
		Local: ap("10.0.1.1:4001"), Remote: ap("[::ffff:10.0.0.2]:80")}
	backupInitial := initial
	backupInitial.Backup = true
	joining := join
	joining.State, joining.Local = diag.StateSynSent, ap("10.0.2.1:4002")
	leaving := join
	leaving.State, leaving.Local = diag.StateFinWait1, ap("10.0.3.1:4003")
	conn := func(token uint32, state diag.State, inode uint64, side diag.Side, sfs ...diag.Subflow) diag.ConnWithSubflows {
		return diag.ConnWithSubflows{
			Conn: diag.Conn{Token: token, State: state, Inode: inode, Local: ap("10.0.0.1:4000"), Remote: ap("10.0.0.2:80")},
			Side: side, Subflows: sfs,
		}
	}
	snap := &diag.Snapshot{Conns: []diag.ConnWithSubflows{
		conn(1, diag.StateEstablished, 11, diag.SideClient, initial, join, joining, leaving),
		conn(0, diag.StateSynSent, 12, diag.SideClient),           // in its handshake: no token yet
		conn(3, diag.StateSynRecv, 0, diag.SideServer),            // in its handshake, with a token
		conn(4, diag.StateFinWait2, 0, diag.SideClient),           // closed by its application
		conn(5, diag.StateFinWait2, 15, diag.SideClient),          // only shut down
		conn(6, diag.StateCloseWait, 0, diag.SideServer, initial), // not accepted yet, the peer closed
		conn(7, diag.StateEstablished, 17, diag.SideClient, join), // the initial subflow closed
		conn(8, diag.StateEstablished, 18, diag.SideClient, backupInitial),
	}}
	want := []pm.Connection{
		{Token: 1, Local: ap("10.0.0.1:4000"), Remote: ap("10.0.0.2:80"), Established: true, Subflows: []pm.Subflow{
			{LocalID: 3, RemoteID: 1, Local: ap("10.0.1.1:4001"), Remote: ap("10.0.0.2:80"), Backup: true, Ifindex: 7},
		}},
		{Token: 3, Local: ap("10.0.0.1:4000"), Remote: ap("10.0.0.2:80"), ServerSide: true},
		{Token: 5, Local: ap("10.0.0.1:4000"), Remote: ap("10.0.0.2:80"), Established: true},
		{Token: 6, Local: ap("10.0.0.1:4000"), Remote: ap("10.0.0.2:80"), ServerSide: true, Established: true},
		{Token: 7, Local: ap("10.0.0.1:4000"), Remote: ap("10.0.0.2:80"), Established: true, InitialClosed: true, Subflows: []pm.Subflow{
			{LocalID: 3, RemoteID: 1, Local: ap("10.0.1.1:4001"), Remote: ap("10.0.0.2:80"), Backup: true, Ifindex: 7},
		}},
		{Token: 8, Local: ap("10.0.0.1:4000"), Remote: ap("10.0.0.2:80"), Established: true, InitialBackup: true},
	}
	if got := fromSnapshot(snap); !reflect.DeepEqual(got, want) {
		t.Errorf("fromSnapshot:\n got %+v\nwant %+v", got, want)
	}
}
