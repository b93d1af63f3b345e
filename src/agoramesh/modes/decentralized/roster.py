"""A member's team roster: teammates' sim ids (``agent_2``) to their agent ids and capabilities.

The roster is the mode's own: the simulator names agents, the mesh knows
nkeys, and teammates tell each other which is which in signed ``roster``
messages (PROTOCOL.md §19, "Roster"). Whether a teammate is alive is not the
roster's business but its presence's (presence.py); the roster only keeps
that a teammate was *lost* (it said ``bye`` or went silent), until it sends
its roster again.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ("ROSTER", "Roster", "Teammate")

log = logging.getLogger("agoramesh.decentralized")

#: The envelope type of roster messages.
ROSTER = "roster"
_MAX_CAPABILITIES = 32


@dataclass(slots=True)
class Teammate:
    """A teammate as the roster knows it."""

    sim_id: str
    agent_id: str  # its nkey public key
    capabilities: tuple[str, ...] = ()
    lost: bool = False


class Roster(Mapping[str, Teammate]):
    """The teammates of ``sim_id`` in ``team``, by sim id; ``stats`` counts name conflicts."""

    def __init__(self, sim_id: str, team: str, capabilities: Sequence[str],
                 stats: Counter[str]) -> None:
        self.sim_id = sim_id
        self.team = team
        self.capabilities = tuple(capabilities)
        self.stats = stats
        self._mates: dict[str, Teammate] = {}
        self._by_agent: dict[str, Teammate] = {}

    def __getitem__(self, sim_id: str) -> Teammate:
        return self._mates[sim_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._mates)

    def __len__(self) -> int:
        return len(self._mates)

    def body(self) -> dict[str, Any]:
        """Our own roster message."""
        return {"sim_id": self.sim_id, "capabilities": list(self.capabilities),
                "team": self.team}

    def by_agent(self, agent_id: str) -> Teammate | None:
        """The teammate with nkey ``agent_id`` (lost or not), if any."""
        return self._by_agent.get(agent_id)

    def read(self, agent_id: str, body: Any) -> Teammate | None:
        """A roster message signed by ``agent_id``; the teammate it adds, if any.

        Ignored: another team's, our own, a sim id that is not 1-64 characters,
        and a claim on the name of a live teammate by another key (counted as a
        ``roster_conflict``: a name is not taken over while its owner is there).
        A lost teammate's name is free again.
        """
        if not isinstance(body, dict) or body.get("team") != self.team:
            return None
        sim_id, capabilities = body.get("sim_id"), body.get("capabilities")
        if not isinstance(sim_id, str) or not 0 < len(sim_id) <= 64 or sim_id == self.sim_id:
            return None
        if (not isinstance(capabilities, list)
                or not all(isinstance(c, str) for c in capabilities)):
            capabilities = []
        known = self._mates.get(sim_id)
        if known is not None and not known.lost:
            if known.agent_id != agent_id:
                self.stats["roster_conflicts"] += 1
                log.warning("%s: %s claims the name of live teammate %s", self.sim_id,
                            agent_id[:12], sim_id)
            return None
        if known is not None:
            self._by_agent.pop(known.agent_id, None)
        mate = Teammate(sim_id, agent_id, tuple(capabilities[:_MAX_CAPABILITIES]))
        self._mates[sim_id] = self._by_agent[agent_id] = mate
        return mate
