"""A Bus's requests and the replies they wait for: request, scatter-gather, inboxes.

An envelope names the reply subject it is sent with (``reply``, PROTOCOL.md
§5), so a requester chooses that subject before sealing, which nats-py's
``request()`` does not let it do. :class:`Requests` therefore keeps one
wildcard reply subscription (``<inbox>.*``), made on the first request, and a
future per request waiting on its own ``<inbox>.<n>``. A scatter-gather and a
streamed exchange (:meth:`Requests.inbox`) each get a fresh inbox instead,
since many replies come to it. Every reply is admitted by the bus's guard
before anyone sees it: junk, forgeries and replies made for another inbox are
counted and dropped, and the request goes on waiting for its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

import nats.errors

from agoramesh.bus.connection import bus_error
from agoramesh.bus.envelope import BROADCAST, Envelope
from agoramesh.bus.ingress import decode_json, encode_json
from agoramesh.bus.message import Message
from agoramesh.bus.replies import ERROR_TYPE
from agoramesh.errors import (
    BusTimeout,
    EnvelopeError,
    NoResponders,
    NotConnected,
    error_from_wire,
)

if TYPE_CHECKING:
    from agoramesh.bus.bus import Bus
    from agoramesh.bus.subscription import Listener

__all__ = ("Requests", "ping")


class Requests:
    """The requests one Bus has out, and its reply subscription."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._prefix = ""  # "<inbox>." of our reply subscription; "" until it is made
        self._waiting: dict[str, asyncio.Future[Envelope | None]] = {}
        self._ids = itertools.count()

    def reset(self) -> None:
        """A new connection: the reply subscription is made on it anew."""
        self._prefix = ""

    def close(self) -> None:
        """The bus closed: requests still waiting fail now, not at their timeout."""
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(NotConnected("the bus closed before the reply came"))

    async def request(self, subject: str, type: str, body: Any, *, to: str = BROADCAST,
                      cid: str | None = None, timeout: float | None = None) -> Envelope:
        """``Bus.request``: the admitted reply; an ``error`` reply raised as its error."""
        bus = self.bus
        wait = timeout or bus.config.request_timeout
        inbox, future = await self._reply_to()
        try:
            wire = bus.seal(subject, type, body, to=to, cid=cid, ttl_ms=bus.ttl_for(wait),
                            reply=inbox)
            await bus.publish_raw(subject, wire, reply=inbox)
            try:
                async with asyncio.timeout(wait):
                    reply = await future
            except TimeoutError:
                raise BusTimeout(f"no reply on {subject} within {wait:g}s") from None
        finally:
            self._waiting.pop(inbox, None)
        if reply is None:
            raise NoResponders(f"no agent is listening on {subject}")
        if reply.type == ERROR_TYPE:
            raise error_from_wire(reply.body)
        return reply

    async def _reply_to(self) -> tuple[str, asyncio.Future[Envelope | None]]:
        """A fresh reply subject under our one reply subscription, and the future of its
        reply: the first admitted envelope (None: the server said nobody listens)."""
        if not self._prefix:
            self._prefix = prefix = f"{self.bus.new_inbox()}."
            try:  # its SUB is queued before the first request's PUB: the server sees it first
                await self.bus.listen(f"{prefix}*", self._on_reply)
            except BaseException:
                self._prefix = ""
                raise
        inbox = f"{self._prefix}{next(self._ids):x}"
        future: asyncio.Future[Envelope | None] = asyncio.get_running_loop().create_future()
        self._waiting[inbox] = future
        return inbox, future

    async def _on_reply(self, msg: Message) -> None:
        """Admit a reply before it answers its request: anything refused (junk, a forgery,
        a reply made for another inbox, counted) leaves the request waiting for its own."""
        future = self._waiting.get(msg.subject)
        if future is None or future.done():
            return
        with contextlib.suppress(EnvelopeError):
            future.set_result(self.take_reply(msg))

    def take_reply(self, msg: Message, *, verify: bool = True) -> Envelope | None:
        """``Bus.take_reply``: the admitted envelope a reply carries (counted as seen), None
        for the server's "no responders"; EnvelopeError (counted) for anything else."""
        if not msg.data and msg.headers and msg.headers.get("Status") == "503":
            return None
        reply = self.bus.guard.admit(msg.data, msg.subject, msg.reply, verify=verify)
        self.bus.saw(reply)
        return reply

    async def request_json(self, subject: str, body: dict[str, Any], *,
                           timeout: float | None = None) -> Any:
        """``Bus.request_json``: a plain-JSON request; the decoded JSON reply."""
        bus = self.bus
        wait = timeout or bus.config.request_timeout
        try:
            msg = await bus.nats.request(subject, encode_json(body), timeout=wait)
        except nats.errors.NoRespondersError:
            raise NoResponders(f"no agent is listening on {subject}") from None
        except nats.errors.TimeoutError:
            raise BusTimeout(f"no reply on {subject} within {wait:g}s") from None
        except nats.errors.Error as exc:
            raise bus_error(exc, f"request on {subject}") from exc
        return decode_json(msg.data, max_bytes=bus.config.envelope.max_bytes)

    async def inbox(self, callback: Callable[[Envelope | None], object], *,
                    verify: bool = True) -> tuple[str, Listener]:
        """``Bus.inbox``: a fresh inbox and its subscription, ``callback`` called with every
        admitted reply to it (None: the server's "no responders")."""
        subject = self.bus.new_inbox()

        async def deliver(msg: Message) -> None:
            with contextlib.suppress(EnvelopeError):  # refused: counted, and not ours
                callback(self.take_reply(msg, verify=verify))

        return subject, await self.bus.listen(subject, deliver)

    async def gather(self, subject: str, type: str, body: Any, *, timeout: float,
                     expected: int | None = None, expected_from: Collection[str] | None = None,
                     to: str = BROADCAST, cid: str | None = None, verify: bool = True,
                     each: Callable[[Envelope], object] | None = None) -> list[Envelope]:
        """``Bus.gather``: publish once, collect replies until enough came or ``timeout``."""
        bus = self.bus
        inbox = bus.new_inbox()
        replies: list[Envelope] = []
        waiting = None if expected_from is None else set(expected_from)
        enough = asyncio.Event()

        def check() -> None:
            if expected is None and waiting is None:
                return  # collect until the timeout
            if (expected is None or len(replies) >= expected) and not waiting:
                enough.set()

        async def collect(msg: Message) -> None:
            try:
                envelope = bus.guard.admit(msg.data, msg.subject, msg.reply, verify=verify)
            except EnvelopeError:
                return
            bus.saw(envelope)
            replies.append(envelope)
            if each is not None:
                each(envelope)
            if waiting is not None:
                waiting.discard(envelope.sender)
            check()

        check()

        listener = await bus.listen(inbox, collect)
        try:
            await bus.publish(subject, type, body, to=to, cid=cid, ttl_ms=bus.ttl_for(timeout),
                              reply=inbox)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await enough.wait()
        finally:
            await listener.stop()
        return replies


async def ping(bus: Bus, subject: str, *, timeout: float) -> bool | None:
    """Whether anyone subscribes ``subject``, by an empty plain request there: True if it
    was answered, False if the server said nobody does ("no responders", status 503),
    None if no answer came within ``timeout`` (a subscriber that did not answer, or a
    request not let through)."""
    try:
        await bus.nats.request(subject, b"", timeout=timeout)
    except nats.errors.NoRespondersError:
        return False
    except (nats.errors.Error, TimeoutError):
        return None
    return True
