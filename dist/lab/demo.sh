#!/usr/bin/env bash
# make demo: mptcp-pmd doing its job in a throw-away lab.
#
# Two network namespaces joined by two veth pairs, a private D-Bus bus with
# the project's bus policy, mptcp-pmd in the client namespace with the
# userspace path manager, real MPTCP connections, and mptcpctl adding a
# subflow over D-Bus. Everything it makes is removed at the end, also on
# Ctrl-C or failure. Needs root and a kernel with MPTCP.
set -euo pipefail
source "$(dirname "$0")/lab.sh"
lab_init demo

say "Lab: $cli <-> $srv over two veth pairs"
lab_up 2 userspace kernel
nsx "$cli" ip -br addr show | sed 's/^/  client: /'
nsx "$srv" ip -br addr show | sed 's/^/  server: /'

say "A private system bus with dist/dbus-1/system.d/org.mptcp.PathManager1.conf"
bus_up
echo "  DBUS_SYSTEM_BUS_ADDRESS=$DBUS_SYSTEM_BUS_ADDRESS"

say "mptcp-pmd in $cli (policy none: observe, publish, obey D-Bus)"
daemon_up "$cli" --policy none --log-level info
"$bin/mptcpctl" status

say "mptcpctl monitor (in the background, printing live events)"
"$bin/mptcpctl" monitor >"$work/monitor.log" 2>&1 &
pids+=($!)
sleep 0.3

say "Real MPTCP traffic: 2 connections from 10.55.0.1 to 10.55.0.2:8080"
server_up 10.55.0.2 8080
clients 2 4 10.55.0.2 8080
"$bin/mptcpctl" connections

say "busctl tree org.mptcp.PathManager1"
busctl --address="$DBUS_SYSTEM_BUS_ADDRESS" tree org.mptcp.PathManager1

say "Add a subflow over D-Bus: mptcpctl subflow add 1 10.55.1.1 10.55.0.2:8080"
"$bin/mptcpctl" subflow add 1 10.55.1.1 10.55.0.2:8080
for _ in $(seq 50); do # until the kernel reports the subflow established
	[[ $(nsx "$cli" ss -tnH state established src 10.55.1.1 | wc -l) -ge 1 ]] && break
	sleep 0.1
done
"$bin/mptcpctl" connections

say "The kernel agrees: ss -tn in $cli (two TCP subflows for connection 1)"
nsx "$cli" ss -tnH state established dst 10.55.0.2 | sed 's/^/  /'
say "ss -Mi (MPTCP sockets: connection 1 has subflows:1)"
nsx "$cli" ss -MniH | sed 's/^/  /'

sleep 4 # the connections close
say "What mptcpctl monitor saw"
cat "$work/monitor.log"
say "Daemon log"
cat "$work/daemon.log"
