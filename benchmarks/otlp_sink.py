"""An OTLP/HTTP trace receiver for ``bench_tracing.py --export otlp``: counts what it is sent.

Run as a child process (``common.spawn_child``), so that decoding what the exporter
sends is neither on the measured event loop nor under its process's GIL nor in its
``time.process_time`` (a collector is another process in a deployment too). It
prints READY, then the port it listens on (127.0.0.1, a free one); it answers every
``POST /v1/traces`` (protobuf, gzip or not) with 200 and an empty
``ExportTraceServiceResponse``, and a body that does not decode with 400; when its
stdin closes it prints one JSON line: the requests, spans and traces it received,
the spans by name, how many traces had how many spans, and its own CPU seconds.
"""

from __future__ import annotations

import gzip
import json
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

__all__ = ("Tally", "main")

PATH = "/v1/traces"
_ANSWER = ExportTraceServiceResponse().SerializeToString()


class Tally:
    """What the sink received (its handler threads add to it under a lock)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = self.rejected = self.spans = 0
        self.names: Counter[str] = Counter()
        self.per_trace: Counter[bytes] = Counter()

    def add(self, body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        with self.lock:
            self.requests += 1
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    for span in scope.spans:
                        self.spans += 1
                        self.names[span.name] += 1
                        self.per_trace[span.trace_id] += 1

    def report(self) -> dict[str, Any]:
        with self.lock:
            sizes = Counter(self.per_trace.values())
            return {"requests": self.requests, "rejected": self.rejected, "spans": self.spans,
                    "traces": len(self.per_trace), "spans_by_name": dict(self.names),
                    "traces_by_spans": {str(size): sizes[size] for size in sorted(sizes)},
                    "cpu_s": round(time.process_time(), 3)}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, tally: Tally) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.tally = tally


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # the exporter's session keeps its connection
    server: _Server

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path != PATH:
            self._answer(404, b"")
            return
        try:
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            self.server.tally.add(body)
        except (DecodeError, OSError):
            with self.server.tally.lock:
                self.server.tally.rejected += 1
            self._answer(400, b"")
            return
        self._answer(200, _ANSWER)

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: a line per request on stderr would be most of this process's work."""


def main() -> None:
    tally = Tally()
    server = _Server(tally)
    serving = threading.Thread(target=server.serve_forever, name="otlp-sink", daemon=True)
    serving.start()
    print("READY", flush=True)
    print(server.server_address[1], flush=True)
    sys.stdin.read()
    server.shutdown()
    server.server_close()
    print(json.dumps(tally.report()), flush=True)


if __name__ == "__main__":
    main()
