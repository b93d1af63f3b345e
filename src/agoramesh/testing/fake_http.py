"""A scripted local HTTP server for testing backends against a provider's wire format.

The real SDK is pointed at ``server.url``; each POST is recorded and answered
with the next scripted response (the last one repeats). A ``render`` function
turns a test's own response objects into status, content type, body and
headers, so each provider's fake keeps only what is specific to it; a
``respond`` function does the same where the answer also depends on the
request (its path, a field of its body).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Generic, TypeVar

__all__ = ("FakeHTTPServer", "RecordedRequest", "Rendered")

R = TypeVar("R")


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]  # names lower-cased
    body: dict[str, Any]


@dataclass
class Rendered:
    status: int
    content_type: str
    payload: bytes
    headers: dict[str, str] = field(default_factory=dict)


class FakeHTTPServer(Generic[R]):
    """A ThreadingHTTPServer on a free loopback port; use as a context manager."""

    def __init__(self, render: Callable[[R], Rendered] | None = None, *,
                 respond: Callable[[R, RecordedRequest], Rendered] | None = None) -> None:
        """Answer with ``render(scripted)`` or, given instead, ``respond(scripted, request)``."""
        if respond is None:
            if render is None:
                raise TypeError("FakeHTTPServer needs render or respond")
            respond = _without_request(render)
        elif render is not None:
            raise TypeError("FakeHTTPServer takes render or respond, not both")
        answer_to = respond
        self.script: list[R] = []
        self.requests: list[RecordedRequest] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                request = RecordedRequest(
                    self.path, {k.lower(): v for k, v in self.headers.items()},
                    json.loads(self.rfile.read(length) or b"{}"))
                fake.requests.append(request)
                answer = answer_to(fake.script[min(len(fake.requests), len(fake.script)) - 1],
                                   request)
                self.send_response(answer.status)
                self.send_header("content-type", answer.content_type)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(answer.payload)))
                self.end_headers()
                self.wfile.write(answer.payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)

    def __enter__(self) -> FakeHTTPServer[R]:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def _without_request(render: Callable[[R], Rendered]) -> Callable[[R, RecordedRequest], Rendered]:
    return lambda scripted, _request: render(scripted)
