"""The built-in simulator: a small deterministic grid world of tasks that need different skills.

Each agent holds one or two of three capabilities (navigation, vision,
manipulation) and each task needs one of them, so no agent can do everything:

``inspect``  (vision)        SCAN next to an object until it is identified.
``deliver``  (manipulation)  PICK an object, carry it to a zone, PLACE it there.
``survey``   (navigation)    MARK on a waypoint's cell.

Some deliver objects start unidentified with no inspect task of their own: a
manipulation agent cannot PICK them until a vision agent has SCANned them, so
the agents have to ask each other for help. Everything is generated from
``random.Random(seed)``; the same arguments always give the same world, every
free cell is reachable, and every task's capability is held by some agent, so
every world is solvable (the tests walk a scripted oracle through 40 of them).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from agoramesh.errors import ConfigError, InvalidWorldCall
from agoramesh.sim import actions, views
from agoramesh.sim.generation import generate
from agoramesh.sim.interface import StepResult
from agoramesh.sim.state import WorldState

__all__ = ("GridWorld",)


class GridWorld:
    """A seeded grid world that satisfies :class:`~agoramesh.sim.interface.SimulationEngine`.

    Coordinates are ``(x, y)`` with ``(0, 0)`` top left; north is ``y - 1``.
    Every public method holds one re-entrant lock, so agents on several threads
    may share a world. The world's contents live in a
    :class:`~agoramesh.sim.state.WorldState` that :mod:`~agoramesh.sim.generation` draws,
    :mod:`~agoramesh.sim.actions` changes and :mod:`~agoramesh.sim.views` reads.
    """

    def __init__(self, *, num_agents: int = 3, seed: int = 0, width: int = 8, height: int = 8,
                 view_radius: int = 2, num_tasks: int | None = None,
                 obstacle_ratio: float = 0.1) -> None:
        if not 4 <= width <= 64 or not 4 <= height <= 64:
            raise ConfigError(f"width and height must be 4..64, got {width}x{height}")
        if view_radius < 0:
            raise ConfigError(f"view_radius must be >= 0, got {view_radius}")
        if num_tasks is not None and num_tasks < 1:
            raise ConfigError(f"num_tasks must be >= 1 or None, got {num_tasks}")
        if not 0.0 <= obstacle_ratio <= 0.3:
            raise ConfigError(f"obstacle_ratio must be 0..0.3, got {obstacle_ratio}")
        self.width, self.height = width, height
        self.view_radius, self.obstacle_ratio = view_radius, obstacle_ratio
        self._requested_tasks = num_tasks
        self._lock = threading.RLock()
        self._generate(seed, num_agents)

    def reset(self, seed: int | None = None, num_agents: int | None = None) -> None:
        """Regenerate the world (same seed and agents unless given) and clear every counter."""
        with self._lock:
            self._generate(self._seed if seed is None else seed,
                           len(self._state.agents) if num_agents is None else num_agents)

    def _generate(self, seed: int, num_agents: int) -> None:
        # Generated first: a bad reset raises before it changes anything.
        self._state: WorldState = generate(
            width=self.width, height=self.height, obstacle_ratio=self.obstacle_ratio,
            num_tasks=self._requested_tasks, seed=seed, num_agents=num_agents)
        self._seed = seed

    def shortest_path_length(self, start: Sequence[int], goal: Sequence[int]) -> int:
        """Steps on the shortest walk around walls, for agents estimating how long a task takes."""
        with self._lock:
            grid = self._state.grid
            a, b = grid.free_cell(start), grid.free_cell(goal)
            return len(grid.path(a, b)) - 1

    # -- read-only views ----------------------------------------------------------------------

    def sim_ids(self) -> list[str]:
        with self._lock:
            return list(self._state.agents)

    def get_agent_capabilities(self, sim_id: str) -> list[str]:
        with self._lock:
            return sorted(self._state.agent(sim_id).capabilities)

    def position(self, sim_id: str) -> tuple[int, int]:
        with self._lock:
            return self._state.agent(sim_id).position

    def get_tasks(self) -> list[dict[str, Any]]:
        with self._lock:
            return [task.as_dict() for task in self._state.tasks]

    def task_status(self, task_id: str) -> str:
        """``"complete"`` or ``"open"``; an unknown task id is an :class:`InvalidWorldCall`."""
        with self._lock:
            for task in self._state.tasks:
                if task.task_id == task_id:
                    return "complete" if task.complete else "open"
            raise InvalidWorldCall(f"unknown task {task_id!r:.40}")

    def is_done(self) -> bool:
        with self._lock:
            return self._state.done

    def task_description(self) -> str:
        with self._lock:
            return views.task_description(self._state)

    def evaluate(self) -> dict[str, Any]:
        with self._lock:
            return views.evaluate(self._state)

    def observe(self, sim_id: str) -> dict[str, Any]:
        with self._lock:
            return views.observe(self._state, sim_id, self.view_radius)

    def describe(self, sim_id: str) -> str:
        with self._lock:
            return views.describe(self._state, sim_id, self.view_radius)

    def supported_actions(self, sim_id: str) -> str:
        with self._lock:
            return actions.supported_actions(self._state.agent(sim_id))

    def render(self) -> str:
        """An ASCII map: ``#`` wall, ``.`` free, ``1``-``9`` agents (``@`` beyond), ``o``
        object, ``Z`` zone, ``w`` waypoint; the first that applies to a cell wins."""
        with self._lock:
            return views.render(self._state)

    # -- commands -----------------------------------------------------------------------------

    def process_command(self, sim_id: str, command: str) -> StepResult:
        with self._lock:
            return actions.process_command(self._state, sim_id, command)
