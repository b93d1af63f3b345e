"""A process hosting many offline agents under one AgentHost (tests and benchmarks).

``python -m agoramesh.testing.hosting --server URL [--server URL…] --agents N``
starts a host and N ``echo`` agents (round-robin over the servers), prints
one JSON line per event on stdout, and runs until SIGTERM/SIGINT, when it
stops them all (the host's ``bye`` drops them at once on every peer):

- ``{"event": "ready"}`` with ``--on-line``, once the agents are made: it then starts on
  a line on stdin, and measures idling (below) from the next one;
- ``{"event": "starting", "at": unix time}`` as the host starts;

- ``{"event": "started", "agents": N, "seconds": …, "cpu_s": …, "rss_kib": …,
  "rss_base_kib": …, "host": id}`` once every agent has said hello (``seconds`` and
  ``cpu_s``, this process's CPU time, from the host's start);
- ``{"event": "idle", "cpu": …, "seconds": …, "rss_kib": …, "rss_host_kib": …}`` after
  ``--idle`` seconds with nothing to do but beat (CPU as a fraction of one core;
  ``rss_host_kib``: before any agent was made, so the difference is what they cost);
- ``{"event": "stopped", "seconds": …}`` on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from agoramesh.agent import AgentNode
from agoramesh.bus.identity import Identity
from agoramesh.config import BusConfig, EnvelopePolicy
from agoramesh.nodes.backends.offline import OfflineBackend
from agoramesh.nodes.catalog import capabilities_for
from agoramesh.nodes.host import AgentHost
from agoramesh.nodes.node import NodeConfig

__all__ = ("main", "rss_kib", "run")


def rss_kib() -> int:
    """This process's resident set size in KiB, after a garbage collection."""
    gc.collect()
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])


def _say(**event: Any) -> None:
    print(json.dumps(event), flush=True)


async def _line_on_stdin() -> None:
    """Return when a line (or the end) arrives on stdin."""
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        await reader.readline()
    finally:
        transport.close()


async def run(servers: list[str], agents: int, *, name: str, heartbeat: float,
              idle: float, sign_all: bool = False, on_line: bool = False) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    capabilities = capabilities_for("offline", ["echo"])
    envelope = EnvelopePolicy(sign_all=sign_all)
    host = AgentHost(BusConfig(servers=(servers[0],), name=f"{name}-host", envelope=envelope),
                     name=f"{name}-host", heartbeat_interval=heartbeat)
    base = rss_kib()
    nodes = [AgentNode(Identity.generate(), NodeConfig(
                 name=f"{name}-{i:05d}", capabilities=capabilities,
                 heartbeat_interval=heartbeat, max_jobs=0),
                 OfflineBackend(), BusConfig(servers=(servers[i % len(servers)],),
                                             name=f"{name}-{i:05d}", envelope=envelope),
                 host=host)
             for i in range(agents)]
    if on_line:  # others may still be importing: start together, when told
        _say(event="ready")
        await _line_on_stdin()
    _say(event="starting", at=time.time())
    started, cpu_started = time.perf_counter(), time.process_time()
    await host.start()
    try:
        await asyncio.gather(*(node.start() for node in nodes))
        _say(event="started", agents=agents, seconds=round(time.perf_counter() - started, 3),
             cpu_s=round(time.process_time() - cpu_started, 3), rss_kib=rss_kib(),
             rss_base_kib=base, host=host.agent_id)
        if idle > 0 and on_line:  # the others may still be starting: wait for the word
            line = asyncio.ensure_future(_line_on_stdin())
            await asyncio.wait([line, asyncio.ensure_future(stop.wait())],
                               return_when=asyncio.FIRST_COMPLETED)
            line.cancel()
        if idle > 0 and not stop.is_set():
            cpu, wall = time.process_time(), time.perf_counter()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=idle)
            if not stop.is_set():
                _say(event="idle", cpu=round((time.process_time() - cpu)
                                             / (time.perf_counter() - wall), 4),
                     seconds=idle, rss_kib=rss_kib(), rss_host_kib=base)
        await stop.wait()
    finally:
        began = time.perf_counter()
        await host.stop(grace=1.0)
        _say(event="stopped", seconds=round(time.perf_counter() - began, 3))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agoramesh.testing.hosting")
    parser.add_argument("--server", action="append", required=True, help="client URL")
    parser.add_argument("--agents", type=int, required=True)
    parser.add_argument("--name", default="hosted")
    parser.add_argument("--heartbeat", type=float, default=1.0)
    parser.add_argument("--idle", type=float, default=0.0,
                        help="seconds of idling to measure CPU over after the start")
    parser.add_argument("--on-line", action="store_true",
                        help="say ready, start when a line arrives on stdin, and start the "
                             "idle measurement on the next line")
    parser.add_argument("--sign-all", action="store_true",
                        help="sign every envelope (EnvelopePolicy.sign_all)")
    args = parser.parse_args(argv)
    loop_factory = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is optional on some platforms
        pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(run(args.server, args.agents, name=args.name, heartbeat=args.heartbeat,
                       idle=args.idle, sign_all=args.sign_all,
                       on_line=args.on_line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
