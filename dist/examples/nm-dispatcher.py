#!/usr/bin/python3
"""NetworkManager dispatcher script: what a network change means for MPTCP.

Install as /etc/NetworkManager/dispatcher.d/90-mptcp-pmd (executable, owned
by root). NetworkManager runs it as

  90-mptcp-pmd INTERFACE ACTION

with the environment of nm-dispatcher(8). For each change it asks
mptcp-pmd over D-Bus and writes one line to standard output, which
NetworkManager's dispatcher puts in the journal:

  up, dhcp4-change, dhcp6-change: which of the interface's addresses
    mptcp-pmd uses, who makes their endpoints, and its standing warnings;
  pre-down, down: how many MPTCP connections have a subflow over the
    interface, and how many of them keep another path;
  connectivity-change: the new state and how many MPTCP connections run.

Nothing is changed: the daemon follows NetworkManager itself (with
network_manager = "auto"). Exits 0 when mptcp-pmd is not running, so that
it never holds NetworkManager up. Needs python3-dbus;
DBUS_SYSTEM_BUS_ADDRESS is honoured.
"""
import os
import sys

import dbus

NAME = "org.mptcp.PathManager1"
ROOT = "/org/mptcp/PathManager1"
MGR = NAME + ".Manager"
CONN = NAME + ".Connection"
PROPS = "org.freedesktop.DBus.Properties"
OM = "org.freedesktop.DBus.ObjectManager"


def connections(bus):
    """The live connections' properties."""
    root = bus.get_object(NAME, ROOT)
    objs = root.GetManagedObjects(dbus_interface=OM, timeout=5)
    return [ifaces[CONN] for ifaces in objs.values() if CONN in ifaces]


def on_up(bus, iface):
    mgr = bus.get_object(NAME, ROOT)
    addrs = [a for a in mgr.ListAddresses(dbus_interface=MGR, timeout=5) if str(a[0]) == iface]
    parts = []
    for _, addr, usable, reason in addrs:
        state = "used" if usable else "not used"
        parts.append(f"{addr} {state}" + (f" ({reason})" if reason else ""))
    line = f"{iface} up: " + ("; ".join(parts) if parts else "no address yet")
    props = mgr.GetAll(MGR, dbus_interface=PROPS, timeout=5)
    for w in props.get("Warnings", []):  # older daemons have none
        line += f"; warning: {w}"
    return line


def on_down(bus, iface):
    mgr = bus.get_object(NAME, ROOT)
    here = {str(a[1]) for a in mgr.ListAddresses(dbus_interface=MGR, timeout=5) if str(a[0]) == iface}
    affected = kept = 0
    for c in connections(bus):
        # Subflows lists the joins; the initial subflow is the connection's
        # own LocalAddress.
        paths = [str(sf[7]) == iface for sf in c["Subflows"]]
        paths.append(str(c["LocalAddress"]) in here)
        if not any(paths):
            continue
        affected += 1
        if not all(paths):
            kept += 1
    if affected == 0:
        return f"{iface} going down: no MPTCP connection has a subflow over it"
    return (f"{iface} going down: {affected} MPTCP connection(s) lose a subflow over it, "
            f"{kept} of them keep another path")


def on_connectivity(bus):
    state = os.environ.get("CONNECTIVITY_STATE", "UNKNOWN")
    return f"connectivity {state}: {len(connections(bus))} MPTCP connection(s)"


def main(argv):
    if len(argv) < 3:
        print(f"usage: {argv[0]} INTERFACE ACTION", file=sys.stderr)
        return 2
    iface, action = argv[1], argv[2]
    try:
        bus = dbus.SystemBus()
        if not bus.name_has_owner(NAME):
            return 0
        if action in ("up", "dhcp4-change", "dhcp6-change"):
            line = on_up(bus, os.environ.get("DEVICE_IP_IFACE") or iface)
        elif action in ("pre-down", "down"):
            line = on_down(bus, os.environ.get("DEVICE_IP_IFACE") or iface)
        elif action == "connectivity-change":
            line = on_connectivity(bus)
        else:
            return 0
    except dbus.exceptions.DBusException as e:
        print(f"mptcp-pmd: {e.get_dbus_name()}: {e.get_dbus_message()}", file=sys.stderr)
        return 0
    print("mptcp-pmd: " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
