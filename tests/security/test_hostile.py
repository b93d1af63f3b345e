"""Hostile peers on a real mesh: forgeries, replays, stale and oversize envelopes,
misdirected envelopes, wrong types, impersonation by presence, and floods.

The attacker is a plain NATS client with an nkey of its own (hostile_support.Attacker).
For each attack the target must reject the input, count it under its reason (the Bus's
counters and the exported Prometheus counter agree), answer a request where the
protocol says to and stay silent where it says not to, let it have no effect, and go
on serving. "Silent" is checked against a later request through the same
subscription: a subscription admits one message at a time, so once the later one is
answered the earlier one has been handled.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import nats.errors
import pytest
from hostile_support import (
    CAP,
    SMALL,
    Attacker,
    AttackerFactory,
    NodeFactory,
    Sealer,
    check_error_envelope,
    check_json_error,
    counted,
    exported_agree,
    fields_of,
    forge,
    oversize,
    resign,
    serving,
    started,
    strict_json,
)
from nats.aio.msg import Msg

from agoramesh.agent import AgentNode
from agoramesh.bus.bus import Delivery
from agoramesh.bus.e2e import E2EKeys
from agoramesh.bus.envelope import now_ms, parse
from agoramesh.bus.identity import Identity
from agoramesh.bus.server import EmbeddedServer
from agoramesh.config import MAX_MESSAGE_BYTES
from agoramesh.errors import RejectReason
from agoramesh.nodes.client import submit_task
from agoramesh.nodes.task import Task, TaskStatus
from agoramesh.protocols.auction.policy import AuctionPolicy
from agoramesh.testing import wait_until
from agoramesh.testing.plugin import BusFactory, MeshFactory
from agoramesh.testing.workers import WORK, Worker

pytestmark = pytest.mark.integration

def task_body(n: int, seconds: float = 0.0, capability: str | None = None) -> dict[str, Any]:
    task = Task(capability=capability or WORK.name, parameters={"n": n, "seconds": seconds})
    return task.as_dict()


async def knows(node: AgentNode, *peers: AgentNode) -> None:
    await wait_until(lambda: all(peer.agent_id in node.directory for peer in peers), timeout=5)


def capabilities_of(node: AgentNode, peer: AgentNode) -> set[str]:
    entry = node.directory.get(peer.agent_id)
    assert entry is not None, f"{peer.config.name} is not in {node.config.name}'s directory"
    return {capability.name for capability in entry.card.capabilities}


async def test_forged_senders_are_rejected_on_every_subject_and_change_nothing(
        mesh_factory: MeshFactory, node_factory: NodeFactory, bus_factory: BusFactory,
        attacker_factory: AttackerFactory, unexpected_errors: Callable[[], list[str]]) -> None:
    mesh = await mesh_factory(seeds=2)
    near, far = (server.client_url for server in mesh.servers)
    # Heartbeats of 1 s: only a forged bye could take the victim out of a directory.
    target = await node_factory(far, "target", [WORK], backend=Worker("target"),
                                heartbeat_interval=1.0)
    victim = await node_factory(near, "victim", ["echo"], heartbeat_interval=1.0)
    await knows(target, victim)
    await knows(victim, target)
    requester = await bus_factory(near)
    attacker = await attacker_factory(near)  # forgeries cross the route to the target
    thief = attacker.identity
    me = target.agent_id

    def in_name_of(sender: str, type: str, subject: str, body: Any, to: str = "*",
                   reply: str = "") -> bytes:
        return forge(thief, sender=sender, type=type, subject=subject, body=body, to=to,
                     reply=reply)

    def request_in_name_of(sender: str, type: str, subject: str, body: Any,
                           to: str = "*") -> Sealer:  # for the inbox it is sent with
        return lambda inbox: in_name_of(sender, type, subject, body, to, reply=inbox)

    # A long task of the requester's, so a forged cancel has something to cancel.
    running = asyncio.ensure_future(submit_task(
        requester, Task(capability=WORK.name, parameters={"n": 7, "seconds": 1.0}), timeout=10))
    try:
        await wait_until(lambda: len(started(target)) == 1, timeout=5)
        running_id = started(target)[0]
        direct = target.bus.subjects.agent(me)
        forgeries = [  # all in someone else's name, all requests
            (CAP, request_in_name_of(victim.agent_id, "task_request", CAP, task_body(1))),
            (direct, request_in_name_of(victim.agent_id, "task_request", direct, task_body(2),
                                        to=me)),
            (direct, request_in_name_of(victim.agent_id, "award", direct, {
                "auction_id": "a" * 32, "task": task_body(3), "lease_interval": 1.0}, to=me)),
            (direct, request_in_name_of(requester.agent_id, "task_cancel", direct,
                                        {"task_id": running_id}, to=me)),
        ]
        for subject, wire in forgeries:
            inbox, reply = await attacker.ask(subject, wire)
            check_error_envelope(reply, signer=me, inbox=inbox, reason=RejectReason.BAD_SIGNATURE)
        result = await running
    finally:
        running.cancel()
        await asyncio.wait([running])
    assert result.status is TaskStatus.COMPLETED, "a forged cancel stopped the task"
    assert started(target) == [running_id], "a forged task or award was run"

    presence = target.bus.subjects.presence(victim.agent_id)
    card = {**victim.card.as_dict(), "capabilities": [{"name": "evil.do"}]}
    for type, body in (("bye", {}), ("hello", {"card": card, "status": {}, "interval": 0.2,
                                               "digest": "0" * 24}),
                       ("heartbeat", {"status": {}, "interval": 0.2, "digest": "1" * 24})):
        await attacker.publish(presence, in_name_of(victim.agent_id, type, presence, body))
    await attacker.flush()
    await wait_until(lambda: target.bus.rejections[RejectReason.BAD_SIGNATURE] == 7, timeout=5)
    await wait_until(lambda: victim.bus.rejections[RejectReason.BAD_SIGNATURE] == 3, timeout=5)
    assert capabilities_of(target, victim) == {"echo"}
    assert not target.directory.capable("evil.do")
    assert counted(target) == Counter({"bad_signature": 7})
    assert counted(victim) == Counter({"bad_signature": 3})
    assert counted(requester) == Counter()
    exported_agree(target, victim)
    assert not serving([target, victim])
    assert unexpected_errors() == []


async def test_cards_claiming_another_agent_are_ignored(
        mesh_factory: MeshFactory, node_factory: NodeFactory,
        attacker_factory: AttackerFactory, unexpected_errors: Callable[[], list[str]]) -> None:
    # Signed with the attacker's own key, so they pass admission: presence itself must
    # refuse a card (or a bye) that is not the signer's.
    mesh = await mesh_factory(seeds=2)
    near, far = (server.client_url for server in mesh.servers)
    target = await node_factory(far, "target", ["math.evaluate"], heartbeat_interval=1.0)
    victim = await node_factory(near, "victim", ["echo"], heartbeat_interval=1.0)
    await knows(target, victim)
    attacker = await attacker_factory(near)
    me, them = attacker.identity, victim.agent_id
    seen = target.bus.received.copy()
    stolen = {**victim.card.as_dict(), "capabilities": [{"name": "evil.do"}]}
    hello = {"card": stolen, "status": {}, "interval": 0.2, "digest": "2" * 24}
    for subject, type, body in (
            (target.bus.subjects.presence(them), "hello", hello),  # on the victim's subject
            (target.bus.subjects.presence(me.agent_id), "hello", hello),  # on its own
            (target.bus.subjects.presence(them), "bye", {})):
        await attacker.publish(subject, forge(me, type=type, subject=subject, body=body))
    await attacker.flush()
    # Admitted (they are properly signed), then refused and counted by presence: a hello or
    # bye on another agent's subject as wrong_subject, a card not the signer's as schema.
    await wait_until(lambda: target.bus.received["hello"] - seen["hello"] >= 2
                     and target.bus.received["bye"] - seen["bye"] >= 1, timeout=5)
    refused = Counter({"wrong_subject": 2, "schema": 1})
    await wait_until(lambda: counted(target) == refused, timeout=5)
    await wait_until(lambda: counted(victim) == refused, timeout=5)
    exported_agree(target, victim)
    assert them in target.directory and me.agent_id not in target.directory
    assert capabilities_of(target, victim) == {"echo"}
    assert not target.directory.capable("evil.do")
    result = await target.dispatcher.submit("echo", {"text": "to the real victim"})
    assert result.agent_id == them and result.status is TaskStatus.COMPLETED
    assert unexpected_errors() == []


async def test_replayed_task_requests_are_counted_unanswered_and_run_once(
        nats_server: EmbeddedServer, node_factory: NodeFactory, bus_factory: BusFactory,
        attacker_factory: AttackerFactory, unexpected_errors: Callable[[], list[str]]) -> None:
    url = nats_server.client_url
    target = await node_factory(url, "target", [WORK], backend=Worker("target"))
    requester = await bus_factory(url)
    attacker = await attacker_factory(url)
    captured: list[Msg] = []

    async def capture(msg: Msg) -> None:
        captured.append(msg)

    direct = target.bus.subjects.agent(target.agent_id)
    await attacker.listen(direct, capture)
    await attacker.listen(CAP, capture)
    one = await submit_task(requester, Task(capability=WORK.name, parameters={"n": 1}),
                            agent_id=target.agent_id, timeout=5)
    two = await submit_task(requester, Task(capability=WORK.name, parameters={"n": 2}), timeout=5)
    assert one.status is two.status is TaskStatus.COMPLETED
    await wait_until(lambda: len(captured) == 2, timeout=5)
    # Each replayed with its own reply subject (the one it names): a replay, never answered,
    # even to the requester's inbox, which the attacker now listens on.
    leaked: list[Msg] = []

    async def leak(msg: Msg) -> None:
        leaked.append(msg)

    for msg in captured:
        await attacker.listen(msg.reply, leak)
        for _ in range(3):
            await attacker.publish(msg.subject, msg.data, reply=msg.reply)
    # And with a reply subject of the attacker's (the request does not name it): refused
    # before the replay check as wrong_reply, and answered so, but still not run.
    for msg in captured:
        inbox = attacker.inbox()
        await attacker.publish(msg.subject, msg.data, reply=inbox)
        check_error_envelope(await attacker.reply(inbox), signer=target.agent_id, inbox=inbox,
                             reason=RejectReason.WRONG_REPLY)
    # Later requests through the same two subscriptions: answered, so the replays were handled.
    own = attacker.forge(type="card_request", subject=direct, body={}, to=target.agent_id)
    assert attacker.open(await attacker.request(direct, own)).type == "card"
    answer = strict_json(await attacker.request(CAP, b'{"n": 3}'))
    assert answer["status"] == "COMPLETED" and answer["result"]["n"] == 3
    await attacker.flush()
    assert leaked == []
    assert started(target) == [one.task_id, two.task_id, answer["task_id"]]
    assert counted(target) == Counter({"replayed": 6, "wrong_reply": 2})
    exported_agree(target)
    assert unexpected_errors() == []


async def test_a_replayed_award_is_refused_while_fresh_and_after_it_expired(
        nats_server: EmbeddedServer, node_factory: NodeFactory,
        attacker_factory: AttackerFactory, unexpected_errors: Callable[[], list[str]]) -> None:
    url = nats_server.client_url
    winner = await node_factory(url, "winner", [WORK], backend=Worker("winner"))
    client = await node_factory(url, "client", ["echo"],  # awards live 1 s
                                auction_policy=AuctionPolicy(award_timeout=1.0))
    await knows(client, winner)
    attacker = await attacker_factory(url)
    awards: list[Msg] = []

    async def replay(msg: Msg) -> None:  # at once: to the auction's inbox, and elsewhere
        if parse(msg.data).type == "award":
            awards.append(msg)
            for reply in (msg.reply, attacker.inbox()):
                await attacker.publish(msg.subject, msg.data, reply=reply)

    await attacker.listen(client.bus.subjects.agent(winner.agent_id), replay)
    result = await client.dispatcher.submit(WORK.name, {"n": 5})
    assert result.status is TaskStatus.COMPLETED
    # The award names the auction's inbox: a copy with another reply subject is refused
    # before the replay check (wrong_reply), the copy with the same one as a replay.
    await wait_until(lambda: winner.bus.rejections[RejectReason.REPLAYED] == 1
                     and winner.bus.rejections[RejectReason.WRONG_REPLY] == 1, timeout=5)
    award = awards[0]
    # Later, once it expired (an award lives as long as the award timeout).
    await asyncio.sleep(max(0.0, (parse(award.data).exp - now_ms()) / 1000) + 0.05)
    await attacker.publish(award.subject, award.data, reply=award.reply)
    await attacker.flush()
    await wait_until(lambda: winner.bus.rejections[RejectReason.EXPIRED] == 1, timeout=5)
    assert started(winner) == [result.task_id]
    assert winner.metrics.awards == Counter({(WORK.name, "accept"): 1})
    assert counted(winner) == Counter({"replayed": 1, "wrong_reply": 1, "expired": 1})
    exported_agree(winner, client)
    assert unexpected_errors() == []


async def test_stale_future_and_overlong_envelopes(
        nats_server: EmbeddedServer, node_factory: NodeFactory,
        attacker_factory: AttackerFactory, unexpected_errors: Callable[[], list[str]]) -> None:
    url = nats_server.client_url
    target = await node_factory(url, "target", [WORK], backend=Worker("target"))
    attacker = await attacker_factory(url)
    me, now = attacker.identity, now_ms()

    def request(n: int, *, ts: int | None = None, ttl_ms: int = 60_000) -> Sealer:
        return lambda inbox: forge(me, type="task_request", subject=CAP, body=task_body(n),
                                   ts=ts, ttl_ms=ttl_ms, reply=inbox)

    for reason, wire in ((RejectReason.EXPIRED, request(1, ts=now - 120_000, ttl_ms=60_000)),
                         (RejectReason.FUTURE, request(2, ts=now + 60_000)),
                         (RejectReason.SCHEMA, request(3, ttl_ms=600_001))):
        inbox, reply = await attacker.ask(CAP, wire)  # expired too: clocks may disagree
        check_error_envelope(reply, signer=target.agent_id, inbox=inbox, reason=reason)
    skewed = attacker.open(await attacker.request(CAP, request(4, ts=now + 20_000)))  # in skew
    assert skewed.type == "task_response"
    assert len(started(target)) == 1
    assert counted(target) == Counter({"expired": 1, "future": 1, "schema": 1})
    exported_agree(target)
    assert unexpected_errors() == []


async def test_oversize_envelopes_and_json_are_refused_before_anything_else(
        nats_server: EmbeddedServer, node_factory: NodeFactory,
        attacker_factory: AttackerFactory, unexpected_errors: Callable[[], list[str]]) -> None:
    url = nats_server.client_url
    target = await node_factory(url, "target", [WORK, "echo"], backend=Worker("target"),
                                policy=SMALL)
    attacker = await attacker_factory(url)
    direct = target.bus.subjects.agent(target.agent_id)
    for subject, wire in ((CAP, oversize(attacker.identity, CAP)),
                          (direct, oversize(attacker.identity, direct, to=target.agent_id)),
                          (CAP, b"\x8a" + b"\x00" * SMALL.max_bytes)):  # not even msgpack
        inbox, reply = await attacker.ask(subject, wire)
        check_error_envelope(reply, signer=target.agent_id, inbox=inbox,
                             reason=RejectReason.OVERSIZE)
    big_json = b'{"text": "' + b"x" * SMALL.max_bytes + b'"}'
    check_json_error(await attacker.request("agora.cap.echo", big_json), RejectReason.OVERSIZE)
    # Past the server's max_payload (1 MiB + 64 KiB) nothing is even sent.
    with pytest.raises(nats.errors.MaxPayloadError):
        await attacker.publish(CAP, b"\x8a" * (MAX_MESSAGE_BYTES + 1))
    assert started(target) == []
    assert counted(target) == Counter({"oversize": 4})
    exported_agree(target)
    assert unexpected_errors() == []


async def test_wrong_types_are_schema_errors_invalid_tasks_or_invalid_input(
        nats_server: EmbeddedServer, node_factory: NodeFactory,
        attacker_factory: AttackerFactory, unexpected_errors: Callable[[], list[str]]) -> None:
    url = nats_server.client_url
    target = await node_factory(url, "target", [WORK], backend=Worker("target"))
    attacker = await attacker_factory(url)
    me = attacker.identity
    genuine = fields_of(forge(me, type="task_request", subject=CAP, body=task_body(1)))
    envelope_level = [
        {**genuine, "ts": str(genuine["ts"])},
        {**genuine, "type": "Task-Request"},
        {**genuine, "from": genuine["from"].lower()},
        {**genuine, "exp": float(genuine["exp"])},
        {**genuine, "id": True},
        {**genuine, "reply": 5},
        {**genuine, "reply": "not a subject"},
        {**genuine, "auth": "none"},
        {**genuine, "auth": "mac"},  # a broadcast is never MACed (here: signed anyway)
    ]
    for fields in envelope_level:
        inbox, reply = await attacker.ask(CAP, resign(me, fields))
        check_error_envelope(reply, signer=target.agent_id, inbox=inbox,
                             reason=RejectReason.SCHEMA)
    # Admitted envelopes whose body is no task: a FAILED task_response, never a crash.
    for body, kind in (({"parameters": {"seconds": "slow"}}, "InvalidInput"),
                       ({"priority": "high", "parameters": {}}, "InvalidTask"),
                       (["not", "a", "task"], "InvalidTask"),
                       ({"task_type": "other.thing"}, "InvalidTask"),
                       ({"bribe": 1, "parameters": {}}, "InvalidTask"),
                       ({"parameters": {"n": 1.5}}, "InvalidInput"), (None, "InvalidTask")):
        answer = attacker.open(await attacker.request(CAP, attacker.forge(
            type="task_request", subject=CAP, body=body)))
        assert answer.type == "task_response" and answer.body["status"] == "FAILED", answer.body
        assert answer.body["error"]["type"] == kind, (body, answer.body)
    assert started(target) == []
    assert counted(target) == Counter({"schema": len(envelope_level)})
    assert target.metrics.tasks[WORK.name, "rejected"] == 7
    exported_agree(target)
    assert unexpected_errors() == []


async def test_envelopes_on_the_wrong_subject_or_for_someone_else(
        nats_server: EmbeddedServer, node_factory: NodeFactory, bus_factory: BusFactory,
        attacker_factory: AttackerFactory, unexpected_errors: Callable[[], list[str]]) -> None:
    url = nats_server.client_url
    target = await node_factory(url, "target", [WORK], backend=Worker("target"))
    bystander = await node_factory(url, "bystander", ["echo"])
    requester = await bus_factory(url)
    attacker = await attacker_factory(url)
    direct = target.bus.subjects.agent(target.agent_id)
    elsewhere = bystander.bus.subjects.agent(bystander.agent_id)

    def sealed(subject: str, body: Any, to: str = "*") -> Sealer:
        """The requester's genuine request, made for the inbox the attacker sends it with."""
        return lambda inbox: requester.seal(subject, "task_request", body, to=to, reply=inbox)

    cases = [
        # genuine envelopes of the requester's, re-published by the attacker elsewhere
        (direct, sealed(CAP, task_body(1)), RejectReason.WRONG_SUBJECT),
        (direct, sealed(elsewhere, task_body(2, capability="echo"), to=bystander.agent_id),
         RejectReason.WRONG_SUBJECT),
        (CAP, sealed(CAP + ".v2", task_body(3)), RejectReason.WRONG_SUBJECT),
        # authenticated and on the right subject, but addressed to another agent
        (direct, sealed(direct, task_body(4), to=bystander.agent_id), RejectReason.MISADDRESSED),
        (CAP, sealed(CAP, task_body(5), to=bystander.agent_id), RejectReason.MISADDRESSED),
    ]
    for subject, wire, reason in cases:
        inbox, reply = await attacker.ask(subject, wire)
        check_error_envelope(reply, signer=target.agent_id, inbox=inbox, reason=reason)
    assert started(target) == []
    assert counted(target) == Counter({"wrong_subject": 3, "misaddressed": 2})
    assert counted(bystander) == Counter()
    exported_agree(target, bystander)
    assert unexpected_errors() == []


async def test_encrypted_bodies_that_do_not_open_are_undecryptable(
        nats_server: EmbeddedServer, node_factory: NodeFactory,
        attacker_factory: AttackerFactory, unexpected_errors: Callable[[], list[str]]) -> None:
    url = nats_server.client_url
    target = await node_factory(url, "target", [WORK], backend=Worker("target"))
    attacker = await attacker_factory(url)
    me, them = attacker.identity, target.agent_id
    direct = target.bus.subjects.agent(them)
    for_someone_else = E2EKeys(me).seal_body(Identity.generate().agent_id, task_body(1))
    cases = [
        (direct, attacker.forge(type="task_request", subject=direct, to=them,
                                body={"$box": b"\x00" * 60})),  # garbage in the box
        (direct, attacker.forge(type="task_request", subject=direct, to=them,
                                body=for_someone_else)),  # a real box, for another key
        (direct, attacker.forge(type="task_request", subject=direct, to=them, auth="mac",
                                body={"$box": b"\x00" * 60})),  # MACed as its peers do
        (CAP, attacker.forge(type="task_request", subject=CAP, body={"$box": b"\x00" * 60})),
    ]
    for subject, wire in cases:
        inbox, reply = await attacker.ask(subject, wire)
        check_error_envelope(reply, signer=them, inbox=inbox,
                             reason=RejectReason.UNDECRYPTABLE)
    assert started(target) == []
    assert counted(target) == Counter({"undecryptable": len(cases)})
    exported_agree(target)
    assert unexpected_errors() == []


def flood_payloads(attacker: Attacker, subject: str, count: int, *, to: str = "*",
                   forge_as: str | None = None, sink: str = "") -> list[tuple[bytes, str]]:
    """``count`` hostile payloads for ``subject``, of several kinds, none of which may pass,
    each with the reply subject to publish it with: ``sink`` for every third, else none
    (the envelopes name the one they are sent with, so that is not what refuses them).

    Two in five are malformed; the others are expired, on the wrong subject, or (with
    ``forge_as``) signed by the attacker in that agent's name.
    """
    me, now = attacker.identity, now_ms()
    kinds: list[Callable[[int, str], bytes]] = [
        lambda i, reply: b"\x8a" + i.to_bytes(4, "big") * 20,  # a map header, then junk
        lambda i, reply: b"%d garbage" % i,  # neither an envelope nor JSON
        lambda i, reply: forge(me, type="task_request", subject=subject, body={"n": i}, to=to,
                               ts=now - 120_000, reply=reply),
        lambda i, reply: forge(me, type="task_request", subject=subject + ".x", body={"n": i},
                               to=to, reply=reply),
    ]
    if forge_as is not None:
        kinds.append(lambda i, reply: forge(me, sender=forge_as, type="task_request",
                                            subject=subject, body={"n": i}, to=to,
                                            reply=reply))
    replies = [sink if i % 3 == 0 else "" for i in range(count)]
    return [(kinds[i % len(kinds)](i, replies[i]), replies[i]) for i in range(count)]


FLOOD = 3000


async def test_a_flood_on_a_direct_subject_is_counted_and_survived(
        nats_server: EmbeddedServer, node_factory: NodeFactory, bus_factory: BusFactory,
        attacker_factory: AttackerFactory, unexpected_errors: Callable[[], list[str]]) -> None:
    url = nats_server.client_url
    # Slow beats: a heartbeat queued behind the flood on a loaded machine must not expire
    # and add to the counts (their lifetime is 3 beats).
    target = await node_factory(url, "target", [WORK], backend=Worker("target"),
                                heartbeat_interval=5.0)
    victim = await node_factory(url, "victim", ["echo"], heartbeat_interval=5.0)
    requester = await bus_factory(url)
    attacker = await attacker_factory(url)
    direct = target.bus.subjects.agent(target.agent_id)
    sink = attacker.inbox()  # every third asks for an answer: the target talks back to all
    payloads = flood_payloads(attacker, direct, FLOOD, to=target.agent_id,
                              forge_as=victim.agent_id, sink=sink)
    payloads += [(oversize(attacker.identity, direct, to=target.agent_id), sink)] * 20
    started_at = time.monotonic()
    async with asyncio.timeout(20):
        for payload, reply in payloads:
            await attacker.publish(direct, payload, reply=reply)
        await attacker.flush()
        await wait_until(lambda: target.bus.rejections.total() >= len(payloads), timeout=20,
                         interval=0.05)
    assert counted(target) == Counter({"malformed": 2 * FLOOD // 5, "bad_signature": FLOOD // 5,
                                       "wrong_subject": FLOOD // 5, "expired": FLOOD // 5,
                                       "oversize": 20})
    result = await submit_task(requester, Task(capability=WORK.name, parameters={"n": 1}),
                               agent_id=target.agent_id, timeout=5)
    assert result.status is TaskStatus.COMPLETED and started(target) == [result.task_id]
    varz = await nats_server.monitor.varz() if nats_server.monitor else {}
    assert varz.get("slow_consumers") == 0, "the server had to cut a client off"
    assert not serving([target, victim])
    assert counted(victim) == Counter()
    exported_agree(target)
    assert unexpected_errors() == []
    assert time.monotonic() - started_at < 20


async def test_a_flood_on_a_cfp_subject_is_counted_and_auctions_go_on(
        nats_server: EmbeddedServer, node_factory: NodeFactory,
        attacker_factory: AttackerFactory, unexpected_errors: Callable[[], list[str]]) -> None:
    url = nats_server.client_url
    # Slow beats, as on the direct subject: a heartbeat queued behind the flood (two
    # bidders read it in this one process) must not expire and add to the counts. The
    # client first, so it learns the bidders from their hellos, not a beat 5 s later.
    client = await node_factory(url, "client", ["echo"], heartbeat_interval=5.0)
    bidders = [await node_factory(url, f"bidder{i}", [WORK], backend=Worker(f"bidder{i}"),
                                  heartbeat_interval=5.0) for i in range(2)]
    await knows(client, *bidders)
    attacker = await attacker_factory(url)
    cfp = client.bus.subjects.cfp(WORK.name)
    # cfps are admitted without their signature check (PROTOCOL.md §16: a forged one
    # costs a bid), so this flood carries every kind but forgeries.
    payloads = flood_payloads(attacker, cfp, FLOOD)
    payloads += [(oversize(attacker.identity, cfp, type="cfp"), "")] * 20
    async with asyncio.timeout(20):
        for payload, reply in payloads:
            await attacker.publish(cfp, payload, reply=reply)
        await attacker.flush()
        await wait_until(lambda: all(b.bus.rejections.total() >= len(payloads)
                                     for b in bidders), timeout=20, interval=0.05)
    expected = Counter({"malformed": FLOOD // 2, "expired": FLOOD // 4,
                        "wrong_subject": FLOOD // 4, "oversize": 20})
    assert [counted(b) for b in bidders] == [expected, expected]
    result = await client.dispatcher.submit(WORK.name, {"n": 9})
    assert result.status is TaskStatus.COMPLETED and result.result["n"] == 9
    assert sum(len(started(b)) for b in bidders) == 1
    assert not serving([*bidders, client])
    exported_agree(*bidders, client)
    assert unexpected_errors() == []


async def test_replayed_presence_cannot_bring_back_an_agent_that_left(
        mesh_factory: MeshFactory, node_factory: NodeFactory,
        attacker_factory: AttackerFactory, unexpected_errors: Callable[[], list[str]]) -> None:
    mesh = await mesh_factory(seeds=2)
    near, far = (server.client_url for server in mesh.servers)
    target = await node_factory(far, "target", ["math.evaluate"])
    attacker = await attacker_factory(near)
    said: dict[str, Msg] = {}

    async def capture(msg: Msg) -> None:
        said[parse(msg.data).type] = msg  # the latest of each kind

    await attacker.listen("agora.presence.>", capture)
    victim = await node_factory(near, "victim", ["echo"], heartbeat_interval=0.3)
    await knows(target, victim)
    await wait_until(lambda: "heartbeat" in said, timeout=5)
    hello = said["hello"]
    await victim.stop()
    await wait_until(lambda: victim.agent_id not in target.directory, timeout=5)
    # At once: the hello and last heartbeat are still fresh, and remembered.
    for msg in (hello, said["heartbeat"]):
        await attacker.publish(msg.subject, msg.data)
    await attacker.flush()
    stale = {RejectReason.REPLAYED, RejectReason.EXPIRED}
    await wait_until(lambda: sum(target.bus.rejections[r] for r in stale) == 2, timeout=5)
    # Later: the hello has expired (presence lives 3 intervals, at least 1 s).
    await asyncio.sleep(max(0.0, (parse(hello.data).exp - now_ms()) / 1000) + 0.05)
    await attacker.publish(hello.subject, hello.data)
    await attacker.flush()
    await wait_until(lambda: sum(target.bus.rejections[r] for r in stale) == 3, timeout=5)
    assert target.bus.rejections[RejectReason.EXPIRED] >= 1
    await asyncio.sleep(0.3)
    assert victim.agent_id not in target.directory
    assert set(counted(target)) <= {"replayed", "expired"}
    exported_agree(target)
    assert unexpected_errors() == []


async def test_a_live_agents_replayed_hello_changes_nothing(
        nats_server: EmbeddedServer, node_factory: NodeFactory,
        attacker_factory: AttackerFactory, unexpected_errors: Callable[[], list[str]]) -> None:
    url = nats_server.client_url
    attacker = await attacker_factory(url)
    hellos: list[Msg] = []

    async def capture(msg: Msg) -> None:
        if parse(msg.data).type == "hello":
            hellos.append(msg)

    await attacker.listen("agora.presence.>", capture)
    target = await node_factory(url, "target", ["math.evaluate"])
    victim = await node_factory(url, "victim", ["echo"], heartbeat_interval=2.0)  # lives 6 s
    await knows(target, victim)
    await wait_until(lambda: any(m.subject.endswith(victim.agent_id) for m in hellos),
                     timeout=5)
    hello = next(m for m in hellos if m.subject.endswith(victim.agent_id))
    for _ in range(5):
        await attacker.publish(hello.subject, hello.data)
    await attacker.flush()
    await wait_until(lambda: target.bus.rejections[RejectReason.REPLAYED] == 5, timeout=5)
    assert capabilities_of(target, victim) == {"echo"}
    assert counted(target) == Counter({"replayed": 5})
    assert unexpected_errors() == []


async def test_a_hostile_card_breaks_neither_discovery_nor_presence(
        nats_server: EmbeddedServer, node_factory: NodeFactory,
        attacker_factory: AttackerFactory, unexpected_errors: Callable[[], list[str]]) -> None:
    url = nats_server.client_url
    target = await node_factory(url, "target", ["math.evaluate"])
    victim = await node_factory(url, "victim", ["echo"])
    await knows(target, victim)
    attacker = await attacker_factory(url)
    me = attacker.identity
    cards = [{"id": me.agent_id, "name": "rogue", "type": "x", "metadata": "not a map",
              "capabilities": [{"name": "echo"}]},
             {"id": me.agent_id, "name": "rogue", "type": "x",
              "capabilities": [{"name": "echo", "max_context": float("inf")}]}]

    async def answer(msg: Msg) -> None:  # a discovery answer, properly signed by the attacker
        query = parse(msg.data)
        for card in cards:
            await attacker.publish(msg.reply, forge(
                me, type="discovery", subject=msg.reply, to=query.sender,
                body={"card": card, "status": {}, "interval": 1.0, "digest": ""}))

    await attacker.listen("agora.discover", answer)
    # Nobody known offers it, so discovery waits out its window and hears the rogue.
    assert await target.find_agents_by_capability("nothing.here", timeout=0.3) == []
    answered = counted(target)["schema"]  # the answers that came within the window
    presence = target.bus.subjects.presence(me.agent_id)
    for card in cards:
        await attacker.publish(presence, forge(me, type="hello", subject=presence, body={
            "card": card, "status": {}, "interval": 1.0, "digest": ""}))
    await attacker.flush()
    # Each refused card is counted, and nothing else happened.
    await wait_until(lambda: counted(target) == Counter({"schema": answered + 2}), timeout=5)
    assert me.agent_id not in target.directory
    exported_agree(target)
    assert unexpected_errors() == []


class SlowToAnswer(AgentNode):
    """Answers discovery 100 ms late, so a stranger's answer surely comes first."""

    async def _on_discover(self, delivery: Delivery) -> None:
        await asyncio.sleep(0.1)
        await super()._on_discover(delivery)


async def test_a_strangers_discovery_answer_does_not_cut_discovery_short(
        nats_server: EmbeddedServer, node_factory: NodeFactory,
        attacker_factory: AttackerFactory) -> None:
    url = nats_server.client_url
    target = await node_factory(url, "target", ["math.evaluate"])
    victim = await node_factory(url, "victim", ["echo"], node_class=SlowToAnswer)
    await knows(target, victim)
    attacker = await attacker_factory(url)
    me = attacker.identity
    card = {"id": me.agent_id, "name": "rogue", "type": "x", "capabilities": [{"name": "echo"}]}

    async def answer(msg: Msg) -> None:  # first, and properly signed
        query = parse(msg.data)
        await attacker.publish(msg.reply, forge(
            me, type="discovery", subject=msg.reply, to=query.sender,
            body={"card": card, "status": {}, "interval": 1.0, "digest": ""}))

    await attacker.listen("agora.discover", answer)
    found = await target.find_agents_by_capability("echo", timeout=1.0)
    assert victim.agent_id in [card.id for card in found]
