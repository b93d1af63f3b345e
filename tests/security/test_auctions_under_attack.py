"""Contract-net auctions while an attacker works the mesh (M-1.2, M-3.3, M-4.4).

200 auctions run at once on a 3-seed mesh, driven by three auctioneer agents and bid
for by six workers, while an attacker that sees every call for proposals, bid and
award (a plain NATS client, as any member without per-subject permissions could be)
injects, per auction:

- on the auctioneer's bid inbox: a perfect bid in a real bidder's name signed with
  its own key (``bad_signature`` when the auctioneer verifies the bid it would
  award), malformed bytes, an oversize envelope, and a genuine bid lifted from
  another auction (``wrong_subject``); once it sees the award, replays of the
  auction's genuine bids (the winner's, verified by then, is ``replayed``);
- on the cfp subject: malformed bytes, oversize and expired envelopes (every bidder
  counts them);
- on the winner's direct subject: the award replayed with the reply subject it
  names (``replayed``) and a forged award in the auctioneer's name (``bad_signature``).

Every auction must still end with exactly one result (no duplicate, no loss, no task
run twice), every attack must show in the counters of the nodes it hit, and every
node must still be running.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from hostile_support import (
    Attacker,
    AttackerFactory,
    NodeFactory,
    counted,
    exported_agree,
    forge,
    oversize,
    serving,
    started,
)
from nats.aio.msg import Msg

from agoramesh.agent import AgentNode
from agoramesh.bus.envelope import now_ms, parse
from agoramesh.bus.server import EmbeddedServer
from agoramesh.errors import EnvelopeError, RejectReason
from agoramesh.nodes.capability import Capability
from agoramesh.nodes.task import Task, TaskStatus
from agoramesh.protocols.auction.bidder import Bidder
from agoramesh.protocols.auction.policy import AuctionOutcome, AuctionPolicy
from agoramesh.testing import wait_until
from agoramesh.testing.plugin import MeshFactory
from agoramesh.testing.workers import WORK, Worker

pytestmark = pytest.mark.integration

AUCTIONS = 200
SECONDS = 0.15  # per task: long enough that replays land while the auction is open


def perfect_bid(attacker: Attacker, victim: str, inbox: str, auction_id: str) -> bytes:
    """The best possible bid, in ``victim``'s name, signed by the attacker."""
    return forge(attacker.identity, sender=victim, type="bid", subject=inbox, body={
        "auction_id": auction_id, "load": 0.0, "latency_ms": 0.0, "cost_usd": 0.0,
        "success_rate": 1.0, "capacity": 64, "in_flight": 0})


class Saboteur:
    """What the attacker does on each cfp, bid and award it sees (module docstring)."""

    def __init__(self, attacker: Attacker, bidders: list[AgentNode]) -> None:
        self.attacker = attacker
        self.bidders = [bidder.agent_id for bidder in bidders]
        self.bids: dict[str, list[bytes]] = {}  # bid inbox -> genuine bids seen there
        self.inboxes: list[str] = []  # the bid inboxes of the cfps seen, oldest first
        self.sent: Counter[str] = Counter()
        self._turn = itertools.count()

    async def start(self) -> None:
        await self.attacker.listen("_INBOX.>", self.on_inbox)
        await self.attacker.listen("agora.agent.>", self.on_direct)
        await self.attacker.listen(f"agora.cfp.{WORK.name}", self.on_cfp)

    async def send(self, kind: str, subject: str, payload: bytes, reply: str = "") -> None:
        self.sent[kind] += 1
        await self.attacker.publish(subject, payload, reply=reply)

    async def on_cfp(self, msg: Msg) -> None:
        cfp = parse(msg.data)
        if cfp.type != "cfp" or not msg.reply:
            return
        turn, inbox, me = next(self._turn), msg.reply, self.attacker.identity
        victim = self.bidders[turn % len(self.bidders)]
        await self.send("forged bid", inbox, perfect_bid(self.attacker, victim, inbox,
                                                         cfp.body["auction_id"]))
        await self.send("malformed bid", inbox, b"\x8a\xa1v\x01" + bytes(80))
        self.inboxes.append(inbox)
        if turn % 10 == 0:
            await self.send("oversize bid", inbox, oversize(me, inbox, type="bid"))
        if turn % 4 == 0:  # on the cfp subject itself: every bidder hears these
            subject = msg.subject
            await self.send("malformed cfp", subject, b"\x8f" + bytes(70))
            await self.send("expired cfp", subject, forge(
                me, type="cfp", subject=subject, body=cfp.body, ts=now_ms() - 120_000))
            if turn % 20 == 0:
                await self.send("oversize cfp", subject, oversize(me, subject, type="cfp"))

    async def on_inbox(self, msg: Msg) -> None:
        if not msg.subject.endswith(".b1") or parse_type(msg.data) != "bid":
            return
        self.bids.setdefault(msg.subject, []).append(msg.data)
        # A genuine bid, lifted into the latest other auction (still open, most likely).
        elsewhere = next((inbox for inbox in reversed(self.inboxes) if inbox != msg.subject),
                         None)
        if elsewhere is not None and self.sent["bid from another auction"] < AUCTIONS:
            await self.send("bid from another auction", elsewhere, msg.data)

    async def on_direct(self, msg: Msg) -> None:
        try:
            award = parse(msg.data)
        except EnvelopeError:
            return
        if award.type != "award" or not msg.reply:
            return
        # With the reply subject it names (the auction's): else it would be wrong_reply.
        await self.send("replayed award", msg.subject, msg.data, reply=msg.reply)
        await self.send("forged award", msg.subject, forge(
            self.attacker.identity, sender=award.sender, to=award.to, type="award",
            subject=msg.subject, body={"auction_id": "f" * 32, "lease_interval": 1.0,
                                       "task": {"task_type": WORK.name, "task_id": "evil",
                                                "parameters": {"n": -1}}}))
        # The winner's bid was verified before this award went out: its replay is caught.
        prefix, _, round_ = msg.reply.rpartition(".w")
        for bid in self.bids.get(f"{prefix}.b{round_}", []):
            await self.send("replayed bid", f"{prefix}.b{round_}", bid)


def parse_type(data: bytes) -> str | None:
    try:
        return parse(data).type
    except EnvelopeError:
        return None


def total(nodes: list[AgentNode]) -> Counter[str]:
    return sum((counted(node) for node in nodes), Counter())


async def test_200_concurrent_auctions_under_attack_each_end_with_one_result(
        mesh_factory: MeshFactory, node_factory: NodeFactory,
        attacker_factory: AttackerFactory, unexpected_errors: Callable[[], list[str]]) -> None:
    mesh = await mesh_factory(seeds=3)
    urls = [server.client_url for server in mesh.servers]
    # Generous waits: the bid window closes early anyway once every known bidder answered,
    # and a 2-core machine shared with other suites must not turn load into failures
    # (a winner whose heartbeats are late is evicted, and its task re-auctioned).
    patient = AuctionPolicy(bid_window=5.0, award_timeout=5.0, missed_leases=5)
    bidders = [await node_factory(urls[i % 3], f"worker{i}", [WORK], backend=Worker(f"w{i}"),
                                  agent_type="worker", max_concurrent_tasks=64,
                                  heartbeat_interval=1.0) for i in range(6)]
    auctioneers = [await node_factory(urls[i % 3], f"auctioneer{i}", ["echo"],
                                      auction_policy=patient, heartbeat_interval=1.0)
                   for i in range(3)]
    everyone = [*bidders, *auctioneers]
    def knows_every_bidder(node: AgentNode) -> bool:
        return len(node.directory.capable(WORK.name)) == len(bidders)

    for node in auctioneers:
        await wait_until(functools.partial(knows_every_bidder, node), timeout=10)
    attacker = await attacker_factory(urls[2])
    saboteur = Saboteur(attacker, bidders)
    await saboteur.start()

    tasks = [Task(capability=WORK.name, parameters={"n": n, "seconds": SECONDS})
             for n in range(AUCTIONS)]
    began = time.monotonic()
    async with asyncio.timeout(45):
        outcomes: list[AuctionOutcome] = await asyncio.gather(*(
            auctioneers[n % 3].auctioneer.run(task, timeout=40) for n, task in enumerate(tasks)))
    elapsed = time.monotonic() - began

    # Exactly one result per auction: its own, completed, not duplicated, not lost.
    assert [o.result.task_id for o in outcomes] == [task.task_id for task in tasks]
    assert all(o.result.status is TaskStatus.COMPLETED for o in outcomes)
    assert sorted(o.result.result["n"] for o in outcomes) == list(range(AUCTIONS))
    assert sum(o.duplicates for o in outcomes) == 0
    runs = Counter(task_id for bidder in bidders for task_id in started(bidder))
    assert set(runs) == {task.task_id for task in tasks}, "a forged award was run"
    assert set(runs.values()) == {1}, "a task ran twice"
    assert {o.winner for o in outcomes} <= {bidder.agent_id for bidder in bidders}

    # Every kind of attack was made, and shows in the counters of the nodes it hit.
    assert set(saboteur.sent) >= {"forged bid", "malformed bid", "bid from another auction",
                                  "oversize bid", "malformed cfp", "expired cfp",
                                  "oversize cfp", "replayed award", "forged award",
                                  "replayed bid"}, saboteur.sent
    by_auctioneers, by_bidders = total(auctioneers), total(bidders)
    for reason in ("bad_signature", "malformed", "oversize", "wrong_subject", "replayed"):
        assert by_auctioneers[reason] > 0, (reason, by_auctioneers)
    for reason in ("bad_signature", "replayed", "malformed", "oversize", "expired"):
        assert by_bidders[reason] > 0, (reason, by_bidders)
    # Each hostile message on the cfp subject reached and was counted by every bidder.
    await wait_until(lambda: total(bidders)["expired"] == 6 * saboteur.sent["expired cfp"],
                     timeout=10)
    assert not serving(everyone)
    exported_agree(*everyone)
    assert unexpected_errors() == []
    assert elapsed < 45


async def auction_with(nats_server: EmbeddedServer, node_factory: NodeFactory, *,
                       bidders: int, slow_bidders: bool = False,
                       policy: AuctionPolicy | None = None) -> tuple[AgentNode, list[AgentNode]]:
    url = nats_server.client_url
    workers = [await node_factory(url, f"worker{i}", [WORK], backend=Worker(f"w{i}"),
                                  agent_type="worker") for i in range(bidders)]
    if slow_bidders:  # their bids come 100 ms late, so the attacker's surely come first
        for worker in workers:
            await worker.bidder.stop()
            worker.bidder = LateBidder(worker)
            await worker.bidder.start()
    client = await node_factory(url, "client", ["echo"], auction_policy=policy or AuctionPolicy())
    await wait_until(lambda: len(client.directory.capable(WORK.name)) == bidders, timeout=5)
    return client, workers


class LateBidder(Bidder):
    async def answer(self, cfp: Any, capability: Capability) -> None:
        await asyncio.sleep(0.1)
        await super().answer(cfp, capability)


async def test_bids_with_numbers_out_of_range_are_dropped_cleanly(
        nats_server: EmbeddedServer, node_factory: NodeFactory,
        attacker_factory: AttackerFactory, unexpected_errors: Callable[[], list[str]]) -> None:
    client, workers = await auction_with(nats_server, node_factory, bidders=2,
                                         slow_bidders=True)
    attacker = await attacker_factory(nats_server.client_url)
    junk: list[dict[str, Any]] = [
        {"capacity": float("inf")}, {"priority": float("-inf")}, {"load": float("nan")},
        {"latency_ms": -1}, {"in_flight": float("inf")}, {"counter": {"bribe": 1}},
        {"counter": {"deadline": "soon"}}, {"success_rate": "always"}]

    async def bid_junk(msg: Msg) -> None:  # self-signed: admitted, then unusable as a bid
        cfp = parse(msg.data)
        for body in junk:
            await attacker.publish(msg.reply, forge(
                attacker.identity, type="bid", subject=msg.reply, to=cfp.sender,
                body={"auction_id": cfp.body["auction_id"], **body}))

    await attacker.listen(f"agora.cfp.{WORK.name}", bid_junk)
    result = await client.dispatcher.submit(WORK.name, {"n": 1})
    assert result.status is TaskStatus.COMPLETED
    assert result.agent_id in {worker.agent_id for worker in workers}
    assert unexpected_errors() == []
    assert not serving([client, *workers])


async def test_forged_bids_in_every_bidders_name_cannot_end_the_bid_window(
        nats_server: EmbeddedServer, node_factory: NodeFactory,
        attacker_factory: AttackerFactory) -> None:
    client, workers = await auction_with(nats_server, node_factory, bidders=2,
                                         slow_bidders=True)
    attacker = await attacker_factory(nats_server.client_url)

    async def crowd_out(msg: Msg) -> None:
        cfp = parse(msg.data)
        for worker in workers:
            await attacker.publish(msg.reply, perfect_bid(attacker, worker.agent_id, msg.reply,
                                                          cfp.body["auction_id"]))

    await attacker.listen(f"agora.cfp.{WORK.name}", crowd_out)
    result = await client.dispatcher.submit(WORK.name, {"n": 1}, timeout=5)
    assert result.status is TaskStatus.COMPLETED
    assert client.bus.rejections[RejectReason.BAD_SIGNATURE] >= 1


async def test_a_reflected_error_reply_is_not_taken_for_the_winners_decline(
        nats_server: EmbeddedServer, node_factory: NodeFactory,
        attacker_factory: AttackerFactory) -> None:
    client, workers = await auction_with(nats_server, node_factory, bidders=2)
    attacker = await attacker_factory(nats_server.client_url)

    async def reflect(msg: Msg) -> None:
        if parse_type(msg.data) == "award" and msg.reply:
            await asyncio.sleep(0.05)  # the winner has accepted and is working
            await attacker.publish(msg.subject, b"\x8a" + bytes(80), reply=msg.reply)

    await attacker.listen("agora.agent.>", reflect)
    outcome = await client.auctioneer.run(
        Task(capability=WORK.name, parameters={"n": 1, "seconds": 0.3}), timeout=10)
    assert outcome.result.status is TaskStatus.COMPLETED and outcome.attempts == 1
    runs = Counter(task_id for worker in workers for task_id in started(worker))
    assert set(runs.values()) == {1}, "the task ran on two agents"

