"""The built-in simulator agents act in, and a recorder for what happened in it.

:class:`GridWorld` is a seeded grid world whose tasks need different
capabilities; it satisfies the :class:`SimulationEngine` protocol that the
decentralized agents drive, so another simulator can take its place.
:class:`TrajectoryRecorder` writes an episode as JSON lines and
:func:`read_trajectory` reads them back.
"""

from agoramesh.sim.interface import ActionStatus, SimulationEngine, StepResult
from agoramesh.sim.recorder import TrajectoryRecorder, read_trajectory
from agoramesh.sim.world import GridWorld

__all__ = (
    "ActionStatus",
    "GridWorld",
    "SimulationEngine",
    "StepResult",
    "TrajectoryRecorder",
    "read_trajectory",
)
