package service

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
	"github.com/mptcp-pmd/mptcp-pmd/policy"
)

// drain throws away the events the fake kernel emitted: the daemon never
// saw them (it was not running, or its event socket overflowed).
func drain(k *pmtest.FakeKernel) {
	for {
		select {
		case <-k.Events():
		default:
			return
		}
	}
}

// ready waits for the service's Ready.
func (h *harness) ready() {
	h.t.Helper()
	select {
	case <-h.s.Ready():
	case <-time.After(5 * time.Second):
		h.t.Fatal("the service is not ready 5 s after NetSynced")
	}
}

func TestAdoptAtStart(t *testing.T) {
	k := pmtest.NewFakeKernel()
	k.AddConnection(7, true, ap("10.55.0.1:40000"), ap("10.55.0.2:8080"))
	if err := k.CreateSubflow(7, pm.Address{ID: 1, Addr: netip.MustParseAddr("10.55.1.1")}, ap("10.55.0.2:8080")); err != nil {
		t.Fatal(err)
	}
	if err := k.Announce(7, pm.Address{ID: 2, Addr: netip.MustParseAddr("10.55.2.1"), Flags: pm.FlagSignal}); err != nil {
		t.Fatal(err)
	}
	k.AddConnection(9, true, ap("[fd00:55::1]:40001"), ap("[fd00:55::2]:8080"))
	drain(k) // before the daemon started

	h := newHarness(t, withKernel(k), withLister())
	select {
	case <-h.s.Ready():
		t.Fatal("ready before the first NetSynced")
	default:
	}
	h.sendNet(append(hostNet(3), synced)...)
	h.ready()
	if ns := h.take(); slices.ContainsFunc(ns, func(n Notification) bool { _, ok := n.(ConnectionAdded); return ok }) {
		t.Errorf("adoption at start published ConnectionAdded (the front ends load the state): %v", describeAll(ns))
	}
	cs, err := h.s.Connections(bg)
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 2 {
		t.Fatalf("connections %+v, want 2", cs)
	}
	c := cs[0]
	if c.Token != 7 || c.State != StateEstablished || c.LocalAddress != netip.MustParseAddr("10.55.0.1") ||
		c.LocalPort != 40000 || c.RemotePort != 8080 || !c.Userspace || c.ServerSide {
		t.Errorf("adopted connection %+v", c)
	}
	if len(c.Subflows) != 1 || c.Subflows[0].LocalAddress != netip.MustParseAddr("10.55.1.1") ||
		c.Subflows[0].LocalID != 1 || c.Subflows[0].Interface != "" {
		t.Errorf("adopted subflows %+v", c.Subflows)
	}
	if len(c.AnnouncedAddresses) != 1 || c.AnnouncedAddresses[0].ID != 2 ||
		c.AnnouncedAddresses[0].Address != netip.MustParseAddr("10.55.2.1") || c.AnnouncedAddresses[0].Port != 40000 {
		t.Errorf("adopted announcements %+v", c.AnnouncedAddresses)
	}
	sameStrings(t, "listeners re-opened behind the announcement", h.lis.openAddrs(), []string{"10.55.2.1:40000"})

	// The ids the connection uses are claimed: the daemon gives the next
	// address another one.
	h.inspect(func() {
		if id := h.s.ids.id(netip.MustParseAddr("10.55.9.9"), 0); id == 1 || id == 2 {
			t.Errorf("new address got id %d, which the adopted connection uses", id)
		}
	})
	// Events for the adopted connection apply as for any other.
	h.send(k.CloseConnection(7)...)
	sameStrings(t, "after CLOSED", describeAll(h.take()), []string{"removed 1 token=7"})
	sameStrings(t, "listener released", h.lis.openAddrs(), nil)
}

func TestAdoptedConnectionGetsPolicySubflows(t *testing.T) {
	k := pmtest.NewFakeKernel()
	k.AddConnection(7, true, ap("10.55.0.1:40000"), ap("10.55.0.2:8080"))
	drain(k)
	h := newHarness(t, withKernel(k), withLister(), withPolicy(PolicySubflowPerInterface))
	h.sendNet(append(hostNet(3), synced)...)
	h.ready()
	h.settle()
	id, err := h.s.ConnectionByToken(bg, 7)
	if err != nil {
		t.Fatal(err)
	}
	sameStrings(t, "subflows of the adopted connection", h.subflows(id),
		[]string{"10.55.1.1->10.55.0.2:8080", "10.55.2.1->10.55.0.2:8080"})
}

func TestAdoptRaceWithEvents(t *testing.T) {
	// A connection whose CREATED is still queued when the listing has it
	// already: one object, not two.
	k := pmtest.NewFakeKernel()
	evs := k.AddConnection(7, true, ap("10.55.0.1:40000"), ap("10.55.0.2:8080"))
	drain(k)
	h := newHarness(t, withKernel(k), withLister())
	h.sendNet(append(hostNet(1), synced)...)
	h.ready()
	h.take()
	h.send(evs...) // CREATED, ESTABLISHED of the adopted connection
	ns := describeAll(h.take())
	if len(ns) != 0 {
		t.Errorf("late events of an adopted connection published %v", ns)
	}
	cs, _ := h.s.Connections(bg)
	if len(cs) != 1 || cs[0].ID != 1 {
		t.Errorf("connections %+v, want the adopted one only", cs)
	}
}

func TestResyncAfterOverflow(t *testing.T) {
	h := newHarness(t, withLister())
	h.sendNet(append(hostNet(3), synced)...)
	h.ready()
	kept := h.open(1, "10.55.0.1:40000", "10.55.0.2:8080")
	lost := h.open(2, "10.55.0.1:40001", "10.55.0.2:8080")
	h.take()

	// While the event socket overflows: connection 2 closes, 3 opens,
	// connection 1 gains a subflow: every event is lost.
	h.k.DropConnection(2)
	h.k.AddConnection(3, true, ap("10.55.0.1:40002"), ap("10.55.0.2:8080"))
	if err := h.k.CreateSubflow(1, pm.Address{ID: 4, Addr: netip.MustParseAddr("10.55.1.1")}, ap("10.55.0.2:8080")); err != nil {
		t.Fatal(err)
	}
	drain(h.k)
	h.s.Overflow()
	got := describeAll(h.take())
	want := []string{
		"subflow 1 established 4/0 10.55.1.1:1-10.55.0.2:8080 backup=false if=\"\" err=0 reset=0",
		"changed 1 [Subflows]",
		"added 3 token=3 established",
		"removed 2 token=2",
	}
	// The subflow's port is the fake kernel's ephemeral one.
	for i := range got {
		if strings.HasPrefix(got[i], "subflow 1 established 4/0 10.55.1.1:") {
			got[i] = want[0]
		}
	}
	sameStrings(t, "notifications after the resync", got, want)
	if _, err := h.s.ConnectionByToken(bg, 2); !errors.Is(err, ErrNotFound) {
		t.Errorf("closed connection %d still there: %v", lost, err)
	}
	if id, err := h.s.ConnectionByToken(bg, 1); err != nil || id != kept {
		t.Errorf("kept connection: %d, %v", id, err)
	}
	// A CLOSED that was only late, not lost, changes nothing more.
	h.send(pm.Event{Type: pm.EventClosed, Token: 2})
	if ns := h.take(); len(ns) != 0 {
		t.Errorf("late CLOSED published %v", describeAll(ns))
	}
}

func TestUnknownTokenDropsConnection(t *testing.T) {
	h := newHarness(t)
	id := h.open(1, "10.55.0.1:40000", "10.55.0.2:8080")
	h.take()
	h.k.DropConnection(1) // its CLOSED was lost
	err := h.s.CreateSubflow(bg, admin, id, SubflowRequest{
		LocalAddress: netip.MustParseAddr("10.55.1.1"), RemoteAddress: netip.MustParseAddr("10.55.0.2"), RemotePort: 8080,
	})
	wantKind(t, err, ErrNotFound)
	sameStrings(t, "after invalid token", describeAll(h.take()), []string{"removed 1 token=1"})
	if _, err := h.s.ConnectionByToken(bg, 1); !errors.Is(err, ErrNotFound) {
		t.Errorf("the connection is still there: %v", err)
	}
}

// memRecord is a Record in memory.
type memRecord struct {
	eps   []policy.Endpoint
	err   error
	saves int
}

func (r *memRecord) Load() ([]policy.Endpoint, error) { return slices.Clone(r.eps), r.err }
func (r *memRecord) Save(eps []policy.Endpoint) error {
	r.eps = slices.Clone(eps)
	r.saves++
	return nil
}

func TestRecordRestoresOrigins(t *testing.T) {
	k := pmtest.NewFakeKernel()
	add := func(a string) uint8 {
		id, err := k.AddEndpoint(pm.Address{Addr: netip.MustParseAddr(a), Flags: pm.FlagSubflow, Ifindex: 2})
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	// A previous run's policy made 10.55.0.1 and 10.55.9.1 (whose address
	// is gone since); an administrator made 192.0.2.7 through the daemon;
	// `ip mptcp endpoint add` made 192.0.2.8. 10.55.8.1 is recorded but the
	// kernel no longer has it.
	pol1, polGone, adm := add("10.55.0.1"), add("10.55.9.1"), add("192.0.2.7")
	add("192.0.2.8")
	rec := &memRecord{eps: []policy.Endpoint{
		{Address: pm.Address{ID: pol1, Addr: netip.MustParseAddr("10.55.0.1")}, Origin: policy.OriginPolicy},
		{Address: pm.Address{ID: polGone, Addr: netip.MustParseAddr("10.55.9.1")}, Origin: policy.OriginPolicy},
		{Address: pm.Address{ID: adm, Addr: netip.MustParseAddr("192.0.2.7")}, Origin: policy.OriginAdmin},
		{Address: pm.Address{ID: 42, Addr: netip.MustParseAddr("10.55.8.1")}, Origin: policy.OriginPolicy},
	}}
	h := newHarness(t, withKernel(k), withRecord(rec), withPM("kernel"), withPolicy(PolicyEndpoints))
	h.sendNet(netLink(0, true), netAddr(NetAddressAdded, 0, false), synced)
	h.ready()
	sameStrings(t, "endpoints", h.endpoints(), []string{
		"10.55.0.1 [subflow] c0 policy",
		"192.0.2.7 [subflow] c0 admin",
		"192.0.2.8 [subflow] c0 external",
	})
	var origins []string
	for _, e := range rec.eps {
		origins = append(origins, e.Addr.String()+" "+string(e.Origin))
	}
	sameStrings(t, "the record", origins, []string{"10.55.0.1 policy", "192.0.2.7 admin"})
	// The start names another program's endpoint, not one it made itself
	// (found under systemd after kill -9).
	for _, line := range strings.Split(h.log.String(), "\n") {
		if strings.Contains(line, "made by another program") && !strings.Contains(line, "addr=192.0.2.8") {
			t.Errorf("an endpoint of the daemon's record called another program's: %s", line)
		}
	}
	if !strings.Contains(h.log.String(), "made by another program") {
		t.Errorf("192.0.2.8 (ip mptcp's) not reported at the start:\n%s", h.log)
	}
}

func TestRecordNotTrusted(t *testing.T) {
	k := pmtest.NewFakeKernel()
	if _, err := k.AddEndpoint(pm.Address{Addr: netip.MustParseAddr("10.55.9.1"), Flags: pm.FlagSubflow}); err != nil {
		t.Fatal(err)
	}
	rec := &memRecord{err: errors.New("record x: empty: moved to x.bad")}
	h := newHarness(t, withKernel(k), withRecord(rec), withPM("kernel"), withPolicy(PolicyEndpoints))
	h.sendNet(synced)
	h.ready()
	sameStrings(t, "endpoints", h.endpoints(), []string{"10.55.9.1 [subflow]  external"})
	if !strings.Contains(h.log.String(), "moved to x.bad") {
		t.Errorf("the log does not say why the record is not used:\n%s", h.log)
	}
}

func TestFileRecord(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "endpoints.json")
	r := &FileRecord{Path: p, Boot: "b1", NetNS: "net:[1]"}
	if eps, err := r.Load(); err != nil || eps != nil {
		t.Fatalf("no file: %v, %v", eps, err)
	}
	want := []policy.Endpoint{
		{Address: pm.Address{ID: 3, Addr: netip.MustParseAddr("10.0.0.1"), Flags: pm.FlagSubflow | pm.FlagBackup, Ifindex: 2}, Origin: policy.OriginPolicy},
		{Address: pm.Address{ID: 4, Addr: netip.MustParseAddr("fd00::1"), Port: 80, Flags: pm.FlagSignal}, Origin: policy.OriginController},
	}
	if err := r.Save(want); err != nil {
		t.Fatal(err)
	}
	got, err := r.Load()
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".*")); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}

	for _, tc := range []struct {
		name string
		data string
		why  string
	}{
		{"empty", "", "empty"},
		{"corrupt", `{"version":1,"boot_id":"b1",`, "unreadable"},
		{"other boot", `{"version":1,"boot_id":"b0","netns":"net:[1]","endpoints":[]}`, "another boot"},
		{"other namespace", `{"version":1,"boot_id":"b1","netns":"net:[2]","endpoints":[]}`, "another network namespace"},
		{"other version", `{"version":2,"boot_id":"b1","netns":"net:[1]","endpoints":[]}`, "version 2"},
		{"bad flag", `{"version":1,"boot_id":"b1","netns":"net:[1]","endpoints":[{"id":1,"addr":"10.0.0.1","flags":"turbo","origin":"policy"}]}`, "turbo"},
		{"external origin", `{"version":1,"boot_id":"b1","netns":"net:[1]","endpoints":[{"id":1,"addr":"10.0.0.1","flags":"","origin":"external"}]}`, "origin"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(p, []byte(tc.data), 0o644); err != nil {
				t.Fatal(err)
			}
			eps, err := r.Load()
			if !errors.Is(err, ErrRecordSetAside) || !strings.Contains(err.Error(), tc.why) || eps != nil {
				t.Fatalf("Load = %v, %v; want set aside because %q", eps, err, tc.why)
			}
			if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the record is still in place: %v", err)
			}
			if b, err := os.ReadFile(p + ".bad"); err != nil || string(b) != tc.data {
				t.Errorf("set-aside copy: %q, %v", b, err)
			}
		})
	}
}

func TestNetMonitorEndIsFatal(t *testing.T) {
	s := New(DefaultConfig(), Deps{Kernel: pmtest.NewFakeKernel(), PathManager: func() (string, error) { return "kernel", nil }})
	net := make(chan NetEvent)
	close(net)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := s.Run(ctx, make(chan pm.Event), net)
	if err == nil || !strings.Contains(err.Error(), "network monitor ended") {
		t.Fatalf("Run = %v, want the network monitor's end", err)
	}
}

// TestStaleSubflowForgotten: a subflow the service believes in but the
// kernel no longer has (its SUB_CLOSED was missed) is forgotten when the
// kernel answers the policy's DestroySubflow with "subflow not found".
func TestStaleSubflowForgotten(t *testing.T) {
	h := newHarness(t, withPolicy(PolicySubflowPerInterface))
	h.sendNet(append(hostNet(2), synced)...)
	id := h.open(1, "10.55.0.1:40000", "10.55.0.2:8080")
	h.settle()
	// A subflow from an address the host does not have: the policy closes
	// it, and the kernel does not know it.
	h.send(pm.Event{Type: pm.EventSubEstablished, Token: 1, LocalID: 9,
		LocalAddr: netip.MustParseAddr("10.55.9.1"), LocalPort: 41000,
		RemoteAddr: netip.MustParseAddr("10.55.0.2"), RemotePort: 8080})
	h.settle()
	sameStrings(t, "subflows", h.subflows(id), []string{"10.55.1.1->10.55.0.2:8080"})
}
