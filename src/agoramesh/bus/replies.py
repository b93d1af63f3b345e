"""Replies: what a handler answers with, in kind, and the error headers every error reply
carries.

A handler receives a :class:`Delivery` and answers with ``respond``, which
replies in kind: an envelope (sealed for the requester) to an envelope, plain
JSON to plain JSON. Every error reply (an ``error`` envelope, a JSON error, a
FAILED ``task_response``) carries the NATS services protocol's error headers
(:func:`error_headers`), so ``nats req`` and ``nats micro`` clients see it too
(PROTOCOL.md §9).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agoramesh.bus.envelope import BROADCAST, Envelope
from agoramesh.bus.ingress import encode_json, encode_json_error
from agoramesh.bus.message import Message
from agoramesh.bus.tracecontext import TRACEPARENT, valid_traceparent
from agoramesh.errors import OversizeEnvelope, error_code, error_to_wire

if TYPE_CHECKING:
    from agoramesh.bus.bus import Bus

__all__ = ("ERROR_CODE_HEADER", "ERROR_HEADER", "ERROR_TYPE", "MAX_ERROR_DESCRIPTION",
           "Delivery", "Handler", "Reply", "error_headers", "headers_size", "reply_error")

#: Envelope type of an error reply; its body is ``{"type", "message"}``.
ERROR_TYPE = "error"
#: The NATS services (micro) protocol's error headers, set on every error reply.
ERROR_HEADER = "Nats-Service-Error"
ERROR_CODE_HEADER = "Nats-Service-Error-Code"
#: The longest ``Nats-Service-Error`` value, in characters.
MAX_ERROR_DESCRIPTION = 1000
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")

def error_headers(type_name: str, message: str) -> dict[str, str]:
    """The headers of an error reply: ``Nats-Service-Error`` and ``Nats-Service-Error-Code``.

    The description is ``"<type>: <message>"`` on one line (control characters,
    CR and LF among them, become spaces), at most :data:`MAX_ERROR_DESCRIPTION`
    characters; the code is :func:`agoramesh.errors.error_code` of the type, in
    decimal.
    """
    type_name = type_name or "RemoteError"
    text = f"{type_name}: {message}" if message else type_name
    description = _CONTROL.sub(" ", text).strip()[:MAX_ERROR_DESCRIPTION].rstrip()
    return {ERROR_HEADER: description, ERROR_CODE_HEADER: str(error_code(type_name))}


def reply_error(type: str, body: Any) -> tuple[str, str] | None:
    """``(type name, message)`` of the error a reply carries, None for any other reply.

    Error replies: an ``error`` envelope (its body), and a ``task_response``
    whose ``status`` is ``FAILED`` (its ``error``), JSON or envelope alike.
    """
    if not isinstance(body, dict):
        return None
    if type == ERROR_TYPE:
        error: Any = body
    elif type == "task_response" and body.get("status") == "FAILED":
        error = body.get("error")
        if not isinstance(error, dict):
            return "TaskError", "the task failed"
    else:
        return None
    return str(error.get("type") or "RemoteError"), str(error.get("message") or "")


def headers_size(headers: Mapping[str, str] | None) -> int:
    """Bytes the headers add to a NATS message (``NATS/1.0``, one line each, a blank line)."""
    if not headers:
        return 0
    return 12 + sum(len(name.encode()) + len(value.encode()) + 4
                    for name, value in headers.items())


@dataclass(frozen=True, slots=True)
class Reply:
    """A reply ready to publish: its payload and headers (None: no headers)."""

    payload: bytes
    headers: dict[str, str] | None = None

    @property
    def size(self) -> int:
        """Bytes as a NATS message: the payload and the headers."""
        return len(self.payload) + headers_size(self.headers)


@dataclass(slots=True)
class Delivery:
    """One admitted message: an envelope, or a plain-JSON request (``envelope`` None)."""

    bus: Bus
    msg: Message
    envelope: Envelope | None
    body: Any

    @property
    def sender(self) -> str | None:
        """The signing agent's id; None for plain JSON (authenticated by NATS only)."""
        return self.envelope.sender if self.envelope else None

    @property
    def type(self) -> str | None:
        return self.envelope.type if self.envelope else None

    @property
    def trace_parent(self) -> str:
        """The sender's W3C traceparent ("" for none or an invalid one): taken out of an
        envelope's body on admission, or a plain-JSON request's ``traceparent`` header."""
        if self.envelope is not None:
            return self.envelope.traceparent
        value = (self.msg.headers or {}).get(TRACEPARENT, "")
        return value if valid_traceparent(value) else ""

    @property
    def is_json(self) -> bool:
        return self.envelope is None

    @property
    def subject(self) -> str:
        return str(self.msg.subject)

    @property
    def can_respond(self) -> bool:
        return bool(self.msg.reply)

    def prepare(self, type: str, body: Any, *, public: bool = False) -> Reply:
        """The reply :meth:`respond` would send: sealed for the requester, or JSON.

        Error replies (:func:`reply_error`) get the error headers. OversizeEnvelope
        if it would exceed ``max_bytes`` as a message, headers included; ValueError
        for a JSON reply JSON cannot carry. Needs a reply subject.
        """
        error = reply_error(type, body)
        headers = error_headers(*error) if error else None
        if self.envelope is None:
            payload = encode_json(body)
            limit = self.bus.config.envelope.max_bytes
            if len(payload) + headers_size(headers) > limit:
                raise OversizeEnvelope(f"reply of {len(payload) + headers_size(headers)} "
                                       f"bytes exceeds the {limit}-byte limit")
        else:
            to = BROADCAST if public else self.envelope.sender
            payload = self.bus.seal(self.msg.reply, type, body, to=to,
                                    cid=self.envelope.cid, headers=headers, traced=False)
        return Reply(payload, headers)

    def measure(self, type: str, body: Any) -> int:
        """The size :meth:`prepare` would find, without its limit (nothing is counted)."""
        error = reply_error(type, body)
        extra = headers_size(error_headers(*error)) if error else 0
        if self.envelope is None:
            return len(encode_json(body)) + extra
        return len(self.bus.wire(self.msg.reply, type, body, to=self.envelope.sender,
                                 cid=self.envelope.cid, traced=False)) + extra

    async def send(self, reply: Reply) -> None:
        """Publish a prepared reply on the reply subject (none: nothing is sent)."""
        if self.msg.reply:
            await self.bus.publish_raw(self.msg.reply, reply.payload, headers=reply.headers)

    async def respond(self, type: str, body: Any, *, public: bool = False) -> None:
        """Reply in kind; a message without a reply subject gets nothing.

        ``public``: a statement anyone may read and check, such as a card (every hello
        broadcasts it): addressed to everyone (``to`` = ``*``), so signed and never
        encrypted. For a one-off answer to many askers (a discovery sweep) one
        signature is cheaper than deriving a pair key for each (PROTOCOL.md §6.3).
        """
        if self.msg.reply:
            await self.send(self.prepare(type, body, public=public))

    async def respond_error(self, error: BaseException) -> None:
        if self.envelope is None:
            if self.msg.reply:
                wire = error_to_wire(error)
                await self.bus.publish_raw(self.msg.reply, encode_json_error(error),
                                           headers=error_headers(wire["type"], wire["message"]))
        else:
            await self.respond(ERROR_TYPE, error_to_wire(error))


Handler = Callable[[Delivery], Awaitable[None]]
