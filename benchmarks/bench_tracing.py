"""Tracing on against tracing off: auctions and direct tasks, in one run (issue 19).

Setup: a 1-seed Mesh on loopback in this process; a driver AgentNode (capability
``vote``: it never bids on ``echo``) and two worker AgentNodes offering ``echo``
(OfflineBackend), all on one event loop, so every span of a task (client and
servers alike) is paid in the measured loop.

* ``off``  no TracerProvider: the API's no-op, nothing added to any message;
* ``on``   the SDK's TracerProvider with no span processor (spans are made, sampled,
           recorded and ended; the exporter is off), the traceparent in every request;
           every task traced (``ParentBased(ALWAYS_ON)``), or with ``--sample R`` one
           in 1/R (``ParentBased(TraceIdRatioBased(R))``, what
           ``OTEL_TRACES_SAMPLER=parentbased_traceidratio`` sets up).

Both are measured in alternating blocks (off, on, on, off, ...) of ``--rounds`` tasks
each, per path: ``auction`` = ``Dispatcher.submit`` (a contract-net auction among the
two workers), ``direct`` = ``submit_task`` to ``agora.cap.echo``. Target: the on/off
ratio of each path's p50 within 1.05.

    .venv/bin/python benchmarks/bench_tracing.py [--rounds 200] [--blocks 8] [--sample 1]
                                                 [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased

from agoramesh.agent import AgentNode
from agoramesh.bus.identity import Identity
from agoramesh.bus.mesh import Mesh
from agoramesh.config import BusConfig
from agoramesh.nodes.backends.offline import OfflineBackend
from agoramesh.nodes.catalog import capabilities_for
from agoramesh.nodes.client import submit_task
from agoramesh.nodes.node import NodeConfig
from agoramesh.nodes.task import Task, TaskStatus
from agoramesh.observability import tracing
from agoramesh.testing import wait_until
from common import latency, stop_all, time_rounds

TARGET = 1.05


async def _agents(url: str) -> tuple[AgentNode, list[AgentNode]]:
    def make(name: str, capability: str) -> AgentNode:
        return AgentNode(Identity.generate(),
                         NodeConfig(name=name, capabilities=capabilities_for("offline",
                                                                             [capability])),
                         OfflineBackend(), BusConfig(servers=(url,), name=name))

    driver = make("driver", "vote")
    workers = [make(f"worker{n}", "echo") for n in range(2)]
    for node in (driver, *workers):
        await node.start()
    await wait_until(lambda: len(driver.auctioneer.known_bidders("echo")) == len(workers),
                     timeout=10)
    return driver, workers


async def run(rounds: int, blocks: int, sample: float) -> dict[str, Any]:
    # No span processor: spans are made and dropped.
    provider = TracerProvider(sampler=ParentBased(
        ALWAYS_ON if sample >= 1 else TraceIdRatioBased(sample)))
    with tempfile.TemporaryDirectory() as base:
        mesh = await Mesh.launch(Path(base) / "mesh", seeds=1)
        try:
            driver, workers = await _agents(mesh.seeds[0].client_url)
            try:
                return {"sample": sample, **await _measure(driver, provider, rounds, blocks)}
            finally:
                await stop_all([driver, *workers])
        finally:
            await mesh.stop(2.0)


async def _measure(driver: AgentNode, provider: TracerProvider, rounds: int,
                   blocks: int) -> dict[str, Any]:
    async def auction() -> None:
        result = await driver.dispatcher.submit("echo", {"text": "hi"}, timeout=5)
        assert result.status is TaskStatus.COMPLETED

    async def direct() -> None:
        result = await submit_task(driver.bus, Task(capability="echo",
                                                    parameters={"text": "hi"}), timeout=5)
        assert result.status is TaskStatus.COMPLETED

    paths: dict[str, Callable[[], Awaitable[None]]] = {"auction": auction, "direct": direct}
    samples: dict[tuple[str, str], list[int]] = {(path, mode): [] for path in paths
                                                 for mode in ("off", "on")}
    missed = 0
    for path, op in paths.items():
        await time_rounds(op, [], 20)  # warm-up
        for block in range(blocks):
            mode = "on" if block % 4 in (1, 2) else "off"
            if mode == "on":
                tracing.enable(provider)
            try:
                missed += await time_rounds(op, samples[path, mode], rounds)
            finally:
                tracing.disable()
    report: dict[str, Any] = {"rounds_per_block": rounds, "blocks": blocks, "missed": missed}
    for path in paths:
        off, on = latency(samples[path, "off"]), latency(samples[path, "on"])
        ratio = on["p50"] / off["p50"] if off["p50"] else 0.0
        report[path] = {"off": off, "on": on, "p50_ratio": round(ratio, 3),
                        "within_target": ratio <= TARGET}
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200, help="tasks per block (default 200)")
    parser.add_argument("--blocks", type=int, default=8,
                        help="alternating blocks per path, a multiple of 4 (default 8)")
    parser.add_argument("--sample", type=float, default=1.0,
                        help="the share of tasks traced while on (default 1: every one)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    if not 0 <= args.sample <= 1:
        parser.error("--sample is a share of tasks, from 0 to 1")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        report = runner.run(run(args.rounds, args.blocks, args.sample))
    text = json.dumps(report, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0 if all(report[path]["within_target"] for path in ("auction", "direct")) else 1


if __name__ == "__main__":
    sys.exit(main())
