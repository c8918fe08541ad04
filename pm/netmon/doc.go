// Package netmon watches the local links, addresses and default routes of
// one network namespace over rtnetlink.
//
// Start subscribes to the kernel's link, IPv4/IPv6 address and IPv4/IPv6
// route notifications, then lists the current state on the same socket, and
// delivers that state as updates followed by one Synced. After that it
// delivers every change, de-duplicated: a notification that changes nothing
// the monitor tracks (an MTU change, a refreshed IPv6 lifetime, a repeated
// "ip link set up") produces no update.
//
// A link that loses carrier keeps its addresses: the update says
// Carrier=false, and when carrier returns the addresses are still known.
//
// The kernel changes some routes without telling anyone. It removes the
// IPv4 routes of a link that goes down, of a link that loses its last IPv4
// address, and those whose preferred source address disappears; the monitor
// applies the same rules to its own view. It revives the dead next hops of
// multipath routes when their link comes back up or gets an IPv4 address;
// the monitor then lists the routes again.
//
// One socket carries the notifications and the listings, so both come in
// the kernel's order. When the kernel drops notifications because the
// socket's receive buffer was full (ENOBUFS), the monitor lists everything
// again, ignores the notifications older than that listing, delivers only
// the differences, then another Synced.
package netmon
