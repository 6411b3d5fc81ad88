"""A minimal OTLP/HTTP traces receiver, the collector a node exports to in `cases/costs.py`.

`python -m benchmarks.otlp PORT`.

`POST /v1/traces` takes an `ExportTraceServiceRequest` (protobuf; gzip or deflate bodies accepted), counts
the request, its bytes as received and its spans by name, and answers 200 with an empty
`ExportTraceServiceResponse`. `GET /stats` answers those counts as JSON: `{"requests", "bytes", "spans":
{name: count}, "errors"}`. Anything else is 404. HTTP/1.1 keep-alive (the exporter's session reuses its
connection), a thread per connection. It runs in a process of its own so that decoding never shares a GIL
with the load client, but on the same cores as the node, as a collector on the same host would.

Decoding needs `opentelemetry-proto`, which the `otel` extra's OTLP/HTTP exporter depends on; a body that
does not decode is answered 400 and counted in `errors`.
"""

from __future__ import annotations

import gzip
import sys
import threading
import zlib
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

PATH = "/v1/traces"


def decode(body: bytes, encoding: str) -> ExportTraceServiceRequest:
    """One export request's body (`content-encoding` gzip, deflate or none) as its protobuf message;
    raises on a body that is not one. The receiver of `tests/observe/test_otel.py` decodes with it too."""
    if encoding == "gzip":
        body = gzip.decompress(body)
    elif encoding == "deflate":
        body = zlib.decompress(body)
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    return request


class Counts:
    def __init__(self) -> None:
        self.requests = 0
        self.bytes = 0
        self.errors = 0
        self.spans: Counter[str] = Counter()
        self.lock = threading.Lock()

    def add(self, body: bytes, encoding: str) -> bool:
        """Count one export request; False when its body is not an `ExportTraceServiceRequest`."""
        with self.lock:
            self.requests += 1
            self.bytes += len(body)
        try:
            request = decode(body, encoding)
        except Exception:
            with self.lock:
                self.errors += 1
            return False
        names = [s.name for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
        with self.lock:
            self.spans.update(names)
        return True

    def to_json(self) -> bytes:
        with self.lock:
            data: dict[str, Any] = {
                "requests": self.requests,
                "bytes": self.bytes,
                "spans": dict(self.spans),
                "errors": self.errors,
            }
        return orjson.dumps(data)


def handler(counts: Counts) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(
            self, status: int, body: bytes = b"", content_type: str = "application/x-protobuf"
        ) -> None:
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            if self.path != PATH:
                self._answer(404)
            elif counts.add(body, self.headers.get("content-encoding", "")):
                self._answer(200)
            else:
                self._answer(400)

        def do_GET(self) -> None:
            if self.path == "/stats":
                self._answer(200, counts.to_json(), "application/json")
            else:
                self._answer(404)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), handler(Counts()))
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
