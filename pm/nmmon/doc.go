// Package nmmon follows NetworkManager over D-Bus and reports, for each
// network interface, what NetworkManager says about it: whether it manages
// the interface, whether a profile is activated on it, that profile's MPTCP
// setting, and whether the interface is metered.
//
// # Why
//
// NetworkManager (1.40 and later) manages MPTCP endpoints itself, so a path
// manager living beside it must know where it does. For a device with an
// activated profile it adds an endpoint "dev IFNAME" with the profile's
// flags (connection.mptcp-flags) for each of the profile's own addresses,
// IPv4 and IPv6 alike, except loopback, link-local, IPv6 unique local
// (fc00::/7) and privacy addresses; addresses added by others get none.
// It does so only while net.mptcp.enabled is 1 (unless the flags say
// also-without-sysctl) and only for an address family with a default route
// in the main table (unless also-without-default-route). Endpoints without
// a device, with a port, or on devices it does not manage it leaves alone.
// On the devices it manages it does not: at activation it replaces an
// endpoint for one of its addresses that has other flags, and on reapply
// and deactivation it deletes every endpoint on the device that is not its
// own. It never changes the MPTCP limits. When it stops, its endpoints stay.
//
// So an interface whose Device is Managed and Activated, with an MPTCP
// setting that is Known and not Disabled, is one whose endpoints
// NetworkManager considers its own. Metered tells which interfaces cost
// money (a cellular modem, a phone's hotspot), so that a policy can keep
// them for backup.
//
// # What is read
//
// Watch follows the name org.freedesktop.NetworkManager on the bus
// (NameOwnerChanged), so NetworkManager may start, stop and restart at any
// time. While it owns the name the watcher reads, with one method call each
// and a timeout:
//
//   - the manager's GetAllDevices;
//   - for each device, the properties of org.freedesktop.NetworkManager.Device:
//     Interface, IpInterface, Managed, State, Metered and ActiveConnection;
//   - for a device with an active connection, that object's Connection (the
//     profile's settings object), and that profile's GetSettings, of which it
//     keeps "connection" → "mptcp-flags" (absent means 0).
//
// It reads everything again after any signal that may change the result:
// a PropertiesChanged of the manager (Devices, AllDevices) or of a device
// (the properties above), DeviceAdded, DeviceRemoved, and a profile's
// Updated; the reads for a burst of signals are spaced by 100 ms, while a
// change of the name's owner is read at once. NetworkManager has a few
// devices, and a full read is at most three calls per device (about 6 ms
// for four devices). When the result differs from the last state sent, the
// watcher sends it.
//
// The MPTCP setting is the profile's, not the one applied to the device:
// NetworkManager applies a profile's changes at the next activation or
// "nmcli device reapply", and emits no signal when it reapplies, so the
// applied connection could not be followed. After "nmcli connection
// modify" the state reports the new flags before NetworkManager acts on
// them. The device's Metered, in contrast, is its state at run time: a
// changed connection.metered takes effect at once.
//
// Replies of unexpected shape (a missing property, a wrong type) are
// logged; the part of the device they concern is reported as unknown (the
// zero value), and a device without a readable Interface is left out. A
// call that fails for want of an answer (a timeout) makes the watcher keep
// its last state and read again later.
package nmmon
