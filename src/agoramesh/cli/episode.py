"""``agoramesh episode``: run decentralized-mode episodes in the built-in simulator.

Each agent joins the mesh with its own embedded nats-server (or the
deployment ``mesh.connect`` names), so every message of an episode crosses
NATS. Prints, per episode, success, steps, messages exchanged and
negotiation rounds; with several episodes, a summary. Exits 1 if an episode
did not succeed.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from agoramesh.cli.output import emit, emit_json
from agoramesh.config import Environment
from agoramesh.errors import ConfigError
from agoramesh.modes.decentralized.config import (
    CommunicationProtocol,
    CooperationLevel,
    DecentralizedConfig,
    load_config,
)
from agoramesh.modes.decentralized.episode import EpisodeResult, EpisodeRunner, summarize
from agoramesh.protocols.allocation.strategies import NegotiationStrategy

__all__ = ("register",)

DEFAULT_CONFIG = Path("config/baseline/decentralized_config.yaml")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "episode", help="run decentralized-mode episodes in the built-in simulator",
        description="Run the decentralized mode's usage loop (M-7): N autonomous agents on "
                    "the mesh negotiate and complete a grid world's tasks until one says DONE.")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help=f"YAML configuration (default {DEFAULT_CONFIG})")
    parser.add_argument("--agents", type=int, help="agents (default agent_config.num_agents)")
    parser.add_argument("--seed", type=int, default=0, help="world seed of the first episode")
    parser.add_argument("--episodes", type=int, default=1,
                        help="episodes to run, seeds SEED, SEED+1, … (default 1)")
    parser.add_argument("--strategy", choices=[s.value for s in NegotiationStrategy],
                        help="override agent_config.negotiation_strategy")
    parser.add_argument("--protocol", choices=[p.value for p in CommunicationProtocol],
                        help="override communication_config.protocol")
    parser.add_argument("--cooperation", choices=[c.value for c in CooperationLevel],
                        help="override agent_config.cooperation_level")
    parser.add_argument("--world-size", type=int, default=8, help="grid width and height")
    parser.add_argument("--trajectory", type=Path, help="write a JSON-lines trajectory here")
    parser.add_argument("--connect", help="join this NATS URL instead of embedding servers")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=_episode)


def _config(args: argparse.Namespace) -> DecentralizedConfig:
    raw: dict[str, Any] = {k: dict(v) if isinstance(v, dict) else v
                           for k, v in load_config(args.config).raw.items()}
    for section, key, value in (("agent_config", "negotiation_strategy", args.strategy),
                                ("communication_config", "protocol", args.protocol),
                                ("agent_config", "cooperation_level", args.cooperation),
                                ("mesh", "connect", args.connect)):
        if value is not None:
            raw.setdefault(section, {})[key] = value
    return DecentralizedConfig.from_mapping(raw)


def _line(result: EpisodeResult) -> str:
    outcome = "success" if result.success else "FAILED"
    return (f"episode seed {result.seed}: {outcome} — {result.steps} steps "
            f"({result.actions} actions), {result.tasks_completed}/{result.tasks_total} tasks, "
            f"{result.messages} messages, {result.negotiation_rounds} negotiation round(s), "
            f"{result.help_requests} help request(s), {result.seconds:.2f}s")


def _run(args: argparse.Namespace, config: DecentralizedConfig) -> list[EpisodeResult]:
    results = []
    with EpisodeRunner(config, num_agents=args.agents, world_size=args.world_size,
                       trajectory=args.trajectory) as runner:
        for seed in range(args.seed, args.seed + args.episodes):
            result = runner.run(seed)
            results.append(result)
            if not args.json:
                emit(_line(result))
    return results


async def _episode(args: argparse.Namespace, env: Environment) -> int:
    if args.episodes < 1 or args.episodes > 10_000:
        raise ConfigError(f"--episodes must be 1-10000, got {args.episodes}")
    if not 4 <= args.world_size <= 64:
        raise ConfigError(f"--world-size must be 4-64, got {args.world_size}")
    config = _config(args)
    # The agents' API is synchronous and drives its own loop thread: keep ours free.
    results = await asyncio.to_thread(_run, args, config)
    summary = summarize(results)
    if args.json:
        emit_json({"config": config.as_dict(), "episodes": [r.as_dict() for r in results],
                   "summary": summary})
    elif len(results) > 1:
        emit(f"{summary['episodes']} episodes: success rate {summary['success_rate']:.0%}, "
             f"mean {summary['mean_steps']} steps, {summary['mean_messages']} messages, "
             f"{summary['mean_negotiation_rounds']} negotiation rounds")
    return 0 if all(r.success for r in results) else 1
