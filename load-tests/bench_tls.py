#!/usr/bin/env python3
"""The gateway against nginx where users are: TLS, over HTTP/1.1 and over h2.

Both proxies terminate TLS with the same self-signed certificate (ECDSA P-256, made for the
run) in front of the same upstream (nginx answering a fixed body over plain HTTP/1.1 with
keep-alive), one worker pinned to core 0; the upstream and the load generator share core 1.
Two subjects per proxy, in rounds whose order alternates:

  h1   wrk over https: CONNECTIONS (50) keep-alive connections, one request at a time each
  h2   h2load: H2_CONNECTIONS (10) connections with H2_STREAMS (10) streams in flight on each

Connections are opened once per round and kept (neither proxy caps the requests on one
connection), so the figures are the steady cost of a request over an established TLS
session: records encrypted and decrypted, h2 framing and HPACK, the proxying. For each round:
requests/s, p50 and p99 latency, the proxy's CPU microseconds per request and its peak
resident memory; then medians and the ratios against the goals.

Environment: ROUNDS (3), DURATION seconds per round (10), CONNECTIONS (50), H2_CONNECTIONS
(10), H2_STREAMS (10), GATEWAY_BIN. Needs nginx, wrk, h2load and openssl (`make bench`
installs them). Everything listens on 127.0.0.1 only.
"""

import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
from bench import (CONNECTIONS, DURATION, GATEWAY_BIN, NGINX_COMMON, ROUNDS, children,  # noqa: E402
                   free_port, measured, nginx, quit_signal, run_rounds, server_block,
                   start_gateway, stop_all, upstream_conf, wait_port, wrk)

H2_CONNECTIONS = int(os.environ.get("H2_CONNECTIONS", "10"))
H2_STREAMS = int(os.environ.get("H2_STREAMS", "10"))
GOALS = {"h1": 1.3, "h2": 1.15}


def certificate(d):
    crt, key = os.path.join(d, "bench.crt"), os.path.join(d, "bench.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", key, "-out", crt, "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return crt, key


def nginx_tls_conf(d, port, up, crt, key):
    # nginx 1.22 (Debian 12): h2 is switched on in the listen directive.
    return NGINX_COMMON.format(dir=d, name="proxy") + f"""
http {{
  access_log off;
  keepalive_requests 1000000;
  http2_max_requests 1000000;
  upstream up {{ server 127.0.0.1:{up}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{port} ssl http2;
    ssl_certificate {crt};
    ssl_certificate_key {key};
    location / {{
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""


def gateway_tls_conf(d, port, up, crt, key):
    # The plain listener is unused; the TLS one serves both subjects (h2 by ALPN).
    tls = (f'  tls: [{{ listen: "127.0.0.1:{port}", cert: {crt}, key: {key} }}]\n'
           f"  keepalive_requests: 0\n")
    return server_block(d, free_port(), tls) + f"""upstreams:
  up:
    targets: [{{ addr: "127.0.0.1:{up}" }}]
routes:
  - name: plain
    match: {{ path: {{ prefix: / }} }}
    upstream: up
"""


def run_h1(port, duration=None, connections=None):
    r = wrk(port, scheme="https", duration=duration, connections=connections)
    r["errors"] += 1 if r["socket_errors"] else 0
    return r


def run_h2(port, duration=None):
    # h2load prints no percentiles; its per-request log (-l) has each request's time.
    log = tempfile.NamedTemporaryFile(prefix="h2load-", suffix=".log", delete=False).name
    try:
        out = subprocess.run(["taskset", "-c", "1", "h2load", "-t1", f"-c{H2_CONNECTIONS}",
                              f"-m{H2_STREAMS}", f"-D{duration or DURATION}", "--log-file", log,
                              f"https://127.0.0.1:{port}/bench"],
                             capture_output=True, text=True, check=True).stdout
        times = []
        with open(log) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[1].isdigit():
                    times.append(int(parts[2]) / 1000)  # microseconds -> ms
        times.sort()
    finally:
        os.unlink(log)
    m = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    status = re.search(r"status codes: (\d+) 2xx", out)
    done, ok = int(m.group(1)), int(status.group(1)) if status else 0
    rps = float(re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", out).group(1))

    def pct(q):
        return times[min(len(times) - 1, int(q * len(times)))] if times else 0.0

    if "h2" not in re.search(r"Application protocol: (\S+)", out).group(1):
        sys.exit(f"h2load on {port} did not negotiate h2:\n{out}")
    return {"requests": done, "rps": rps, "p50_ms": pct(0.50), "p99_ms": pct(0.99),
            "errors": done - ok}


def measure(proto, port, pids):
    return measured(pids, lambda: run_h1(port) if proto == "h1" else run_h2(port))


def main():
    bench.require(("nginx", "wrk", "h2load", "openssl", "taskset"), (GATEWAY_BIN,))
    d = tempfile.mkdtemp(prefix="gw-bench-tls-")
    up, nport, gport = free_port(), free_port(), free_port()
    procs = []
    try:
        crt, key = certificate(d)
        procs.append(nginx(upstream_conf(d, up), d, "upstream"))
        wait_port(up)
        nx = nginx(nginx_tls_conf(d, nport, up, crt, key), d, "proxy")
        procs.append(nx)
        wait_port(nport)
        gw = start_gateway(d, gateway_tls_conf(d, gport, up, crt, key))
        procs.append(gw)
        wait_port(gport)
        nginx_pids = [nx.pid] + children(nx.pid)
        subjects = [(f"{proxy}-{proto}", proto, port, pids)
                    for proto in ("h1", "h2")
                    for proxy, port, pids in (("nginx", nport, nginx_pids), ("gateway", gport, [gw.pid]))]
        for _, proto, port, _ in subjects:  # warm-up: pools, session caches, page faults
            run_h1(port, 2, 10) if proto == "h1" else run_h2(port, 2)
        print(f"{ROUNDS} rounds x {DURATION}s over TLS; h1: {CONNECTIONS} keep-alive connections (wrk); "
              f"h2: {H2_CONNECTIONS} connections x {H2_STREAMS} streams (h2load); proxy on core 0, "
              f"upstream nginx and the client on core 1")
        med, failed = run_rounds(subjects, lambda s: measure(s[1], s[2], s[3]), "subject", 12)
        print("\nCPU per request, gateway / nginx (goal in brackets)")
        for proto, goal in GOALS.items():
            ratio = med[f"gateway-{proto}"]["cpu_us_per_req"] / med[f"nginx-{proto}"]["cpu_us_per_req"]
            print(f"  TLS {proto}   {ratio:.2f}   (<= {goal})")
        if failed:
            print(f"\n{failed} failed requests during the run")
            return 1
        return 0
    finally:
        stop_all(procs, d, quit_signal)


if __name__ == "__main__":
    sys.exit(main())
