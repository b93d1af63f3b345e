"""Structured logs: one readable line per record by default, JSON lines on request.

Human (``--log-format human``, the default)::

    2026-11-21T10:00:00.123Z WARNING agoramesh.node coder: task failed task_id=t-1 capability=echo

JSON (``--log-format json``), one object per line::

    {"ts": "2026-11-21T10:00:00.123Z", "level": "warning", "logger": "agoramesh.node",
     "message": "task failed", "agent": "coder", "agent_id": "UAB…", "task_id": "t-1"}

Structured fields come from ``extra={...}`` at the call site or are bound once
with :func:`agent_logger` / :meth:`BoundLogger.bind`. Field names used across
agoramesh: ``agent``, ``agent_id``, ``task_id``, ``capability``, ``auction_id``,
``subject``. A field that JSON cannot encode is written as its ``repr``: a log
call never fails because of what it carries.

:func:`configure_logging` owns the ``agoramesh`` logger (its handler replaces
any earlier one, so calling it again never doubles lines) and does not
propagate to the root logger, so an application embedding agoramesh keeps its
own root configuration. When the root logger has no handler of its own (the
CLI), third-party warnings (nats, asyncio, httpx…) are written in the same
format instead of Python's bare last-resort output, so a JSON stream stays
parseable line by line.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

from agoramesh.config import LogFormat
from agoramesh.errors import ConfigError

__all__ = (
    "BoundLogger",
    "HumanFormatter",
    "JsonFormatter",
    "agent_logger",
    "configure_logging",
)

_OURS = "agoramesh"

# Libraries whose debug/info output is noise next to ours; their warnings still show.
_NOISY = ("asyncio", "nats", "aiohttp", "httpx", "httpcore", "openai", "anthropic", "urllib3")

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR, "critical": logging.CRITICAL}

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message", "asctime", "taskName"}


def configure_logging(level: str | int = "warning", fmt: str = LogFormat.HUMAN,
                      stream: TextIO | None = None) -> None:
    """Send agoramesh's logs at ``level`` and above to ``stream`` (default: stderr).

    ``level`` is a name (``debug``, ``info``, ``warning``, ``error``, any case;
    :class:`~agoramesh.config.LogLevel` members are names) or a ``logging``
    number; ``fmt`` is ``human`` or ``json`` (:class:`~agoramesh.config.LogFormat`).
    Raises :class:`~agoramesh.errors.ConfigError` for anything else. Idempotent.
    """
    number = _level_number(level)
    try:
        kind = LogFormat(fmt.lower())
    except ValueError:
        raise ConfigError(f"log format must be human or json, got {fmt!r}") from None
    formatter: logging.Formatter = JsonFormatter() if kind is LogFormat.JSON else HumanFormatter()
    out = sys.stderr if stream is None else stream

    ours = logging.getLogger(_OURS)
    _replace_handler(ours, _handler(out, formatter, number))
    ours.setLevel(number)
    ours.propagate = False

    root = logging.getLogger()
    _replace_handler(root, None)
    if not root.handlers:
        _replace_handler(root, _handler(out, formatter, max(number, logging.WARNING)))
    for name in _NOISY:
        noisy = logging.getLogger(name)
        if noisy.level == logging.NOTSET:
            noisy.setLevel(logging.WARNING)


def agent_logger(logger: logging.Logger | BoundLogger, agent_name: str,
                 agent_id: str) -> BoundLogger:
    """``logger`` with ``agent`` and ``agent_id`` on every record it emits."""
    if isinstance(logger, BoundLogger):
        return logger.bind(agent=agent_name, agent_id=agent_id)
    return BoundLogger(logger, {"agent": agent_name, "agent_id": agent_id})


class BoundLogger(logging.LoggerAdapter[logging.Logger]):
    """A logger carrying fixed structured fields; ``extra`` at a call adds to them.

    ::

        log = agent_logger(logging.getLogger("agoramesh.node"), "coder", agent_id)
        log.info("task done", extra={"task_id": task_id, "capability": "code.review"})
        task_log = log.bind(task_id=task_id)   # a new adapter; ``log`` is unchanged
    """

    def __init__(self, logger: logging.Logger, fields: Mapping[str, object]) -> None:
        super().__init__(logger, dict(fields))

    @property
    def fields(self) -> Mapping[str, object]:
        return self.extra or {}

    def bind(self, **fields: object) -> BoundLogger:
        return BoundLogger(self.logger, {**self.fields, **fields})

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]
                ) -> tuple[Any, MutableMapping[str, Any]]:
        # LoggerAdapter's default drops the call's own extra; merge, the call winning.
        extra = kwargs.get("extra")
        kwargs["extra"] = {**self.fields, **extra} if extra else dict(self.fields)
        return msg, kwargs


class HumanFormatter(logging.Formatter):
    """``<ts> <LEVEL> <logger> [<agent>]: <message> key=value …`` and any traceback below.

    The agent's name stands for the agent; its id is left to the JSON format
    (add ``agent_id`` yourself when no name is bound and it is then shown).
    """

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        agent = fields.pop("agent", None)
        if agent is not None:
            fields.pop("agent_id", None)
        head = f"{_timestamp(record)} {record.levelname} {record.name}"
        if agent is not None:
            head += f" {_text(agent)}"
        parts = [f"{head}: {_message(record)}"]
        parts.extend(f"{key}={_quoted(_text(value))}" for key, value in fields.items())
        line = " ".join(parts)
        for extra_text in (_exception(self, record), record.stack_info):
            if extra_text:
                line += "\n" + extra_text
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line.

    Keys: ``ts`` (ISO-8601 UTC, milliseconds), ``level`` (lower case),
    ``logger``, ``message``, every ``extra`` field, then ``exc`` (the formatted
    traceback) and ``stack`` when present. An extra field named like a core key
    is written with a trailing underscore (``level_``) rather than replacing it.
    """

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {"ts": _timestamp(record), "level": record.levelname.lower(),
                                  "logger": record.name, "message": _message(record)}
        for key, value in _fields(record).items():
            doc[f"{key}_" if key in doc else key] = value
        exc = _exception(self, record)
        if exc:
            doc["exc"] = exc
        if record.stack_info:
            doc["stack"] = record.stack_info
        try:
            return _dumps(doc)
        except (TypeError, ValueError, RecursionError):
            return _dumps({key: _encodable(value) for key, value in doc.items()})


def _handler(stream: TextIO, formatter: logging.Formatter, level: int) -> _Handler:
    handler = _Handler(stream)
    handler.setFormatter(formatter)
    handler.setLevel(level)
    return handler


class _Handler(logging.StreamHandler[TextIO]):
    """Marks the handlers configure_logging installed, so it can replace exactly those."""


def _replace_handler(logger: logging.Logger, handler: logging.Handler | None) -> None:
    for old in [h for h in logger.handlers if isinstance(h, _Handler)]:
        logger.removeHandler(old)
        old.close()  # flushes; a StreamHandler never closes the stream it was given
    if handler is not None:
        logger.addHandler(handler)


def _level_number(level: str | int) -> int:
    if isinstance(level, int) and not isinstance(level, bool) and level >= 0:
        return level
    if isinstance(level, str) and level.lower() in _LEVELS:
        return _LEVELS[level.lower()]
    raise ConfigError(f"log level must be debug, info, warning or error, got {level!r}")


def _timestamp(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


def _fields(record: logging.LogRecord) -> dict[str, object]:
    return {key: value for key, value in record.__dict__.items()
            if key not in _RESERVED and not key.startswith("_")}


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:  # a bad format string must not lose the line
        return f"{_text(record.msg)} % {_safe_repr(record.args)}"


def _exception(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    if record.exc_info and not record.exc_text:
        record.exc_text = formatter.formatException(record.exc_info)
    return record.exc_text or ""


def _dumps(doc: Mapping[str, object]) -> str:
    return json.dumps(doc, ensure_ascii=False, allow_nan=False, default=_safe_repr)


def _encodable(value: object) -> object:
    try:
        _dumps({"v": value})
    except (TypeError, ValueError, RecursionError):
        return _safe_repr(value)
    return value


def _text(value: object) -> str:
    if isinstance(value, str):
        return value
    try:
        return str(value)
    except Exception:
        return _safe_repr(value)


def _quoted(text: str) -> str:
    if text and not any(c.isspace() or c in '"=\\' for c in text):
        return text
    return json.dumps(text, ensure_ascii=False)


def _safe_repr(value: object) -> str:
    try:
        return repr(value)
    except Exception:
        return f"<unrepresentable {type(value).__name__}>"
