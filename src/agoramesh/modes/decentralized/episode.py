"""Running episodes: M-7's usage loop over the built-in simulator, measured.

:class:`EpisodeRunner` builds the agents once (``agent_config.agent_class``,
one per simulator agent), then runs one episode per world seed exactly as
M-7's usage example does — set peers, set the task, ``decide_action()`` /
``step()`` for each agent until an action contains DONE or
``max_total_steps`` rounds pass — and resets the agents after each. Used by
``agoramesh episode`` and ``benchmarks/bench_episodes.py``.
"""

from __future__ import annotations

import importlib
import statistics
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agoramesh.errors import ConfigError
from agoramesh.modes.decentralized.base import BaseAgent
from agoramesh.modes.decentralized.config import DecentralizedConfig
from agoramesh.sim.recorder import TrajectoryRecorder
from agoramesh.sim.world import GridWorld

__all__ = ("EpisodeResult", "EpisodeRunner", "load_agent_class", "summarize")

#: The class's path in M-7's own configuration, accepted for ours.
_SPEC_PATH = "modes.decentralized.autonomous_agent.AutonomousAgent"


def load_agent_class(path: str) -> type[BaseAgent]:
    """The class ``agent_config.agent_class`` names; ConfigError if it cannot be used."""
    if path == _SPEC_PATH:
        path = "agoramesh." + path
    module_name, _, class_name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"agent_config.agent_class {path!r} cannot be imported: {exc}"
                          ) from None
    if not isinstance(cls, type) or not issubclass(cls, BaseAgent):
        raise ConfigError(f"agent_config.agent_class {path!r} is not a BaseAgent subclass")
    return cls


@dataclass(frozen=True, kw_only=True)
class EpisodeResult:
    """One episode's outcome and what it cost."""

    seed: int
    success: bool
    steps: int  # rounds of the loop (every agent acts once a round)
    actions: int  # commands the simulator processed
    tasks_total: int
    tasks_completed: int
    messages: int  # NATS messages the agents sent (acknowledgements not counted)
    negotiations: int
    negotiation_rounds: int
    help_requests: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class EpisodeRunner:
    """Agents built once over one :class:`GridWorld`; :meth:`run` plays one world seed."""

    def __init__(self, config: DecentralizedConfig | Mapping[str, Any], *,
                 num_agents: int | None = None, world_size: int = 8,
                 trajectory: Path | None = None) -> None:
        self.config = DecentralizedConfig.from_mapping(config)
        count = num_agents if num_agents is not None else self.config.agent.num_agents
        if not 1 <= count <= 26:
            raise ConfigError(f"the number of agents must be 1-26, got {count}")
        agent_class = load_agent_class(self.config.agent.agent_class)
        self.world = GridWorld(num_agents=count, seed=0, width=world_size, height=world_size)
        self.recorder = TrajectoryRecorder(trajectory) if trajectory is not None else None
        self.agents: list[Any] = []
        try:
            for sim_id in self.world.sim_ids():
                self.agents.append(agent_class(self.world, sim_id, self.config.raw or
                                               self.config.as_dict()))
            for agent in self.agents:
                agent.set_peer_agents([a for a in self.agents if a is not agent])
                if self.recorder is not None:
                    agent.set_trajectory_recorder(self.recorder)
        except BaseException:
            self.close()
            raise

    def _sum(self, *path: str) -> int:
        """``agent.<path…>[key]`` summed over the agents (another agent_class may lack it)."""
        *attributes, key = path
        total = 0
        for agent in self.agents:
            holder: Any = agent
            for attribute in attributes:
                holder = getattr(holder, attribute, None)
            if isinstance(holder, Mapping):
                total += int(holder.get(key, 0))
        return total

    def run(self, seed: int) -> EpisodeResult:
        """One episode on the world of ``seed``, by M-7's usage loop."""
        self.world.reset(seed=seed)
        sent_before = self._sum("comm", "stats", "sent")
        started = time.perf_counter()
        if self.recorder is not None:
            self.recorder.start_episode(seed=seed, agents=self.world.sim_ids(),
                                        config=self.config.as_dict())
        task_description = self.world.task_description()
        for agent in self.agents:
            agent.set_task(task_description)
        steps = 0
        for _ in range(self.config.execution.max_total_steps):
            steps += 1
            done = False
            for agent in self.agents:
                action = agent.decide_action()
                agent.step()
                if "DONE" in action:
                    done = True
                    break
            if done:
                break
        outcome = self.world.evaluate()
        result = EpisodeResult(
            seed=seed, success=bool(outcome["success"]), steps=steps,
            actions=int(outcome["steps"]), tasks_total=int(outcome["tasks_total"]),
            tasks_completed=int(outcome["tasks_completed"]),
            messages=self._sum("comm", "stats", "sent") - sent_before,
            negotiations=self._sum("negotiator", "counts", "negotiations"),
            negotiation_rounds=self._sum("negotiator", "counts", "rounds"),
            help_requests=self._sum("counts", "help_requests_sent"),
            seconds=round(time.perf_counter() - started, 4))
        if self.recorder is not None:
            self.recorder.end_episode(**result.as_dict())
        for agent in self.agents:
            agent.reset()
        return result

    def close(self) -> None:
        for agent in self.agents:
            close = getattr(agent, "close", None)
            if close is not None:
                close()
        self.agents = []
        if self.recorder is not None:
            self.recorder.close()

    def __enter__(self) -> EpisodeRunner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def summarize(results: Iterable[EpisodeResult]) -> dict[str, Any]:
    """Success rate and means over episodes."""
    done = list(results)
    if not done:
        return {"episodes": 0}

    def mean(name: str) -> float:
        return round(statistics.fmean(getattr(r, name) for r in done), 2)

    return {"episodes": len(done),
            "success_rate": round(sum(r.success for r in done) / len(done), 4),
            "mean_steps": mean("steps"), "mean_actions": mean("actions"),
            "mean_messages": mean("messages"),
            "mean_negotiation_rounds": mean("negotiation_rounds"),
            "mean_help_requests": mean("help_requests"), "mean_seconds": mean("seconds")}
