"""JSON over HTTP, as every route of the API speaks it: the body read and checked,
the query checked, answers and errors written, the status an error is answered with.

A request body must be a JSON object declared as JSON (``application/json`` or
``application/*+json``, checked before the body is read) and within the API's
``max_body``; ``NaN`` and ``Infinity`` are refused. Errors are ``{"error":
{"type", "message"}}``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError

from agoramesh.api.web import CLIENT_TEXT
from agoramesh.bus.ingress import encode_json
from agoramesh.errors import (
    AgoraError,
    EnvelopeError,
    InvalidRequest,
    PermissionDenied,
    error_code,
    error_to_wire,
)

__all__ = ("BodyLost", "error_response", "json_response", "only_query", "read_json",
           "status_for")

# What reading a body raises when the client hung up or sent a broken body.
_BODY_LOST = (ConnectionError, asyncio.IncompleteReadError, HttpProcessingError,
              aiohttp.ClientPayloadError)


def status_for(error: BaseException) -> int:
    """The HTTP status an error is answered with: the code of its type on the bus
    (:func:`~agoramesh.errors.error_code`, PROTOCOL.md §9), except what only the mesh
    can have failed, a 502: an envelope refused (the API's own request, or an agent's
    answer to it; a task too large to send is a 413 decided before sending), the
    server refusing the API's own connection a subject, and every other error of
    agoramesh (code 500 on the bus: a 500 here is a bug in the API).
    """
    if isinstance(error, AgoraError):
        code = error_code(error_to_wire(error)["type"])
        return 502 if code == 500 or isinstance(error, EnvelopeError | PermissionDenied) \
            else code
    return 504 if isinstance(error, TimeoutError) else 500  # asyncio's own timeouts


def json_response(value: Any, status: int = 200, **headers: str) -> web.Response:
    """``value`` as a JSON answer."""
    return web.Response(body=encode_json(value), status=status, headers=headers,
                        content_type="application/json")


def error_response(status: int, type_name: str, message: str, **headers: str) -> web.Response:
    """An error answer: ``{"error": {"type": type_name, "message": message}}``."""
    return json_response({"error": {"type": type_name, "message": message}}, status, **headers)


def only_query(request: web.Request, *allowed: str) -> None:
    """An InvalidRequest if the request has a query parameter not in ``allowed``."""
    unknown = sorted(set(request.query) - set(allowed))
    if unknown:
        raise InvalidRequest(f"unknown query parameter(s) {', '.join(unknown)[:200]}")


class BodyLost(Exception):
    """The request's body did not arrive whole: the client hung up, or broke its encoding."""


async def read_json(request: web.Request, max_body: int) -> dict[str, Any]:
    """The request's body, a JSON object of at most ``max_body`` bytes.

    The Content-Type and Content-Length are checked before anything is read
    (415, 413); a body that does not arrive whole is :class:`BodyLost`.
    """
    content_type = request.headers.get(hdrs.CONTENT_TYPE)
    if content_type is None or not _is_json(content_type):
        given = ("no Content-Type" if content_type is None
                 else f"Content-Type {content_type[:100]!r}")
        raise web.HTTPUnsupportedMediaType(
            text=f"the body must be JSON and the request has {given}; "
                 f"send Content-Type: application/json")
    if request.content_length is not None and request.content_length > max_body:
        raise web.HTTPRequestEntityTooLarge(max_size=max_body,
                                            actual_size=request.content_length)
    try:
        raw = await request.read()
    except _BODY_LOST as exc:
        raise BodyLost(_one_line(exc)) from None
    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise InvalidRequest("the body is not valid UTF-8") from None
    except (ValueError, RecursionError) as exc:
        if isinstance(exc, InvalidRequest):
            raise
        raise InvalidRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"the body must be a JSON object, got {type(value).__name__}")
    return value


def _reject_constant(name: str) -> Any:
    raise InvalidRequest(f"the body is not valid JSON: {name} is not a number")


def _is_json(content_type: str) -> bool:
    """``application/json`` or ``application/*+json``, any parameters, any case."""
    media_type = content_type.partition(";")[0].strip().lower()
    kind, _, subtype = media_type.partition("/")
    return kind == "application" and (subtype == "json" or (
        subtype.endswith("+json") and len(subtype) > len("+json")))


def _one_line(error: BaseException) -> str:
    text = " ".join(str(getattr(error, "message", None) or error).split()) \
        or type(error).__name__
    return text if len(text) <= CLIENT_TEXT else text[:CLIENT_TEXT] + "…"
