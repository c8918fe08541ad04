#!/usr/bin/python3
"""Watch mptcp-pmd's MPTCP connections and subflows over D-Bus.

  monitor.py [--count N] [--timeout SECONDS]

Prints one line per event: a connection appearing, becoming established,
closing; a subflow established, closed or changing priority; an address the
peer announced or removed. Exits after N events (status 0), or when the
timeout passes (status 0 without --count, else 1). Needs python3-dbus and
python3-gi; DBUS_SYSTEM_BUS_ADDRESS is honoured.
"""
import argparse
import sys

import dbus
import dbus.mainloop.glib
from gi.repository import GLib

NAME = "org.mptcp.PathManager1"
ROOT = "/org/mptcp/PathManager1"
CONN = NAME + ".Connection"


def hostport(addr, port):
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    p.add_argument("--count", type=int, default=0, help="exit after N events")
    p.add_argument("--timeout", type=float, default=0, help="exit after SECONDS")
    args = p.parse_args()

    # The GLib main loop delivers signals to the handlers below.
    dbus.mainloop.glib.DBusGMainLoop(set_as_default=True)
    bus = dbus.SystemBus()
    loop = GLib.MainLoop()
    seen = 0

    def emit(kind, path, detail=""):
        nonlocal seen
        print(f"{kind} {path} {detail}".rstrip(), flush=True)
        seen += 1
        if args.count and seen >= args.count:
            loop.quit()

    # A new connection object: ObjectManager.InterfacesAdded with its properties.
    def added(path, ifaces):
        c = ifaces.get(CONN)
        if c is not None:
            side = "server" if c["ServerSide"] else "client"
            emit("created", path, f"token={int(c['Token']):08x} {side} "
                                  f"{hostport(c['LocalAddress'], c['LocalPort'])} -> "
                                  f"{hostport(c['RemoteAddress'], c['RemotePort'])}")

    def removed(path, ifaces):
        if CONN in ifaces:
            emit("closed", path)

    # The connection's State property changes once, to "established".
    def changed(iface, props, _invalidated, path=None):
        if iface == CONN and props.get("State") == "established":
            emit("established", path)

    # Subflow signals: (local_id, remote_id, local, lport, remote, rport, backup,
    # interface[, error, reset_reason]). A dbus.Byte prints as a character: int() it.
    def subflow(*a, member=None, path=None):
        line = f"id {int(a[0])}/{int(a[1])} {hostport(a[2], a[3])} -> {hostport(a[4], a[5])}"
        line += " backup" if a[6] else ""
        line += f" dev {a[7]}" if a[7] else ""
        emit(member, path, line + (f" error {a[8]} reset {a[9]}" if len(a) > 8 else ""))

    # AddressAnnounced (id, address, port) and AddressRemoved (id).
    def address(*a, member=None, path=None):
        emit(member, path, f"id {int(a[0])}" + (f" {hostport(a[1], a[2])}" if len(a) > 1 else ""))

    om = "org.freedesktop.DBus.ObjectManager"
    bus.add_signal_receiver(added, "InterfacesAdded", om, NAME, ROOT)
    bus.add_signal_receiver(removed, "InterfacesRemoved", om, NAME, ROOT)
    bus.add_signal_receiver(changed, "PropertiesChanged", "org.freedesktop.DBus.Properties",
                            NAME, path_keyword="path")
    for m in ("SubflowEstablished", "SubflowClosed", "SubflowPriorityChanged"):
        bus.add_signal_receiver(subflow, m, CONN, NAME, member_keyword="member", path_keyword="path")
    for m in ("AddressAnnounced", "AddressRemoved"):
        bus.add_signal_receiver(address, m, CONN, NAME, member_keyword="member", path_keyword="path")

    def timeout():
        loop.quit()
        return False

    if args.timeout:
        GLib.timeout_add(int(args.timeout * 1000), timeout)
    print("monitoring " + NAME, flush=True)  # subscribed: events from now on are seen
    loop.run()
    return 1 if args.count and seen < args.count else 0


if __name__ == "__main__":
    sys.exit(main())
