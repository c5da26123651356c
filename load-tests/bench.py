#!/usr/bin/env python3
"""Gateway against nginx as a reverse proxy in front of the same upstream.

Both proxies run with one worker pinned to core 0; the upstream (nginx answering a fixed
body) and wrk share core 1. Rounds alternate gateway / nginx so that drift of the machine
hits both alike. For each round it reports requests/s, p50 and p99 latency, the proxy's CPU
microseconds per request (user+system CPU time over the run / requests: valid even when
wrk, not the proxy, is the bottleneck) and its peak resident memory; then the medians and
the ratios gateway/nginx.

Environment: ROUNDS (3), DURATION seconds per round (10), CONNECTIONS (50),
GATEWAY_BIN (target/release/gateway). Everything listens on 127.0.0.1 only.
"""

import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
DURATION = int(os.environ.get("DURATION", "10"))
CONNECTIONS = int(os.environ.get("CONNECTIONS", "50"))
GATEWAY_BIN = os.environ.get("GATEWAY_BIN", os.path.join(ROOT, "target/release/gateway"))
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port}")


def cpu_ticks(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total


def peak_rss_kib(pids):
    peak = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            m = re.search(r"VmHWM:\s+(\d+)", f.read())
        peak += int(m.group(1)) if m else 0
    return peak


def stop_all(procs, workdir, sig=lambda p: signal.SIGINT):
    """Signal every process, wait for it (killing it after 5 s), remove the work folder."""
    for p in procs:
        p.send_signal(sig(p))
    for p in procs:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
    shutil.rmtree(workdir, ignore_errors=True)


def children(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def nginx(conf_text, workdir, name):
    conf = os.path.join(workdir, f"{name}.conf")
    with open(conf, "w") as f:
        f.write(conf_text)
    p = subprocess.Popen(
        ["taskset", "-c", "0" if name == "proxy" else "1", "nginx", "-c", conf, "-p", workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return p


NGINX_COMMON = """
daemon off;
master_process on;
worker_processes 1;
user root;
pid {dir}/{name}.pid;
error_log {dir}/{name}.err warn;
events {{ worker_connections 4096; }}
"""


def upstream_conf(d, port):
    return NGINX_COMMON.format(dir=d, name="upstream") + f"""
http {{
  access_log off;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port};
    location / {{ return 200 "hello from upstream\\n"; }}
  }}
}}
"""


def proxy_conf(d, port, up):
    return NGINX_COMMON.format(dir=d, name="proxy") + f"""
http {{
  access_log off;
  keepalive_requests 1000000;
  upstream up {{ server 127.0.0.1:{up}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""


def gateway_conf(d, port, up):
    return f"""
server:
  listen: ["127.0.0.1:{port}"]
  threads: 1
  access_log: "off"
  pid_file: {d}/gateway.pid
  upgrade_sock: {d}/gateway.sock
upstreams:
  up:
    targets: [{{ addr: "127.0.0.1:{up}" }}]
routes:
  - name: plain
    match: {{ path: {{ prefix: / }} }}
    upstream: up
"""


def wrk(port):
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{DURATION}s", "--latency",
         f"http://127.0.0.1:{port}/bench"],
        capture_output=True, text=True, check=True,
    ).stdout
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock_err = re.search(r"Socket errors: (.*)", out)

    def lat(label):
        m = re.search(rf"\s{label}%\s+([\d.]+)(us|ms|s)", out)
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v

    return {
        "requests": reqs, "rps": rps, "p50_ms": lat("50"), "p99_ms": lat("99"),
        "errors": (int(errors.group(1)) if errors else 0), "socket_errors": sock_err.group(1) if sock_err else "",
    }


def measure(port, pids):
    before = cpu_ticks(pids)
    r = wrk(port)
    used = cpu_ticks(pids) - before
    r["cpu_us_per_req"] = used / CLK_TCK * 1e6 / max(r["requests"], 1)
    r["peak_rss_mib"] = peak_rss_kib(pids) / 1024
    return r


def main():
    for tool in ("nginx", "wrk", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: run `make bench`, which installs it")
    if not os.path.exists(GATEWAY_BIN):
        sys.exit(f"{GATEWAY_BIN} missing: run `make release`")
    d = tempfile.mkdtemp(prefix="gw-bench-")
    up, nport, gport = free_port(), free_port(), free_port()
    procs = []
    try:
        procs.append(nginx(upstream_conf(d, up), d, "upstream"))
        wait_port(up)
        nx = nginx(proxy_conf(d, nport, up), d, "proxy")
        procs.append(nx)
        wait_port(nport)
        with open(os.path.join(d, "gateway.yaml"), "w") as f:
            f.write(gateway_conf(d, gport, up))
        gw = subprocess.Popen(
            ["taskset", "-c", "0", GATEWAY_BIN, "-c", os.path.join(d, "gateway.yaml")],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "gateway.err"), "w"),
            env={**os.environ, "RUST_LOG": "error"},
        )
        procs.append(gw)
        wait_port(gport)
        nginx_pids = [nx.pid] + children(nx.pid)
        subjects = [("gateway", gport, [gw.pid]), ("nginx", nport, nginx_pids)]
        # Warm both up: connection pools, caches, page faults.
        for _, port, _ in subjects:
            subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-c10", "-d2s", f"http://127.0.0.1:{port}/"],
                           capture_output=True)
        results = {name: [] for name, _, _ in subjects}
        print(f"{ROUNDS} rounds x {DURATION}s, {CONNECTIONS} keep-alive connections, proxy on core 0, "
              f"upstream nginx and wrk on core 1")
        print(f"{'round':>5} {'proxy':<8} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>11} "
              f"{'peak MiB':>9} {'errors':>7}")
        for i in range(ROUNDS):
            order = subjects if i % 2 == 0 else list(reversed(subjects))
            for name, port, pids in order:
                r = measure(port, pids)
                results[name].append(r)
                print(f"{i + 1:>5} {name:<8} {r['rps']:>10.0f} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} "
                      f"{r['cpu_us_per_req']:>11.2f} {r['peak_rss_mib']:>9.1f} {r['errors']:>7} {r['socket_errors']}")
        med = {n: {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req")}
               for n, rs in results.items()}
        print("\nmedians")
        for n, m in med.items():
            print(f"  {n:<8} {m['rps']:>10.0f} req/s  p50 {m['p50_ms']:.3f} ms  p99 {m['p99_ms']:.3f} ms  "
                  f"{m['cpu_us_per_req']:.2f} CPU us/req")
        g, x = med["gateway"], med["nginx"]
        print("\nratios gateway/nginx")
        print(f"  requests/s      {g['rps'] / x['rps']:.2f}")
        print(f"  CPU us/request  {g['cpu_us_per_req'] / x['cpu_us_per_req']:.2f}   (below 1.00: gateway is cheaper)")
        print(f"  p99 latency     {g['p99_ms'] / x['p99_ms']:.2f}")
        failed = sum(r["errors"] for rs in results.values() for r in rs)
        if failed:
            print(f"\n{failed} non-2xx responses during the run")
            return 1
        return 0
    finally:
        # nginx stops gracefully on SIGQUIT, the gateway at once on SIGINT.
        stop_all(procs, d, lambda p: signal.SIGINT if p.args[-1].endswith(".yaml") else signal.SIGQUIT)


if __name__ == "__main__":
    sys.exit(main())
