#!/usr/bin/env python3
"""Instructions per request, counted by valgrind's callgrind: a figure that does not move with
the machine's load, unlike CPU time on a shared 2-core box.

Each subject runs alone under callgrind in front of the same upstream (nginx answering a fixed
body). After a warm-up, the counters are zeroed, REQUESTS (2000) requests go over one
keep-alive connection, and the counters are dumped: instructions of the whole process (every
thread) divided by the requests. Subjects: nginx (one worker, no master), the bare Pingora
proxy (system allocator, Pingora's default), the same with the gateway's allocator
(`pingora-mi`), that one also asking of Pingora what the plain route asks (`pingora-mi+work`:
the same headers set, with fixed values, and the same upstream timeouts), the gateway's plain
route and its full policy chain (the routes of bench.py).

Environment: REQUESTS (2000), GATEWAY_BIN, PINGORA_BIN, ACCESS_LOG and TRACING (as bench.py). Needs valgrind (`make bench`
installs it). Everything listens on 127.0.0.1 only.
"""

import glob
import http.client
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
from bench import GATEWAY_BIN, PINGORA_BIN, PINGORA_MI_BIN, free_port, nginx, stop_all, upstream_conf, wait_port  # noqa: E402

REQUESTS = int(os.environ.get("REQUESTS", "2000"))


def nginx_proxy_conf(d, port, up):
    # One process that does the work, so callgrind sees all of it.
    return bench.proxy_conf(d, port, up).replace("master_process on;", "master_process off;")


def send(port, path, headers, n):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for _ in range(n):
        c.request("GET", path, headers=headers)
        r = c.getresponse()
        r.read()
        if r.status != 200:
            sys.exit(f"{path}: status {r.status}")
    c.close()


def count(cmd, port, path, headers, d, name, env=None):
    """Instructions per request of `cmd` serving `path`."""
    out = os.path.join(d, f"cg-{name}")
    p = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p"] + cmd,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        wait_port(port, 120)
        send(port, path, headers, 200)
        subprocess.run(["callgrind_control", "-z", str(p.pid)], capture_output=True, check=True)
        send(port, path, headers, REQUESTS)
        subprocess.run(["callgrind_control", "-d", name, str(p.pid)], capture_output=True, check=True)
        deadline = time.time() + 30
        while time.time() < deadline:
            dumps = [f for f in glob.glob(f"{out}.*") if re.search(r"\.\d+\.\d+$", f)]
            if dumps:
                text = open(dumps[0]).read()
                m = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
                if m:
                    return int(m.group(1)) / REQUESTS
            time.sleep(0.2)
        sys.exit(f"{name}: no callgrind dump")
    finally:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()


def main():
    bench.require(("valgrind",), (GATEWAY_BIN, PINGORA_BIN, PINGORA_MI_BIN))
    d = tempfile.mkdtemp(prefix="gw-instr-")
    up = free_port()
    procs = []
    try:
        procs.append(nginx(upstream_conf(d, up), d, "upstream"))
        wait_port(up)
        results = {}
        port = free_port()
        conf = os.path.join(d, "proxy.conf")
        with open(conf, "w") as f:
            f.write(nginx_proxy_conf(d, port, up))
        results["nginx"] = count(["nginx", "-c", conf, "-p", d], port, "/bench", {}, d, "nginx")
        port = free_port()
        results["pingora"] = count([PINGORA_BIN, f"127.0.0.1:{port}", f"127.0.0.1:{up}"],
                                   port, "/bench", {}, d, "pingora")
        port = free_port()
        results["pingora-mi"] = count([PINGORA_MI_BIN, f"127.0.0.1:{port}", f"127.0.0.1:{up}"],
                                      port, "/bench", {}, d, "pingora-mi")
        port = free_port()
        results["pingora-mi+work"] = count(
            [PINGORA_MI_BIN, f"127.0.0.1:{port}", f"127.0.0.1:{up}", "--gateway-work"],
            port, "/bench", {}, d, "pingora-mi-work")
        port = free_port()
        yaml = os.path.join(d, "gateway.yaml")
        with open(yaml, "w") as f:
            f.write(bench.gateway_conf(d, port, up))
        env = {**os.environ, "RUST_LOG": "error", "BENCH_JWT_SECRET": bench.JWT_SECRET}
        results["plain"] = count([GATEWAY_BIN, "-c", yaml], port, "/bench", {}, d, "plain", env)
        port = free_port()
        with open(yaml, "w") as f:
            f.write(bench.gateway_conf(d, port, up))
        auth = {"Authorization": f"Bearer {bench.jwt_token()}"}
        results["chain"] = count([GATEWAY_BIN, "-c", yaml], port, "/chain", auth, d, "chain", env)
        print(f"instructions per request ({REQUESTS} requests over one keep-alive connection, callgrind)")
        for name, n in results.items():
            print(f"  {name:<15} {n:>10,.0f}")
        print("ratios (goal in brackets)")
        bench.print_ratios(results)
        return 0
    finally:
        stop_all(procs, d, lambda p: signal.SIGQUIT)


if __name__ == "__main__":
    sys.exit(main())
