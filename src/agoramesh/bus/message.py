"""A NATS message as the code above the bus reads it: subject, reply subject, data, headers.

Only the bus uses nats-py (docs/ARCHITECTURE.md, "Layers"). Code that takes
plain messages from it (``Bus.listen``: ``$SRV`` requests, stored results) or
reads a delivery's message types them against :class:`Message`, a protocol
that nats-py's own message class meets: the bus hands its messages over as
they arrive, so nothing is copied per message on the way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

__all__ = ("Message", "MessageHandler")


class Message(Protocol):
    """What a plain subscription delivers; ``reply`` is "" when nobody waits for an answer."""

    @property
    def subject(self) -> str: ...

    @property
    def reply(self) -> str: ...

    @property
    def data(self) -> bytes: ...

    @property
    def headers(self) -> dict[str, str] | None: ...


#: A callback of ``Bus.listen``: called with each message, in arrival order.
MessageHandler = Callable[[Message], Awaitable[None]]
