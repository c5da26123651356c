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
route, the same with its access log written to a file (`plain+log`), and its full policy chain
(the routes of bench.py).

Environment: REQUESTS (2000), GATEWAY_BIN, PINGORA_BIN, ACCESS_LOG and TRACING (as bench.py);
PROFILE=1 also prints, per subject, where the instructions go: each crate's share (self cost of
its functions, after inlining) and the costliest functions, per request. Needs valgrind
(`make bench` installs it). Everything listens on 127.0.0.1 only.
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
PROFILE = os.environ.get("PROFILE", "") not in ("", "0")
TOP = int(os.environ.get("TOP", "30"))

# `crate::path::fn`, `<crate::Type as other::Trait>::fn`, `core::ptr::drop_in_place<crate::T>`:
# the crate is the first path in the name, looked for past the generic wrappers of core/alloc
# and past a generic `<T as crate::Trait>`.
WRAPPERS = ("core::ptr::drop_in_place<", "alloc::sync::Arc<", "core::ops::function::FnOnce<")
PREFIX = re.compile(r"^(?:[<&*(\[]|mut |const |dyn |[A-Z]\w*(?:,\s*\w+)*>? as )+")


def crate_of(name, obj=""):
    """The crate of a function; outside Rust, its shared library or the program itself."""
    lib = os.path.basename(obj)
    if ".so" in lib:
        return lib.split(".so")[0]
    if name.startswith(("0x", "???")):
        return f"{lib or '(no symbol)'}, no symbol"
    if "::" not in name:
        return "mimalloc" if name.startswith(("mi_", "_mi_")) else lib or "(unknown)"
    for w in WRAPPERS:
        if name.startswith(w) and re.match(r"[<&*]*[a-z_]\w*::", name[len(w):]):
            name = name[len(w):]
            break
    name = PREFIX.sub("", name)
    return re.split(r"::|<| |>", name, maxsplit=1)[0] or "(unknown)"


def profile(dump, name):
    """Self instructions per request by crate and by function, from one callgrind dump."""
    out = subprocess.run(["callgrind_annotate", "--inclusive=no", "--auto=no", "--threshold=100", dump],
                         capture_output=True, text=True).stdout
    m = re.search(r"^\s*([\d,]+)\s.*PROGRAM TOTALS", out, re.M)
    program = int(m.group(1).replace(",", "")) if m else 0
    funcs = []
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+)\s+(?:\([^)]*\)\s+)?(?:\S*?):(.+?)(?: \[([^\]]*)\])?\s*$", line)
        if m and not line.lstrip().startswith(("Ir", "--")):
            n = int(m.group(1).replace(",", ""))
            fn = m.group(2)
            # The frames that were on a thread's stack at the dump (thread start, the worker's
            # loop) carry their callees' cost: not self cost, left out.
            if fn.strip() == "PROGRAM TOTALS" or n > program / 2:
                continue
            funcs.append((n, fn, m.group(3) or ""))
    total = sum(n for n, _, _ in funcs)
    by_crate = {}
    for n, fn, obj in funcs:
        c = crate_of(fn, obj)
        by_crate[c] = by_crate.get(c, 0) + n
    print(f"\n{name}: self instructions per request by crate")
    for c, n in sorted(by_crate.items(), key=lambda kv: -kv[1]):
        if n / REQUESTS >= 50:
            print(f"  {n / REQUESTS:>9,.0f}  {100 * n / total:5.1f}%  {c}")
    print(f"{name}: the {TOP} costliest functions (self, per request)")
    for n, fn, _ in sorted(funcs, key=lambda t: -t[0])[:TOP]:
        print(f"  {n / REQUESTS:>9,.0f}  {fn[:150]}")


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
                    if PROFILE:
                        profile(dumps[0], name)
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
            f.write(bench.gateway_conf(d, port, up, access_log="file"))
        results["plain+log"] = count([GATEWAY_BIN, "-c", yaml], port, "/bench", {}, d, "plain-log", env)
        port = free_port()
        with open(yaml, "w") as f:
            f.write(bench.gateway_conf(d, port, up))
        auth = {"Authorization": f"Bearer {bench.jwt_token()}"}
        results["chain"] = count([GATEWAY_BIN, "-c", yaml], port, "/chain", auth, d, "chain", env)
        print(f"instructions per request ({REQUESTS} requests over one keep-alive connection, callgrind)")
        for name, n in results.items():
            print(f"  {name:<15} {n:>10,.0f}")
        print("ratios (goal in brackets)")
        bench.print_ratios(results, nginx_goal=3)
        return 0
    finally:
        stop_all(procs, d, lambda p: signal.SIGQUIT)


if __name__ == "__main__":
    sys.exit(main())
