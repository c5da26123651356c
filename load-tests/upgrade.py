#!/usr/bin/env python3
"""Requests lost across a graceful upgrade, counted by wrk.

For each connection count (CONNS, default "200 1000"): start the gateway (release build,
daemonized) in front of a demo upstream, run wrk with keep-alive connections, and halfway
through replace the gateway with scripts/upgrade.sh. wrk's socket errors (connect, read,
write, timeout) and non-2xx answers are the requests that failed; the goal is zero.

Environment: CONNS ("200 1000"), DURATION seconds of wrk per run (12),
GATEWAY_BIN (target/release/gateway), DEMO_BIN (target/release/demo-upstreams).
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import free_port, require, wait_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONNS = [int(c) for c in os.environ.get("CONNS", "200 1000").split()]
DURATION = int(os.environ.get("DURATION", "12"))
GATEWAY_BIN = os.environ.get("GATEWAY_BIN", os.path.join(ROOT, "target/release/gateway"))
DEMO_BIN = os.environ.get("DEMO_BIN", os.path.join(ROOT, "target/release/demo-upstreams"))


def run(conns, d, up):
    port = free_port()
    conf = os.path.join(d, f"gw-{conns}.yaml")
    pid_file = os.path.join(d, f"gw-{conns}.pid")
    with open(conf, "w") as f:
        f.write(f"""
server:
  listen: ["127.0.0.1:{port}"]
  threads: 2
  access_log: "off"
  grace_period_secs: 1
  graceful_shutdown_timeout_secs: 2
  pid_file: {pid_file}
  upgrade_sock: {d}/upgrade-{conns}.sock
upstreams:
  u:
    targets: [{{ addr: "127.0.0.1:{up}" }}]
    timeouts: {{ connect_ms: 5000 }}
routes:
  - {{ name: r, upstream: u }}
""")
    log = open(os.path.join(d, f"gw-{conns}.log"), "w")
    env = {**os.environ, "RUST_LOG": "warn", "GATEWAY_BIN": GATEWAY_BIN}
    subprocess.run([GATEWAY_BIN, "-d", "-c", conf], check=True, stdout=log, stderr=log, env=env)
    wait_port(port)
    wrk = subprocess.Popen(
        ["wrk", "-t2", f"-c{conns}", f"-d{DURATION}s", f"http://127.0.0.1:{port}/"],
        stdout=subprocess.PIPE, text=True)
    time.sleep(DURATION / 3)
    old = open(pid_file).read().strip()
    upgrade = subprocess.run([os.path.join(ROOT, "scripts/upgrade.sh"), conf],
                             stdout=log, stderr=log, env=env)
    out, _ = wrk.communicate()
    new = open(pid_file).read().strip()
    try:
        os.kill(int(new), signal.SIGINT)
    except (ProcessLookupError, ValueError):
        pass
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errs = [int(x) for x in sock.groups()] if sock else [0, 0, 0, 0]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    non2xx = int(non2xx.group(1)) if non2xx else 0
    ok = upgrade.returncode == 0 and old != new
    print(f"{conns:>6} {reqs:>9} {errs[0]:>8} {errs[1]:>5} {errs[2]:>6} {errs[3]:>8} {non2xx:>7}   "
          f"{'pid ' + old + ' -> ' + new if ok else 'UPGRADE FAILED'}")
    return sum(errs) + non2xx + (0 if ok else 1)


def main():
    require(("wrk",), (GATEWAY_BIN, DEMO_BIN))
    d = tempfile.mkdtemp(prefix="gw-upgrade-")
    up = free_port()
    demo = subprocess.Popen([DEMO_BIN, f"u@127.0.0.1:{up}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_port(up)
        print(f"wrk {DURATION}s per run, keep-alive, upgrade after {DURATION // 3}s")
        print(f"{'conns':>6} {'requests':>9} {'connect':>8} {'read':>5} {'write':>6} {'timeout':>8} "
              f"{'non-2xx':>7}")
        lost = sum(run(c, d, up) for c in CONNS)
        print("\nno request lost" if lost == 0 else f"\n{lost} requests lost")
        return 0 if lost == 0 else 1
    finally:
        demo.send_signal(signal.SIGINT)
        demo.wait(timeout=5)
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
