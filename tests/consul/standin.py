#!/usr/bin/env python3
"""A stand-in for Consul's HTTP API health endpoint, for the tests (no Consul server can be
installed here). It implements the documented behaviour the gateway relies on:

    GET /v1/health/service/NAME?index=I&wait=Ns&passing=1&dc=DC&tag=T
        the service's entries, as Consul answers them ([{Node, Service, Checks}]), with
        X-Consul-Index. A blocking query (index given and equal to the current one) waits
        until the service changes or `wait` passes (default 5 minutes, at most 10), then
        answers with the index as it is. `passing=1` leaves out entries with a check not
        passing; `tag` keeps entries with that tag; `dc` must name the datacenter ("dc1")
        or the answer is 500 "No path to datacenter". A token, when the stand-in has one,
        must come in X-Consul-Token (else 403).

Test controls:

    PUT  /admin/service/NAME   body: [{"id", "address", "port", "weight", "status", "tags"}]
                               replaces the service's instances; the index moves on
    POST /admin/restart        as a Consul restart: the index goes back to a lower value
    POST /admin/token?value=T  require this token from now on
    GET  /admin/stats          {"queries": N, "blocking": N}

    python3 tests/consul/standin.py PORT
"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

COND = threading.Condition()
STATE = {"index": 100, "services": {}, "token": None, "queries": 0, "blocking": 0}


def parse_wait(v):
    if not v:
        return 300.0
    unit = v[-1]
    n = float(v[:-1]) if unit in "sm" else float(v)
    secs = n * 60 if unit == "m" else n
    return min(secs, 600.0)


def entries(name, passing, tag):
    out = []
    for inst in STATE["services"].get(name, []):
        status = inst.get("status", "passing")
        if passing and status != "passing":
            continue
        if tag and tag not in inst.get("tags", []):
            continue
        out.append({
            "Node": {"Node": f"node-{inst['id']}", "Address": inst.get("node_address", inst["address"]),
                     "Datacenter": "dc1"},
            "Service": {"ID": inst["id"], "Service": name, "Address": inst["address"],
                        "Port": inst["port"], "Tags": inst.get("tags", []),
                        "Weights": {"Passing": inst.get("weight", 1), "Warning": 1}},
            "Checks": [{"CheckID": "serfHealth", "Status": status}],
        })
    return out


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, doc, index=None):
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if index is not None:
            self.send_header("X-Consul-Index", str(index))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        url = urlparse(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/admin/stats":
            return self.answer(200, {"queries": STATE["queries"], "blocking": STATE["blocking"]})
        if not url.path.startswith("/v1/health/service/"):
            return self.answer(404, {"error": "not found"})
        if STATE["token"] and self.headers.get("X-Consul-Token") != STATE["token"]:
            return self.answer(403, "ACL not found")
        if q.get("dc", "dc1") != "dc1":
            return self.answer(500, "No path to datacenter")
        name = url.path[len("/v1/health/service/"):]
        with COND:
            STATE["queries"] += 1
            want = int(q.get("index", "0") or 0)
            if want and want == STATE["index"]:
                STATE["blocking"] += 1
                COND.wait_for(lambda: STATE["index"] != want, timeout=parse_wait(q.get("wait")))
            doc = entries(name, q.get("passing") in ("1", "true", ""), q.get("tag"))
            index = STATE["index"]
        self.answer(200, doc, index)

    def do_PUT(self):
        url = urlparse(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if not url.path.startswith("/admin/service/"):
            return self.answer(404, {"error": "not found"})
        with COND:
            STATE["services"][url.path[len("/admin/service/"):]] = json.loads(body or b"[]")
            STATE["index"] += 1
            COND.notify_all()
        self.answer(200, {"index": STATE["index"]})

    def do_POST(self):
        url = urlparse(self.path)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        with COND:
            if url.path == "/admin/restart":
                # A restarted agent may answer with an index lower than the one a client holds.
                STATE["index"] = 7
                COND.notify_all()
            elif url.path == "/admin/token":
                STATE["token"] = q.get("value") or None
            else:
                return self.answer(404, {"error": "not found"})
            index = STATE["index"]
        self.answer(200, {"index": index})


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.daemon_threads = True
    server.serve_forever()
