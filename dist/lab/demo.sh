#!/usr/bin/env bash
# make demo: mptcp-pmd doing its job in a throw-away lab.
#
# Two network namespaces joined by two veth pairs, a private D-Bus bus with
# the project's bus policy, mptcp-pmd in the client namespace with the
# userspace path manager, real MPTCP connections, and mptcpctl adding a
# subflow over D-Bus. Everything it makes is removed at the end, also on
# Ctrl-C or failure. Needs root and a kernel with MPTCP.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
bin=$top/bin
id=demo$$
cli=$id-cli srv=$id-srv
work=$(mktemp -d /tmp/mptcp-pmd-demo.XXXXXX)
pids=()

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

cleanup() {
	set +e
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
	# Whatever still runs inside the lab goes with it.
	for ns in "$cli" "$srv"; do
		ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null
	done
	wait 2>/dev/null
	ip netns del "$cli" 2>/dev/null
	ip netns del "$srv" 2>/dev/null
	rm -rf "$work"
	echo; echo "demo: cleaned up (namespaces $cli $srv, bus, daemon)"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[[ $(id -u) == 0 ]] || { echo "demo: needs root (network namespaces)" >&2; exit 1; }
[[ $(sysctl -n net.mptcp.enabled 2>/dev/null) == 1 ]] || { echo "demo: MPTCP is not enabled in this kernel" >&2; exit 1; }

say "Lab: $cli <-> $srv over two veth pairs"
for ns in "$cli" "$srv"; do
	ip netns add "$ns"
	nsx "$ns" ip link set lo up
	nsx "$ns" sysctl -qw net.mptcp.enabled=1 net.mptcp.add_addr_timeout=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
	nsx "$ns" ip mptcp limits set subflows 8 add_addr_accepted 8
done
for i in 0 1; do
	ip -n "$cli" link add "c$i" type veth peer name "s$i" netns "$srv"
	nsx "$cli" ip addr add "10.55.$i.1/24" dev "c$i"
	nsx "$srv" ip addr add "10.55.$i.2/24" dev "s$i"
	nsx "$cli" ip link set "c$i" up
	nsx "$srv" ip link set "s$i" up
	nsx "$cli" ip -6 addr flush dev "c$i" scope link # keep the listing short: IPv4 only
	nsx "$srv" ip -6 addr flush dev "s$i" scope link
	nsx "$cli" ip route add default via "10.55.$i.2" dev "c$i" table $((100 + i))
	nsx "$cli" ip rule add from "10.55.$i.1" table $((100 + i)) pref $((1000 + i))
done
nsx "$cli" sysctl -qw net.mptcp.pm_type=1 # userspace path manager on the client
for i in 0 1; do # wait for carrier on both ends
	for _ in $(seq 50); do
		nsx "$srv" ip -br link show "s$i" | grep -q ' UP ' && nsx "$cli" ip -br link show "c$i" | grep -q ' UP ' && break
		sleep 0.1
	done
done
nsx "$cli" ip -br addr show | sed 's/^/  client: /'
nsx "$srv" ip -br addr show | sed 's/^/  server: /'

say "A private system bus with dist/dbus-1/system.d/org.mptcp.PathManager1.conf"
sed -e "s|@SOCKET@|$work/bus|" -e "s|@POLICY@|$top/dist/dbus-1/system.d/org.mptcp.PathManager1.conf|" \
	"$top/dist/lab/bus.conf.in" >"$work/bus.conf"
dbus-daemon --config-file="$work/bus.conf" --nofork --nopidfile --print-address=3 3>"$work/address" 2>"$work/bus.log" &
pids+=($!)
for _ in $(seq 50); do [[ -s $work/address ]] && break; sleep 0.1; done
export DBUS_SYSTEM_BUS_ADDRESS="unix:path=$work/bus"
echo "  DBUS_SYSTEM_BUS_ADDRESS=$DBUS_SYSTEM_BUS_ADDRESS"

say "mptcp-pmd in $cli (policy none: observe, publish, obey D-Bus)"
ip netns exec "$cli" "$bin/mptcp-pmd" --policy none --log-level info 2>"$work/daemon.log" &
pids+=($!)
for _ in $(seq 50); do "$bin/mptcpctl" status >/dev/null 2>&1 && break; sleep 0.1; done
"$bin/mptcpctl" status

say "mptcpctl monitor (in the background, printing live events)"
"$bin/mptcpctl" monitor >"$work/monitor.log" 2>&1 &
pids+=($!)
sleep 0.3

say "Real MPTCP traffic: 2 connections from 10.55.0.1 to 10.55.0.2:8080"
ip netns exec "$srv" "$top/dist/lab/mptcp-traffic.py" server 10.55.0.2 8080 &
pids+=($!)
for _ in $(seq 100); do nsx "$srv" ss -MlnH | grep -q :8080 && break; sleep 0.1; done
ip netns exec "$cli" "$top/dist/lab/mptcp-traffic.py" client 10.55.0.2 8080 -n 2 --hold 4 &
traffic=$!
pids+=($traffic)
for _ in $(seq 100); do # until both connections are established
	[[ $("$bin/mptcpctl" connections | grep -c established) == 2 ]] && break
	sleep 0.1
done
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

wait "$traffic" || true
sleep 0.3
say "What mptcpctl monitor saw"
cat "$work/monitor.log"
say "Daemon log"
cat "$work/daemon.log"
