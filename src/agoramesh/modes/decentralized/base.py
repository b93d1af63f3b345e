"""``BaseAgent``: the step loop every simulation agent shares (M-7's core class).

An agent is built as ``Agent(simulator, sim_id, config)``, ``sim_id`` being
its name in the simulator (``agent_1``); the user's loop calls
``decide_action()`` and then ``step()``, which carries the decided action out
through ``simulator.process_command`` and returns its ``(status, message,
result)``. ``step()`` alone decides first, as M-7's single-agent loop does,
so both ways of driving an agent work; an action is never carried out twice.
Subclasses implement :meth:`decide_action` (returning through
:meth:`_decided`) and :meth:`get_mode_name`, and may extend :meth:`on_step`
and :meth:`reset`. A trajectory recorder's records name the agent by its sim
id, in their ``agent_id`` field.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any

from agoramesh.errors import ConfigError, InvalidRequest, InvalidWorldCall
from agoramesh.sim.interface import ActionStatus, SimulationEngine, StepResult

__all__ = ("BaseAgent",)

MAX_HISTORY = 200


class BaseAgent(abc.ABC):
    """One agent in a simulator; see the module docstring for the loop."""

    def __init__(self, simulator: SimulationEngine, sim_id: str,
                 config: Mapping[str, Any] | Any = None) -> None:
        if not isinstance(simulator, SimulationEngine):
            raise ConfigError(f"simulator must implement SimulationEngine "
                               f"(agoramesh.sim.interface), got {type(simulator).__name__}")
        if sim_id not in simulator.sim_ids():
            raise InvalidWorldCall(f"the simulator has no agent {sim_id!r:.40}; it has "
                               f"{', '.join(simulator.sim_ids())}")
        self.simulator = simulator
        self.sim_id = sim_id
        self.config = config
        self.history: list[dict[str, Any]] = []
        self.step_count = 0
        self.consecutive_failures = 0
        self.trajectory_recorder: Any = None
        self.task_description = ""
        self._pending: str | None = None

    @abc.abstractmethod
    def decide_action(self) -> str:
        """The next command for the simulator (an action containing DONE ends the episode)."""

    @abc.abstractmethod
    def get_mode_name(self) -> str:
        """The mode's name, such as ``"decentralized"``."""

    def set_task(self, task_description: str) -> None:
        if not isinstance(task_description, str):
            raise InvalidRequest("a task description must be a string")
        self.task_description = task_description

    def set_trajectory_recorder(self, recorder: Any) -> None:
        """Record steps (and what the subclass records) with ``recorder``; None stops."""
        self.trajectory_recorder = recorder

    def _record_message(self, direction: str, message: dict[str, Any]) -> None:
        """Record a message this agent sent or received (a communication hook)."""
        if self.trajectory_recorder is not None:
            self.trajectory_recorder.record_message(agent_id=self.sim_id, direction=direction,
                                                    message=message)

    def _decided(self, action: str) -> str:
        """Subclasses return their action through this: the next :meth:`step` carries it out."""
        self._pending = action
        return action

    def step(self) -> StepResult:
        """Carry out the decided action (deciding first if nothing is pending)."""
        # A subclass that returns without _decided still has its action carried out.
        action = self._pending if self._pending is not None else self.decide_action()
        self._pending = None
        action = action.strip()
        self.step_count += 1
        status, message, result = self.simulator.process_command(self.sim_id, action)
        if status in (ActionStatus.FAILURE, ActionStatus.INVALID):
            self.consecutive_failures += 1
        else:
            self.consecutive_failures = 0
        self.history.append({"step": self.step_count, "action": action,
                             "status": str(status), "message": message})
        del self.history[:-MAX_HISTORY]
        if self.trajectory_recorder is not None:
            self.trajectory_recorder.record_step(
                agent_id=self.sim_id, step=self.step_count, action=action,
                status=str(status), message=message, result=result)
        self.on_step(action, status, message, result)
        return status, message, result

    def on_step(self, action: str, status: ActionStatus, message: str,  # noqa: B027
                result: dict[str, Any] | None) -> None:
        """What the agent learns from a step's outcome (nothing, here): a hook."""

    def reset(self) -> None:
        """Forget the episode: history, counters, the pending action and the task."""
        self.history.clear()
        self.step_count = 0
        self.consecutive_failures = 0
        self.task_description = ""
        self._pending = None
