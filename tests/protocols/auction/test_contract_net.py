"""Contract-net auctions on real servers: scoring, declines, forged bids, lost winners, load."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

import msgpack
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from agoramesh.agent import AgentNode
from agoramesh.bus import Identity
from agoramesh.bus.e2e import E2EKeys
from agoramesh.bus.envelope import AUTH_MAC, AUTH_SIG, VERSION, mac, now_ms, parse, seal
from agoramesh.errors import (
    AuctionFailed,
    ConfigError,
    InvalidBid,
    NoBidders,
    RejectReason,
    SubjectError,
    TaskCancelled,
)
from agoramesh.nodes.capability import Capability
from agoramesh.nodes.task import Task, TaskStatus
from agoramesh.protocols.allocation.dispatch import Dispatcher
from agoramesh.protocols.auction.bidder import (
    AWARD_TOO_LATE,
    COUNTER_OFFER,
    Bidder,
    BidStrategy,
    _desk_for,
)
from agoramesh.protocols.auction.policy import AuctionPolicy, Progress
from agoramesh.protocols.auction.scoring import Bid, rank, weighted
from agoramesh.testing import wait_until
from agoramesh.testing.plugin import AgentFactory, BusFactory, MeshFactory, over_plain_and_tls
from agoramesh.testing.raw import flush
from agoramesh.testing.workers import WORK, Worker

pytestmark = pytest.mark.integration

class Fixed(BidStrategy):
    """Bids fixed terms, so a test knows what the scorer sees; may refuse awards."""

    def __init__(self, *, load: float = 0.0, latency_ms: float = 10.0, cost_usd: float = 0.0,
                 success_rate: float = 1.0, decline: bool = False) -> None:
        self.terms = {"load": load, "latency_ms": latency_ms, "cost_usd": cost_usd,
                      "success_rate": success_rate}
        self.decline = decline

    def quote(self, node: AgentNode, task: Task, capability: Capability,
              terms: dict[str, Any], reserved: float, *,
              request_size: int | None = None) -> Bid | str:
        return Bid(agent_id=node.agent_id, **self.terms)

    def accept(self, node: AgentNode, task: Task, terms: dict[str, Any]) -> str | None:
        return "I am busy after all" if self.decline else None


async def start_workers(agent_factory: AgentFactory, urls: Sequence[str],
                        strategies: dict[str, BidStrategy | None], **settings: Any
                        ) -> dict[str, AgentNode]:
    nodes: dict[str, AgentNode] = {}
    for index, (name, strategy) in enumerate(strategies.items()):
        nodes[name] = await agent_factory(urls[index % len(urls)], name, [WORK],
                                          backend=Worker(name), agent_type="worker",
                                          bid_strategy=strategy, **settings)
    everyone = set(nodes)
    for node in nodes.values():
        await wait_until(lambda n=node: {e.card.name for e in n.directory} | {n.config.name}
                         >= everyone, timeout=5.0)
    return nodes


def expected_winner(bids: dict[str, dict[str, float]]) -> str:
    """M-3.1's formula written out by hand: 0.30 load + 0.25 latency + 0.20 cost + 0.25 ok."""
    def spread(key: str, name: str) -> float:
        values = [terms[key] for terms in bids.values()]
        low, high = min(values), max(values)
        return 1.0 if high == low else 1 - (bids[name][key] - low) / (high - low)
    score = {name: 0.30 * (1 - terms["load"]) + 0.25 * spread("latency_ms", name)
             + 0.20 * spread("cost_usd", name) + 0.25 * terms["success_rate"]
             for name, terms in bids.items()}
    return max(score, key=lambda name: score[name])


@over_plain_and_tls
async def test_auction_awards_the_bid_the_scoring_prefers(
        nats_server: Any, agent_factory: AgentFactory) -> None:
    terms = {"cheap": {"load": 0.5, "latency_ms": 900.0, "cost_usd": 0.001, "success_rate": 0.9},
             "fast": {"load": 0.2, "latency_ms": 50.0, "cost_usd": 0.05, "success_rate": 0.95},
             "idle": {"load": 0.0, "latency_ms": 400.0, "cost_usd": 0.02, "success_rate": 0.6}}
    nodes = await start_workers(agent_factory, [nats_server.client_url],
                                {name: Fixed(**t) for name, t in terms.items()})
    winner = expected_winner(terms)
    assert winner == "fast"  # the scenario is built so that scoring, not luck, decides
    events: list[Progress] = []
    client = nodes["idle"]
    result = await client.dispatcher.submit("work.do", {"n": 1}, progress=events.append)
    assert result.status is TaskStatus.COMPLETED
    assert result.result["by"] == winner
    assert result.agent_id == nodes[winner].agent_id
    bids = next(e for e in events if e.event == "bids")
    assert bids.detail["bids"] == 3 and bids.detail["answered"] == 3
    assert bids.detail["ranking"][0] == nodes[winner].agent_id
    # The one broadcast reject released the losers' reservations.
    await wait_until(lambda: all(n.bidder.reserved == 0 for n in nodes.values()))


async def test_bid_window_closes_early_once_every_known_agent_answered(
        nats_server: Any, agent_factory: AgentFactory) -> None:
    nodes = await start_workers(agent_factory, [nats_server.client_url],
                                {"a": None, "b": None}, auction_policy=AuctionPolicy(
                                    bid_window=30.0))
    async with asyncio.timeout(5):  # a 30 s window that closes at the second answer
        result = await nodes["a"].dispatcher.submit("work.do", {"n": 2}, timeout=10)
    assert result.status is TaskStatus.COMPLETED


async def test_a_declining_winner_falls_to_the_next_bidder(
        nats_server: Any, agent_factory: AgentFactory) -> None:
    nodes = await start_workers(agent_factory, [nats_server.client_url], {
        "best": Fixed(latency_ms=1, decline=True), "second": Fixed(latency_ms=50),
        "third": Fixed(latency_ms=500)})
    events: list[Progress] = []
    result = await nodes["third"].dispatcher.submit("work.do", {}, progress=events.append)
    assert result.result["by"] == "second"
    declined = [e for e in events if e.event == "declined"]
    assert [e.detail["agent"] for e in declined] == [nodes["best"].agent_id]
    assert declined[0].detail["reason"] == "I am busy after all"
    assert nodes["best"].metrics.awards == Counter({("work.do", "decline"): 1})
    assert nodes["best"].backend.started == []  # type: ignore[attr-defined]


@pytest.mark.parametrize("each", [False, True])
async def test_go_ahead_is_asked_before_the_first_award_or_before_every_award(
        nats_server: Any, agent_factory: AgentFactory, each: bool) -> None:
    """A durable job another node may be driving as well asks ``go_ahead`` before every
    award (``go_ahead_each``): a result stored while the first winner declined stops the
    second award. Otherwise it is asked once, before the first."""
    nodes = await start_workers(agent_factory, [nats_server.client_url], {
        "best": Fixed(latency_ms=1, decline=True), "second": Fixed(latency_ms=50),
        "third": Fixed(latency_ms=500)})
    asked: list[int] = []

    async def go_ahead() -> bool:
        asked.append(len(asked))
        return len(asked) == 1  # stored elsewhere once the first award was made

    task = Task(capability="work.do", parameters={}, task_id=f"go-ahead-{each}")
    if each:
        with pytest.raises(TaskCancelled, match="called off before its award"):
            await nodes["third"].auctioneer.run(task, timeout=10, go_ahead=go_ahead,
                                                go_ahead_each=True)
        assert nodes["second"].backend.started == []  # type: ignore[attr-defined]
    else:
        outcome = await nodes["third"].auctioneer.run(task, timeout=10, go_ahead=go_ahead)
        assert outcome.result.result["by"] == "second"
    assert asked == ([0, 1] if each else [0])


async def test_every_bidder_declining_is_a_clear_error(
        nats_server: Any, agent_factory: AgentFactory) -> None:
    nodes = await start_workers(agent_factory, [nats_server.client_url], {
        "x": Fixed(decline=True), "y": Fixed(decline=True)})
    with pytest.raises(AuctionFailed, match="all 2 bidders declined"):
        await nodes["x"].dispatcher.submit("work.do", {})


async def test_no_bidder_is_a_clear_error(nats_server: Any, agent_factory: AgentFactory) -> None:
    node = await agent_factory(nats_server.client_url, "lonely", ["echo"],
                               auction_policy=AuctionPolicy(bid_window=0.2))
    with pytest.raises(NoBidders, match=r"no agent offers work\.do: none is known here and none "
                                         r"answered within 0\.2s"):
        await node.dispatcher.submit("work.do", {})
    result = await node.dispatcher.submit("echo", {"text": "still serving"})
    assert result.result == {"echo": {"text": "still serving"}}


def forge_bid(victim: str, attacker: Identity, reply: str, auction_id: str, *,
              initiator: str, auth: str) -> bytes:
    """A perfect bid that claims to come from ``victim`` but is made by ``attacker``:
    signed by it (auth "sig"), or, as genuine bids are, addressed to the ``initiator``
    and MACed, with the key the attacker shares with it (auth "mac")."""
    now = now_ms()
    fields = {"v": VERSION, "id": f"forged-{now}", "type": "bid", "from": victim,
              "to": "*" if auth == AUTH_SIG else initiator, "subject": reply, "reply": "",
              "ts": now, "exp": now + 5000, "cid": f"forged-{now}", "auth": auth,
              "body": {"auction_id": auction_id, "load": 0.0, "latency_ms": 0.0,
                       "cost_usd": 0.0, "success_rate": 1.0}}
    signed: bytes = msgpack.packb(fields, use_bin_type=True)
    if auth == AUTH_SIG:
        return signed + attacker.sign(signed)
    return signed + mac(E2EKeys(attacker).pair_key(initiator), signed)


class SlowBidder(Bidder):
    """Bids 50 ms late, so an injected bid surely arrives inside the bid window."""

    async def answer(self, cfp: Any, capability: Capability) -> None:
        await asyncio.sleep(0.05)
        await super().answer(cfp, capability)


class Refuses(BidStrategy):
    def quote(self, node: AgentNode, task: Task, capability: Capability,
              terms: dict[str, Any], reserved: float, *,
              request_size: int | None = None) -> Bid | str:
        return "not today"


@pytest.mark.parametrize("auth", [AUTH_SIG, AUTH_MAC])
async def test_a_forged_bid_is_never_awarded(nats_server: Any, agent_factory: AgentFactory,
                                             auth: str) -> None:
    nodes = await start_workers(agent_factory, [nats_server.client_url], {
        "honest": Fixed(load=0.9, latency_ms=900, success_rate=0.5), "victim": Refuses(),
        "client": Fixed(load=0.95, latency_ms=1000, success_rate=0.1)})
    honest = nodes["honest"]
    await honest.bidder.stop()
    honest.bidder = SlowBidder(honest, Fixed(load=0.9, latency_ms=900, success_rate=0.5))
    await honest.bidder.start()
    victim = nodes["victim"].agent_id
    attacker = Identity.generate()
    raw = NatsClient()
    await raw.connect(nats_server.client_url)
    injected: list[str] = []

    async def inject(msg: Msg) -> None:
        cfp = parse(msg.data)
        if cfp.type == "cfp":  # a perfect bid in the victim's name, made by someone else
            injected.append(cfp.body["auction_id"])
            await raw.publish(msg.reply, forge_bid(victim, attacker, msg.reply,
                                                   cfp.body["auction_id"],
                                                   initiator=cfp.sender, auth=auth))

    await raw.subscribe("agora.cfp.work.do", cb=inject)
    await flush(raw)  # at the server before the client's cfp: raw.flush() can return first
    client = nodes["client"]
    events: list[Progress] = []
    try:
        result = await client.dispatcher.submit("work.do", {}, progress=events.append)
    finally:
        await raw.close()
    assert injected
    ranking = next(e for e in events if e.event == "bids").detail["ranking"]
    assert ranking[0] == victim  # the forgery ranked first ...
    assert result.result["by"] == "honest"  # ... and was never awarded
    assert [e.detail["agent"] for e in events if e.event == "award"] == [honest.agent_id]
    assert client.bus.rejections[RejectReason.BAD_SIGNATURE] == 1


async def test_counter_offers_are_awarded_only_when_the_policy_accepts_them(
        nats_server: Any, agent_factory: AgentFactory) -> None:
    dear = Capability(name="work.do", cost_per_token=0.01)
    node = await agent_factory(nats_server.client_url, "dear", [dear], backend=Worker("dear"),
                               auction_policy=AuctionPolicy(max_cost_usd=0.001, bid_window=5))
    events: list[Progress] = []
    result = await node.dispatcher.submit("work.do", {"n": 3}, progress=events.append)
    # The one agent known is awarded directly first; a bid would have countered the
    # price, so it declines and the cfp that follows gets that counter-offer.
    direct, declined, award = (e for e in events if e.event in ("award", "declined"))
    assert direct.detail["direct"] is True
    assert declined.detail["reason"] == f"{COUNTER_OFFER}: cost_usd"
    assert award.detail["counter"]["cost_usd"] > 0.001 and "direct" not in award.detail
    assert result.result["by"] == "dear"
    strict = AuctionPolicy(max_cost_usd=0.001, accept_counter_offers=False, bid_window=5)
    node.auctioneer.policy = strict
    with pytest.raises(AuctionFailed, match="only counter-offers"):
        await node.dispatcher.submit("work.do", {"n": 4})


class SilentBidder(Bidder):
    """Accepts the award, then never sends a lease: a winner gone quiet."""

    async def _leases(self, delivery: Any, auction_id: str, task_id: str,
                      interval: float) -> None:
        await delivery.respond("accept", {"auction_id": auction_id, "task_id": task_id})
        await asyncio.Event().wait()


async def test_a_silent_winner_is_replaced_and_its_late_result_taken_when_first(
        nats_server: Any, agent_factory: AgentFactory) -> None:
    """A winner gone quiet is replaced but not told to stop: it may only be paused. Its
    COMPLETED result, arriving before the new winner's, is the result; the new winner is
    told to cancel. Nothing is thrown away that would make the task run for nothing."""
    nodes = await start_workers(agent_factory, [nats_server.client_url], {
        "quiet": Fixed(latency_ms=1), "steady": Fixed(latency_ms=100),
        "client": Fixed(latency_ms=9000, load=1.0, success_rate=0.0)},
        auction_policy=AuctionPolicy(lease_interval=0.15, missed_leases=3, bid_window=5))
    quiet = nodes["quiet"]
    await quiet.bidder.stop()
    quiet.bidder = SilentBidder(quiet, Fixed(latency_ms=1))
    await quiet.bidder.start()
    events: list[Progress] = []
    steady = nodes["steady"]
    outcome = await nodes["client"].auctioneer.run(
        # Long enough that the quiet winner is lost (0.45 s of silence) before it finishes,
        # and that it finishes (at 1 s) before the new winner (awarded at ~0.5 s) does.
        Task(capability="work.do", parameters={"seconds": 1.0}), timeout=10,
        progress=events.append)
    assert outcome.result.result["by"] == "quiet" and outcome.winner == quiet.agent_id
    assert outcome.attempts == 2
    assert [(e.event, e.detail.get("agent")) for e in events
            if e.event in ("award", "accepted", "lost", "late")] == [
        ("award", quiet.agent_id), ("accepted", quiet.agent_id), ("lost", quiet.agent_id),
        ("award", steady.agent_id), ("accepted", steady.agent_id), ("late", quiet.agent_id)]
    assert sum(e.event == "result" for e in events) == 1
    # The new winner was told to stop: its run ends cancelled, not completed.
    await wait_until(lambda: steady.metrics.tasks["work.do", "cancelled"] == 1, timeout=5)
    assert steady.metrics.tasks["work.do", "completed"] == 0


async def test_a_winner_that_never_answers_counts_as_declined_and_is_cancelled(
        nats_server: Any, agent_factory: AgentFactory) -> None:
    nodes = await start_workers(agent_factory, [nats_server.client_url], {
        "mute": Fixed(latency_ms=1), "steady": Fixed(latency_ms=100),
        "client": Fixed(latency_ms=9000, load=1.0, success_rate=0.0)},
        auction_policy=AuctionPolicy(award_timeout=1.0, bid_window=5))
    mute = nodes["mute"]
    mute.direct_handlers["award"] = lambda delivery: asyncio.sleep(0)  # swallows awards
    events: list[Progress] = []
    result = await nodes["client"].dispatcher.submit("work.do", {}, progress=events.append)
    assert result.result["by"] == "steady"
    assert [e.detail for e in events if e.event == "declined"] == [
        {"agent": mute.agent_id, "reason": "no answer"}]


async def test_an_award_read_too_late_is_declined_for_a_retry_not_run(
        nats_server: Any, agent_factory: AgentFactory, bus_factory: BusFactory) -> None:
    """An award with under 250 ms of its 2 s life left (its winner was frozen) is declined
    with retry: its initiator is giving up on it; running it would run the task twice."""
    backend = Worker("thawed")
    worker = await agent_factory(nats_server.client_url, "thawed", [WORK], backend=backend)
    client = await bus_factory(nats_server.client_url)
    direct = worker.bus.subjects.agent(worker.agent_id)

    async def award(age_ms: int) -> tuple[str, Any]:
        task = Task(capability=WORK.name, parameters={"n": age_ms})
        inbox = client.nats.new_inbox()  # the award names the reply subject it is sent with
        replies = await client.nats.subscribe(inbox, max_msgs=1)
        wire = seal(client.identity, type="award", subject=direct, to=worker.agent_id,
                    ts=now_ms() - age_ms, ttl_ms=2000, reply=inbox,
                    body={"auction_id": f"a{age_ms}", "task": task.as_dict()})
        await client.nats.publish(direct, wire, reply=inbox)
        msg = await replies.next_msg(timeout=5)
        reply = client.guard.admit(msg.data, msg.subject, msg.reply or "")  # opens the box
        return reply.type, reply.body

    assert await award(1900) == ("decline", {"auction_id": "a1900", "reason": AWARD_TOO_LATE,
                                             "retry": True})
    kind, body = await award(1000)  # 1 s left: in time
    assert kind == "task_response" and body["result"] == {"by": "thawed", "n": 1000}
    assert backend.started == [body["task_id"]]


@over_plain_and_tls
async def test_a_killed_winner_is_detected_and_the_task_reauctioned(
        nats_server: Any, agent_factory: AgentFactory) -> None:
    nodes = await start_workers(agent_factory, [nats_server.client_url], {
        "first": Fixed(latency_ms=1), "backup": Fixed(latency_ms=100),
        "client": Fixed(latency_ms=9000, load=1.0, success_rate=0.0)},
        auction_policy=AuctionPolicy(lease_interval=0.2, missed_leases=3, bid_window=5))
    first = nodes["first"]
    events: list[Progress] = []
    run = asyncio.ensure_future(nodes["client"].dispatcher.submit(
        "work.do", {"seconds": 0.5}, progress=events.append, timeout=10))
    try:
        await wait_until(lambda: bool(first.backend.started))  # type: ignore[attr-defined]
        await first.kill()
        result = await run
    finally:  # a failing wait must not leave the submission running
        run.cancel()
        await asyncio.wait([run])
    assert result.result["by"] == "backup"
    # In-process kill cancels the running task, whose TaskCancelled result sends the task
    # to a new auction; a SIGKILLed process sends nothing and is caught by its lease
    # (tests/cli/test_auction_cli.py).
    assert [e.detail for e in events if e.event == "reauction"] == [
        {"failed": first.agent_id, "attempt": 2}]
    assert [e.detail["status"] for e in events if e.event == "result"] == [
        "FAILED", "COMPLETED"]


@over_plain_and_tls
async def test_200_concurrent_auctions_over_10_agents_on_a_3_seed_mesh(
        mesh_factory: MeshFactory, agent_factory: AgentFactory) -> None:
    mesh = await mesh_factory(seeds=3)
    urls = [server.client_url for server in mesh.servers]
    workers = {f"w{i}": None for i in range(10)}
    # The bid window closes as soon as every known agent has answered; its bound only
    # matters under load (200 auctions at once on 2 cores, TLS handshakes and all). So do
    # heartbeats: at the fixtures' 0.2 s, a loop busy for 0.6 s evicts a winner, whose task
    # is then re-auctioned (and may run twice); this test is about concurrency, not that.
    nodes = await start_workers(agent_factory, urls, workers, max_concurrent_tasks=32,
                                auction_policy=AuctionPolicy(bid_window=5.0),
                                heartbeat_interval=1.0)
    clients = list(nodes.values())[:4]
    tasks = [Task(capability="work.do", parameters={"n": i, "seconds": 0.01}) for i in range(200)]
    results = await asyncio.gather(*(
        clients[i % len(clients)].auctioneer.run(task, timeout=60)
        for i, task in enumerate(tasks)))
    assert [outcome.result.task_id for outcome in results] == [task.task_id for task in tasks]
    assert all(outcome.result.status is TaskStatus.COMPLETED for outcome in results)
    assert sorted(outcome.result.result["n"] for outcome in results) == list(range(200))
    started = Counter(tid for node in nodes.values()
                      for tid in node.backend.started)  # type: ignore[attr-defined]
    assert len(started) == 200 and set(started.values()) == {1}  # no task ran twice
    assert sum(outcome.duplicates for outcome in results) == 0
    busy = [node for node in nodes.values() if node.backend.started]  # type: ignore[attr-defined]
    assert len(busy) >= 5  # salted tie-breaks spread equal bids over the agents


async def test_plain_json_on_agora_task_gets_the_negotiated_result(
        nats_server: Any, agent_factory: AgentFactory) -> None:
    nodes = await start_workers(agent_factory, [nats_server.client_url], {
        "slow": Fixed(latency_ms=800), "quick": Fixed(latency_ms=5)})
    raw = NatsClient()
    await raw.connect(nats_server.client_url)
    try:
        reply = await raw.request("agora.task.work.do", json.dumps({"n": 7}).encode(),
                                  timeout=5)
        answer = json.loads(reply.data)
        assert answer["status"] == "COMPLETED"
        assert answer["result"] == {"by": "quick", "n": 7}
        assert answer["agent_id"] == nodes["quick"].agent_id
        bad = json.loads((await raw.request("agora.task.work.do", b'{"n": ', timeout=5)).data)
        assert bad["error"]["type"] == "MalformedEnvelope"
        nobody = json.loads((await raw.request("agora.task.no.such", b'{"x": 1}',
                                               timeout=5)).data)
        assert nobody["error"]["type"] == "NoBidders"
    finally:
        await raw.close()
    # The malformed request never reached a desk; the other two were each auctioned once.
    auctions = Counter(key for node in nodes.values() for key in node.metrics.auctions.elements())
    assert auctions == Counter({("work.do", "awarded"): 1, ("no.such", "no_bidders"): 1})


@pytest.mark.parametrize(("workers", "first"), [
    (("solo",), ["award"]),  # the one agent known is awarded directly: no cfp
    (("one", "two"), ["cfp", "bids", "award"])])
async def test_signed_streaming_request_on_agora_task_shows_progress(
        nats_server: Any, agent_factory: AgentFactory, bus_factory: BusFactory,
        workers: tuple[str, ...], first: list[str]) -> None:
    await start_workers(agent_factory, [nats_server.client_url], dict.fromkeys(workers))
    bus = await bus_factory(nats_server.client_url)
    inbox = bus.nats.new_inbox()
    seen: asyncio.Queue[Any] = asyncio.Queue()

    async def collect(msg: Msg) -> None:
        seen.put_nowait(bus.guard.admit(msg.data, msg.subject))

    await bus.nats.subscribe(inbox, cb=collect)
    task = Task(capability="work.do", parameters={"n": 9})
    await bus.publish("agora.task.work.do", "task_request", {**task.as_dict(), "stream": True},
                      reply=inbox)
    kinds: list[str] = []
    async with asyncio.timeout(5):
        while not kinds or kinds[-1] != "task_response":
            envelope = await seen.get()
            kinds.append(envelope.type if envelope.type != "progress"
                         else envelope.body["event"])
    assert kinds[:len(first)] == first
    assert kinds[-2:] == ["result", "task_response"]
    assert envelope.body["result"]["n"] == 9 and envelope.body["result"]["by"] in workers


def test_scorer_and_bids_reject_bad_values() -> None:
    with pytest.raises(InvalidBid, match="latency_ms must be a finite number"):
        Bid.from_dict({"latency_ms": "fast"}, agent_id="U1")
    with pytest.raises(InvalidBid, match="must not be negative"):
        Bid(agent_id="U1", cost_usd=-1)
    with pytest.raises(InvalidBid, match="counter"):
        Bid.from_dict({"counter": {"bribe": 1}}, agent_id="U1")
    with pytest.raises(ConfigError, match="weights"):
        weighted(load=-1)
    equal = [Bid(agent_id=name) for name in ("U3", "U1", "U2")]
    assert [bid.agent_id for _, bid in rank(equal)] == ["U1", "U2", "U3"]
    salted = {tuple(b.agent_id for _, b in rank(equal, salt=str(i))) for i in range(20)}
    assert len(salted) > 1  # different auctions, different tie-breaks
    assert rank(equal, salt="x") == rank(equal, salt="x")


async def test_dispatcher_selectors(nats_server: Any, agent_factory: AgentFactory) -> None:
    nodes = await start_workers(agent_factory, [nats_server.client_url], {"a": None, "b": None})
    dispatcher: Dispatcher = nodes["a"].dispatcher
    assert [c.name for c in dispatcher.select("capability:work.*")] == ["a", "b"]
    assert [c.name for c in dispatcher.select("type:worker")] == ["a", "b"]
    assert [c.name for c in dispatcher.select(f"id:{nodes['b'].agent_id}")] == ["b"]
    assert dispatcher.select("name:nobody") == []
    with pytest.raises(SubjectError, match="unknown selector kind 'colour'"):
        dispatcher.select("colour:blue")


async def test_agents_sharing_a_directory_share_one_cfp_subscription(
        nats_server: Any, agent_factory: AgentFactory) -> None:
    url = nats_server.client_url
    first = await agent_factory(url, "h0", [WORK], backend=Worker("h0"), agent_type="worker")
    hosted = [first] + [await agent_factory(url, f"h{i}", [WORK], backend=Worker(f"h{i}"),
                                            agent_type="worker", directory=first.directory)
                        for i in (1, 2)]
    desk = _desk_for(first.directory)
    assert [m[0].node for m in desk.members["work.do"].values()] == hosted
    assert desk.subscriptions["work.do"][0].node is first  # one subscription for all three
    client = await agent_factory(url, "client", ["echo"])
    await wait_until(lambda: len(client.directory.capable("work.do")) == 3, timeout=5)
    events: list[Progress] = []
    await client.dispatcher.submit("work.do", {}, progress=events.append)
    bids = next(e for e in events if e.event == "bids")
    assert bids.detail["bids"] == 3
    assert set(bids.detail["ranking"]) == {node.agent_id for node in hosted}

    await first.stop()  # the subscription moves to a remaining agent; none is missed
    assert desk.subscriptions["work.do"][0].node is hosted[1]
    await wait_until(lambda: len(client.directory.capable("work.do")) == 2, timeout=5)
    events.clear()
    result = await client.dispatcher.submit("work.do", {}, progress=events.append)
    assert next(e for e in events if e.event == "bids").detail["bids"] == 2
    assert result.result["by"] in ("h1", "h2")


class Broken(BidStrategy):
    def quote(self, node: AgentNode, task: Task, capability: Capability,
              terms: dict[str, Any], reserved: float, *,
              request_size: int | None = None) -> Bid | str:
        raise RuntimeError("a bug in a custom bid strategy")


async def test_one_agents_broken_bid_strategy_does_not_silence_its_neighbours(
        nats_server: Any, agent_factory: AgentFactory) -> None:
    url = nats_server.client_url
    broken = await agent_factory(url, "broken", [WORK], backend=Worker("broken"),
                                 bid_strategy=Broken())
    await agent_factory(url, "fine", [WORK], backend=Worker("fine"),
                        directory=broken.directory)
    client = await agent_factory(url, "client", ["echo"],
                                 auction_policy=AuctionPolicy(bid_window=0.5))
    await wait_until(lambda: len(client.directory.capable("work.do")) == 2, timeout=5)
    result = await client.dispatcher.submit("work.do", {})
    assert result.result["by"] == "fine"
