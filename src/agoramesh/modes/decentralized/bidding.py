"""An agent's side of a negotiation: its profile and bids, from where it stands.

The negotiator (negotiation.py) asks for an offer on the runtime's loop while
the agent's own thread may be deciding. So the bidder reads only a
:class:`Standing`, an immutable value the agent replaces whole, and never the
simulator: the two threads need no lock, and any simulator works.

``cooperation_level`` sets an agent's capacity: ``low`` takes 1 task a
round, ``medium`` 2, ``high`` 3. An agent whose queue is full bids in no
first round, but counter-offers in later ones, with room for one more task
a round past its queue.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agoramesh.modes.decentralized.config import CooperationLevel
from agoramesh.modes.decentralized.negotiation import Offer, bid_of
from agoramesh.modes.decentralized.policy import estimated_steps
from agoramesh.modes.decentralized.tasks import Point, Task
from agoramesh.protocols.allocation.strategies import AgentProfile, TaskSpec
from agoramesh.protocols.auction.scoring import SUITABILITY

__all__ = ("CAPACITY", "Standing", "TeamBidder")

#: Tasks an agent takes in one negotiation round, by cooperation level.
CAPACITY = {CooperationLevel.LOW: 1, CooperationLevel.MEDIUM: 2, CooperationLevel.HIGH: 3}


@dataclass(frozen=True, slots=True)
class Standing:
    """What the bidder knows of its agent: where it is, the tasks queued for it (allocated,
    not complete), the tasks it gave up (it bids on them no more) and its capabilities."""

    position: Point = (0, 0)
    queued: int = 0
    excluded: frozenset[str] = frozenset()
    capabilities: tuple[str, ...] = ()


class TeamBidder:
    """Profiles and bids of agent ``sim_id`` (module docstring)."""

    def __init__(self, sim_id: str, cooperation: CooperationLevel,
                 capabilities: Sequence[str]) -> None:
        self.sim_id = sim_id
        self.capacity = CAPACITY[cooperation]
        #: Replaced whole by the agent's thread, read whole by the loop's.
        self.standing = Standing(capabilities=tuple(capabilities))

    def profile(self, round_: int) -> AgentProfile:
        standing = self.standing
        queued = standing.queued
        digits = "".join(c for c in self.sim_id if c.isdigit())
        # A later round is for counter-offers: room for one more task a round past the queue.
        room = self.capacity if round_ == 1 else max(self.capacity, queued) + round_ - 1
        return AgentProfile(agent_id=self.sim_id, name=self.sim_id,
                            capabilities=standing.capabilities,
                            capacity=room, in_flight=queued,
                            load=min(1.0, queued / self.capacity),
                            priority=max(0, 100 - int(digits or 0)))

    def offer(self, specs: Sequence[TaskSpec], round_: int) -> Offer:
        """Our profile and a bid for each task of ``specs`` we can and may do this round."""
        standing = self.standing
        profile = self.profile(round_)
        full = standing.queued >= self.capacity
        bids = []
        for spec in specs:
            if spec.task_id in standing.excluded or not profile.can_do(spec.capability):
                continue
            if full and round_ == 1:
                continue  # a counter-offer waits for a later round
            bids.append({"task_id": spec.wire_id,
                         "action": "counter_offer" if full else "bid",
                         "capabilities": list(standing.capabilities),
                         "estimated_time": estimated_steps(standing.position,
                                                           Task.read(spec.as_dict())),
                         "bid_value": 0.0})
        return profile, bids

    def suitability(self, task: Mapping[str, Any]) -> float:
        """0-1: how well we suit ``task`` now (0 when we lack the capability)."""
        profile, bids = self.offer([TaskSpec.from_dict(task)], 1)
        if not bids:
            return 0.0
        return round(SUITABILITY([bid_of(self.sim_id, profile, bids[0])])[0], 4)
