#!/usr/bin/env python3
"""System calls per request, counted by `strace -c -f`: the bare Pingora proxy against the
gateway's plain route, each in front of the same upstream (an nginx answering a fixed body),
REQUESTS (3000) requests over one keep-alive connection after a warm-up. Needs strace
(`make bench` installs it). Everything listens on 127.0.0.1 only.
"""

import http.client
import os
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
from bench import GATEWAY_BIN, PINGORA_BIN, free_port, nginx, stop_all, upstream_conf, wait_port  # noqa: E402

REQUESTS = int(os.environ.get("REQUESTS", "3000"))


def send(conn, n):
    for _ in range(n):
        conn.request("GET", "/bench")
        conn.getresponse().read()


def count(name, cmd, port, d, env=None):
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        send(conn, 200)
        out = os.path.join(d, f"strace-{name}.txt")
        st = subprocess.Popen(["strace", "-c", "-f", "-p", str(p.pid), "-o", out],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)
        send(conn, REQUESTS)
        st.send_signal(signal.SIGINT)
        st.wait()
        calls = {}
        for line in open(out).read().splitlines():
            parts = line.split()
            if len(parts) >= 5 and parts[3].isdigit() and parts[-1] != "total":
                calls[parts[-1]] = int(parts[3]) / REQUESTS
        return calls
    finally:
        p.send_signal(signal.SIGINT)
        p.wait()


def main():
    d = tempfile.mkdtemp(prefix="gw-strace-")
    up = free_port()
    procs = [nginx(upstream_conf(d, up), d, "upstream")]
    try:
        wait_port(up)
        port = free_port()
        bare = count("pingora", [PINGORA_BIN, f"127.0.0.1:{port}", f"127.0.0.1:{up}"], port, d)
        port = free_port()
        yaml = os.path.join(d, "gateway.yaml")
        with open(yaml, "w") as f:
            f.write(bench.gateway_conf(d, port, up))
        env = {**os.environ, "RUST_LOG": "error", "BENCH_JWT_SECRET": bench.JWT_SECRET}
        plain = count("plain", [GATEWAY_BIN, "-c", yaml], port, d, env)
        print(f"system calls per request ({REQUESTS} requests over one keep-alive connection)")
        print(f"  {'call':<16} {'pingora':>8} {'plain':>8}")
        for name in sorted(set(bare) | set(plain), key=lambda n: -plain.get(n, 0)):
            b, g = bare.get(name, 0), plain.get(name, 0)
            if max(b, g) >= 0.01:
                print(f"  {name:<16} {b:>8.2f} {g:>8.2f}")
        print(f"  {'total':<16} {sum(bare.values()):>8.2f} {sum(plain.values()):>8.2f}")
        return 0
    finally:
        stop_all(procs, d, lambda p: signal.SIGQUIT)


if __name__ == "__main__":
    sys.exit(main())
