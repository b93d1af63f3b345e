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
from agoramesh.testing.raw import Sealer, ask

pytestmark = pytest.mark.integration

SUBJECT = "agora.cap.test"


@pytest.fixture
async def raw(nats_server: EmbeddedServer) -> AsyncIterator[NatsClient]:
    client = NatsClient()
    await client.connect(nats_server.client_url, connect_timeout=2, allow_reconnect=False)
    yield client
    await client.close()


#: Envelope bytes made for the reply subject (inbox) they are sent with.


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
    stale = Identity.generate()
    answer = await ask(raw, SUBJECT, lambda inbox: seal(
        stale, type="task_request", subject=SUBJECT, body={"n": 1}, ts=now_ms() - 120_000,
        ttl_ms=60_000, reply=inbox))
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
    replies: asyncio.Queue[Msg] = asyncio.Queue()
    inbox = raw.new_inbox()
    await raw.subscribe(inbox, cb=replies.put)
    wire = seal(Identity.generate(), type="task_request", subject=SUBJECT, body={"n": 1},
                reply=inbox)
    await raw.publish(SUBJECT, wire, reply=inbox)
    first = await asyncio.wait_for(replies.get(), timeout=5)
    assert parse(first.data).type == "task_response" and not first.headers
    # The replay, with the reply subject it names (with another it is WrongReply, answered).
    await raw.publish(SUBJECT, wire, reply=inbox)
    asker = Identity.generate()
    later = seal(asker, type="task_request", subject=SUBJECT, body={"n": 2}, reply=inbox)
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
    me = Identity.generate()

    def good(inbox: str) -> bytes:
        return seal(me, type="task_request", subject=SUBJECT, body={"n": 1}, reply=inbox)

    def forged(inbox: str) -> bytes:
        wire = good(inbox)
        return wire[:-1] + bytes([wire[-1] ^ 1])

    def elsewhere(inbox: str) -> bytes:  # made for another reply subject
        return good(inbox + ".other")

    payloads: list[bytes | Sealer] = [b'{"a": ', b"\x00junk", forged, elsewhere, good,
                                      b'{"ok": 1}']
    for payload in payloads:
        await ask(raw, SUBJECT, payload)
    assert [type(error).__name__ for _, error in served.refused] == [
        "MalformedEnvelope", "MalformedEnvelope", "BadSignature", "WrongReply"]
    assert len(served.bodies) == 2 and other.refused == []
    denied = await raw.request("agora.cap.closed", b'{"ok": 1}', timeout=5)
    assert json.loads(denied.data)["error"]["type"] == "IngressDenied"
    assert denied.headers is not None and denied.headers[ERROR_CODE_HEADER] == "403"
    assert [type(error).__name__ for _, error in other.refused] == ["IngressDenied"]
    assert sum(server.rejections.values()) == 5


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
    answer = await ask(client.nats, SUBJECT,
                       lambda inbox: client.seal(SUBJECT, "task_request", {"fail": True},
                                                 reply=inbox))
    assert answer.headers == {ERROR_HEADER: "Overloaded: too busy for this",
                              ERROR_CODE_HEADER: "503"}
    reply = client.guard.admit(answer.data, answer.subject, answer.reply or "")  # as sent
    assert reply.type == "error" and reply.body == {"type": "Overloaded",
                                                    "message": "too busy for this"}
