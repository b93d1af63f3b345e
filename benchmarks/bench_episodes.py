"""Decentralized-mode episodes over 10 seeds: success rate, steps, messages (issue 6).

Runs M-7's usage loop (``EpisodeRunner``, the same code as ``agoramesh
episode``) in the built-in grid world for each negotiation strategy and
communication protocol, and for each cooperation level, every agent with its
own embedded nats-server. There is no raw nats-py path to compare with: what
is measured is the team, not a transport. Per configuration it reports the
success rate, mean loop steps (every agent acts once a step), mean NATS
messages the agents sent and negotiation rounds, and wall time per episode.

    .venv/bin/python benchmarks/bench_episodes.py [--seeds 10] [--agents 3]
        [--config config/baseline/decentralized_config.yaml] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

from agoramesh._version import __version__
from agoramesh.modes.decentralized.config import load_config
from agoramesh.modes.decentralized.episode import EpisodeRunner, summarize

STRATEGIES = ("auction_based", "consensus", "priority_based")
PROTOCOLS = ("direct", "broadcast", "gossip")
COOPERATION = ("high", "medium", "low")


def run(base: dict[str, Any], *, agents: int, seeds: int, strategy: str, protocol: str,
        cooperation: str) -> dict[str, Any]:
    raw = {section: dict(values) if isinstance(values, dict) else values
           for section, values in base.items()}
    raw["agent_config"].update(negotiation_strategy=strategy, cooperation_level=cooperation)
    raw["communication_config"]["protocol"] = protocol
    with EpisodeRunner(raw, num_agents=agents) as runner:
        results = [runner.run(seed) for seed in range(seeds)]
    return {"strategy": strategy, "protocol": protocol, "cooperation": cooperation,
            "agents": agents, **summarize(results),
            "failed_seeds": [r.seed for r in results if not r.success]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--agents", type=int, nargs="+", default=[3, 5])
    parser.add_argument("--config", type=Path,
                        default=Path("config/baseline/decentralized_config.yaml"))
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    base = dict(load_config(args.config).raw)
    rows = []
    started = time.perf_counter()
    plans = [(n, s, p, "high") for n in args.agents for s in STRATEGIES for p in PROTOCOLS]
    plans += [(n, "auction_based", "direct", c) for n in args.agents for c in COOPERATION
              if c != "high"]
    print(f"agoramesh {__version__}, Python {platform.python_version()}, "
          f"{platform.machine()}; {args.seeds} seeds per row")
    print("| agents | strategy | protocol | cooperation | success | mean steps | "
          "mean messages | mean negotiation rounds | mean help requests | s/episode |")
    print("|---:|---|---|---|---:|---:|---:|---:|---:|---:|")
    for agents, strategy, protocol, cooperation in plans:
        row = run(base, agents=agents, seeds=args.seeds, strategy=strategy,
                  protocol=protocol, cooperation=cooperation)
        rows.append(row)
        print(f"| {agents} | {strategy} | {protocol} | {cooperation} | "
              f"{row['success_rate']:.0%} | {row['mean_steps']} | {row['mean_messages']} | "
              f"{row['mean_negotiation_rounds']} | {row['mean_help_requests']} | "
              f"{row['mean_seconds']:.3f} |", flush=True)
    print(f"total {time.perf_counter() - started:.1f}s")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0 if all(row["success_rate"] == 1.0 for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
