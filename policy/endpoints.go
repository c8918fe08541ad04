package policy

import (
	"cmp"
	"slices"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
)

// NameEndpoints is the name of the in-kernel endpoint policy.
const NameEndpoints = "endpoints"

func init() { Register(NameEndpoints, func() Policy { return endpoints{} }) }

// endpoints makes every usable local address an in-kernel endpoint with its
// configured flags, and removes the endpoints it made when their address
// stops being usable.
//
// Rules, per usable address (an address on two interfaces counts once, on
// the first):
//   - an owned endpoint with the same ifindex, port 0 and flags is kept;
//   - if only backup or fullmesh differ, the flags are set in place (the
//     kernel changes no other flag); any other difference, a new ifindex
//     (the link was re-created) or a port is a removal followed by an add;
//   - an endpoint the policy does not own covers the address: nothing is
//     added, nothing is changed. An implicit one (the kernel made it for a
//     subflow) does not cover: AddEndpoint replaces it, keeping its id;
//   - otherwise the address is added, while the kernel has room
//     (MaxEndpoints).
//
// An External address (another program, such as NetworkManager, writes the
// endpoints of its interface) is left alone: nothing is added, changed or
// removed for it, owned endpoints included. Other owned endpoints whose
// address is not usable, and second owned endpoints of one address, are
// removed. Actions come as removals (by address and
// id), then flag changes, then adds (both by interface and address).
type endpoints struct{}

func (endpoints) Name() string                         { return NameEndpoints }
func (endpoints) PathManager() string                  { return PathManagerKernel }
func (endpoints) Connection(View, Connection) []Action { return nil }

// decision is what the endpoints policy does for one usable address.
type decision uint8

const (
	keep    decision = iota // nothing to do (the endpoint is right, or not ours)
	setFlag                 // SetEndpointFlags on the owned endpoint
	readd                   // remove the owned endpoint, add it again
	add                     // add a new endpoint
)

func (endpoints) Endpoints(v View) []Action {
	addrs := sortedAddresses(v.Addresses)
	var removes, sets, adds []Action

	// Owned endpoints whose address is gone, and duplicates.
	for i, e := range v.Endpoints {
		if !e.Owned() {
			continue
		}
		if a, ok := lookup(addrs, e.Addr); ok && a.External {
			continue
		} else if !ok {
			removes = append(removes, Action{Kind: RemoveEndpoint, Endpoint: e, Reason: "the address is not usable any more"})
		} else if ownedDuplicate(v.Endpoints, i) {
			removes = append(removes, Action{Kind: RemoveEndpoint, Endpoint: e, Reason: "another endpoint has the address"})
		}
	}
	remaining := len(v.Endpoints) - len(removes)

	// What to do per address, and the endpoint it concerns.
	decisions := make([]decision, len(addrs))
	owned := make([]int, len(addrs))
	for i, a := range addrs {
		decisions[i], owned[i] = keep, -1
		if !firstOf(addrs, i) || a.External {
			continue
		}
		j, foreign, implicit := endpointsOf(v.Endpoints, a)
		owned[i] = j
		switch {
		case j >= 0:
			e := v.Endpoints[j]
			switch {
			case int(e.Ifindex) != a.Ifindex || e.Port != 0 || !settable(e.Flags, a.Flags):
				decisions[i] = readd
			case e.Flags != a.Flags:
				decisions[i] = setFlag
			}
		case foreign:
		case implicit:
			decisions[i] = add // replaces the implicit endpoint: no new slot
		default:
			if remaining < MaxEndpoints {
				decisions[i] = add
				remaining++
			}
		}
	}

	for i, a := range addrs {
		want := Endpoint{
			Address:   pm.Address{Addr: pm.CanonicalAddr(a.Addr), Flags: a.Flags, Ifindex: int32(a.Ifindex)},
			Interface: a.Interface,
			Origin:    OriginPolicy,
		}
		switch decisions[i] {
		case setFlag:
			e := v.Endpoints[owned[i]]
			e.Flags = a.Flags
			sets = append(sets, Action{Kind: SetEndpointFlags, Endpoint: e, Reason: "the configured flags are " + a.Flags.String()})
		case readd:
			e := v.Endpoints[owned[i]]
			why := readdReason(e, a)
			removes = append(removes, Action{Kind: RemoveEndpoint, Endpoint: e, Reason: why})
			adds = append(adds, Action{Kind: AddEndpoint, Endpoint: want, Reason: why})
		case add:
			adds = append(adds, Action{Kind: AddEndpoint, Endpoint: want, Reason: "usable address on " + a.Interface})
		}
	}
	byAddr := func(a, b Action) int {
		return cmp.Or(pm.CanonicalAddr(a.Endpoint.Addr).Compare(pm.CanonicalAddr(b.Endpoint.Addr)), cmp.Compare(a.Endpoint.ID, b.Endpoint.ID))
	}
	slices.SortFunc(removes, byAddr)
	return slices.Concat(removes, sets, adds)
}

// readdReason says why the owned endpoint e of address a is removed and
// added again, as Endpoints decides it.
func readdReason(e Endpoint, a Address) string {
	switch {
	case int(e.Ifindex) != a.Ifindex:
		return "the address is on interface " + a.Interface + ", the endpoint on another"
	case e.Port != 0:
		return "the endpoint has a port"
	}
	return "the flags " + a.Flags.String() + " cannot be set on the endpoint"
}

// endpointsOf looks for the endpoints of address a: the index of the owned
// one to keep (-1 if none), whether an endpoint the policy does not own
// covers a, and whether an implicit one does.
func endpointsOf(eps []Endpoint, a Address) (owned int, foreign, implicit bool) {
	owned = -1
	k := pm.CanonicalAddr(a.Addr)
	for i, e := range eps {
		switch {
		case pm.CanonicalAddr(e.Addr) != k:
		case e.Owned():
			if owned < 0 || e.ID < eps[owned].ID {
				owned = i
			}
		case e.Flags&pm.FlagImplicit != 0:
			implicit = true
		default:
			foreign = true
		}
	}
	return owned, foreign, implicit
}

// ownedDuplicate reports whether the owned endpoint eps[i] has an owned twin
// of the same address that is kept instead (the lower id, or the earlier).
func ownedDuplicate(eps []Endpoint, i int) bool {
	e := eps[i]
	for j, o := range eps {
		if j != i && o.Owned() && pm.CanonicalAddr(o.Addr) == pm.CanonicalAddr(e.Addr) && (o.ID < e.ID || o.ID == e.ID && j < i) {
			return true
		}
	}
	return false
}

// settable reports whether the kernel's SET_FLAGS turns the flags cur into
// want: only backup and fullmesh may differ. (The kernel also refuses
// fullmesh on a signal endpoint, but then want has both, which it refuses on
// a new endpoint too: better keep the endpoint and let SET_FLAGS fail.)
func settable(cur, want pm.Flags) bool {
	return (cur^want)&^(pm.FlagBackup|pm.FlagFullmesh) == 0
}
