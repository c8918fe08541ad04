#!/usr/bin/python3
"""Add a subflow to an MPTCP connection through mptcp-pmd.

  subflows.py CONN_PATH LOCAL REMOTE PORT [--backup] [--interface IF] [--timeout S]

CONN_PATH is a connection object (see `busctl tree org.mptcp.PathManager1`
or `mptcpctl connections`). The method returns when the kernel accepted the
request; the subflow itself comes up later, so this waits for its
SubflowEstablished (status 0) or SubflowClosed (status 1) signal. Needs the
userspace path manager for the connection, root (or an authorized user),
python3-dbus and python3-gi.
"""
import argparse
import sys

import dbus
import dbus.mainloop.glib
from gi.repository import GLib

NAME = "org.mptcp.PathManager1"
CONN = NAME + ".Connection"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    p.add_argument("path")
    p.add_argument("local")
    p.add_argument("remote")
    p.add_argument("port", type=int)
    p.add_argument("--backup", action="store_true")
    p.add_argument("--interface", default="")
    p.add_argument("--timeout", type=float, default=5)
    a = p.parse_args()

    dbus.mainloop.glib.DBusGMainLoop(set_as_default=True)
    bus = dbus.SystemBus()
    loop = GLib.MainLoop()
    status = 1

    # Subscribe before asking, so the outcome cannot be missed.
    def outcome(lid, rid, laddr, lport, raddr, rport, backup, iface, *err, member=None):
        nonlocal status
        if (laddr, raddr, rport) != (a.local, a.remote, a.port):
            return  # another subflow of this connection
        # dbus.Byte prints as a character: int() the ids.
        print(f"{member} id {int(lid)}/{int(rid)} {laddr}:{lport} -> {raddr}:{rport}"
              + (" backup" if backup else "") + (f" dev {iface}" if iface else "")
              + (f" error {err[0]} reset {err[1]}" if err else ""), flush=True)
        status = 0 if member == "SubflowEstablished" else 1
        loop.quit()

    for m in ("SubflowEstablished", "SubflowClosed"):
        bus.add_signal_receiver(outcome, m, CONN, NAME, a.path, member_keyword="member")

    # Options are a{sv}: each value with its exact D-Bus type.
    opts = dbus.Dictionary({}, signature="sv")
    if a.backup:
        opts["backup"] = dbus.Boolean(True)
    if a.interface:
        opts["interface"] = dbus.String(a.interface)
    conn = dbus.Interface(bus.get_object(NAME, a.path), CONN)
    try:
        conn.CreateSubflow(a.local, a.remote, dbus.UInt16(a.port), opts)
    except dbus.DBusException as e:
        print(f"{e.get_dbus_name()}: {e.get_dbus_message()}", file=sys.stderr)
        return 1

    def timeout():
        print(f"no subflow signal within {a.timeout} s", file=sys.stderr)
        loop.quit()
        return False

    GLib.timeout_add(int(a.timeout * 1000), timeout)
    loop.run()
    return status


if __name__ == "__main__":
    sys.exit(main())
