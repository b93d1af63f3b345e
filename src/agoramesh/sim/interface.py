"""What an agent needs from a simulator: the :class:`SimulationEngine` protocol.

The decentralized-mode agents (:mod:`agoramesh.modes.decentralized`) drive
any object with these methods; :class:`agoramesh.sim.GridWorld` is the
built-in one. Another framework's simulator implements them (structural
typing: no base class to inherit) and its agents run on the mesh unchanged.

Contract, for every method: agents are named by *sim ids*, strings such as
``"agent_1"`` (not the nkey agent ids of the mesh); bad input is never an
exception but an :attr:`ActionStatus.INVALID` result (``process_command``)
or a :class:`~agoramesh.errors.InvalidWorldCall` for an unknown sim id (every
other method). Implementations must be safe to call from more than one
thread (the built-in one holds a lock).

A task, as :meth:`SimulationEngine.get_tasks` lists it, is a dict with at
least ``task_id`` (str), ``required_capability`` (str), ``priority`` (0-10),
``description`` (str) and ``location`` (``[x, y]``, where the work starts);
other keys (``kind``, ``object``, ``target``) ride along. Its shape is the
one :func:`agoramesh.protocols.allocation.strategies.normalize_tasks` accepts.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

__all__ = ("ActionStatus", "SimulationEngine", "StepResult")


class ActionStatus(StrEnum):
    """How a command went: done, tried and failed, or not a valid command at all."""

    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    INVALID = "INVALID"


#: ``(status, message, result)``: what ``process_command`` and an agent's ``step()`` return.
#: ``message`` is one human-readable line; ``result`` a JSON-able dict or None.
StepResult = tuple[ActionStatus, str, dict[str, Any] | None]


@runtime_checkable
class SimulationEngine(Protocol):
    """A world agents act in, one text command at a time."""

    def sim_ids(self) -> list[str]:
        """The sim ids of this episode's agents, in a stable order."""
        ...

    def get_agent_capabilities(self, sim_id: str) -> list[str]:
        """What ``sim_id`` can do (for example ``["vision", "navigation"]``)."""
        ...

    def get_tasks(self) -> list[dict[str, Any]]:
        """Every task of the episode (the mission briefing), in a stable order."""
        ...

    def task_description(self) -> str:
        """The episode's goal in one paragraph, for ``set_task`` and LLM prompts."""
        ...

    def process_command(self, sim_id: str, command: str) -> StepResult:
        """Carry out one command for ``sim_id``; an action containing DONE ends the episode."""
        ...

    def observe(self, sim_id: str) -> dict[str, Any]:
        """What ``sim_id`` perceives now, as a JSON-able dict."""
        ...

    def describe(self, sim_id: str) -> str:
        """The observation in plain words, for an LLM prompt."""
        ...

    def supported_actions(self, sim_id: str) -> str:
        """The commands ``sim_id`` may send, one per line with their arguments."""
        ...

    def is_done(self) -> bool:
        """Whether the episode has ended (an agent said DONE)."""
        ...

    def evaluate(self) -> dict[str, Any]:
        """The episode's outcome: at least ``success`` (bool), ``done``, ``tasks_total``,
        ``tasks_completed`` and ``steps`` (commands processed)."""
        ...
