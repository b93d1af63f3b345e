"""The console's routes on the HTTP API: the page, its two static files, its data.

=======  ========================  =====================================================
method   path                      answer
=======  ========================  =====================================================
GET      ``/``                     the console (``index.html``)
GET      ``/console/{file}``       ``console.js``, ``console.css`` (package data)
GET      ``/api/console/state``    the feed's snapshot (:mod:`agoramesh.console.feed`)
GET      ``/api/console/events``   ``text/event-stream``: ``data: <snapshot>``, then a
                                   ``data: <frame>`` for each change (``: keep-alive``
                                   comments between); at most :data:`MAX_STREAMS` at once;
                                   a browser gone is noticed within a second
=======  ========================  =====================================================

Every one of them is behind the API's token check (a bearer header or the
session cookie, :mod:`agoramesh.api.session`). The page and the files are
served with a Content-Security-Policy that allows scripts, styles and
connections from this origin only (no inline script or style), no framing,
and ``nosniff``; the script builds the DOM from data with ``textContent``
and attributes only, never as markup.
"""

from __future__ import annotations

import contextlib
from importlib import resources

from aiohttp import web

from agoramesh.api.json_http import error_response, json_response, only_query
from agoramesh.api.session import PAGE_HEADERS
from agoramesh.console.feed import ConsoleFeed

__all__ = ("CSP", "KEEP_ALIVE", "MAX_STREAMS", "Console")

MAX_STREAMS = 64
#: Seconds without a frame after which a stream gets a keep-alive comment.
KEEP_ALIVE = 15
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
_FILES = {"index.html": "text/html", "console.js": "text/javascript",
          "console.css": "text/css"}


class Console:
    """Mounts the console on an :class:`~agoramesh.api.server.HttpApi` (``mounts=``)."""

    def __init__(self, feed: ConsoleFeed) -> None:
        self.feed = feed
        self.streams = 0
        static = resources.files("agoramesh.console") / "static"
        self._files = {name: static.joinpath(name).read_bytes() for name in _FILES}
        self._headers = {**PAGE_HEADERS, "Content-Security-Policy": CSP}

    def __call__(self, app: web.Application) -> None:
        app.router.add_get("/", self._page)
        app.router.add_get("/console/{name}", self._file)
        app.router.add_get("/api/console/state", self._state)
        app.router.add_get("/api/console/events", self._events)
        app.on_shutdown.append(self._shutdown)

    async def _shutdown(self, app: web.Application) -> None:
        await self.feed.close_streams()

    def _serve(self, name: str) -> web.Response:
        return web.Response(body=self._files[name], content_type=_FILES[name],
                            charset="utf-8", headers=self._headers)

    async def _page(self, request: web.Request) -> web.Response:
        only_query(request)
        return self._serve("index.html")

    async def _file(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in _FILES or name == "index.html":
            raise web.HTTPNotFound()
        return self._serve(name)

    async def _state(self, request: web.Request) -> web.Response:
        only_query(request)
        response = json_response(self.feed.snapshot())
        response.headers["Cache-Control"] = "no-store"
        return response

    async def _events(self, request: web.Request) -> web.StreamResponse:
        only_query(request)
        if self.streams >= MAX_STREAMS:
            return error_response(503, "Overloaded", f"{self.streams} console streams are "
                                  f"open; close one")
        response = web.StreamResponse(headers={
            **self._headers, "Content-Type": "text/event-stream",
            "X-Accel-Buffering": "no"})
        self.streams += 1
        try:
            await response.prepare(request)
            idle = 0
            async with contextlib.aclosing(self.feed.frames(idle=1.0)) as frames:
                async for text in frames:
                    if request.transport is None or request.transport.is_closing():
                        break  # the browser went away while nothing was sent
                    idle = 0 if text else idle + 1
                    if text:
                        await response.write(f"data: {text}\n\n".encode())
                    elif idle >= KEEP_ALIVE:
                        idle = 0
                        await response.write(b": keep-alive\n\n")
        except ConnectionResetError:
            pass  # the browser went away as we wrote
        finally:
            self.streams -= 1
        return response
