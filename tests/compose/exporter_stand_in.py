"""A stand-in for prometheus-nats-exporter, run with the exporter's compose command line.

There is no exporter binary without its image, so the local run of the compose
topology (test_compose_processes.py) starts this in the exporter's place: it
takes the same flags (``-varz -routez … -use_internal_server_name URL``),
listens where the exporter does (``-addr``/``-port``, default 0.0.0.0:7777)
and answers ``/metrics`` as it does for flat fields: one gauge
``gnatsd_<path>_<field>{server_id=…}`` per number in the JSON of each
monitoring path its flags name (``-subz`` reads ``/subsz``), read from the hub
at scrape time. The exporter itself runs in
tests/containers, where Docker is.

    python exporter_stand_in.py -varz -routez -use_internal_server_name http://nats1:8222
"""

from __future__ import annotations

import argparse
import json
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ("ENDPOINTS", "main", "parse_args", "render")

#: The exporter's endpoint flags and the server's monitoring path each reads.
ENDPOINTS = {"varz": "varz", "connz": "connz", "connz_detailed": "connz", "routez": "routez",
             "subz": "subsz", "leafz": "leafz", "healthz": "healthz", "gatewayz": "gatewayz",
             "accstatz": "accstatz", "accountz": "accountz"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    for endpoint in ENDPOINTS:
        parser.add_argument(f"-{endpoint}", action="store_true")
    parser.add_argument("-port", "-p", type=int, default=7777)
    parser.add_argument("-addr", "-a", default="0.0.0.0")
    parser.add_argument("-path", default="/metrics")
    parser.add_argument("-use_internal_server_name", action="store_true")
    parser.add_argument("url")
    return parser.parse_args(argv)


def _get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=3) as response:
        body: dict[str, Any] = json.load(response)
    return body


def render(args: argparse.Namespace) -> str:
    """The exposition: every number at the top of each endpoint's JSON, as a gauge."""
    base = args.url.rstrip("/")
    varz = _get(f"{base}/varz")
    server = str(varz["server_name"] if args.use_internal_server_name else varz["server_id"])
    lines = []
    for endpoint, path in ENDPOINTS.items():
        if not getattr(args, endpoint):
            continue
        body = varz if path == "varz" else _get(f"{base}/{path}")
        for field, value in body.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                name = f"gnatsd_{path}_{field}"
                lines += [f"# TYPE {name} gauge", f'{name}{{server_id="{server}"}} {value}']
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != args.path:
                self.send_error(404)
                return
            try:
                payload = render(args).encode()
            except OSError as error:  # the hub is not up yet: the scrape fails, as it would
                self.send_error(503, str(error))
                return
            self.send_response(200)
            self.send_header("content-type", "text/plain; version=0.0.4")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *log_args: Any) -> None:
            pass

    ThreadingHTTPServer((args.addr, args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
