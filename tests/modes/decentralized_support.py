"""Helpers for the decentralized-mode tests (``agoramesh.modes.decentralized``).

Agents and communication managers started here join a real mesh: each embeds
a nats-server through the process's :class:`MeshRuntime`. :class:`Team` keeps
track of everything a test (or a module) started, closes it at teardown and
checks by PID that no server is left; every group of agents gets a team id of
its own (``mesh.team``), so groups alive at the same time never share a
roster.
"""

from __future__ import annotations

import copy
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from agoramesh.bus.server import process_alive
from agoramesh.modes.decentralized.autonomous_agent import AutonomousAgent
from agoramesh.modes.decentralized.communication import CommunicationManager
from agoramesh.modes.decentralized.runtime import MeshRuntime
from agoramesh.sim.interface import SimulationEngine

ROOT = Path(__file__).resolve().parents[2]
BASELINE = ROOT / "config" / "baseline" / "decentralized_config.yaml"
#: The communication timeout the integration tests use (the baseline's 5 s, shortened).
TIMEOUT = 2.0


def baseline() -> dict[str, Any]:
    """The baseline YAML as M-7's loop loads it: a plain dict, fresh on every call."""
    loaded = yaml.safe_load(BASELINE.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def new_team() -> str:
    return f"m{uuid.uuid4().hex[:10]}"


def make_config(*, team: str | None = None, **sections: Mapping[str, Any]) -> dict[str, Any]:
    """The baseline dict with a short timeout, a team of its own and ``sections`` merged in."""
    config = copy.deepcopy(baseline())
    config["communication_config"]["timeout"] = TIMEOUT
    config["mesh"] = {"team": team or new_team()}
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    return config


def nats_children() -> list[int]:
    """PIDs of live nats-server processes whose parent is this test process."""
    me = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.find("(") + 1:stat.rfind(")")]
        fields = stat[stat.rfind(")") + 2:].split()
        if name.startswith("nats-server") and int(fields[1]) == me and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def wait_gone(pids: Sequence[int], timeout: float = 5.0) -> list[int]:
    """Wait (bounded) for ``pids`` to exit; returns those still alive."""
    deadline = time.monotonic() + timeout
    alive = [p for p in pids if process_alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if process_alive(p)]
    return alive


class Team:
    """Agents and managers started by one test or module; closed and checked at teardown."""

    def __init__(self) -> None:
        self.agents: list[AutonomousAgent] = []
        self.comms: list[CommunicationManager] = []
        self.pids: list[int] = []
        self.runtimes: list[MeshRuntime] = []

    def _track(self, comm: CommunicationManager) -> None:
        server = comm.member.server
        assert server is not None and server.pid is not None, "an agent embeds a server"
        self.pids.append(server.pid)
        if comm.runtime not in self.runtimes:
            self.runtimes.append(comm.runtime)

    def adopt(self, agent: AutonomousAgent) -> AutonomousAgent:
        """Track an agent built by the test itself (M-7's loop builds its own)."""
        self.agents.append(agent)
        self._track(agent.comm)
        return agent

    def agents_for(self, simulator: SimulationEngine, config: Mapping[str, Any], *,
                   peers: bool = True) -> list[AutonomousAgent]:
        """One agent per sim id, peers set (M-7's first two loops)."""
        agents = [self.adopt(AutonomousAgent(simulator, sim_id, config))
                  for sim_id in simulator.sim_ids()]
        if peers:
            for agent in agents:
                agent.set_peer_agents([other for other in agents if other is not agent])
        return agents

    def comm(self, sim_id: str, config: Mapping[str, Any],
             capabilities: Sequence[str] = ()) -> CommunicationManager:
        comm = CommunicationManager(sim_id, config=config, capabilities=capabilities)
        self.comms.append(comm)
        self._track(comm)
        return comm

    def close(self) -> None:
        for agent in reversed(self.agents):
            agent.close()
        for comm in reversed(self.comms):
            comm.close()
        left = wait_gone(self.pids)
        assert not left, f"nats-server processes still running after close: {left}"
        for runtime in self.runtimes:
            assert not runtime.running, f"{runtime} still running after its agents closed"
            assert runtime._servers == [], f"{runtime} still holds servers"


def run_episode(simulator: SimulationEngine, agents: Sequence[AutonomousAgent],
                max_steps: int, *, on_round: Callable[[int], None] | None = None) -> int:
    """M-7's loop (decide, step, DONE ends the round), stopped once the world is done.

    Returns the number of rounds played.
    """
    task_description = simulator.task_description()
    for agent in agents:
        agent.set_task(task_description)
    rounds = 0
    for step in range(max_steps):
        rounds = step + 1
        for agent in agents:
            action = agent.decide_action()
            agent.step()
            if "DONE" in action:
                break
        if on_round is not None:
            on_round(step)
        if simulator.is_done():
            break
    return rounds
