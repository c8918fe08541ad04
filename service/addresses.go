package service

import (
	"cmp"
	"context"
	"slices"

	"github.com/mptcp-pmd/mptcp-pmd/policy"
)

// Addresses returns every address of the host's links with the configured
// filter's verdict: the usable ones are Manager.LocalAddresses, the others
// say why they were filtered out. They are sorted by interface name, then
// address.
func (s *Service) Addresses(ctx context.Context) ([]AddressInfo, error) {
	return call(ctx, s, "addresses", func() ([]AddressInfo, error) {
		return s.net.addresses(s.cfg.Filter), nil
	})
}

// addresses returns every address of a known link, checked by the filter.
func (n *netState) addresses(f policy.FilterConfig) []AddressInfo {
	out := []AddressInfo{}
	for k, a := range n.addrs {
		l, ok := n.links[k.index]
		if !ok {
			continue
		}
		usable, reason := n.check(f, l, a)
		if _, managed := n.nm[l.Name]; usable && managed {
			reason = reasonNMManaged
		}
		out = append(out, AddressInfo{Interface: l.Name, Address: k.addr, Usable: usable, Reason: reason})
	}
	slices.SortFunc(out, func(a, b AddressInfo) int {
		return cmp.Or(cmp.Compare(a.Interface, b.Interface), a.Address.Compare(b.Address))
	})
	return out
}
