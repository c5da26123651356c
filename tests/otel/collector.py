#!/usr/bin/env python3
"""An OTLP/HTTP trace receiver for the tests: it decodes what the gateway exports with the
OpenTelemetry protocol's own definitions (the `opentelemetry-proto` package from PyPI) and
shows the spans as JSON.

    python3 tests/otel/collector.py PORT

    POST /v1/traces        an ExportTraceServiceRequest (application/x-protobuf)
    GET  /spans            every span received so far, decoded, oldest first
    GET  /exports          per export request: its headers and how many spans it carried
    POST /admin/reset      forget what was received
    POST /admin/delay?secs=N   hold every later export answer N seconds
    POST /admin/status?code=N  answer later exports with status N (200 again with 200)
"""

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

LOCK = threading.Lock()
SPANS = []
EXPORTS = []
SETTINGS = {"delay": 0.0, "status": 200}


def any_value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def attributes(kvs):
    return {kv.key: any_value(kv.value) for kv in kvs}


def decode(body):
    req = trace_service_pb2.ExportTraceServiceRequest()
    req.ParseFromString(body)
    out = []
    for rs in req.resource_spans:
        resource = attributes(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(
                    {
                        "trace_id": s.trace_id.hex(),
                        "span_id": s.span_id.hex(),
                        "parent_span_id": s.parent_span_id.hex(),
                        "name": s.name,
                        "kind": trace_pb2.Span.SpanKind.Name(s.kind),
                        "start": s.start_time_unix_nano,
                        "end": s.end_time_unix_nano,
                        "flags": s.flags,
                        "attributes": attributes(s.attributes),
                        "status": {
                            "code": trace_pb2.Status.StatusCode.Name(s.status.code),
                            "message": s.status.message,
                        },
                        "resource": resource,
                        "scope": {"name": ss.scope.name, "version": ss.scope.version},
                    }
                )
    return out


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, doc, content_type="application/json"):
        body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        with LOCK:
            if self.path == "/spans":
                return self.answer(200, SPANS)
            if self.path == "/exports":
                return self.answer(200, EXPORTS)
        self.answer(404, {"error": "not found"})

    def do_POST(self):
        url = urlparse(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        query = parse_qs(url.query)
        if url.path == "/admin/reset":
            with LOCK:
                SPANS.clear()
                EXPORTS.clear()
            return self.answer(200, {})
        if url.path == "/admin/delay":
            SETTINGS["delay"] = float(query["secs"][0])
            return self.answer(200, {})
        if url.path == "/admin/status":
            SETTINGS["status"] = int(query["code"][0])
            return self.answer(200, {})
        if url.path != "/v1/traces":
            return self.answer(404, {"error": "not found"})
        if self.headers.get("Content-Type") != "application/x-protobuf":
            return self.answer(415, {"error": "not protobuf"})
        if SETTINGS["delay"]:
            time.sleep(SETTINGS["delay"])
        if SETTINGS["status"] != 200:
            return self.answer(SETTINGS["status"], {"error": "told to fail"})
        try:
            spans = decode(body)
        except DecodeError as e:
            return self.answer(400, {"error": str(e)})
        with LOCK:
            SPANS.extend(spans)
            EXPORTS.append({"headers": dict(self.headers.items()), "spans": len(spans)})
        # An empty ExportTraceServiceResponse: everything accepted.
        self.answer(200, b"", "application/x-protobuf")


if __name__ == "__main__":
    try:
        server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    except OSError as e:
        # Another receiver (a collector, Jaeger) has the port: leave it the traces.
        sys.exit(f"collector.py: port {sys.argv[1]} is taken ({e.strerror}); not started")
    server.daemon_threads = True
    server.serve_forever()
