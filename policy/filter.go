package policy

import (
	"fmt"
	"net/netip"
	"path"
)

// FilterConfig says which local addresses are usable: what the policies see
// in View.Addresses and the daemon publishes as LocalAddresses. An address is
// never usable while its link is down or without carrier, nor when it is not
// a unicast address or failed duplicate address detection.
type FilterConfig struct {
	SkipLoopback  bool // loopback links and addresses (127.0.0.0/8, ::1)
	SkipLinkLocal bool // 169.254.0.0/16 and fe80::/10
	SkipTentative bool // IPv6 addresses whose duplicate address detection is not done, or deprecated ones
	// RequireDefaultRoute skips an address unless a default route of its
	// family leaves through its interface (Candidate.DefaultRoute).
	RequireDefaultRoute bool
	// Allow, if not empty, keeps only interfaces whose name matches one of
	// these path.Match patterns; Deny skips those that match one.
	Allow, Deny []string
}

// Candidate is a local address and what is known of it and its interface.
type Candidate struct {
	Interface string
	Ifindex   int
	Addr      netip.Addr
	Loopback  bool // the interface is a loopback
	Up        bool // the interface is administratively up
	Carrier   bool // the interface has carrier (lower layer up)
	// IPv6 address states (IFA_F_TENTATIVE, IFA_F_DEPRECATED,
	// IFA_F_DADFAILED).
	Tentative, Deprecated, DADFailed bool
	LinkLocal                        bool // the address has link scope (also derived from Addr)
	DefaultRoute                     bool // the interface has a default route of the address's family
}

// DefaultFilter returns the filter for a host that has no filter
// configuration, such as a laptop: loopback, link-local, tentative and
// deprecated addresses are skipped, and the interfaces of local container
// and virtual-machine networks, which lead nowhere else, are denied:
//
//	docker*          Docker's default bridge
//	br-????????????  Docker's user-defined networks (br- and 12 hex digits)
//	veth*            container ends of veth pairs
//	virbr*           libvirt
//	lxcbr*, lxdbr*   LXC and LXD
//	podman*, cni*    Podman and CNI bridges
//
// No default route is required: as in mptcpd, off by default, because
// hosts that route per source address (the way a second path leaves
// through its own interface) often keep that default route out of the main
// table, and a host with one default route would otherwise get no second
// path at all.
func DefaultFilter() FilterConfig {
	return FilterConfig{
		SkipLoopback:  true,
		SkipLinkLocal: true,
		SkipTentative: true,
		Deny: []string{
			"docker*", "br-????????????", "veth*", "virbr*",
			"lxcbr*", "lxdbr*", "podman*", "cni*",
		},
	}
}

// Validate reports a malformed interface pattern.
func (f FilterConfig) Validate() error {
	for _, list := range [][]string{f.Allow, f.Deny} {
		for _, p := range list {
			if _, err := path.Match(p, ""); err != nil {
				return fmt.Errorf("policy: filter: bad interface pattern %q: %w", p, err)
			}
		}
	}
	return nil
}

// Check reports whether the candidate is usable, and if not, why: "invalid
// address", "not unicast", "link down", "no carrier", "loopback",
// "link-local", "duplicate address", "tentative", "deprecated", "denied by
// pattern P", "not in allow list" or "no default route". A malformed pattern
// matches nothing (Validate finds it).
func (f FilterConfig) Check(c Candidate) (ok bool, reason string) {
	a := c.Addr.Unmap()
	switch {
	case !a.IsValid():
		return false, "invalid address"
	case a.IsUnspecified() || a.IsMulticast() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return false, "not unicast"
	case !c.Up:
		return false, "link down"
	case !c.Carrier:
		return false, "no carrier"
	case f.SkipLoopback && (c.Loopback || a.IsLoopback()):
		return false, "loopback"
	case f.SkipLinkLocal && (c.LinkLocal || a.IsLinkLocalUnicast()):
		return false, "link-local"
	case c.DADFailed:
		return false, "duplicate address"
	case f.SkipTentative && c.Tentative:
		return false, "tentative"
	case f.SkipTentative && c.Deprecated:
		return false, "deprecated"
	}
	for _, p := range f.Deny {
		if match(p, c.Interface) {
			return false, "denied by pattern " + p
		}
	}
	if len(f.Allow) > 0 {
		allowed := false
		for _, p := range f.Allow {
			allowed = allowed || match(p, c.Interface)
		}
		if !allowed {
			return false, "not in allow list"
		}
	}
	if f.RequireDefaultRoute && !c.DefaultRoute {
		return false, "no default route"
	}
	return true, ""
}

// match reports whether name matches the shell pattern; a malformed pattern
// matches nothing.
func match(pattern, name string) bool {
	ok, err := path.Match(pattern, name)
	return ok && err == nil
}
