#!/usr/bin/env python3
"""Run the k6 suite against the demo: the demo upstreams and the gateway on conf/gateway.yaml
(the ports `make run` uses, so stop `make run` first).

    python3 load-tests/k6/run.py [SCENARIO ...]     # default: all, in this order
    REPORT=1 python3 load-tests/k6/run.py           # also k6's HTML dashboard per scenario

Scenarios: steady, ramp, spike, ratelimit, aggregate, chaos. For chaos the runner kills the
orders upstream 8 s in and restarts it 10 s later, then checks on the gateway's metrics that
the breaker of orders opened and closed again. Exits non-zero when any threshold fails.
Reports and the gateway's log go to load-tests/results/.
"""

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "load-tests"))
from bench import wait_port  # noqa: E402

K6_DIR = os.path.join(ROOT, "load-tests/k6")
RESULTS = os.path.join(ROOT, "load-tests/results")
GATEWAY_BIN = os.environ.get("GATEWAY_BIN", os.path.join(ROOT, "target/release/gateway"))
DEMO_BIN = os.environ.get("DEMO_BIN", os.path.join(ROOT, "target/release/demo-upstreams"))
SCENARIOS = ["steady", "ramp", "spike", "ratelimit", "aggregate", "chaos"]
ORDERS = "orders@127.0.0.1:9004"


def start(cmd, log):
    return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def stop(p, sig=signal.SIGINT):
    if p.poll() is None:
        p.send_signal(sig)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


def metric(name_and_labels):
    text = urllib.request.urlopen("http://127.0.0.1:9090/metrics", timeout=5).read().decode()
    m = re.search(re.escape(name_and_labels) + r" (\d+)", text)
    return int(m.group(1)) if m else 0


def k6(name, log):
    env = {**os.environ, "BASE": "http://127.0.0.1:8080", "ADMIN": "http://127.0.0.1:9090"}
    if os.environ.get("REPORT"):
        env["K6_WEB_DASHBOARD"] = "true"
        env["K6_WEB_DASHBOARD_EXPORT"] = os.path.join(RESULTS, f"{name}.html")
    return subprocess.Popen(["k6", "run", "--no-color", os.path.join(K6_DIR, f"{name}.js")],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def main():
    chosen = sys.argv[1:] or SCENARIOS
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown:
        sys.exit(f"unknown scenario(s) {unknown}; choose from {SCENARIOS}")
    for b in (GATEWAY_BIN, DEMO_BIN):
        if not os.path.exists(b):
            sys.exit(f"{b} missing: run `make load`, which builds it")
    os.makedirs(RESULTS, exist_ok=True)
    glog = open(os.path.join(RESULTS, "gateway.log"), "w")
    demo = start([DEMO_BIN, "users-1@127.0.0.1:9001", "users-2@127.0.0.1:9002", "users-v2@127.0.0.1:9003"], glog)
    orders = start([DEMO_BIN, ORDERS], glog)
    gw = start([GATEWAY_BIN, "-c", "conf/gateway.yaml"], glog)
    results = {}
    try:
        for port in (9001, 9002, 9003, 9004, 8080, 9090):
            wait_port(port)
        for name in chosen:
            print(f"== {name}", flush=True)
            log_path = os.path.join(RESULTS, f"{name}.txt")
            with open(log_path, "w") as log:
                run = k6(name, log)
                extra_ok = True
                if name == "chaos":
                    opened = metric('gateway_circuit_breaker_transitions_total{to="open",upstream="orders"}')
                    closed = metric('gateway_circuit_breaker_transitions_total{to="closed",upstream="orders"}')
                    time.sleep(8)
                    stop(orders, signal.SIGKILL)
                    print("   orders killed", flush=True)
                    time.sleep(10)
                    orders = start([DEMO_BIN, ORDERS], glog)
                    print("   orders restarted", flush=True)
                code = run.wait()
                if name == "chaos":
                    o = metric('gateway_circuit_breaker_transitions_total{to="open",upstream="orders"}') - opened
                    c = metric('gateway_circuit_breaker_transitions_total{to="closed",upstream="orders"}') - closed
                    extra_ok = o >= 1 and c >= 1
                    print(f"   breaker of orders: opened {o}, closed {c}", flush=True)
            with open(log_path) as f:
                summary = [ln for ln in f if re.match(r"\s*(✓|✗)|\s*(http_req_duration|http_reqs|checks|"
                                                       r"rate_limited|enveloped|breaker|ok_after|quota)", ln)]
            print("".join(summary), end="")
            results[name] = code == 0 and extra_ok
            print(f"   {name}: {'passed' if results[name] else 'FAILED'} (k6 exit {code}; log {log_path})",
                  flush=True)
    finally:
        stop(gw)
        stop(demo)
        stop(orders)
    print("\n" + "  ".join(f"{n}: {'ok' if ok else 'FAILED'}" for n, ok in results.items()))
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
