#!/usr/bin/env python3
"""What a rate limit costs, and memory under a flood of distinct keys.

1. The same gateway serves /plain (no limit) and /limited (a sliding window and a token
   bucket keyed by the client address, set high enough that nothing is refused); wrk runs
   against each in alternating rounds. Prints requests/s, CPU microseconds per request and
   the ratios limited/plain.
2. A flood: FLOOD_REQUESTS (1,000,000) requests, each from a random client address (wrk with
   load-tests/wrk/random_ip.lua, through X-Forwarded-For from a trusted proxy), against a route
   whose limits (10 a second per address) are keyed by address. Prints the gateway's resident
   memory before, its peak during the flood, and how many requests were refused: each address
   sends about one request, so every refusal is an estimation error of the bounded state.

Environment: ROUNDS (3), DURATION (8), CONNECTIONS (50), FLOOD_REQUESTS (1000000),
GATEWAY_BIN (target/release/gateway). Everything listens on 127.0.0.1 only.
"""

import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import (CLK_TCK, GATEWAY_BIN, ROOT, cpu_ticks, free_port, nginx, peak_rss_kib,  # noqa: E402
                   require, server_block, start_gateway, stop_all, upstream_conf, wait_port)

ROUNDS = int(os.environ.get("ROUNDS", "3"))
DURATION = int(os.environ.get("DURATION", "8"))
CONNECTIONS = int(os.environ.get("CONNECTIONS", "50"))
FLOOD_REQUESTS = int(os.environ.get("FLOOD_REQUESTS", "1000000"))
SCRIPT = os.path.join(ROOT, "load-tests/wrk/random_ip.lua")


def gateway_conf(d, port, up):
    return server_block(d, port, '  trusted_proxies: ["127.0.0.1/32"]\n') + f"""upstreams:
  up:
    targets: [{{ addr: "127.0.0.1:{up}" }}]
routes:
  - name: plain
    match: {{ path: {{ prefix: /plain }} }}
    upstream: up
  - name: limited
    match: {{ path: {{ prefix: /limited }} }}
    upstream: up
    plugins:
      rate_limit:
        - {{ algorithm: sliding_window, key: ip, limit: 100000000 }}
        - {{ algorithm: token_bucket, key: ip, limit: 100000000 }}
  - name: flood
    match: {{ path: {{ prefix: /flood }} }}
    upstream: up
    plugins:
      rate_limit:
        - {{ algorithm: sliding_window, key: ip, limit: 10 }}
        - {{ algorithm: token_bucket, key: ip, limit: 10 }}
"""


def wrk(url, duration, script=None):
    cmd = ["taskset", "-c", "1", "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{duration}s"]
    if script:
        cmd += ["-s", script]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return reqs, rps, int(non2xx.group(1)) if non2xx else 0


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def main():
    require(("nginx", "wrk", "taskset"), (GATEWAY_BIN,))
    d = tempfile.mkdtemp(prefix="gw-bench-rl-")
    up, gport = free_port(), free_port()
    procs = []
    try:
        procs.append(nginx(upstream_conf(d, up), d, "upstream"))
        wait_port(up)
        gw = start_gateway(d, gateway_conf(d, gport, up))
        procs.append(gw)
        wait_port(gport)
        base = f"http://127.0.0.1:{gport}"
        for path in ("/plain", "/limited"):
            wrk(base + path, 2)
        print(f"{ROUNDS} rounds x {DURATION}s, {CONNECTIONS} connections, gateway on core 0")
        print(f"{'round':>5} {'route':<8} {'req/s':>10} {'CPU us/req':>11} {'non-2xx':>8}")
        results = {"plain": [], "limited": []}
        for i in range(ROUNDS):
            order = ["plain", "limited"] if i % 2 == 0 else ["limited", "plain"]
            for name in order:
                before = cpu_ticks([gw.pid])
                reqs, rps, bad = wrk(f"{base}/{name}", DURATION)
                cpu = (cpu_ticks([gw.pid]) - before) / CLK_TCK * 1e6 / max(reqs, 1)
                results[name].append((rps, cpu))
                print(f"{i + 1:>5} {name:<8} {rps:>10.0f} {cpu:>11.2f} {bad:>8}")
        med = {n: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs))
               for n, rs in results.items()}
        print("\nratios limited/plain (medians)")
        print(f"  requests/s      {med['limited'][0] / med['plain'][0]:.3f}")
        print(f"  CPU us/request  {med['limited'][1] / med['plain'][1]:.3f}")

        print(f"\nflood: {FLOOD_REQUESTS} requests, each from a random client address")
        before = rss_kib(gw.pid)
        sent = refused = 0
        while sent < FLOOD_REQUESTS:
            reqs, rps, bad = wrk(f"{base}/flood", 10, SCRIPT)
            sent += reqs
            refused += bad
            print(f"  {sent:>9} sent, {rps:>7.0f} req/s, RSS {rss_kib(gw.pid) / 1024:.1f} MiB, "
                  f"peak {peak_rss_kib([gw.pid]) / 1024:.1f} MiB")
        print(f"  RSS before the flood {before / 1024:.1f} MiB; peak {peak_rss_kib([gw.pid]) / 1024:.1f} MiB "
              f"after {sent} requests from random addresses; {refused} refused "
              f"({100 * refused / max(sent, 1):.3f}%)")
        return 0
    finally:
        stop_all(procs, d, lambda p: signal.SIGINT if p.args[-1].endswith(".yaml") else signal.SIGQUIT)


if __name__ == "__main__":
    sys.exit(main())
