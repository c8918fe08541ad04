package policy

import (
	"net/netip"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
)

// NameSubflowPerInterface is the name of the one-subflow-per-interface
// policy.
const NameSubflowPerInterface = "subflow-per-interface"

func init() { Register(NameSubflowPerInterface, func() Policy { return perInterface{} }) }

// perInterface is mptcpd's "sspi", working, for the userspace path manager.
//
// On an established client-side connection it wants one subflow from every
// usable interface other than the initial subflow's (the interface of the
// address c.Local; if that address is not usable, the initial subflow's
// Interface), to the peer's initial address and port. An interface counts as
// served when some subflow, pending ones included, leaves from one of its
// usable addresses; otherwise its first address of the connection's family
// that is not in c.Failed gets a subflow, with the backup flag when the
// address's Flags say "backup". No more than v.SubflowLimit extra subflows
// are created.
//
// On an established server-side connection it announces every usable local
// address of the connection's family other than c.Local that is not
// announced yet or in c.Failed (id 0: the service picks, port 0), and
// withdraws the announcements whose address is no longer usable.
//
// On both sides, subflows other than the initial one whose local address is
// no longer usable are destroyed (pending ones are left to fail), and the
// backup flag of every established subflow follows its local address's
// flags (followBackup). Subflows the policy would not have made are
// otherwise left alone. Actions come as destructions, then flag changes,
// then creations, sorted by interface and address.
type perInterface struct{}

func (perInterface) Name() string            { return NameSubflowPerInterface }
func (perInterface) PathManager() string     { return PathManagerUserspace }
func (perInterface) Endpoints(View) []Action { return nil }

func (perInterface) Connection(v View, c Connection) []Action {
	if !c.Established {
		return nil
	}
	addrs := sortedAddresses(v.Addresses)
	if c.ServerSide {
		return followBackup(announceOthers(addrs, &c), addrs, &c)
	}
	out, extra := staleSubflows(nil, addrs, &c)
	out = followBackup(out, addrs, &c)
	left := room(v.SubflowLimit, extra)

	initialIf := initialInterface(addrs, &c)
	remote := pm.CanonicalAddrPort(c.Remote)
	for start := 0; start < len(addrs) && left > 0; {
		end := start + 1
		for end < len(addrs) && addrs[end].Interface == addrs[start].Interface {
			end++
		}
		from, to := start, end
		start = end
		if addrs[from].Interface == initialIf || served(addrs, from, to, &c) {
			continue
		}
		for i := from; i < to; i++ {
			a := addrs[i]
			if c.sameFamily(a.Addr) && pm.CanonicalAddr(a.Addr) != pm.CanonicalAddr(c.Local.Addr()) && firstOf(addrs, i) && !c.failed(a.Addr) {
				out = append(out, subflowTo(&c, a, remote, "interface "+a.Interface+" has no subflow"))
				left--
				break
			}
		}
	}
	return out
}

// initialInterface returns the interface of the connection's initial
// subflow: that of the usable address c.Local, else the Interface the
// initial subflow reports, else "".
func initialInterface(addrs []Address, c *Connection) string {
	if a, ok := lookup(addrs, c.Local.Addr()); ok {
		return a.Interface
	}
	for _, s := range c.Subflows {
		if c.isInitial(s) {
			return s.Interface
		}
	}
	return ""
}

// served reports whether a subflow other than the initial one leaves from
// one of the addresses addrs[from:to] of an interface (an address on two
// interfaces belongs to the first).
func served(addrs []Address, from, to int, c *Connection) bool {
	for _, s := range c.Subflows {
		if c.isInitial(s) {
			continue
		}
		k := pm.CanonicalAddr(s.Local.Addr())
		for i := from; i < to; i++ {
			if pm.CanonicalAddr(addrs[i].Addr) == k && firstOf(addrs, i) {
				return true
			}
		}
	}
	return false
}

// announceOthers returns the withdrawals of announcements whose address is
// not usable and the announcements of the usable addresses of the
// connection's family other than c.Local that are not announced yet.
func announceOthers(addrs []Address, c *Connection) []Action {
	var out []Action
	for _, an := range c.Announced {
		if _, ok := lookup(addrs, an.Addr); !ok {
			out = append(out, Action{Kind: Withdraw, Token: c.Token, ID: an.ID, Local: an.Addr, LocalPort: an.Port,
				Reason: "address " + an.Addr.String() + " is not usable any more"})
		}
	}
	for i, a := range addrs {
		k := pm.CanonicalAddr(a.Addr)
		if !c.sameFamily(a.Addr) || k == pm.CanonicalAddr(c.Local.Addr()) || !firstOf(addrs, i) ||
			announced(c.Announced, k) || c.failed(a.Addr) {
			continue
		}
		out = append(out, Action{
			Kind: Announce, Token: c.Token,
			Local: k, Interface: a.Interface, Ifindex: a.Ifindex,
			Reason: "address " + k.String() + " on " + a.Interface + " is not announced",
		})
	}
	return out
}

func announced(list []PeerAddress, k netip.Addr) bool {
	for _, an := range list {
		if pm.CanonicalAddr(an.Addr) == k {
			return true
		}
	}
	return false
}
