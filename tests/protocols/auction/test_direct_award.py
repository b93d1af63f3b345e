"""Direct awards (PROTOCOL.md §16): the one agent known to offer a capability is awarded
without a call for proposals; it declines what it would not have bid on, and then the
auction calls for proposals as it always did."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from agoramesh.agent import AgentNode
from agoramesh.bus.envelope import Envelope, parse
from agoramesh.errors import AuctionFailed, NoBidders
from agoramesh.nodes.capability import Capability
from agoramesh.nodes.task import Task
from agoramesh.protocols.auction.bidder import AT_CAPACITY, COUNTER_OFFER, Bidder
from agoramesh.protocols.auction.policy import AuctionPolicy, Progress
from agoramesh.security.acl import AccessPolicy, AclEntry, Action
from agoramesh.testing import wait_until
from agoramesh.testing.plugin import AgentFactory
from agoramesh.testing.workers import WORK, Worker

pytestmark = pytest.mark.integration


class Watch:
    """A raw subscriber (as ``nats sub`` would be) on the cfp subject and one agent's."""

    def __init__(self) -> None:
        self.raw = NatsClient()
        self.cfps: list[Envelope] = []
        self.awards: list[Envelope] = []

    async def start(self, url: str, agent_id: str) -> None:
        await self.raw.connect(url)

        async def seen(msg: Msg) -> None:
            envelope = parse(msg.data)
            if envelope.type == "cfp":
                self.cfps.append(envelope)
            elif envelope.type == "award":
                self.awards.append(envelope)

        await self.raw.subscribe("agora.cfp.>", cb=seen)
        await self.raw.subscribe(f"agora.agent.{agent_id}", cb=seen)
        await self.raw.flush()

    async def settle(self) -> None:
        await self.raw.flush()
        await asyncio.sleep(0.05)


@pytest.fixture
async def watch() -> Any:
    watch = Watch()
    yield watch
    await watch.raw.close()


async def pair(agent_factory: AgentFactory, url: str, capability: Capability = WORK,
               **worker: Any) -> tuple[AgentNode, AgentNode]:
    """A client (it offers nothing the test asks for) and one worker it knows."""
    policy = worker.pop("auction_policy", None) or AuctionPolicy(bid_window=0.4)
    solo = await agent_factory(url, "solo", [capability], backend=Worker("solo"),
                               agent_type="worker", **worker)
    client = await agent_factory(url, "client", ["vote"], auction_policy=policy)
    await wait_until(lambda: solo.agent_id in client.directory, timeout=5.0)
    return client, solo


async def test_the_one_known_agent_is_awarded_without_a_call_for_proposals(
        nats_server: Any, agent_factory: AgentFactory, watch: Watch) -> None:
    client, solo = await pair(agent_factory, nats_server.client_url)
    recorder = await Recorder.replace(solo)
    await watch.start(nats_server.client_url, solo.agent_id)
    events: list[Progress] = []
    outcome = await client.auctioneer.run(Task(capability="work.do", parameters={"n": 1}),
                                          progress=events.append)
    await watch.settle()
    assert outcome.result.result == {"by": "solo", "n": 1} and outcome.winner == solo.agent_id
    assert outcome.bids == () and outcome.attempts == 1
    assert [e.event for e in events] == ["award", "accepted", "result"]
    assert events[0].detail["direct"] is True
    assert watch.cfps == []
    [award] = watch.awards  # sealed for the agent: its header is all a raw subscriber reads
    assert recorder.awards == [{**recorder.awards[0], "direct": True, "terms": {}}]
    assert award.exp - award.ts == 400  # its first answer awaited as long as a bid would be
    report = client.metrics.recent[-1]
    assert report["bids"] == 0 and report["winner"] == solo.agent_id

    # Turned off, the same task is auctioned: one cfp, one bid.
    client.auctioneer.policy = AuctionPolicy(bid_window=0.4, direct_award=False)
    outcome = await client.auctioneer.run(Task(capability="work.do", parameters={"n": 2}))
    await watch.settle()
    assert len(watch.cfps) == 1 and len(outcome.bids) == 1
    assert "direct" not in recorder.awards[-1]


async def test_a_busy_lone_agent_declines_and_the_auction_waits_for_it_as_before(
        nats_server: Any, agent_factory: AgentFactory, watch: Watch) -> None:
    client, solo = await pair(agent_factory, nats_server.client_url, max_concurrent_tasks=1)
    await watch.start(nats_server.client_url, solo.agent_id)
    first = asyncio.ensure_future(client.dispatcher.submit("work.do", {"n": 1, "seconds": 0.5}))
    await wait_until(lambda: solo.status.in_flight == 1, timeout=5.0)
    events: list[Progress] = []
    second = await client.dispatcher.submit("work.do", {"n": 2}, progress=events.append)
    assert (await first).result == {"by": "solo", "n": 1}
    assert second.result == {"by": "solo", "n": 2}
    kinds = [e.event for e in events]
    assert kinds[:3] == ["award", "declined", "cfp"], kinds
    assert events[1].detail["reason"] == AT_CAPACITY
    assert "waiting" in kinds  # the cfp found it busy too: called again after a pause
    assert len(solo.backend.started) == 2  # each task ran once


async def test_terms_a_bid_would_counter_are_declined_then_countered(
        nats_server: Any, agent_factory: AgentFactory, watch: Watch) -> None:
    dear = Capability(name="work.do", cost_per_token=0.01)
    policy = AuctionPolicy(bid_window=0.4, max_cost_usd=0.001, accept_counter_offers=False)
    client, solo = await pair(agent_factory, nats_server.client_url, dear, auction_policy=policy)
    recorder = await Recorder.replace(solo)
    await watch.start(nats_server.client_url, solo.agent_id)
    events: list[Progress] = []
    with pytest.raises(AuctionFailed, match="only counter-offers"):
        await client.dispatcher.submit("work.do", {"n": 3}, progress=events.append)
    await watch.settle()
    assert recorder.awards[0]["terms"]["max_cost_usd"] == 0.001  # the terms a cfp asks
    declined = next(e for e in events if e.event == "declined")
    assert declined.detail["reason"] == f"{COUNTER_OFFER}: cost_usd"
    assert len(watch.cfps) == 1 and solo.backend.started == []


async def test_an_agent_that_may_not_bid_for_the_initiator_declines_a_direct_award(
        nats_server: Any, agent_factory: AgentFactory) -> None:
    # It would let the client have work done (execute) but not ask it for bids.
    access = AccessPolicy(acl=(AclEntry(resource="work.do",
                                        principals={"*": frozenset({Action.EXECUTE})}),))
    client, solo = await pair(agent_factory, nats_server.client_url, access=access)
    events: list[Progress] = []
    with pytest.raises(NoBidders):  # and the cfp that follows is refused for the same reason
        await client.dispatcher.submit("work.do", {"n": 4}, progress=events.append)
    declined = next(e for e in events if e.event == "declined")
    assert "bid" in declined.detail["reason"]
    assert solo.backend.started == []


class Recorder(Bidder):
    """Records the awards it reads (opened: they are sealed for it); ``deaf`` ignores the
    direct ones, as a frozen agent would (or one that reads no ``direct`` flag and drops
    what it did not bid on): the initiator must not wait past a bid window for those."""

    def __init__(self, *args: Any, deaf: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deaf = deaf
        self.awards: list[dict[str, Any]] = []
        self.ignored = 0

    @classmethod
    async def replace(cls, node: AgentNode, *, deaf: bool = False) -> Recorder:
        await node.bidder.stop()
        node.bidder = recorder = cls(node, deaf=deaf)
        await recorder.start()
        return recorder

    async def _on_award(self, delivery: Any) -> None:
        self.awards.append(dict(delivery.body))
        if self.deaf and delivery.body.get("direct") is True:
            self.ignored += 1
            return
        await super()._on_award(delivery)


async def test_no_answer_to_a_direct_award_is_followed_by_a_call_for_proposals(
        nats_server: Any, agent_factory: AgentFactory, watch: Watch) -> None:
    policy = AuctionPolicy(bid_window=0.3, award_timeout=30)
    client, solo = await pair(agent_factory, nats_server.client_url, auction_policy=policy)
    deaf = await Recorder.replace(solo, deaf=True)
    await watch.start(nats_server.client_url, solo.agent_id)
    events: list[Progress] = []
    async with asyncio.timeout(10):  # the award timeout (30 s) is not what is waited
        result = await client.dispatcher.submit("work.do", {"n": 5}, progress=events.append)
    await watch.settle()
    assert result.result == {"by": "solo", "n": 5} and deaf.ignored == 1
    kinds = [e.event for e in events]
    assert kinds[:3] == ["award", "declined", "cfp"], kinds
    assert events[1].detail["reason"] == "no answer"
    direct, awarded = watch.awards
    assert direct.exp - direct.ts == 300 and awarded.exp - awarded.ts == 30_000
    # The unanswered award was also cancelled, in case it started late.
    assert solo.backend.started.count(result.task_id) == 1
