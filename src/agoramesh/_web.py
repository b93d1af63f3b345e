"""One aiohttp site on ``host:port``: start, stop, its URL. The HTTP API and the
metrics endpoint are both this, with their own routes."""

from __future__ import annotations

import logging
import os
from typing import Self

from aiohttp import web

from agoramesh.errors import ConfigError, NotConnected

__all__ = ("WebServer",)

log = logging.getLogger("agoramesh.http")


class WebServer:
    """Serves :meth:`application` on ``host:port`` (``port=0``: a free one, then ``.port``).

    A port that cannot be bound is a one-line :class:`ConfigError`.
    """

    #: What the server is and what it serves, in messages.
    what = "the HTTP server"
    serves = "HTTP"

    def __init__(self, *, host: str, port: int, shutdown_timeout: float) -> None:
        if not 0 <= port <= 65535:
            raise ConfigError(f"port must be 0-65535, not {port}")
        self.host = host
        self.shutdown_timeout = shutdown_timeout
        self._requested_port = port
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def application(self) -> web.Application:
        raise NotImplementedError

    @property
    def url(self) -> str:
        """``http://host:port`` once started."""
        if self.port is None:
            raise NotConnected(f"{self.what} is not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Listen; returns once connections are accepted."""
        if self._runner is not None:
            return
        runner = web.AppRunner(self.application(), access_log=None,
                               shutdown_timeout=self.shutdown_timeout)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self._requested_port).start()
        except OSError as exc:
            await runner.cleanup()
            reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            raise ConfigError(f"cannot serve {self.serves} on {self.host}:{self._requested_port}: "
                              f"{reason}") from None
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        log.info("%s listening on %s", self.what, self.url)

    async def stop(self) -> None:
        """Stop listening; requests in progress get ``shutdown_timeout`` to finish."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        self.port = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
