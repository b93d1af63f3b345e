"""How the Bus answers what it refuses: expired requests too, replays never; headers; hooks.

PROTOCOL.md §9: a rejected request with a reply subject gets an error reply,
replays excepted; an expired request is answered (``ExpiredEnvelope``, test
vector 4), since with clocks apart its requester may still be waiting. Every
error reply carries ``Nats-Service-Error`` and ``Nats-Service-Error-Code``.
``Bus.subscribe(on_rejected=)`` hears every refusal of its subscription.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from agoramesh.bus import Delivery, Identity, IngressPolicy, seal
from agoramesh.bus.bus import ERROR_CODE_HEADER, ERROR_HEADER
from agoramesh.bus.e2e import E2EKeys
from agoramesh.bus.envelope import now_ms, parse
from agoramesh.bus.identity import verify
from agoramesh.bus.server import EmbeddedServer
from agoramesh.errors import EnvelopeError, ExpiredEnvelope, RejectReason, RemoteError
from agoramesh.testing.plugin import BusFactory

pytestmark = pytest.mark.integration

SUBJECT = "agora.cap.test"


@pytest.fixture
async def raw(nats_server: EmbeddedServer) -> AsyncIterator[NatsClient]:
    client = NatsClient()
    await client.connect(nats_server.client_url, connect_timeout=2, allow_reconnect=False)
    yield client
    await client.close()


class Served:
    """A handler that answers every request it is given, and a record of refusals."""

    def __init__(self) -> None:
        self.bodies: list[object] = []
        self.refused: list[tuple[str, EnvelopeError]] = []

    async def __call__(self, delivery: Delivery) -> None:
        self.bodies.append(delivery.body)
        if delivery.body == {"fail": True}:
            raise RemoteError("Overloaded", "too busy for this")
        await delivery.respond("task_response", {"status": "COMPLETED", "got": delivery.body})

    def on_rejected(self, msg: Msg, error: EnvelopeError) -> None:
        self.refused.append((msg.subject, error))


async def test_an_expired_request_is_answered_with_an_expired_error(
        nats_server: EmbeddedServer, bus_factory: BusFactory, raw: NatsClient) -> None:
    server = await bus_factory(nats_server.client_url)
    served = Served()
    await server.subscribe(SUBJECT, served, on_rejected=served.on_rejected)
    stale = seal(Identity.generate(), type="task_request", subject=SUBJECT, body={"n": 1},
                 ts=now_ms() - 120_000, ttl_ms=60_000)
    answer = await raw.request(SUBJECT, stale, timeout=5)
    error = parse(answer.data)
    assert verify(server.agent_id, error.signed, error.signature)
    assert error.type == "error" and error.to == "*" and error.cid == error.id
    assert error.body["type"] == "ExpiredEnvelope"
    assert error.body["message"].startswith("envelope expired ")
    assert answer.headers == {ERROR_HEADER: f"ExpiredEnvelope: {error.body['message']}",
                              ERROR_CODE_HEADER: "400"}
    assert server.rejections == {RejectReason.EXPIRED: 1}
    assert served.bodies == []
    assert [(subject, type(e)) for subject, e in served.refused] == [(SUBJECT, ExpiredEnvelope)]


async def test_a_replay_is_still_never_answered(
        nats_server: EmbeddedServer, bus_factory: BusFactory, raw: NatsClient) -> None:
    server = await bus_factory(nats_server.client_url)
    served = Served()
    await server.subscribe(SUBJECT, served, on_rejected=served.on_rejected)
    wire = seal(Identity.generate(), type="task_request", subject=SUBJECT, body={"n": 1})
    first = await raw.request(SUBJECT, wire, timeout=5)
    assert parse(first.data).type == "task_response" and not first.headers
    replies: asyncio.Queue[Msg] = asyncio.Queue()
    inbox = raw.new_inbox()
    await raw.subscribe(inbox, cb=replies.put)
    await raw.publish(SUBJECT, wire, reply=inbox)  # the replay
    asker = Identity.generate()
    later = seal(asker, type="task_request", subject=SUBJECT, body={"n": 2})
    await raw.publish(SUBJECT, later, reply=inbox)  # handled after the replay: a barrier
    answer = await asyncio.wait_for(replies.get(), timeout=5)
    # The first answer on the inbox is the later request's.
    assert E2EKeys(asker).open(parse(answer.data)).body["got"] == {"n": 2}
    assert replies.empty()
    assert server.rejections == {RejectReason.REPLAYED: 1}
    assert [type(error).__name__ for _, error in served.refused] == ["ReplayedEnvelope"]


async def test_on_rejected_hears_every_refusal_and_nothing_else(
        nats_server: EmbeddedServer, bus_factory: BusFactory, raw: NatsClient) -> None:
    server = await bus_factory(nats_server.client_url)
    served, other = Served(), Served()
    await server.subscribe(SUBJECT, served, ingress=IngressPolicy.ALLOW,
                           on_rejected=served.on_rejected)
    await server.subscribe("agora.cap.closed", other, on_rejected=other.on_rejected)
    good = seal(Identity.generate(), type="task_request", subject=SUBJECT, body={"n": 1})
    payloads = [b'{"a": ', b"\x00junk", good[:-1] + bytes([good[-1] ^ 1]), good,
                b'{"ok": 1}']
    for payload in payloads:
        await raw.request(SUBJECT, payload, timeout=5)
    assert [type(error).__name__ for _, error in served.refused] == [
        "MalformedEnvelope", "MalformedEnvelope", "BadSignature"]
    assert len(served.bodies) == 2 and other.refused == []
    denied = await raw.request("agora.cap.closed", b'{"ok": 1}', timeout=5)
    assert json.loads(denied.data)["error"]["type"] == "IngressDenied"
    assert denied.headers is not None and denied.headers[ERROR_CODE_HEADER] == "403"
    assert [type(error).__name__ for _, error in other.refused] == ["IngressDenied"]
    assert sum(server.rejections.values()) == 4


async def test_handler_errors_carry_the_headers_in_json_and_envelopes(
        nats_server: EmbeddedServer, bus_factory: BusFactory, raw: NatsClient) -> None:
    server = await bus_factory(nats_server.client_url)
    client = await bus_factory(nats_server.client_url)
    await server.subscribe(SUBJECT, Served(), ingress=IngressPolicy.ALLOW)
    plain = await raw.request(SUBJECT, b'{"fail": true}', timeout=5)
    assert json.loads(plain.data) == {"error": {"type": "Overloaded",
                                                "message": "too busy for this"}}
    assert plain.headers == {ERROR_HEADER: "Overloaded: too busy for this",
                             ERROR_CODE_HEADER: "503"}
    sealed = client.seal(SUBJECT, "task_request", {"fail": True})
    answer = await client.nats.request(SUBJECT, sealed, timeout=5)
    assert answer.headers == {ERROR_HEADER: "Overloaded: too busy for this",
                              ERROR_CODE_HEADER: "503"}
    reply = client.guard.admit(answer.data, answer.subject)  # the bytes verify as sent
    assert reply.type == "error" and reply.body == {"type": "Overloaded",
                                                    "message": "too busy for this"}
