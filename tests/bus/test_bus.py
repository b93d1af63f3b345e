"""The Bus against a real nats-server: verification, rejections, ingress, errors, bounds."""

from __future__ import annotations

import asyncio
import json

import msgpack
import pytest
from nats.aio.client import Client as NatsClient

from agoramesh.bus import Bus, Delivery, Envelope, Identity, IngressPolicy, seal
from agoramesh.bus.connection import refusal
from agoramesh.bus.message import Message
from agoramesh.bus.server import EmbeddedServer
from agoramesh.config import BusConfig, EnvelopePolicy
from agoramesh.errors import (
    BadSignature,
    BusError,
    BusTimeout,
    NoResponders,
    NotConnected,
    OversizeEnvelope,
    RejectReason,
    RemoteError,
    SubjectError,
)
from agoramesh.testing import wait_until
from agoramesh.testing.plugin import BusFactory
from agoramesh.testing.raw import flush

pytestmark = pytest.mark.integration

SUBJECT = "agora.cap.test"


class Recorder:
    """A handler that records deliveries and answers requests."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.arrived = asyncio.Event()

    async def __call__(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)
        self.arrived.set()
        await delivery.respond("task_response", {"ok": True, "got": delivery.body})


@pytest.fixture
async def pair(nats_server: EmbeddedServer, bus_factory: BusFactory) -> tuple[Bus, Bus]:
    return await bus_factory(nats_server.client_url), await bus_factory(nats_server.client_url)


@pytest.fixture
async def raw(nats_server: EmbeddedServer) -> NatsClient:
    client = NatsClient()
    await client.connect(nats_server.client_url, connect_timeout=2,
                         allow_reconnect=False)
    yield client
    await client.close()


async def test_connect_to_a_dead_url_fails_fast() -> None:
    config = BusConfig(servers=("nats://127.0.0.1:1",), connect_timeout=1.0)
    async with asyncio.timeout(5):
        with pytest.raises(NotConnected, match=r"cannot connect to nats://127\.0\.0\.1:1"):
            await Bus.connect(Identity.generate(), config)


async def test_publish_subscribe_delivers_verified_envelopes(pair: tuple[Bus, Bus]) -> None:
    sender, receiver = pair
    recorder = Recorder()
    await receiver.subscribe(SUBJECT, recorder)
    await sender.publish(SUBJECT, "status_update", {"progress": 0.5})
    async with asyncio.timeout(2):
        await recorder.arrived.wait()
    delivery = recorder.deliveries[0]
    assert delivery.sender == sender.agent_id
    assert delivery.type == "status_update"
    assert delivery.body == {"progress": 0.5}
    assert not delivery.is_json and not delivery.can_respond
    assert receiver.received["status_update"] == 1 and sender.sent["status_update"] == 1


async def test_a_request_right_after_subscribe_always_finds_the_subscriber(
        pair: tuple[Bus, Bus]) -> None:
    """subscribe() returns once the server has the interest: no retry ever needed.

    nats-py writes a flush's PING ahead of a SUB still queued for its writer; with
    one flush about 1 request in 100 here got "no responders" (Bus.flush).
    """
    a, b = pair
    recorder = Recorder()
    for round_ in range(200):
        subject = f"{SUBJECT}.fresh{round_}"
        subscription = await b.subscribe(subject, recorder)
        reply = await a.request(subject, "task_request", {"round": round_}, timeout=2.0)
        assert reply.body == {"ok": True, "got": {"round": round_}}
        await subscription.stop(0)
    assert len(recorder.deliveries) == 200


async def test_request_reply_carries_conversation_and_addressing(pair: tuple[Bus, Bus]) -> None:
    client, server = pair
    await server.subscribe(SUBJECT, Recorder(), queue=SUBJECT)
    reply = await client.request(SUBJECT, "task_request", {"x": 1}, cid="conv-1", timeout=2)
    assert reply.cid == "conv-1"
    assert reply.to == client.agent_id and reply.sender == server.agent_id
    assert reply.subject.startswith("_INBOX.")
    assert reply.body == {"ok": True, "got": {"x": 1}}


async def test_no_responders_and_timeouts_are_typed(pair: tuple[Bus, Bus]) -> None:
    client, server = pair
    with pytest.raises(NoResponders, match=r"agora\.cap\.nobody"):
        await client.request("agora.cap.nobody", "task_request", {}, timeout=1)

    async def silent(delivery: Delivery) -> None:
        return None

    await server.subscribe(SUBJECT, silent)
    async with asyncio.timeout(3):
        with pytest.raises(BusTimeout, match=r"within 0\.2s"):
            await client.request(SUBJECT, "task_request", {}, timeout=0.2)


async def test_a_request_in_flight_when_the_bus_closes_ends_at_once(
        pair: tuple[Bus, Bus]) -> None:
    """Closing the bus fails a waiting request with NotConnected, not its 30 s timeout;
    a bus started again gets a reply subscription of its own."""
    client, server = pair

    async def silent(delivery: Delivery) -> None:
        return None

    await server.subscribe(SUBJECT, silent)
    waiting = asyncio.ensure_future(client.request(SUBJECT, "task_request", {}, timeout=30))
    await wait_until(lambda: bool(client._requests._waiting), timeout=2)
    async with asyncio.timeout(5):
        await client.close(timeout=0.5)
        with pytest.raises(NotConnected):
            await waiting

    async def echo(delivery: Delivery) -> None:
        await delivery.respond("echo", delivery.body)

    await server.subscribe(SUBJECT + ".echo", echo)
    await client.start()
    try:
        reply = await client.request(SUBJECT + ".echo", "task_request", {"n": 1}, timeout=3)
        assert reply.body == {"n": 1}
    finally:
        await client.close(timeout=0.5)


async def test_handler_errors_reach_the_requester(pair: tuple[Bus, Bus]) -> None:
    client, server = pair

    async def failing(delivery: Delivery) -> None:
        if delivery.body.get("kind") == "known":
            raise SubjectError("bad capability 'x y'")
        raise KeyError("boom")

    await server.subscribe(SUBJECT, failing)
    with pytest.raises(SubjectError, match="bad capability"):
        await client.request(SUBJECT, "task_request", {"kind": "known"}, timeout=2)
    with pytest.raises(RemoteError, match="KeyError: 'boom'"):
        await client.request(SUBJECT, "task_request", {"kind": "other"}, timeout=2)
    # The subscription survived both failures.
    with pytest.raises(RemoteError):
        await client.request(SUBJECT, "task_request", {}, timeout=2)


async def test_forged_envelope_is_rejected_counted_and_answered(
        pair: tuple[Bus, Bus], raw: NatsClient) -> None:
    _, server = pair
    recorder = Recorder()
    await server.subscribe(SUBJECT, recorder)
    # It names the inbox it is sent with (raw.request would pick another), so only its
    # signature is wrong.
    inbox = raw.new_inbox()
    answers = await raw.subscribe(inbox, max_msgs=1)
    forged = bytearray(seal(Identity.generate(), type="task_request", subject=SUBJECT,
                            body={"x": 1}, reply=inbox))
    forged[-5] ^= 0x40
    await raw.publish(SUBJECT, bytes(forged), reply=inbox)
    answer = await answers.next_msg(timeout=2)
    assert server.rejections[RejectReason.BAD_SIGNATURE] == 1
    assert recorder.deliveries == []
    fields = msgpack.unpackb(answer.data[:-64])
    assert fields["type"] == "error" and fields["body"]["type"] == "BadSignature"


async def test_replayed_envelope_is_delivered_once(pair: tuple[Bus, Bus],
                                                   raw: NatsClient) -> None:
    sender, receiver = pair
    recorder = Recorder()
    await receiver.subscribe(SUBJECT, recorder)
    wire = sender.seal(SUBJECT, "status_update", {"n": 1})
    for _ in range(3):
        await raw.publish(SUBJECT, wire)
    await flush(raw)  # the server has the replays (one nats-py flush does not promise it)
    await sender.publish(SUBJECT, "status_update", {"n": 2})  # a fresh one still arrives
    await wait_until(lambda: len(recorder.deliveries) >= 2, timeout=2)
    assert [d.body["n"] for d in recorder.deliveries] == [1, 2]
    assert receiver.rejections[RejectReason.REPLAYED] == 2


async def test_wrong_subject_and_misaddressed(pair: tuple[Bus, Bus], raw: NatsClient) -> None:
    sender, receiver = pair
    recorder = Recorder()
    await receiver.subscribe("agora.>", recorder)
    await raw.publish(SUBJECT, sender.seal("agora.cap.other", "status_update", {}))
    stranger = Identity.generate().agent_id
    await raw.publish(SUBJECT, sender.seal(SUBJECT, "status_update", {}, to=stranger))
    await raw.publish(SUBJECT, b"\x00garbage")
    await raw.flush()
    await wait_until(lambda: receiver.rejections.total() >= 3, timeout=2)
    assert receiver.rejections[RejectReason.WRONG_SUBJECT] == 1
    assert receiver.rejections[RejectReason.MISADDRESSED] == 1
    assert receiver.rejections[RejectReason.MALFORMED] == 1
    assert recorder.deliveries == []


async def test_plain_json_is_denied_unless_policy_allows(pair: tuple[Bus, Bus],
                                                         raw: NatsClient) -> None:
    _, server = pair
    recorder = Recorder()
    await server.subscribe("agora.cap.closed", recorder)
    await server.subscribe("agora.cap.open", recorder, ingress=IngressPolicy.ALLOW)

    denied = json.loads((await raw.request("agora.cap.closed", b'{"a": 1}', timeout=2)).data)
    assert denied["error"]["type"] == "IngressDenied"
    assert server.rejections[RejectReason.INGRESS_DENIED] == 1

    allowed = json.loads((await raw.request("agora.cap.open", b' {"a": 1}', timeout=2)).data)
    assert allowed == {"ok": True, "got": {"a": 1}}
    assert recorder.deliveries[-1].is_json and recorder.deliveries[-1].sender is None

    bad = json.loads((await raw.request("agora.cap.open", b'{"a": ', timeout=2)).data)
    assert bad["error"]["type"] == "MalformedEnvelope"
    assert "not valid JSON" in bad["error"]["message"]

    not_json = json.loads((await raw.request("agora.cap.open", b"hello", timeout=2)).data)
    assert not_json["error"]["type"] == "MalformedEnvelope"
    assert server.rejections[RejectReason.MALFORMED] == 2
    assert len(recorder.deliveries) == 1


async def test_request_json_as_the_nats_cli_does(pair: tuple[Bus, Bus]) -> None:
    client, server = pair
    await server.subscribe(SUBJECT, Recorder(), ingress=IngressPolicy.ALLOW)
    assert await client.request_json(SUBJECT, {"q": "hi"}, timeout=2) == {
        "ok": True, "got": {"q": "hi"}}


async def test_oversize_rejected_on_both_ends(nats_server: EmbeddedServer,
                                              bus_factory: BusFactory,
                                              raw: NatsClient) -> None:
    small = EnvelopePolicy(max_bytes=2048)
    sender = await bus_factory(nats_server.client_url, policy=small)
    receiver = await bus_factory(nats_server.client_url, policy=small)
    with pytest.raises(OversizeEnvelope, match="exceeds the 2048-byte limit"):
        await sender.publish(SUBJECT, "status_update", {"blob": b"x" * 4096})
    recorder = Recorder()
    await receiver.subscribe(SUBJECT, recorder)
    big = seal(Identity.generate(), type="status_update", subject=SUBJECT,
               body={"blob": b"x" * 4096})
    await raw.publish(SUBJECT, big)
    await raw.flush()
    await wait_until(lambda: receiver.rejections[RejectReason.OVERSIZE] >= 1, timeout=2)
    assert recorder.deliveries == []


async def test_concurrent_handlers_and_bounded_close(pair: tuple[Bus, Bus]) -> None:
    client, server = pair
    running = 0
    peak = 0
    release = asyncio.Event()

    async def slow(delivery: Delivery) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            await release.wait()
            await delivery.respond("task_response", {})
        finally:
            running -= 1

    await server.subscribe(SUBJECT, slow, concurrency=4)
    requests = [asyncio.create_task(client.request(SUBJECT, "task_request", {}, timeout=3))
                for _ in range(6)]
    await wait_until(lambda: peak >= 4, timeout=3)
    assert peak == 4  # bounded by concurrency
    release.set()
    await asyncio.gather(*requests)

    release.clear()
    stuck = asyncio.create_task(client.request(SUBJECT, "task_request", {}, timeout=1))
    await wait_until(lambda: running >= 1, timeout=3)
    async with asyncio.timeout(3):
        await server.close(timeout=0.2)  # a handler that never finishes is cancelled
    assert running == 0
    with pytest.raises(BusTimeout):
        await stuck
    with pytest.raises(NotConnected):
        await server.publish(SUBJECT, "status_update", {})


async def test_gather_without_verification_then_confirm(pair: tuple[Bus, Bus],
                                                        raw: NatsClient) -> None:
    asker, honest = pair
    await honest.subscribe(asker.subjects.discover, Recorder())
    liar = Identity.generate()

    async def forge(msg: object) -> None:
        wire = bytearray(seal(liar, type="discovery", subject=msg.reply,  # type: ignore[attr-defined]
                              body={}, to=asker.agent_id))
        wire[-1] ^= 1
        await raw.publish(msg.reply, bytes(wire))  # type: ignore[attr-defined]

    await raw.subscribe(asker.subjects.discover, cb=forge)
    await flush(raw)  # at the server before the gather: raw.flush() alone can return first
    replies = await asker.gather(asker.subjects.discover, "discovery", {}, expected=2,
                                 timeout=5, verify=False)  # returns once both are in
    assert {r.sender for r in replies} == {honest.agent_id, liar.agent_id}, asker.rejections
    genuine = next(r for r in replies if r.sender == honest.agent_id)
    forged = next(r for r in replies if r.sender == liar.agent_id)
    assert asker.guard.confirm(genuine) is genuine
    with pytest.raises(BadSignature):
        asker.guard.confirm(forged)


async def test_an_inbox_hands_over_admitted_replies_and_no_responders(
        pair: tuple[Bus, Bus], raw: NatsClient) -> None:
    client, server = pair
    await server.subscribe(SUBJECT, Recorder())
    arrived: list[Envelope | None] = []
    inbox, listener = await client.inbox(arrived.append)
    # Our own requests need no flush (the server reads our SUB before our PUB); a
    # stranger's publish on another connection does, or the junk can beat the SUB.
    await client.flush()
    await raw.publish(inbox, b"junk")  # refused: counted, never handed over
    await client.publish(SUBJECT, "task_request", {"n": 1}, reply=inbox)
    await wait_until(lambda: bool(arrived) and client.rejections[RejectReason.MALFORMED] == 1,
                     timeout=2)
    assert arrived[0] is not None and arrived[0].sender == server.agent_id
    assert arrived[0].body == {"ok": True, "got": {"n": 1}}
    await client.publish_raw(SUBJECT + ".nobody", b"{}", reply=inbox)
    await wait_until(lambda: len(arrived) == 2, timeout=2)
    assert arrived[1] is None  # the server's "no responders"
    await listener.stop()
    await listener.stop()  # idempotent
    assert listener not in client._listeners


async def test_listen_hands_over_plain_messages_until_stopped(pair: tuple[Bus, Bus],
                                                              raw: NatsClient) -> None:
    client, _ = pair
    heard: list[tuple[str, str, bytes, dict[str, str] | None]] = []

    async def hear(msg: Message) -> None:
        heard.append((msg.subject, msg.reply, msg.data, msg.headers))

    listener = await client.listen("plain.>", hear)
    await client.flush()  # listen does not wait for the server: this does
    await raw.publish("plain.one", b"hi", reply="back", headers={"Kind": "test"})
    await wait_until(lambda: bool(heard), timeout=2)
    assert heard == [("plain.one", "back", b"hi", {"Kind": "test"})]
    await listener.stop()
    await client.flush()
    await raw.publish("plain.two", b"again")
    await flush(raw)
    await client.flush()
    assert len(heard) == 1


async def test_nats_py_errors_come_out_as_ours(pair: tuple[Bus, Bus]) -> None:
    client, _ = pair

    async def ignore(msg: Message) -> None:
        return None

    with pytest.raises(BusError, match="MaxPayloadError"):
        await client.publish_raw(SUBJECT, b"x" * (client.nats.max_payload + 1))
    with pytest.raises(SubjectError):
        await client.listen("not a subject", ignore)
    await client.close()
    with pytest.raises(NotConnected):
        await client.listen(SUBJECT, ignore)
    with pytest.raises(NotConnected):
        await client.inbox(print)



async def test_refusal_is_none_for_an_open_server_and_a_clear_error_for_a_dead_port(
        nats_server: EmbeddedServer) -> None:
    """`refusal` connects once as the nats CLI does: an open server lets it in (None);
    a port nobody listens on is NotConnected within the bound, not a hang."""
    assert await refusal(nats_server.client_url, {}) is None
    with pytest.raises(NotConnected, match="no answer from"):
        await refusal("nats://127.0.0.1:1", {}, timeout=0.5)


async def test_a_closed_connection_wakes_its_waiters(nats_server: EmbeddedServer,
                                                    bus_factory: BusFactory) -> None:
    """`Connection.closed()` wakes when the connection ends; a close of ours has no reason
    (a server's reason, a revoked member's, is shown by the security demo's test)."""
    bus = await bus_factory(nats_server.client_url)
    waiter = asyncio.ensure_future(bus.connection.closed())
    await asyncio.sleep(0)
    assert not waiter.done()
    await bus.close()
    async with asyncio.timeout(5):
        assert await waiter == ""
