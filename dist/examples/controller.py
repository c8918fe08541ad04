#!/usr/bin/python3
"""Take over MPTCP path management from mptcp-pmd's built-in policy.

  controller.py LOCAL [--path OBJECT_PATH]

Registers as the controller: while it runs, mptcp-pmd's built-in policy
does nothing and only this script adds paths. It adds ONE subflow to each
new client-side connection of LOCAL's family, from LOCAL to the peer's
address and port, and prints what it does. SIGINT or SIGTERM gives control
back (UnregisterController); if the script dies instead, the daemon sees it
leave the bus and takes control back by itself. Needs the userspace path
manager, root (or an authorized user), python3-dbus and python3-gi;
DBUS_SYSTEM_BUS_ADDRESS is honoured.
"""
import argparse
import ipaddress
import signal
import sys

import dbus
import dbus.mainloop.glib
import dbus.service
from gi.repository import GLib

NAME = "org.mptcp.PathManager1"
ROOT = "/org/mptcp/PathManager1"
MANAGER = NAME + ".Manager"
CONN = NAME + ".Connection"
CONTROLLER = NAME + ".Controller"


class Controller(dbus.service.Object):
    """The object the daemon calls Release on when it ends the claim."""

    def __init__(self, bus, path, loop):
        super().__init__(bus, path)
        self.loop = loop

    @dbus.service.method(CONTROLLER, in_signature="s", out_signature="")
    def Release(self, reason):
        print(f"released by the daemon: {reason}", flush=True)
        self.loop.quit()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    p.add_argument("local", help="local address of the subflows to add")
    p.add_argument("--path", default="/org/example/Controller", help="object path of the controller")
    a = p.parse_args()
    local = ipaddress.ip_address(a.local)

    dbus.mainloop.glib.DBusGMainLoop(set_as_default=True)
    bus = dbus.SystemBus()
    loop = GLib.MainLoop()
    Controller(bus, a.path, loop)
    manager = dbus.Interface(bus.get_object(NAME, ROOT), MANAGER)
    peers = {}  # connection path -> (remote address, port), client side only

    def add_subflow(path):
        remote, port = peers.pop(path)
        conn = dbus.Interface(bus.get_object(NAME, path), CONN)
        try:
            conn.CreateSubflow(str(local), remote, dbus.UInt16(port), dbus.Dictionary({}, signature="sv"))
            print(f"subflow {local} -> {remote}:{port} on {path}", flush=True)
        except dbus.DBusException as e:
            print(f"subflow on {path}: {e.get_dbus_name()}: {e.get_dbus_message()}", flush=True)

    # A new connection: remember its peer; act once it is established.
    def added(path, ifaces):
        c = ifaces.get(CONN)
        if c is None or c["ServerSide"] or ipaddress.ip_address(c["RemoteAddress"]).version != local.version:
            return
        peers[path] = (str(c["RemoteAddress"]), int(c["RemotePort"]))
        if c["State"] == "established":
            add_subflow(path)

    def changed(iface, props, _invalidated, path=None):
        if iface == CONN and props.get("State") == "established" and path in peers:
            add_subflow(path)

    def removed(path, ifaces):
        peers.pop(path, None)

    # Subscribe first, then register: no connection is missed.
    om = "org.freedesktop.DBus.ObjectManager"
    bus.add_signal_receiver(added, "InterfacesAdded", om, NAME, ROOT)
    bus.add_signal_receiver(removed, "InterfacesRemoved", om, NAME, ROOT)
    bus.add_signal_receiver(changed, "PropertiesChanged", "org.freedesktop.DBus.Properties",
                            NAME, path_keyword="path")
    try:
        manager.RegisterController(dbus.ObjectPath(a.path), dbus.Dictionary({}, signature="sv"))
    except dbus.DBusException as e:
        print(f"register: {e.get_dbus_name()}: {e.get_dbus_message()}", file=sys.stderr)
        return 1
    print(f"registered as the controller ({bus.get_unique_name()} {a.path}); adding subflows from {local}",
          flush=True)

    def give_back():
        manager.UnregisterController(dbus.ObjectPath(a.path))
        print("unregistered", flush=True)
        loop.quit()
        return False

    for sig in (signal.SIGINT, signal.SIGTERM):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, give_back)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
