"""One aiohttp site on ``host:port``: start, stop, its URL. The HTTP API and the
metrics endpoint are both this, with their own routes.

What a client sends can reach aiohttp's own log records: a malformed request
is logged by ``aiohttp.server`` as an ERROR whose traceback quotes the
request line (up to 128 KiB of it). Starting a server attaches
:class:`ClientTextFilter` to aiohttp's server loggers, so a malformed request
is one DEBUG line, and no client-controlled value in their records runs past
:data:`CLIENT_TEXT` characters.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Self

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from agoramesh.errors import ConfigError, NotConnected

__all__ = ("CLIENT_TEXT", "RECORD_TEXT", "ClientTextFilter", "WebServer")

log = logging.getLogger("agoramesh.http")

#: The most characters of one client-controlled value in a log record of aiohttp's.
CLIENT_TEXT = 200
#: The most characters of such a record's message (a traceback is bounded by line).
RECORD_TEXT = 1000
_TRACEBACK_LINES = 40
# aiohttp's loggers that see requests: malformed ones, handler errors, access lines.
_AIOHTTP_SERVER_LOGGERS = ("aiohttp.server", "aiohttp.access", "aiohttp.web")


def _clip(text: str, limit: int = CLIENT_TEXT) -> str:
    """``text`` cut to ``limit`` characters, saying how many more there were."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [+{len(text) - limit} characters]"


def _printable(text: str) -> str:
    """``text`` with control characters (line breaks, terminal escapes) escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _clip_value(value: object) -> object:
    """A log argument, unchanged unless its text is too long (then that text, clipped)."""
    if value is None or isinstance(value, bool | int | float):
        return value
    try:
        text = value.decode("ascii", "backslashreplace") if isinstance(
            value, bytes | bytearray) else str(value)
    except Exception:
        text = f"<unprintable {type(value).__name__}>"
    if len(text) <= CLIENT_TEXT and text.isprintable():
        return value
    return _clip(_printable(text))


class ClientTextFilter(logging.Filter):
    """Keeps what clients send from flooding the log through aiohttp's loggers.

    A record about a malformed request (aiohttp's ``HttpProcessingError``:
    a bad request line, a header line too long, a broken body encoding) is
    the client's mistake, already answered 400: it becomes one DEBUG line,
    with the error's text clipped and no traceback. Any other record keeps
    its level; its arguments are clipped to :data:`CLIENT_TEXT` characters,
    its message to :data:`RECORD_TEXT`, and a traceback to
    ``_TRACEBACK_LINES`` lines of at most :data:`CLIENT_TEXT` characters.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            self._bound(record)
        except Exception:  # a filter that raises would lose the line and more
            record.msg, record.args = "(an aiohttp record that could not be bounded)", None
            record.exc_info, record.exc_text = None, None
        return True

    @staticmethod
    def _bound(record: logging.LogRecord) -> None:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            args = record.args
            peer = args[0] if isinstance(args, tuple) and len(args) == 1 else "a client"
            record.msg = "malformed HTTP request from %s: %s: %s"
            record.args = (_clip_value(peer), type(error).__name__,
                           _clip(_printable(" ".join(str(error.message).split()))))
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
            return
        if isinstance(record.args, tuple):
            record.args = tuple(_clip_value(arg) for arg in record.args)
        elif isinstance(record.args, Mapping):
            record.args = {key: _clip_value(arg) for key, arg in record.args.items()}
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep what there is, bounded
            message = f"{_clip_value(record.msg)} {record.args!r}"
        record.msg, record.args = _clip(message, RECORD_TEXT), None
        if record.exc_info:
            trace = logging.Formatter().formatException(record.exc_info).splitlines()
            record.exc_text = "\n".join(_clip(line) for line in trace[-_TRACEBACK_LINES:])
            record.exc_info = None


_CLIENT_TEXT_FILTER = ClientTextFilter()


def _bound_client_text() -> None:
    """Attach :class:`ClientTextFilter` to aiohttp's server loggers (once; idempotent)."""
    for name in _AIOHTTP_SERVER_LOGGERS:
        logging.getLogger(name).addFilter(_CLIENT_TEXT_FILTER)


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
        _bound_client_text()
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
