#!/usr/bin/python3
"""Open or accept real MPTCP connections for the mptcp-pmd lab and demo.

  mptcp-traffic.py server ADDR PORT           accept and discard, until killed
  mptcp-traffic.py client ADDR PORT [-n N] [--hold SECONDS]
                                              open N connections, send a little,
                                              keep them open, then close them

Only the standard library; MPTCP sockets are IPPROTO_MPTCP (262).
"""
import argparse
import socket
import sys
import threading
import time

IPPROTO_MPTCP = getattr(socket, "IPPROTO_MPTCP", 262)


def family(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def server(addr, port):
    s = socket.socket(family(addr), socket.SOCK_STREAM, IPPROTO_MPTCP)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(128)

    def sink(c):
        with c:
            while c.recv(65536):
                pass

    while True:
        c, _ = s.accept()
        threading.Thread(target=sink, args=(c,), daemon=True).start()


def client(addr, port, n, hold):
    conns = []
    for _ in range(n):
        c = socket.socket(family(addr), socket.SOCK_STREAM, IPPROTO_MPTCP)
        c.connect((addr, port))
        c.sendall(b"hello over MPTCP\n")
        conns.append(c)
    print(f"opened {n} MPTCP connection(s) to {addr}:{port}", flush=True)
    deadline = time.monotonic() + hold
    while time.monotonic() < deadline:
        for c in conns:
            c.sendall(b"." * 1024)
        time.sleep(0.2)
    for c in conns:
        c.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["server", "client"])
    p.add_argument("addr")
    p.add_argument("port", type=int)
    p.add_argument("-n", type=int, default=1)
    p.add_argument("--hold", type=float, default=5.0)
    a = p.parse_args()
    if a.mode == "server":
        server(a.addr, a.port)
    else:
        client(a.addr, a.port, a.n, a.hold)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(0)
