"""Envelope v2 on a real mesh: what binds a request to its reply subject, a reply to the
requester's inbox, a MAC to its pair of agents; and a mesh that signs everything.

- A request names the reply subject it is published with (its ``reply`` field): a
  genuine request republished with another one is refused by the responder as
  ``wrong_reply`` (counted, answered there with a ``WrongReply`` error: it is no
  replay), its handler never runs, and the genuine request is still answered; a
  refused copy does not even make the genuine request look like a replay.
- A reply is made for the inbox it is published on (its ``subject``): a genuine
  reply made for another inbox, delivered to a requester's inbox, is refused as
  ``wrong_subject``, and the requester still gets its own reply.
- A directed envelope is MACed with the key its two agents share: an attacker can
  MAC only with its own keys, so a MAC in another agent's name is ``bad_signature``.
- With ``EnvelopePolicy(sign_all=True)`` on every bus, directed tasks and auctions
  still run end to end, and every directed envelope on the wire is signed; such a
  node refuses a MACed envelope (``signature_required``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from hostile_support import (
    CAP,
    SMALL,
    Attacker,
    AttackerFactory,
    NodeFactory,
    check_error_envelope,
    counted,
    exported_agree,
    forge,
    serving,
    started,
)
from nats.aio.msg import Msg

from agoramesh.agent import AgentNode
from agoramesh.bus.bus import Bus
from agoramesh.bus.envelope import AUTH_MAC, AUTH_SIG, BROADCAST, Envelope, parse
from agoramesh.bus.identity import verify
from agoramesh.bus.server import EmbeddedServer
from agoramesh.config import EnvelopePolicy
from agoramesh.errors import BusTimeout, EnvelopeError, RejectReason
from agoramesh.nodes.client import submit_task
from agoramesh.nodes.task import Task, TaskStatus
from agoramesh.testing import wait_until
from agoramesh.testing.plugin import BusFactory, MeshFactory
from agoramesh.testing.workers import WORK, Worker

pytestmark = pytest.mark.integration

async def test_a_request_republished_with_another_reply_subject_is_refused_as_wrong_reply(
        mesh_factory: MeshFactory, node_factory: NodeFactory, bus_factory: BusFactory,
        attacker_factory: AttackerFactory, unexpected_errors: Callable[[], list[str]]) -> None:
    mesh = await mesh_factory(seeds=2)
    near, far = (server.client_url for server in mesh.servers)
    target = await node_factory(far, "target", [WORK], backend=Worker("target"))
    requester = await bus_factory(near)

    async def target_reachable() -> bool:
        answers = await requester.gather(requester.subjects.discover, "discovery", {},
                                         expected=1, timeout=0.5)
        return any(answer.sender == target.agent_id for answer in answers)

    # The target's interest crosses the route asynchronously; its server sent it along
    # before the target's answer, so once an answer is in, the near server has it.
    await wait_until(target_reachable, timeout=10)
    attacker = await attacker_factory(near)
    direct = target.bus.subjects.agent(target.agent_id)
    rewritten: list[tuple[str, str, str]] = []  # (subject, the genuine inbox, the attacker's)

    async def rewrite(msg: Msg) -> None:  # in flight: the same bytes, another reply subject
        inbox = attacker.inbox()
        rewritten.append((msg.subject, msg.reply, inbox))
        await attacker.publish(msg.subject, msg.data, reply=inbox)

    await attacker.listen(CAP, rewrite)
    await attacker.listen(direct, rewrite)
    # Both kinds of request: signed, to any agent of the capability; MACed, to the target.
    anyone = Task(capability=WORK.name, parameters={"n": 1, "seconds": 0.2})
    one = Task(capability=WORK.name, parameters={"n": 2, "seconds": 0.2})
    results = [await submit_task(requester, anyone, timeout=5),
               await submit_task(requester, one, agent_id=target.agent_id, timeout=5)]
    assert [r.status for r in results] == [TaskStatus.COMPLETED] * 2
    assert [r.result["n"] for r in results] == [1, 2]
    assert [subject for subject, _, _ in rewritten] == [CAP, direct]
    for _, genuine, inbox in rewritten:
        assert genuine != inbox
        check_error_envelope(await attacker.reply(inbox), signer=target.agent_id, inbox=inbox,
                             reason=RejectReason.WRONG_REPLY)
    assert started(target) == [anyone.task_id, one.task_id], "a rewritten copy was run"
    assert counted(target) == Counter({"wrong_reply": 2})
    assert counted(requester) == Counter()
    exported_agree(target)
    assert not serving([target])
    assert unexpected_errors() == []


async def test_a_rewritten_copy_that_arrives_first_does_not_spoil_the_genuine_request(
        nats_server: EmbeddedServer, node_factory: NodeFactory, bus_factory: BusFactory,
        attacker_factory: AttackerFactory, unexpected_errors: Callable[[], list[str]]) -> None:
    # The attacker holds the genuine request back and sends it first with its own reply
    # subject: refused before it is remembered, so the genuine one is no replay.
    url = nats_server.client_url
    target = await node_factory(url, "target", [WORK], backend=Worker("target"))
    requester = await bus_factory(url)
    attacker = await attacker_factory(url)
    direct = target.bus.subjects.agent(target.agent_id)
    replies: asyncio.Queue[Msg] = asyncio.Queue()
    for subject, to in ((CAP, BROADCAST), (direct, target.agent_id)):
        task = Task(capability=WORK.name, parameters={"n": len(started(target))})
        genuine = requester.nats.new_inbox()
        await requester.nats.subscribe(genuine, cb=replies.put, max_msgs=1)
        wire = requester.seal(subject, "task_request", task.as_dict(), to=to, reply=genuine)
        assert parse(wire).auth == (AUTH_SIG if to == BROADCAST else AUTH_MAC)
        inbox, error = await attacker.ask(subject, wire)
        check_error_envelope(error, signer=target.agent_id, inbox=inbox,
                             reason=RejectReason.WRONG_REPLY)
        await requester.publish_raw(subject, wire, reply=genuine)
        msg = await asyncio.wait_for(replies.get(), timeout=5)
        answer = requester.guard.admit(msg.data, msg.subject, msg.reply or "")
        assert answer.type == "task_response" and answer.body["status"] == "COMPLETED"
        assert answer.body["task_id"] == task.task_id and answer.sender == target.agent_id
        assert started(target)[-1] == task.task_id
    assert len(started(target)) == 2
    assert counted(target) == Counter({"wrong_reply": 2})
    exported_agree(target)
    assert unexpected_errors() == []


async def replies_for_other_inboxes(target: AgentNode, requester: Bus, attacker: Attacker
                                    ) -> list[bytes]:
    """Genuine replies of ``target``'s made for other inboxes than the next request's: one
    to an earlier request of ``requester``'s (MACed to it, so it would pass every other
    check), and a signed error to anyone, made for an inbox of the attacker's."""
    earlier: list[bytes] = []

    async def keep(msg: Msg) -> None:
        with contextlib.suppress(EnvelopeError):
            envelope = parse(msg.data)
            if envelope.type == "task_response" and envelope.to == requester.agent_id:
                earlier.append(msg.data)

    await attacker.listen("_INBOX.>", keep)
    first = await submit_task(requester, Task(capability=WORK.name, parameters={"n": 1}),
                              timeout=5)
    assert first.status is TaskStatus.COMPLETED
    await wait_until(lambda: bool(earlier), timeout=5)
    response = parse(earlier[0])
    assert response.sender == target.agent_id and response.to == requester.agent_id
    assert response.auth == AUTH_MAC  # (its body boxed for the requester: it alone reads it)
    assert requester.e2e.open(response).body["task_id"] == first.task_id
    _, error = await attacker.ask(CAP, forge(attacker.identity, type="task_request",
                                             subject=CAP, body={"n": 0}))  # names no reply
    refusal = parse(error)
    assert refusal.type == "error" and refusal.to == BROADCAST and refusal.auth == AUTH_SIG
    return [earlier[0], error]


async def test_a_reply_made_for_another_inbox_is_never_accepted(
        nats_server: EmbeddedServer, node_factory: NodeFactory, bus_factory: BusFactory,
        attacker_factory: AttackerFactory, unexpected_errors: Callable[[], list[str]]) -> None:
    url = nats_server.client_url
    target = await node_factory(url, "target", [WORK], backend=Worker("target"))
    requester = await bus_factory(url)
    attacker = await attacker_factory(url)
    captured = await replies_for_other_inboxes(target, requester, attacker)
    decoy = "agora.cap.decoy"  # only the attacker answers there
    sending: list[bytes] = []

    async def answer(msg: Msg) -> None:
        await attacker.publish(msg.reply, sending.pop())

    await attacker.listen(decoy, answer)
    for n, data in enumerate(captured, 1):
        sending.append(data)
        # Refused (wrong_subject) and passed over: the request waits out its timeout; never
        # is the reply taken, though it is the target's, and the first one MACed to us.
        with pytest.raises(BusTimeout):
            await requester.request(decoy, "task_request", {"n": n}, timeout=1.0)
        assert counted(requester) == Counter({"wrong_subject": n})
    assert unexpected_errors() == []


async def test_a_reply_made_for_another_inbox_does_not_keep_the_genuine_reply_out(
        nats_server: EmbeddedServer, node_factory: NodeFactory, bus_factory: BusFactory,
        attacker_factory: AttackerFactory, unexpected_errors: Callable[[], list[str]]) -> None:
    url = nats_server.client_url
    target = await node_factory(url, "target", [WORK], backend=Worker("target"))
    requester = await bus_factory(url)
    attacker = await attacker_factory(url)
    captured = await replies_for_other_inboxes(target, requester, attacker)
    ran = list(started(target))

    async def slip_in(msg: Msg) -> None:  # ahead of the genuine reply, which takes 1 s
        for data in captured:
            await attacker.publish(msg.reply, data)

    await attacker.listen(CAP, slip_in)
    task = Task(capability=WORK.name, parameters={"n": 2, "seconds": 1.0})
    result = await submit_task(requester, task, timeout=5)
    assert result.status is TaskStatus.COMPLETED and result.task_id == task.task_id
    assert result.result["n"] == 2
    assert counted(requester) == Counter({"wrong_subject": 2})
    assert started(target) == [*ran, task.task_id]
    assert unexpected_errors() == []


async def test_a_mac_in_another_agents_name_is_a_bad_signature(
        nats_server: EmbeddedServer, node_factory: NodeFactory, bus_factory: BusFactory,
        attacker_factory: AttackerFactory, unexpected_errors: Callable[[], list[str]]) -> None:
    url = nats_server.client_url
    target = await node_factory(url, "target", [WORK], backend=Worker("target"))
    victim = await node_factory(url, "victim", ["echo"])
    attacker = await attacker_factory(url)
    direct = target.bus.subjects.agent(target.agent_id)

    def request(n: int, **fields: Any) -> Callable[[str], bytes]:
        """A task request to the target MACed by the attacker with its key with the target."""
        return attacker.forge(type="task_request", subject=direct, to=target.agent_id,
                              auth=AUTH_MAC, body=Task(capability=WORK.name,
                                                       parameters={"n": n}).as_dict(), **fields)

    # In its own name the MAC is right: the request runs (so the MAC is made as peers do).
    own = attacker.open(await attacker.request(direct, request(1)))
    assert own.type == "task_response" and own.body["status"] == "COMPLETED"
    assert own.auth == AUTH_MAC and own.to == attacker.agent_id
    ran = list(started(target))
    assert len(ran) == 1
    # In the victim's name (or the target's own) the target derives another key.
    for sender in (victim.agent_id, target.agent_id):
        inbox, reply = await attacker.ask(direct, request(2, sender=sender))
        check_error_envelope(reply, signer=target.agent_id, inbox=inbox,
                             reason=RejectReason.BAD_SIGNATURE)
    # A MAC claimed for an envelope to nobody in particular cannot be checked by anyone:
    # a schema error, not a way around the signature.
    inbox, reply = await attacker.ask(CAP, attacker.forge(
        type="task_request", subject=CAP, body={"n": 3}, auth=AUTH_MAC))
    check_error_envelope(reply, signer=target.agent_id, inbox=inbox, reason=RejectReason.SCHEMA)
    assert started(target) == ran
    assert counted(target) == Counter({"bad_signature": 2, "schema": 1})
    assert counted(victim) == Counter()
    exported_agree(target, victim)
    assert unexpected_errors() == []


SIGN_ALL = EnvelopePolicy(max_bytes=SMALL.max_bytes, sign_all=True)


async def test_a_mesh_that_signs_everything_runs_tasks_and_auctions(
        nats_server: EmbeddedServer, node_factory: NodeFactory, bus_factory: BusFactory,
        attacker_factory: AttackerFactory, unexpected_errors: Callable[[], list[str]]) -> None:
    url = nats_server.client_url
    attacker = await attacker_factory(url)  # here only a raw observer of the wire
    wire: list[tuple[str, Envelope]] = []

    async def observe(msg: Msg) -> None:
        try:
            wire.append((msg.subject, parse(msg.data)))
        except EnvelopeError:
            pass  # plain JSON (none is sent here)

    for subject in ("agora.>", "_INBOX.>"):
        await attacker.listen(subject, observe)
    bidders = [await node_factory(url, f"bidder{i}", [WORK], backend=Worker(f"bidder{i}"),
                                  policy=SIGN_ALL) for i in range(2)]
    client = await node_factory(url, "client", ["echo"], policy=SIGN_ALL)
    requester = await bus_factory(url, policy=SIGN_ALL)
    nodes = [*bidders, client]
    await wait_until(lambda: len(client.directory.capable(WORK.name)) == 2, timeout=5)

    direct = await submit_task(requester, Task(capability=WORK.name, parameters={"n": 1}),
                               agent_id=bidders[0].agent_id, timeout=5)
    assert direct.status is TaskStatus.COMPLETED and direct.agent_id == bidders[0].agent_id
    auctioned = await client.dispatcher.submit(WORK.name, {"n": 2})
    assert auctioned.status is TaskStatus.COMPLETED and auctioned.result["n"] == 2
    assert auctioned.agent_id in {bidder.agent_id for bidder in bidders}
    await attacker.flush()

    directed = [envelope for _, envelope in wire if envelope.to != BROADCAST]
    kinds = {envelope.type for envelope in directed}
    assert {"task_request", "task_response", "bid", "award"} <= kinds, kinds
    assert {envelope.auth for envelope in directed} == {AUTH_SIG}
    assert {envelope.auth for _, envelope in wire} == {AUTH_SIG}
    # Signed, so anyone can check them: the observer does, over the bytes it saw.
    assert all(verify(envelope.sender, envelope.signed, envelope.signature)
               for envelope in directed)
    assert {envelope.sender for envelope in directed} <= {
        requester.agent_id, *(node.agent_id for node in nodes)}

    # Such a node takes signed envelopes only: a MACed one (here a right MAC, the
    # attacker's own) is refused as signature_required, answered, and not run.
    target = bidders[1]
    ran = list(started(target))
    inbox, reply = await attacker.ask(target.bus.subjects.agent(target.agent_id), attacker.forge(
        type="task_request", subject=target.bus.subjects.agent(target.agent_id),
        to=target.agent_id, auth=AUTH_MAC,
        body=Task(capability=WORK.name, parameters={"n": 3}).as_dict()))
    check_error_envelope(reply, signer=target.agent_id, inbox=inbox,
                         reason=RejectReason.SIGNATURE_REQUIRED)
    assert started(target) == ran
    assert counted(target) == Counter({"signature_required": 1})
    assert all(not counted(node) for node in (bidders[0], client))
    assert counted(requester) == Counter()
    assert not serving(nodes)
    exported_agree(*nodes)
    assert unexpected_errors() == []
