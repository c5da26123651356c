#!/usr/bin/env python3
"""The gateway against nginx and a bare Pingora proxy, in front of the same upstream.

Each proxy runs one worker pinned to core 0; the upstream (nginx answering a fixed body) and
wrk share core 1. Four subjects, in rounds whose order alternates so that drift of the
machine hits all alike:

  nginx     nginx as a reverse proxy (keep-alive upstream)
  pingora   a bare Pingora proxy (load-tests/bare-pingora): the floor our code adds to
  plain     the gateway, a plain prefix route
  chain     the same gateway process, a route with the full policy chain: JWT (HS256),
            two rate limits (sliding window and token bucket, never reached), an upstream
            with a circuit breaker and retries, metrics; access log off
  plain+log a second gateway process, the plain route with its access log written to a file
            (the default line), so the log's cost is a ratio within one run

For each round: requests/s, p50 and p99 latency, the proxy's CPU microseconds per request
(user+system CPU time over the run / requests: valid even when wrk, not the proxy, is the
bottleneck) and its peak resident memory; then medians and the ratios.

Environment: ROUNDS (3), DURATION seconds per round (10), CONNECTIONS (50),
GATEWAY_BIN (target/release/gateway), PINGORA_BIN (target/release/bare-pingora),
QUOTA_HEADERS (the chain's rate limits' `headers` setting; unset: the default, both),
ACCESS_LOG (the gateway's access log: off, stdout or file; default off),
TRACING (off, or a sample ratio such as 1 or 0.01: the gateway records spans and exports them
over OTLP to the upstream nginx, which answers every export 200; default off).
Everything listens on 127.0.0.1 only.
"""

import base64
import hashlib
import hmac
import json
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
PINGORA_BIN = os.environ.get("PINGORA_BIN", os.path.join(ROOT, "target/release/bare-pingora"))
# The same proxy with the gateway's allocator (mimalloc).
PINGORA_MI_BIN = PINGORA_BIN + "-mimalloc"
# The chain's rate limits' `headers` setting (both, ratelimit, x-ratelimit, none); unset: the default.
QUOTA_HEADERS = os.environ.get("QUOTA_HEADERS", "")
# The gateway's access log in the benches: off (default), stdout, or file.
ACCESS_LOG = os.environ.get("ACCESS_LOG", "off")
# The gateway's tracing in the benches: off (default), or the sample ratio of new traces.
TRACING = os.environ.get("TRACING", "off")
JWT_SECRET = "bench-secret-bench-secret"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def require(tools=(), binaries=()):
    """Exit with the make target to run when a tool or a built binary is missing."""
    for tool in tools:
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: run `make bench`, which installs it")
    for b in binaries:
        if not os.path.exists(b):
            sys.exit(f"{b} missing: run `make bench`, which builds it")


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


def server_block(d, port, extra="", access_log=None):
    """The gateway's `server:` block for the benches: one worker, the access log as
    `access_log` or else ACCESS_LOG says (off; `file` writes it to the bench's directory)."""
    access_log = access_log or ACCESS_LOG
    log = f"{d}/access.log" if access_log == "file" else access_log
    return f"""
server:
  listen: ["127.0.0.1:{port}"]
  threads: 1
  access_log: "{log}"
  pid_file: {d}/gateway.pid
  upgrade_sock: {d}/gateway.sock
{extra}"""


def tracing_block(up, tracing):
    """`server.tracing` for `tracing` (off, or a sample ratio): spans exported to the upstream
    nginx (its `location /` answers the OTLP POST with 200 and drops the body), so exporting
    costs the gateway what it costs."""
    if tracing == "off":
        return ""
    return (f'  tracing: {{ endpoint: "http://127.0.0.1:{up}/v1/traces", '
            f'sample_ratio: {float(tracing)} }}\n')


def gateway_conf(d, port, up, tracing=None, access_log=None):
    quota = f", headers: {QUOTA_HEADERS}" if QUOTA_HEADERS else ""
    block = tracing_block(up, TRACING if tracing is None else tracing)
    return server_block(d, port, block, access_log) + f"""upstreams:
  up:
    targets: [{{ addr: "127.0.0.1:{up}" }}]
  guarded:
    targets: [{{ addr: "127.0.0.1:{up}" }}]
    circuit_breaker: {{ consecutive_failures: 5, failure_rate: 0.5, window_secs: 10, min_requests: 20 }}
    retry: {{ attempts: 2, on: [connect_failure, timeout, 502, 503] }}
routes:
  - name: chain
    match: {{ path: {{ prefix: /chain }} }}
    upstream: guarded
    plugins:
      jwt: {{ algorithms: [HS256], keys: {{ secret_env: BENCH_JWT_SECRET }}, forward_claims: {{ sub: X-User-Id }} }}
      rate_limit:
        - {{ algorithm: sliding_window, key: ip, limit: 100000000{quota} }}
        - {{ algorithm: token_bucket, key: "claim:sub", limit: 100000000{quota} }}
  - name: plain
    match: {{ path: {{ prefix: / }} }}
    upstream: up
"""


def jwt_token():
    """An HS256 token for the chain route, valid for a day."""
    def b64(b):
        return base64.urlsafe_b64encode(b).rstrip(b"=")
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"sub": "bench", "exp": int(time.time()) + 86400}).encode())
    sig = b64(hmac.new(JWT_SECRET.encode(), head + b"." + body, hashlib.sha256).digest())
    return (head + b"." + body + b"." + sig).decode()


def wrk(port, path="/bench", headers=(), scheme="http", duration=None, connections=None):
    """wrk from core 1, keep-alive: requests, req/s, p50 and p99 in ms, non-2xx answers."""
    cmd = ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections or CONNECTIONS}",
           f"-d{duration or DURATION}s", "--latency"]
    for h in headers:
        cmd += ["-H", h]
    out = subprocess.run(cmd + [f"{scheme}://127.0.0.1:{port}{path}"],
                         capture_output=True, text=True, check=True).stdout
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


def print_ratios(cost, nginx_goal=1.5):
    """The ratios between the subjects' costs per request, with the goals (plain / nginx: 1.5 in
    CPU time, 3 in instructions)."""
    print(f"  pingora / nginx   {cost['pingora'] / cost['nginx']:.2f}")
    print(f"  plain / pingora   {cost['plain'] / cost['pingora']:.2f}")
    for floor, what in (("pingora-mi", "the same allocator"),
                        ("pingora-mi+work", "the same allocator, headers and timeouts")):
        if floor in cost:
            print(f"  plain / {floor:<15} {cost['plain'] / cost[floor]:.2f}   (bare Pingora with {what})")
    print(f"  chain / plain     {cost['chain'] / cost['plain']:.2f}   (<= 1.15)")
    if "plain+log" in cost:
        print(f"  plain+log / plain {cost['plain+log'] / cost['plain']:.2f}   (<= 1.10)")
    print(f"  plain / nginx     {cost['plain'] / cost['nginx']:.2f}   (<= {nginx_goal})")


def measured(pids, run):
    """`run()`'s result, with the CPU time per request and the peak memory of `pids`."""
    before = cpu_ticks(pids)
    r = run()
    used = cpu_ticks(pids) - before
    r["cpu_us_per_req"] = used / CLK_TCK * 1e6 / max(r["requests"], 1)
    r["peak_rss_mib"] = peak_rss_kib(pids) / 1024
    return r


def measure(port, pids, path="/bench", headers=()):
    return measured(pids, lambda: wrk(port, path, headers))


def quit_signal(p):
    """nginx stops gracefully on SIGQUIT, the Pingora processes at once on SIGINT."""
    return signal.SIGQUIT if p.args[-2] == "-p" else signal.SIGINT


def start_gateway(workdir, conf_text, env=None):
    """The gateway serving `conf_text` (written to WORKDIR/gateway.yaml), pinned to core 0."""
    conf = os.path.join(workdir, "gateway.yaml")
    with open(conf, "w") as f:
        f.write(conf_text)
    return subprocess.Popen(
        ["taskset", "-c", "0", GATEWAY_BIN, "-c", conf],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(workdir, "gateway.err"), "w"),
        env={**os.environ, "RUST_LOG": "error", **(env or {})},
    )


def run_rounds(subjects, measure_one, label="proxy", width=9):
    """ROUNDS rounds over `subjects` (tuples naming the subject first), in reverse order every
    other round; prints each result, and returns the medians per subject and the count of
    failed requests."""
    results = {s[0]: [] for s in subjects}
    print(f"{'round':>5} {label:<{width}} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>11} "
          f"{'peak MiB':>9} {'errors':>7}")
    for i in range(ROUNDS):
        for subject in (subjects if i % 2 == 0 else list(reversed(subjects))):
            r = measure_one(subject)
            results[subject[0]].append(r)
            print(f"{i + 1:>5} {subject[0]:<{width}} {r['rps']:>10.0f} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} "
                  f"{r['cpu_us_per_req']:>11.2f} {r['peak_rss_mib']:>9.1f} {r['errors']:>7} "
                  f"{r.get('socket_errors', '')}")
    med = {n: {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req")}
           for n, rs in results.items()}
    print("\nmedians")
    for n, m in med.items():
        print(f"  {n:<{width}} {m['rps']:>10.0f} req/s  p50 {m['p50_ms']:.3f} ms  p99 {m['p99_ms']:.3f} ms  "
              f"{m['cpu_us_per_req']:.2f} CPU us/req")
    return med, sum(r["errors"] for rs in results.values() for r in rs)


def main():
    require(("nginx", "wrk", "taskset"), (GATEWAY_BIN, PINGORA_BIN))
    d = tempfile.mkdtemp(prefix="gw-bench-")
    up, nport, gport, pport = free_port(), free_port(), free_port(), free_port()
    procs = []
    try:
        procs.append(nginx(upstream_conf(d, up), d, "upstream"))
        wait_port(up)
        nx = nginx(proxy_conf(d, nport, up), d, "proxy")
        procs.append(nx)
        wait_port(nport)
        gw = start_gateway(d, gateway_conf(d, gport, up), {"BENCH_JWT_SECRET": JWT_SECRET})
        procs.append(gw)
        bare = subprocess.Popen(
            ["taskset", "-c", "0", PINGORA_BIN, f"127.0.0.1:{pport}", f"127.0.0.1:{up}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "error"},
        )
        procs.append(bare)
        lport, logdir = free_port(), os.path.join(d, "log")
        os.makedirs(logdir)
        gw_log = start_gateway(logdir, gateway_conf(logdir, lport, up, access_log="file"),
                               {"BENCH_JWT_SECRET": JWT_SECRET})
        procs.append(gw_log)
        wait_port(gport)
        wait_port(pport)
        wait_port(lport)
        nginx_pids = [nx.pid] + children(nx.pid)
        auth = (f"Authorization: Bearer {jwt_token()}",)
        subjects = [
            ("nginx", nport, nginx_pids, "/bench", ()),
            ("pingora", pport, [bare.pid], "/bench", ()),
            ("plain", gport, [gw.pid], "/bench", ()),
            ("chain", gport, [gw.pid], "/chain", auth),
            ("plain+log", lport, [gw_log.pid], "/bench", ()),
        ]
        # Warm every subject up: connection pools, caches, page faults.
        for _, port, _, path, headers in subjects:
            cmd = ["taskset", "-c", "1", "wrk", "-t1", "-c10", "-d2s"]
            for h in headers:
                cmd += ["-H", h]
            subprocess.run(cmd + [f"http://127.0.0.1:{port}{path}"], capture_output=True)
        print(f"{ROUNDS} rounds x {DURATION}s, {CONNECTIONS} keep-alive connections, proxy on core 0, "
              f"upstream nginx and wrk on core 1")
        med, failed = run_rounds(subjects, lambda s: measure(s[1], s[2], s[3], s[4]))
        print("\nCPU per request, ratios (goal in brackets)")
        print_ratios({n: m["cpu_us_per_req"] for n, m in med.items()})
        print(f"  requests/s plain / nginx  {med['plain']['rps'] / med['nginx']['rps']:.2f}")
        if failed:
            print(f"\n{failed} non-2xx responses during the run")
            return 1
        return 0
    finally:
        stop_all(procs, d, quit_signal)


if __name__ == "__main__":
    sys.exit(main())
