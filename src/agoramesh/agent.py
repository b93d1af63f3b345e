"""AgentNode: an agent with everything it negotiates with — the assembly of the layers.

:class:`~agoramesh.nodes.node.BaseNode` runs an agent on the mesh (card,
presence, tasks, services); the protocols build on it. This module, above
both, puts them together:

- a :class:`~agoramesh.protocols.auction.bidder.Bidder` answering calls for proposals
  on ``agora.cfp.<capability>`` and awards on its direct subject;
- an :class:`~agoramesh.protocols.auction.auctioneer.Auctioneer` for the auctions it
  drives, and a :class:`~agoramesh.protocols.allocation.dispatch.Dispatcher` on top
  (``node.dispatcher``: how work is submitted from this agent);
- a :class:`~agoramesh.protocols.auction.task_desk.TaskDesk` on ``agora.task.>``
  (queue group: tasks it auctions for plain clients);
- a :class:`~agoramesh.protocols.jobs.worker.JobWorker` taking durable jobs
  (one per process: agents hosted beside a directory owner or a host's first
  agent leave them to it, and still bid on them), and the result store their
  winners write to;
- ballots for consensus allocation (protocols/allocation/strategies.py, voting.py).
"""

from __future__ import annotations

from collections.abc import Awaitable

from agoramesh.bus.identity import Identity
from agoramesh.bus.ingress import IngressPolicy
from agoramesh.config import BusConfig, JobsConfig
from agoramesh.nodes.backends.base import Backend
from agoramesh.nodes.card import AgentCard
from agoramesh.nodes.directory import Directory
from agoramesh.nodes.host import AgentHost
from agoramesh.nodes.node import BaseNode, NodeConfig
from agoramesh.nodes.task import TaskResult
from agoramesh.observability.trajectory import Trajectory
from agoramesh.protocols.allocation.dispatch import Dispatcher
from agoramesh.protocols.allocation.strategies import AgentProfile
from agoramesh.protocols.allocation.voting import ballot_handler, default_chooser
from agoramesh.protocols.auction.auctioneer import Auctioneer
from agoramesh.protocols.auction.bidder import Bidder, BidStrategy
from agoramesh.protocols.auction.policy import AuctionPolicy
from agoramesh.protocols.auction.task_desk import QUEUE, TaskDesk
from agoramesh.protocols.jobs.worker import JobWorker

__all__ = ("AgentNode",)

#: Seconds a winner tries to store a durable job's result before answering without it.
_WINNER_STORE_PATIENCE = 1.0


class AgentNode(BaseNode):
    """An agent on the mesh that bids, auctions, takes durable jobs and votes."""

    def __init__(self, identity: Identity, config: NodeConfig, backend: Backend,
                 bus_config: BusConfig, *, directory: Directory | None = None,
                 bid_strategy: BidStrategy | None = None,
                 auction_policy: AuctionPolicy | None = None,
                 trajectory: Trajectory | None = None, jobs: JobsConfig | None = None,
                 host: AgentHost | None = None) -> None:
        """``bid_strategy`` prices this agent's bids; ``auction_policy`` governs the
        auctions it runs; ``jobs``: the durable job stream and result store this node
        takes jobs from and stores results in. The rest: :class:`BaseNode`."""
        super().__init__(identity, config, backend, bus_config, directory=directory,
                         trajectory=trajectory, host=host)
        self.bidder = Bidder(self, bid_strategy)
        self.auctioneer = Auctioneer(self.bus, self.directory, policy=auction_policy,
                                     own_card=self._own_card, metrics=self.metrics,
                                     trajectory=trajectory)
        self.dispatcher = Dispatcher(self.bus, self.directory, auctioneer=self.auctioneer,
                                     own_card=self._own_card)
        self.task_desk = TaskDesk(self, self.auctioneer)
        # One job driver per process: agents hosted beside a directory owner (as `up`
        # and benchmarks host them) leave the jobs to it; any of them can still win them.
        drives_jobs = host.takes_jobs(self) if host is not None else self.owns_directory
        self.job_worker = JobWorker(self, self.auctioneer, jobs,
                                    max_jobs=config.max_jobs if drives_jobs else 0)
        self.result_store = self._save_result
        # Consensus allocation (protocols/allocation/strategies.py) asks agents to vote on
        # who gets a task.
        self.direct_handlers["ballot"] = ballot_handler(default_chooser(
            lambda: AgentProfile.from_card(self.card, self.status)))

    def _own_card(self) -> AgentCard:
        return self.card

    async def _save_result(self, result: TaskResult) -> None:
        """One short try: while JetStream elects a leader the answer goes out unstored
        at once, so the initiator holds the result too (and stores it, patiently)."""
        await self.job_worker.store.save(result, stored_by=self.agent_id,
                                         patience=_WINNER_STORE_PATIENCE)

    async def _start_protocols(self, ingress: IngressPolicy) -> None:
        await self.bidder.start()
        await self.auctioneer.start(confirm=False)
        self._task_subscriptions.append(await self.bus.subscribe(
            self.bus.subjects.task(">"), self.task_desk.handle, queue=QUEUE, ingress=ingress,
            concurrency=self.config.max_concurrent_tasks * 8, confirm=False))
        await self.job_worker.start()

    async def _retire(self) -> None:
        await self.bidder.stop()

    def _drain(self, budget: float) -> list[Awaitable[None]]:
        return [self.job_worker.stop(budget)]  # unfinished jobs go back to the stream

    async def _abandon(self) -> None:
        await self.job_worker.kill()

    async def __aenter__(self) -> AgentNode:
        await self.start()
        return self
