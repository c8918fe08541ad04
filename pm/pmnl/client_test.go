package pmnl

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sync"
	"syscall"
	"testing"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/genetlink/genltest"
	"github.com/mdlayher/netlink"
	"github.com/mdlayher/netlink/nltest"
	"golang.org/x/sys/unix"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
)

// testFamily is the fake mptcp_pm family the unit tests serve.
var testFamily = genetlink.Family{
	ID:      0x25,
	Name:    FamilyName,
	Version: 1,
	Groups: []genetlink.MulticastGroup{
		{ID: 7, Name: GroupCmds},
		{ID: 9, Name: GroupEvents},
	},
}

// Hand-made attribute bytes, independent of the encoder under test.

// nla returns one netlink attribute: native-endian length and type, the
// payload, padding to 4 bytes.
func nla(typ uint16, payload ...[]byte) []byte {
	p := bytes.Join(payload, nil)
	b := binary.NativeEndian.AppendUint16(nil, uint16(4+len(p)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, p...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// nest returns a nested attribute with NLA_F_NESTED set.
func nest(typ uint16, attrs ...[]byte) []byte { return nla(typ|0x8000, attrs...) }

func u8(v uint8) []byte   { return []byte{v} }
func u16(v uint16) []byte { return binary.NativeEndian.AppendUint16(nil, v) }
func u32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }
func s32(v int32) []byte  { return binary.NativeEndian.AppendUint32(nil, uint32(v)) }
func cat(b ...[]byte) []byte {
	return bytes.Join(b, nil)
}

var (
	fam4 = nla(1, u16(2))  // FAMILY AF_INET
	fam6 = nla(1, u16(10)) // FAMILY AF_INET6
)

func addr4(s string) []byte {
	a := netip.MustParseAddr(s).As4()
	return nla(3, a[:])
}

func addr6(s string) []byte {
	a := netip.MustParseAddr(s).As16()
	return nla(4, a[:])
}

// request is one request the fake kernel received.
type request struct {
	typ     netlink.HeaderType
	flags   netlink.HeaderFlags
	cmd     uint8
	version uint8
	data    []byte
}

// fakeKernel records the requests to the mptcp_pm family and answers them
// with reply. When reply is nil or returns no messages, a dump gets an empty
// answer and any other request one empty message standing for the ack.
type fakeKernel struct {
	mu    sync.Mutex
	reqs  []request
	reply func(req request) ([]genetlink.Message, error)
}

func (k *fakeKernel) serve(greq genetlink.Message, nreq netlink.Message) ([]genetlink.Message, error) {
	r := request{
		typ:     nreq.Header.Type,
		flags:   nreq.Header.Flags,
		cmd:     greq.Header.Command,
		version: greq.Header.Version,
		data:    bytes.Clone(greq.Data),
	}
	k.mu.Lock()
	k.reqs = append(k.reqs, r)
	reply := k.reply
	k.mu.Unlock()
	var msgs []genetlink.Message
	if reply != nil {
		var err error
		if msgs, err = reply(r); err != nil {
			return nil, err
		}
	}
	switch {
	case len(msgs) > 0:
		return msgs, nil
	case r.flags&netlink.Dump == netlink.Dump:
		return nil, io.EOF // genltest: no messages, no error
	default:
		return []genetlink.Message{{}}, nil
	}
}

func (k *fakeKernel) requests() []request {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]request(nil), k.reqs...)
}

// newTestClient returns a Client talking to k through genltest.
func newTestClient(t *testing.T, k *fakeKernel) *Client {
	t.Helper()
	c, err := newClient(genltest.Dial(genltest.ServeFamily(testFamily, k.serve)))
	if err != nil {
		t.Fatalf("newClient: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func msg(data ...[]byte) genetlink.Message {
	return genetlink.Message{Header: genetlink.Header{Command: cmdGetAddr, Version: 1}, Data: cat(data...)}
}

const (
	reqAck  = netlink.Request | netlink.Acknowledge
	reqDump = netlink.Request | netlink.Dump
)

func TestCommandRequests(t *testing.T) {
	const tok = 0xdeadbeef
	tokAttr := nla(4, u32(tok))
	tests := []struct {
		name  string
		call  func(c *Client) error
		cmd   uint8
		flags netlink.HeaderFlags
		attrs []byte
	}{
		{
			name: "add endpoint with id",
			call: func(c *Client) error {
				id, err := c.AddEndpoint(pm.Address{ID: 5, Addr: netip.MustParseAddr("10.0.0.1"), Port: 8080, Flags: pm.FlagSignal | pm.FlagBackup, Ifindex: 3})
				if err == nil && id != 5 {
					return fmt.Errorf("id %d, want 5", id)
				}
				return err
			},
			cmd: 1, flags: reqAck,
			attrs: nest(1, fam4, addr4("10.0.0.1"), nla(2, u8(5)), nla(5, u16(8080)), nla(6, u32(5)), nla(7, s32(3))),
		},
		{
			name: "add endpoint flags zero are sent",
			call: func(c *Client) error {
				_, err := c.AddEndpoint(pm.Address{ID: 200, Addr: netip.MustParseAddr("2001:db8::1")})
				return err
			},
			cmd: 1, flags: reqAck,
			attrs: nest(1, fam6, addr6("2001:db8::1"), nla(2, u8(200)), nla(6, u32(0))),
		},
		{
			name:  "delete endpoint",
			call:  func(c *Client) error { return c.DeleteEndpoint(7) },
			cmd:   2,
			flags: reqAck,
			attrs: nest(1, nla(2, u8(7))),
		},
		{
			name: "get endpoint",
			call: func(c *Client) error {
				_, err := c.GetEndpoint(7)
				return err
			},
			cmd: 3, flags: netlink.Request,
			attrs: nest(1, nla(2, u8(7))),
		},
		{
			name: "list endpoints",
			call: func(c *Client) error {
				_, err := c.Endpoints()
				return err
			},
			cmd: 3, flags: reqDump,
		},
		{
			name:  "flush endpoints",
			call:  func(c *Client) error { return c.FlushEndpoints() },
			cmd:   4,
			flags: reqAck,
		},
		{
			name:  "set limits",
			call:  func(c *Client) error { return c.SetLimits(pm.Limits{Subflows: 4, AddAddrAccepted: 2}) },
			cmd:   5,
			flags: reqAck,
			attrs: cat(nla(2, u32(2)), nla(3, u32(4))),
		},
		{
			name: "get limits",
			call: func(c *Client) error {
				_, err := c.Limits()
				return err
			},
			cmd: 6, flags: netlink.Request,
		},
		{
			name:  "set endpoint flags",
			call:  func(c *Client) error { return c.SetEndpointFlags(7, pm.FlagBackup|pm.FlagFullmesh) },
			cmd:   7,
			flags: reqAck,
			attrs: nest(1, nla(2, u8(7)), nla(6, u32(12))),
		},
		{
			name:  "clear endpoint flags",
			call:  func(c *Client) error { return c.SetEndpointFlags(7, 0) },
			cmd:   7,
			flags: reqAck,
			attrs: nest(1, nla(2, u8(7)), nla(6, u32(0))),
		},
		{
			name: "announce sets signal",
			call: func(c *Client) error {
				return c.Announce(tok, pm.Address{ID: 3, Addr: netip.MustParseAddr("10.0.0.2")})
			},
			cmd: 8, flags: reqAck,
			attrs: cat(tokAttr, nest(1, fam4, addr4("10.0.0.2"), nla(2, u8(3)), nla(6, u32(1)))),
		},
		{
			name: "announce unmaps, port and interface",
			call: func(c *Client) error {
				return c.Announce(tok, pm.Address{ID: 4, Addr: netip.MustParseAddr("::ffff:10.0.0.3"), Port: 443, Flags: pm.FlagBackup, Ifindex: 9})
			},
			cmd: 8, flags: reqAck,
			attrs: cat(tokAttr, nest(1, fam4, addr4("10.0.0.3"), nla(2, u8(4)), nla(5, u16(443)), nla(6, u32(5)), nla(7, s32(9)))),
		},
		{
			name:  "remove",
			call:  func(c *Client) error { return c.Remove(tok, 3) },
			cmd:   9,
			flags: reqAck,
			attrs: cat(tokAttr, nla(5, u8(3))),
		},
		{
			name: "remove id 0",
			call: func(c *Client) error { return c.Remove(tok, 0) },
			cmd:  9, flags: reqAck,
			attrs: cat(tokAttr, nla(5, u8(0))),
		},
		{
			name: "create subflow",
			call: func(c *Client) error {
				return c.CreateSubflow(tok, pm.Address{ID: 4, Addr: netip.MustParseAddr("10.0.1.1"), Flags: pm.FlagBackup, Ifindex: 2},
					netip.MustParseAddrPort("[::ffff:10.0.0.2]:80"))
			},
			cmd: 10, flags: reqAck,
			attrs: cat(tokAttr,
				nest(1, fam4, addr4("10.0.1.1"), nla(2, u8(4)), nla(6, u32(4)), nla(7, s32(2))),
				nest(6, fam4, addr4("10.0.0.2"), nla(5, u16(80)))),
		},
		{
			name: "create subflow v6 without id",
			call: func(c *Client) error {
				return c.CreateSubflow(tok, pm.Address{Addr: netip.MustParseAddr("fd00::1")}, netip.MustParseAddrPort("[fd00::2]:5000"))
			},
			cmd: 10, flags: reqAck,
			attrs: cat(tokAttr, nest(1, fam6, addr6("fd00::1")), nest(6, fam6, addr6("fd00::2"), nla(5, u16(5000)))),
		},
		{
			name: "destroy subflow",
			call: func(c *Client) error {
				return c.DestroySubflow(tok, netip.MustParseAddrPort("10.0.1.1:1234"), netip.MustParseAddrPort("10.0.0.2:80"))
			},
			cmd: 11, flags: reqAck,
			attrs: cat(tokAttr, nest(1, fam4, addr4("10.0.1.1"), nla(5, u16(1234))), nest(6, fam4, addr4("10.0.0.2"), nla(5, u16(80)))),
		},
		{
			name: "set subflow flags",
			call: func(c *Client) error {
				return c.SetSubflowFlags(tok, netip.MustParseAddrPort("10.0.1.1:0"), netip.MustParseAddrPort("10.0.0.2:80"), pm.FlagBackup)
			},
			cmd: 7, flags: reqAck,
			attrs: cat(tokAttr, nest(1, fam4, addr4("10.0.1.1"), nla(6, u32(4))), nest(6, fam4, addr4("10.0.0.2"), nla(5, u16(80)))),
		},
		{
			name: "clear subflow backup",
			call: func(c *Client) error {
				return c.SetSubflowFlags(tok, netip.MustParseAddrPort("[fd00::1]:999"), netip.MustParseAddrPort("[fd00::2]:80"), 0)
			},
			cmd: 7, flags: reqAck,
			attrs: cat(tokAttr, nest(1, fam6, addr6("fd00::1"), nla(5, u16(999)), nla(6, u32(0))), nest(6, fam6, addr6("fd00::2"), nla(5, u16(80)))),
		},
		{
			name: "connection addresses",
			call: func(c *Client) error {
				_, err := c.Addresses(tok)
				return err
			},
			cmd: 3, flags: reqDump,
			attrs: tokAttr,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := &fakeKernel{reply: func(r request) ([]genetlink.Message, error) {
				switch {
				case r.cmd == cmdGetAddr && r.flags&netlink.Dump == 0:
					return []genetlink.Message{msg(nest(1, fam4, addr4("10.0.0.1"), nla(2, u8(7))))}, nil
				case r.cmd == cmdGetLimits:
					return []genetlink.Message{msg(nla(3, u32(2)))}, nil
				}
				return nil, nil
			}}
			c := newTestClient(t, k)
			if err := tt.call(c); err != nil {
				t.Fatalf("call: %v", err)
			}
			reqs := k.requests()
			if len(reqs) != 1 {
				t.Fatalf("%d requests, want 1", len(reqs))
			}
			r := reqs[0]
			if r.typ != netlink.HeaderType(testFamily.ID) {
				t.Errorf("header type %#x, want the family id %#x", r.typ, testFamily.ID)
			}
			if r.cmd != tt.cmd {
				t.Errorf("command %d, want %d", r.cmd, tt.cmd)
			}
			if r.version != testFamily.Version {
				t.Errorf("version %d, want %d", r.version, testFamily.Version)
			}
			if r.flags != tt.flags {
				t.Errorf("flags %#x, want %#x", r.flags, tt.flags)
			}
			if !bytes.Equal(r.data, tt.attrs) {
				t.Errorf("attributes\n got %x\nwant %x", r.data, tt.attrs)
			}
		})
	}
}

// TestWireByteOrder pins the wire bytes of one request on a little-endian
// machine: ADDR4 in network order, PORT in host order, NLA_F_NESTED set.
func TestWireByteOrder(t *testing.T) {
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		t.Skip("skipped: literal bytes are written for a little-endian machine")
	}
	k := &fakeKernel{}
	c := newTestClient(t, k)
	if err := c.DestroySubflow(0x01020304, netip.MustParseAddrPort("10.1.2.3:8080"), netip.MustParseAddrPort("10.4.5.6:443")); err != nil {
		t.Fatal(err)
	}
	want := []byte{
		8, 0, 4, 0, 0x04, 0x03, 0x02, 0x01, // TOKEN u32
		28, 0, 1, 0x80, // ADDR, nested
		6, 0, 1, 0, 2, 0, 0, 0, // FAMILY AF_INET
		8, 0, 3, 0, 10, 1, 2, 3, // ADDR4, network order
		6, 0, 5, 0, 0x90, 0x1f, 0, 0, // PORT 8080, host order
		28, 0, 6, 0x80, // ADDR_REMOTE, nested
		6, 0, 1, 0, 2, 0, 0, 0,
		8, 0, 3, 0, 10, 4, 5, 6,
		6, 0, 5, 0, 0xbb, 0x01, 0, 0, // PORT 443
	}
	if got := k.requests()[0].data; !bytes.Equal(got, want) {
		t.Errorf("wire bytes\n got %x\nwant %x", got, want)
	}
}

func TestDialResolvesFamily(t *testing.T) {
	c := newTestClient(t, &fakeKernel{})
	if c.family != testFamily.ID {
		t.Errorf("family id %#x, want %#x", c.family, testFamily.ID)
	}
	for _, g := range testFamily.Groups {
		if id, ok := c.GroupID(g.Name); !ok || id != g.ID {
			t.Errorf("GroupID(%q) = %d, %v; want %d, true", g.Name, id, ok, g.ID)
		}
	}
	if id, ok := c.GroupID("nope"); ok {
		t.Errorf("GroupID(nope) = %d, true; want false", id)
	}
}

func TestDialFamilyMissing(t *testing.T) {
	conn := genltest.Dial(func(genetlink.Message, netlink.Message) ([]genetlink.Message, error) {
		return nil, genltest.Error(int(unix.ENOENT))
	})
	defer conn.Close()
	_, err := newClient(conn)
	if !errors.Is(err, ErrFamilyNotFound) {
		t.Fatalf("err = %v, want ErrFamilyNotFound", err)
	}
}

func TestGetEndpointDecodes(t *testing.T) {
	k := &fakeKernel{reply: func(request) ([]genetlink.Message, error) {
		return []genetlink.Message{msg(
			nla(99, u32(1)), // unknown command attribute
			nest(1, fam6, addr6("2001:db8::7"), nla(2, u8(7)), nla(5, u16(8443)),
				nla(6, u32(uint32(pm.FlagSignal|pm.FlagBackup))), nla(7, s32(4)), nla(42, []byte("later"))),
		)}, nil
	}}
	c := newTestClient(t, k)
	got, err := c.GetEndpoint(7)
	if err != nil {
		t.Fatal(err)
	}
	want := pm.Address{ID: 7, Addr: netip.MustParseAddr("2001:db8::7"), Port: 8443, Flags: pm.FlagSignal | pm.FlagBackup, Ifindex: 4}
	if got != want {
		t.Errorf("got %+v, want %+v", got, want)
	}
}

func TestEndpointsDecodes(t *testing.T) {
	k := &fakeKernel{reply: func(request) ([]genetlink.Message, error) {
		return []genetlink.Message{
			msg(nest(1, fam4, addr4("10.0.0.1"), nla(2, u8(1)), nla(6, u32(2)))),
			msg(nest(1, fam6, addr6("fd00::1"), nla(2, u8(2)), nla(6, u32(8)), nla(7, s32(5)))),
		}, nil
	}}
	c := newTestClient(t, k)
	got, err := c.Endpoints()
	if err != nil {
		t.Fatal(err)
	}
	want := []pm.Address{
		{ID: 1, Addr: netip.MustParseAddr("10.0.0.1"), Flags: pm.FlagSubflow},
		{ID: 2, Addr: netip.MustParseAddr("fd00::1"), Flags: pm.FlagFullmesh, Ifindex: 5},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d endpoints %+v, want %+v", len(got), got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("endpoint %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestEmptyDump(t *testing.T) {
	c := newTestClient(t, &fakeKernel{})
	got, err := c.Addresses(1)
	if err != nil || len(got) != 0 {
		t.Errorf("Addresses = %v, %v; want none, nil", got, err)
	}
}

func TestLimitsDecodes(t *testing.T) {
	k := &fakeKernel{reply: func(request) ([]genetlink.Message, error) {
		return []genetlink.Message{msg(nla(2, u32(3)), nla(3, u32(5)), nla(77, u8(1)))}, nil
	}}
	c := newTestClient(t, k)
	got, err := c.Limits()
	if err != nil {
		t.Fatal(err)
	}
	if want := (pm.Limits{Subflows: 5, AddAddrAccepted: 3}); got != want {
		t.Errorf("got %+v, want %+v", got, want)
	}
}

func TestAddEndpointFindsKernelID(t *testing.T) {
	tests := []struct {
		name    string
		add     pm.Address
		dump    [][]byte
		wantID  uint8
		wantErr error
	}{
		{
			name: "by address",
			add:  pm.Address{Addr: netip.MustParseAddr("::ffff:10.0.0.2"), Flags: pm.FlagSubflow},
			dump: [][]byte{
				nest(1, fam4, addr4("10.0.0.1"), nla(2, u8(1))),
				nest(1, fam4, addr4("10.0.0.2"), nla(2, u8(9))),
			},
			wantID: 9,
		},
		{
			name: "by address and port",
			add:  pm.Address{Addr: netip.MustParseAddr("10.0.0.2"), Port: 8080, Flags: pm.FlagSignal},
			dump: [][]byte{
				nest(1, fam4, addr4("10.0.0.2"), nla(2, u8(3)), nla(5, u16(80))),
				nest(1, fam4, addr4("10.0.0.2"), nla(2, u8(4)), nla(5, u16(8080))),
			},
			wantID: 4,
		},
		{
			name: "port dropped by the kernel",
			add:  pm.Address{Addr: netip.MustParseAddr("fd00::9"), Port: 8080, Flags: pm.FlagSubflow},
			dump: [][]byte{
				nest(1, fam6, addr6("fd00::9"), nla(2, u8(6))),
			},
			wantID: 6,
		},
		{
			name:    "gone before the dump",
			add:     pm.Address{Addr: netip.MustParseAddr("10.0.0.5")},
			dump:    [][]byte{nest(1, fam4, addr4("10.0.0.1"), nla(2, u8(1)))},
			wantErr: pm.ErrNotFound,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := &fakeKernel{reply: func(r request) ([]genetlink.Message, error) {
				if r.cmd != cmdGetAddr {
					return nil, nil
				}
				var ms []genetlink.Message
				for _, d := range tt.dump {
					ms = append(ms, msg(d))
				}
				return ms, nil
			}}
			c := newTestClient(t, k)
			id, err := c.AddEndpoint(tt.add)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
			} else if err != nil || id != tt.wantID {
				t.Fatalf("AddEndpoint = %d, %v; want %d", id, err, tt.wantID)
			}
			reqs := k.requests()
			if len(reqs) != 2 || reqs[0].cmd != cmdAddAddr || reqs[1].cmd != cmdGetAddr || reqs[1].flags != reqDump {
				t.Errorf("requests %+v, want ADD_ADDR then a GET_ADDR dump", reqs)
			}
		})
	}
}

func TestMalformedReplies(t *testing.T) {
	tests := []struct {
		name string
		data []byte
	}{
		{"no address attribute", nla(3, u32(1))},
		{"truncated attribute", []byte{8, 0, 1, 0x80, 6}},
		{"ADDR4 of 3 bytes", nest(1, fam4, nla(3, []byte{1, 2, 3}), nla(2, u8(1)))},
		{"ADDR6 of 4 bytes", nest(1, fam6, nla(4, []byte{1, 2, 3, 4}))},
		{"family v4 with ADDR6", nest(1, fam4, addr6("fd00::1"))},
		{"two addresses, no family", nest(1, addr4("10.0.0.1"), addr6("fd00::1"))},
		{"ID of 4 bytes", nest(1, fam4, addr4("10.0.0.1"), nla(2, u32(1)))},
		{"PORT of 1 byte", nest(1, fam4, addr4("10.0.0.1"), nla(5, u8(1)))},
		{"nested length past end", nest(1, []byte{40, 0, 1, 0, 2, 0})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := &fakeKernel{reply: func(request) ([]genetlink.Message, error) {
				return []genetlink.Message{msg(tt.data)}, nil
			}}
			c := newTestClient(t, k)
			if a, err := c.GetEndpoint(1); !errors.Is(err, pm.ErrInvalid) {
				t.Errorf("GetEndpoint = %+v, %v; want an error wrapping ErrInvalid", a, err)
			}
			if as, err := c.Endpoints(); !errors.Is(err, pm.ErrInvalid) {
				t.Errorf("Endpoints = %+v, %v; want an error wrapping ErrInvalid", as, err)
			}
		})
	}
	t.Run("limits", func(t *testing.T) {
		k := &fakeKernel{reply: func(request) ([]genetlink.Message, error) {
			return []genetlink.Message{msg(nla(3, u16(1)))}, nil
		}}
		if l, err := newTestClient(t, k).Limits(); !errors.Is(err, pm.ErrInvalid) {
			t.Errorf("Limits = %+v, %v; want an error wrapping ErrInvalid", l, err)
		}
	})
}

// FuzzDecodeAddress checks that the decoder never panics and that every
// error it returns wraps pm.ErrInvalid.
func FuzzDecodeAddress(f *testing.F) {
	f.Add(cat(fam4, addr4("10.0.0.1"), nla(2, u8(1)), nla(5, u16(80)), nla(6, u32(3)), nla(7, s32(2))))
	f.Add(cat(fam6, addr6("fd00::1")))
	f.Add([]byte{4, 0, 1, 0})
	f.Add([]byte{5, 0, 3, 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, err := decodeAddress(b); err != nil && !errors.Is(err, pm.ErrInvalid) {
			t.Errorf("error %v does not wrap ErrInvalid", err)
		}
		if _, err := decodeAddressMessage(b); err != nil && !errors.Is(err, pm.ErrInvalid) {
			t.Errorf("error %v does not wrap ErrInvalid", err)
		}
		if _, err := decodeLimits(b); err != nil && !errors.Is(err, pm.ErrInvalid) {
			t.Errorf("error %v does not wrap ErrInvalid", err)
		}
	})
}

func TestLocalValidationSendsNothing(t *testing.T) {
	v4 := netip.MustParseAddr("10.0.0.1")
	v6 := netip.MustParseAddr("fd00::1")
	tests := []struct {
		name string
		call func(c *Client) error
	}{
		{"announce id 0", func(c *Client) error { return c.Announce(1, pm.Address{Addr: v4}) }},
		{"announce without address", func(c *Client) error { return c.Announce(1, pm.Address{ID: 1}) }},
		{"add endpoint without address", func(c *Client) error {
			_, err := c.AddEndpoint(pm.Address{ID: 1})
			return err
		}},
		{"create subflow without local", func(c *Client) error {
			return c.CreateSubflow(1, pm.Address{ID: 1}, netip.AddrPortFrom(v4, 80))
		}},
		{"create subflow without remote", func(c *Client) error {
			return c.CreateSubflow(1, pm.Address{Addr: v4}, netip.AddrPort{})
		}},
		{"create subflow v4 to v6", func(c *Client) error {
			return c.CreateSubflow(1, pm.Address{Addr: v4}, netip.AddrPortFrom(v6, 80))
		}},
		{"create subflow v6 to mapped v4", func(c *Client) error {
			return c.CreateSubflow(1, pm.Address{Addr: v6}, netip.MustParseAddrPort("[::ffff:10.0.0.2]:80"))
		}},
		{"destroy subflow v6 to v4", func(c *Client) error {
			return c.DestroySubflow(1, netip.AddrPortFrom(v6, 1), netip.AddrPortFrom(v4, 80))
		}},
		{"destroy subflow without local", func(c *Client) error {
			return c.DestroySubflow(1, netip.AddrPort{}, netip.AddrPortFrom(v4, 80))
		}},
		{"set subflow flags v4 to v6", func(c *Client) error {
			return c.SetSubflowFlags(1, netip.AddrPortFrom(v4, 1), netip.AddrPortFrom(v6, 80), pm.FlagBackup)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := &fakeKernel{}
			c := newTestClient(t, k)
			if err := tt.call(c); !errors.Is(err, pm.ErrInvalid) {
				t.Errorf("err = %v, want an error wrapping ErrInvalid", err)
			}
			if reqs := k.requests(); len(reqs) != 0 {
				t.Errorf("%d requests sent, want none", len(reqs))
			}
		})
	}
}

// extackConn returns a genetlink.Conn whose every request is refused with
// errno and, when msg is not "", the extended-acknowledgement message msg,
// laid out as the kernel does (error, the echoed request, then the TLVs).
func extackConn(errno syscall.Errno, msg string) *genetlink.Conn {
	return genetlink.NewConn(nltest.Dial(func(reqs []netlink.Message) ([]netlink.Message, error) {
		req := reqs[0]
		echo, err := req.MarshalBinary()
		if err != nil {
			return nil, err
		}
		data := binary.NativeEndian.AppendUint32(nil, uint32(-int32(errno)))
		data = append(data, echo...)
		flags := netlink.HeaderFlags(0)
		if msg != "" {
			flags = netlink.AcknowledgeTLVs
			data = append(data, nla(1, append([]byte(msg), 0))...)
		}
		return []netlink.Message{{
			Header: netlink.Header{Type: netlink.Error, Flags: flags, Sequence: req.Header.Sequence, PID: req.Header.PID},
			Data:   data,
		}}, nil
	}))
}

func TestKernelRefusals(t *testing.T) {
	sentinels := []error{pm.ErrNotFound, pm.ErrPermission, pm.ErrNotSupported, pm.ErrExists, pm.ErrInvalid, pm.ErrBusy}
	tests := []struct {
		errno syscall.Errno
		msg   string
		want  error // nil: no sentinel
		text  string
	}{
		{syscall.ENOENT, "", pm.ErrNotFound, "remove: no such file or directory"},
		{syscall.ESRCH, "", pm.ErrNotFound, "remove: no such process"},
		{syscall.EPERM, "", pm.ErrPermission, "remove: operation not permitted"},
		{syscall.EACCES, "", pm.ErrPermission, "remove: permission denied"},
		{syscall.EOPNOTSUPP, "", pm.ErrNotSupported, "remove: operation not supported"},
		{524, "", pm.ErrNotSupported, "remove: operation not supported"},
		{syscall.EEXIST, "too many addresses or duplicate one: -17", pm.ErrExists, "remove: too many addresses or duplicate one: -17 (file exists)"},
		{syscall.EBUSY, "too many addresses or duplicate one: -16", pm.ErrBusy, "remove: too many addresses or duplicate one: -16 (device or resource busy)"},
		{syscall.EINVAL, "", pm.ErrInvalid, "remove: invalid argument"},
		{syscall.EINVAL, "invalid addr id", pm.ErrInvalid, "remove: invalid addr id (invalid argument)"},
		{syscall.EINVAL, "did not match address and id", pm.ErrInvalid, "remove: did not match address and id (invalid argument)"},
		{syscall.EINVAL, "invalid token", pm.ErrNotFound, "remove: invalid token (invalid argument)"},
		{syscall.EINVAL, "address not found", pm.ErrNotFound, "remove: address not found (invalid argument)"},
		{syscall.EINVAL, "address with id 9 not found", pm.ErrNotFound, "remove: address with id 9 not found (invalid argument)"},
		{syscall.EINVAL, "subflow not found", pm.ErrNotFound, "remove: subflow not found (invalid argument)"},
		{syscall.EINVAL, "userspace PM not selected", pm.ErrNotSupported, "remove: userspace PM not selected (invalid argument)"},
		{syscall.ENOTCONN, "connect error: -107", nil, "remove: connect error: -107 (transport endpoint is not connected)"},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%d %s", tt.errno, tt.msg), func(t *testing.T) {
			c := newTestClient(t, &fakeKernel{})
			c.conn.Close()
			c.conn = extackConn(tt.errno, tt.msg)
			err := c.Remove(1, 2)
			var pe *pm.Error
			if !errors.As(err, &pe) {
				t.Fatalf("err = %v (%T), want a *pm.Error", err, err)
			}
			if pe.Op != "remove" || pe.Errno != tt.errno || pe.Message != tt.msg {
				t.Errorf("Error = %+v, want op remove, errno %d, message %q", *pe, tt.errno, tt.msg)
			}
			if pe.Error() != tt.text {
				t.Errorf("Error() = %q, want %q", pe.Error(), tt.text)
			}
			if want := "pm: " + tt.text; err.Error() != want {
				t.Errorf("err.Error() = %q, want %q", err.Error(), want)
			}
			if !errors.Is(err, tt.errno) {
				t.Errorf("errors.Is(err, errno %d) = false", tt.errno)
			}
			for _, s := range sentinels {
				if got := errors.Is(err, s); got != (s == tt.want) {
					t.Errorf("errors.Is(err, %v) = %v", s, got)
				}
			}
		})
	}
}

func TestErrnoWithoutExtack(t *testing.T) {
	k := &fakeKernel{reply: func(request) ([]genetlink.Message, error) {
		return nil, genltest.Error(int(unix.EPERM))
	}}
	c := newTestClient(t, k)
	err := c.FlushEndpoints()
	var pe *pm.Error
	if !errors.As(err, &pe) || pe.Op != "flush endpoints" || pe.Errno != syscall.EPERM || pe.Message != "" {
		t.Fatalf("err = %#v, want a *pm.Error for EPERM", err)
	}
	if !errors.Is(err, pm.ErrPermission) {
		t.Errorf("errors.Is(err, ErrPermission) = false for %v", err)
	}
}

func TestTransportErrorIsNotAKernelError(t *testing.T) {
	boom := errors.New("boom")
	k := &fakeKernel{reply: func(request) ([]genetlink.Message, error) { return nil, boom }}
	c := newTestClient(t, k)
	err := c.SetLimits(pm.Limits{})
	var pe *pm.Error
	if errors.As(err, &pe) {
		t.Errorf("err = %v is a *pm.Error, want a plain wrapped error", err)
	}
	if !errors.Is(err, boom) {
		t.Errorf("err = %v does not wrap the transport error", err)
	}
}

func TestConcurrentCommands(t *testing.T) {
	k := &fakeKernel{reply: func(r request) ([]genetlink.Message, error) {
		// Echo the request's token back as the subflows limit, so a reply
		// given to the wrong caller shows.
		return []genetlink.Message{msg(nla(3, r.data[4:8]))}, nil
	}}
	c := newTestClient(t, k)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 50 {
				want := uint32(g*1000 + i)
				msgs, err := c.execute("echo", cmdGetLimits, 0, func(ae *netlink.AttributeEncoder) { ae.Uint32(pmAttrToken, want) })
				if err != nil {
					t.Error(err)
					return
				}
				l, err := decodeLimits(msgs[0].Data)
				if err != nil || l.Subflows != want {
					t.Errorf("reply %+v, %v; want subflows %d", l, err, want)
					return
				}
			}
		})
	}
	wg.Wait()
}
