"""A raw NATS client as a test (or another implementation) drives it.

An envelope names the reply subject it is published with (PROTOCOL.md §8,
check 5), so its sender chooses the inbox before sealing: nats-py's
``request()``, which picks the inbox itself, cannot carry one (:func:`ask`).
A raw subscription another connection is about to publish to must be at the
server first, which nats-py's ``flush()`` alone does not promise (:func:`flush`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

__all__ = ("Sealer", "ask", "flush")

#: Builds the payload for a given reply subject (an envelope naming that inbox).
Sealer = Callable[[str], bytes]


async def ask(nc: NatsClient, subject: str, payload: bytes | Sealer, *,
              timeout: float = 5.0) -> Msg:
    """A request and its first reply. ``payload``: plain bytes, sent as ``nats req`` does;
    or a function of the inbox, for an envelope that must name it."""
    if not callable(payload):
        return await nc.request(subject, payload, timeout=timeout)
    inbox = nc.new_inbox()
    replies = await nc.subscribe(inbox, max_msgs=1)
    try:
        await nc.publish(subject, payload(inbox), reply=inbox)
        return await replies.next_msg(timeout=timeout)
    finally:  # no reply: the subscription would outlive the request
        with contextlib.suppress(nats.errors.Error):
            await replies.unsubscribe()


async def flush(nc: NatsClient, timeout: float = 5.0) -> None:
    """Return once the server has processed everything ``nc`` sent before the call.

    Two PINGs, as :meth:`agoramesh.bus.bus.Bus.flush` sends: nats-py writes a
    flush's PING straight to the socket, ahead of a SUB (or PUB) still queued
    for its writer task, so the first PONG can come back before the server has
    the SUB, and a message another connection publishes then is not delivered.
    The second PING is written after them.
    """
    wait = max(1, round(timeout))
    await nc.flush(timeout=wait)
    await nc.flush(timeout=wait)
