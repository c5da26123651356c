#!/usr/bin/env python3
"""An aggregate route against calling its slowest backend directly.

Three backends (the demo upstreams) sit behind one aggregate route; one of them answers
after DELAY_MS. wrk measures requests/s and latency of (a) the aggregate route through the
gateway and (b) the slow backend called directly, in alternating rounds. The aggregate's
p50 should sit close to the slow backend's: the calls run in parallel, so the total is the
slowest call plus the gateway's own cost, not the sum.

Environment: ROUNDS (3), DURATION seconds (8), CONNECTIONS (32), DELAY_MS (20),
GATEWAY_BIN (target/release/gateway), DEMO_BIN (target/release/demo-upstreams).
"""

import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import free_port, require, stop_all, wait_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
DURATION = int(os.environ.get("DURATION", "8"))
CONNECTIONS = int(os.environ.get("CONNECTIONS", "32"))
DELAY_MS = int(os.environ.get("DELAY_MS", "20"))
GATEWAY_BIN = os.environ.get("GATEWAY_BIN", os.path.join(ROOT, "target/release/gateway"))
DEMO_BIN = os.environ.get("DEMO_BIN", os.path.join(ROOT, "target/release/demo-upstreams"))


def wrk(url):
    import re
    out = subprocess.run(
        ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{DURATION}s", "--latency", url],
        capture_output=True, text=True, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)

    def lat(label):
        m = re.search(rf"\s{label}%\s+([\d.]+)(us|ms|s)", out)
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v

    return {"rps": rps, "p50": lat("50"), "p99": lat("99"), "errors": int(errors.group(1)) if errors else 0}


def main():
    require(("wrk",), (GATEWAY_BIN, DEMO_BIN))
    d = tempfile.mkdtemp(prefix="gw-agg-")
    ports = [free_port() for _ in range(3)]
    gport, fport = free_port(), free_port()
    procs = []
    try:
        procs.append(subprocess.Popen(
            [DEMO_BIN] + [f"b{i}@127.0.0.1:{p}" for i, p in enumerate(ports)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for p in ports:
            wait_port(p)
        conf = os.path.join(d, "gateway.yaml")
        with open(conf, "w") as f:
            f.write(f"""
server:
  listen: ["127.0.0.1:{gport}"]
  fanout: {{ listen: "127.0.0.1:{fport}" }}
  threads: 1
  access_log: "off"
  pid_file: {d}/gw.pid
  upgrade_sock: {d}/gw.sock
upstreams:
  b0: {{ targets: [{{ addr: "127.0.0.1:{ports[0]}" }}] }}
  b1: {{ targets: [{{ addr: "127.0.0.1:{ports[1]}" }}] }}
  b2: {{ targets: [{{ addr: "127.0.0.1:{ports[2]}" }}] }}
routes:
  - {{ name: home, match: {{ path: {{ exact: /home }} }}, aggregate: home }}
aggregates:
  home:
    timeout_ms: 2000
    backends:
      - {{ key: profile, upstream: b0, path: /profile, required: true }}
      - {{ key: orders, upstream: b1, path: "/orders?delay_ms={DELAY_MS}" }}
      - {{ key: recommend, upstream: b2, path: /recommend }}
""")
        gw = subprocess.Popen([GATEWAY_BIN, "-c", conf], stdout=subprocess.DEVNULL,
                              stderr=open(os.path.join(d, "gw.err"), "w"),
                              env={**os.environ, "RUST_LOG": "error"})
        procs.append(gw)
        wait_port(gport)
        wait_port(fport)
        subjects = [
            ("aggregate", f"http://127.0.0.1:{gport}/home"),
            ("slowest", f"http://127.0.0.1:{ports[1]}/orders?delay_ms={DELAY_MS}"),
        ]
        results = {n: [] for n, _ in subjects}
        print(f"{ROUNDS} rounds x {DURATION}s, {CONNECTIONS} connections, slowest backend {DELAY_MS} ms")
        print(f"{'round':>5} {'target':<10} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
        for i in range(ROUNDS):
            for name, url in (subjects if i % 2 == 0 else list(reversed(subjects))):
                r = wrk(url)
                results[name].append(r)
                print(f"{i + 1:>5} {name:<10} {r['rps']:>9.0f} {r['p50']:>8.2f} {r['p99']:>8.2f} {r['errors']:>7}")
        med = {n: {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50", "p99")}
               for n, rs in results.items()}
        a, s = med["aggregate"], med["slowest"]
        print(f"\nmedians: aggregate {a['rps']:.0f} req/s p50 {a['p50']:.2f} ms p99 {a['p99']:.2f} ms; "
              f"slowest backend alone {s['rps']:.0f} req/s p50 {s['p50']:.2f} ms p99 {s['p99']:.2f} ms")
        print(f"aggregate/slowest: req/s {a['rps'] / s['rps']:.2f}, p50 {a['p50'] / s['p50']:.2f}, "
              f"p99 {a['p99'] / s['p99']:.2f}")
        return 1 if any(r["errors"] for rs in results.values() for r in rs) else 0
    finally:
        stop_all(procs, d)


if __name__ == "__main__":
    sys.exit(main())
