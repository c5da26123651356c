#!/usr/bin/env python3
"""What tracing costs: the gateway's plain route with `server.tracing` off, at sample ratio 0.01
and at ratio 1 (every request a server span and a try span, exported over OTLP/HTTP to the
upstream nginx, which answers each export 200).

Three gateway processes, one per setting, each one worker pinned to core 0 (wrk and the
upstream on core 1), measured in alternating rounds as bench.py measures: requests/s, p99,
CPU microseconds per request, peak memory. Then instructions per request of each under
callgrind (as instructions.py counts them; the export task's work is in the process, so it is
counted). Ratios against tracing off.

Environment: ROUNDS (3), DURATION (10), CONNECTIONS (50), REQUESTS (2000), GATEWAY_BIN.
Everything listens on 127.0.0.1 only.
"""

import os
import signal
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
import instructions  # noqa: E402
from bench import GATEWAY_BIN, free_port, nginx, stop_all, upstream_conf, wait_port  # noqa: E402

SETTINGS = ("off", "0.01", "1")


def write_conf(d, name, up, setting):
    """A gateway config in its own folder of `d`, with tracing as `setting`: (port, path)."""
    port = free_port()
    sub = os.path.join(d, name)
    os.makedirs(sub)
    conf = os.path.join(sub, "gateway.yaml")
    with open(conf, "w") as f:
        f.write(bench.gateway_conf(sub, port, up, setting))
    return port, conf


def main():
    bench.require(("nginx", "wrk", "taskset", "valgrind"), (GATEWAY_BIN,))
    d = tempfile.mkdtemp(prefix="gw-tracing-")
    up = free_port()
    procs = []
    quiet = {**os.environ, "RUST_LOG": "error", "BENCH_JWT_SECRET": bench.JWT_SECRET}
    try:
        procs.append(nginx(upstream_conf(d, up), d, "upstream"))
        wait_port(up)
        gateways = {}
        for setting in SETTINGS:
            port, conf = write_conf(d, f"tracing-{setting}", up, setting)
            p = subprocess.Popen(["taskset", "-c", "0", GATEWAY_BIN, "-c", conf],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=quiet)
            procs.append(p)
            wait_port(port)
            gateways[setting] = (port, p, conf)
        for port, _, _ in gateways.values():
            subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-c10", "-d2s",
                            f"http://127.0.0.1:{port}/bench"], capture_output=True)
        print(f"{bench.ROUNDS} rounds x {bench.DURATION}s, {bench.CONNECTIONS} keep-alive connections, "
              f"the plain route, gateway on core 0")
        med, failed = bench.run_rounds([(s, *gateways[s]) for s in SETTINGS],
                                       lambda g: bench.measure(g[1], [g[2].pid]), "tracing")
        # Stop the measured processes; callgrind runs its own below.
        for _, p, _ in gateways.values():
            p.send_signal(signal.SIGINT)
            p.wait(timeout=20)
        instr = {}
        for s in SETTINGS:
            # A dump name without dots: instructions.count finds the dump by its numbered suffix.
            name = "tracing-" + s.replace(".", "_")
            port, conf = write_conf(d, f"instr-{s}", up, s)
            instr[s] = instructions.count([GATEWAY_BIN, "-c", conf], port, "/bench", {},
                                          os.path.dirname(conf), name, quiet)
        print("\nmedians, and instructions per request (callgrind, "
              f"{instructions.REQUESTS} requests over one connection)")
        for s in SETTINGS:
            m = med[s]
            print(f"  tracing {s:<5} {m['rps']:>9.0f} req/s  p99 {m['p99_ms']:.3f} ms  "
                  f"{m['cpu_us_per_req']:.2f} CPU us/req  {instr[s]:>9,.0f} instructions/req")
        print("\nagainst tracing off")
        for s in SETTINGS[1:]:
            print(f"  ratio {s:<5} CPU {med[s]['cpu_us_per_req'] / med['off']['cpu_us_per_req']:.2f}  "
                  f"instructions {instr[s] / instr['off']:.2f}")
        return 1 if failed else 0
    finally:
        stop_all(procs, d, bench.quit_signal)


if __name__ == "__main__":
    sys.exit(main())
