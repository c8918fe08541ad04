#!/usr/bin/python3
"""List mptcp-pmd's MPTCP connections with GLib's GIO D-Bus client.

  connections-gio.py

The same data as `mptcpctl connections`, read the way a GNOME component
would: one GetManagedObjects call through Gio, no python3-dbus. Prints one
line per connection and one per subflow. DBUS_SYSTEM_BUS_ADDRESS is
honoured (Gio.BusType.SYSTEM reads it).
"""
from gi.repository import Gio, GLib

bus = Gio.bus_get_sync(Gio.BusType.SYSTEM, None)
reply = bus.call_sync(
    "org.mptcp.PathManager1", "/org/mptcp/PathManager1",
    "org.freedesktop.DBus.ObjectManager", "GetManagedObjects",
    None, GLib.VariantType("(a{oa{sa{sv}}})"),
    Gio.DBusCallFlags.NONE, 5000, None)
(objects,) = reply.unpack()  # plain Python dicts, lists and tuples

for path in sorted(objects, key=lambda p: int(p.rsplit("/", 1)[-1])):
    c = objects[path].get("org.mptcp.PathManager1.Connection")
    if c is None:
        continue
    side = "server" if c["ServerSide"] else "client"
    print(f"{path} token={c['Token']:08x} {c['State']} {side} "
          f"{c['LocalAddress']}:{c['LocalPort']} -> {c['RemoteAddress']}:{c['RemotePort']}")
    # Subflows is a(yysqsqbs): local id, remote id, local address and port,
    # remote address and port, backup, interface.
    for lid, rid, la, lp, ra, rp, backup, ifname in c["Subflows"]:
        extra = (" backup" if backup else "") + (f" dev {ifname}" if ifname else "")
        print(f"  subflow id {lid}/{rid} {la}:{lp} -> {ra}:{rp}{extra}")
