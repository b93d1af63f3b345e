"""Hosted agents at scale: 1,000 agents in one process, 5,000 over five.

Each host is its own process (``python -m agoramesh.testing.hosting``): one
AgentHost and N offline ``echo`` agents spread over the seeds of a 3-seed
mesh, heartbeat 1 s. An observer AgentNode in this process (its own
connection, on another seed than most agents) times, from the first host's
first ``start()`` (its ``starting`` event: every host has imported and made
its agents, keys included, then all are told to start at once), until its
directory holds every hosted agent. Each host reports its own start time, VmRSS per agent (after gc,
over the host alone), and its CPU while its agents idle 5 s (measured once
every host has started and 2 s have passed). Then the hosts are stopped
(SIGTERM: one ``bye`` each) and the observer times until every agent is gone.

Scenarios: ``one`` (1 x 1,000), ``five`` (5 x 1,000), and ``one-sa`` (1 x 1,000
with ``sign_all``: every envelope signed, the non-repudiation setting).

    .venv/bin/python benchmarks/bench_hosting.py [--quick] [--json FILE]

``--quick``: 1 x 200 and 2 x 200 (what `make test` exercises, bounded, in
tests/nodes/test_host_processes.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from agoramesh.agent import AgentNode
from agoramesh.bus.identity import Identity
from agoramesh.bus.mesh import Mesh
from agoramesh.config import BusConfig
from agoramesh.nodes.backends.offline import OfflineBackend
from agoramesh.nodes.catalog import capabilities_for
from agoramesh.nodes.node import NodeConfig
from common import Warnings, count_warnings, run_and_report

HEARTBEAT, IDLE = 1.0, 5.0
BOUND = 120.0  # seconds any one wait may take before the scenario is reported unfinished
TARGETS = {"one": {"discoverable_s": 2.0, "rss_per_agent_kib": 50.0, "idle_cpu_pct": 5.0},
           "five": {"discoverable_s": 5.0}}


class Host:
    """One hosting process and its JSON events."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: dict[str, dict[str, Any]] = {}

    @classmethod
    async def spawn(cls, urls: list[str], agents: int, name: str, sign_all: bool) -> Host:
        args = ["-m", "agoramesh.testing.hosting", "--agents", str(agents), "--name", name,
                "--heartbeat", str(HEARTBEAT), "--idle", str(IDLE), "--on-line"]
        for url in urls:
            args += ["--server", url]
        if sign_all:
            args.append("--sign-all")
        proc = await asyncio.create_subprocess_exec(sys.executable, *args,
                                                    stdin=asyncio.subprocess.PIPE,
                                                    stdout=asyncio.subprocess.PIPE)
        return cls(proc)

    async def event(self, name: str) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while name not in self.events:
            async with asyncio.timeout(BOUND):
                line = await self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"host process ended before {name!r}")
            event = json.loads(line)
            self.events[event["event"]] = event
        return self.events[name]

    async def tell(self) -> None:
        """Tell the host to go on: to start (all are ready), or to measure idling."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"idle\n")
        await self.proc.stdin.drain()

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                async with asyncio.timeout(30):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def scenario(base: Path, name: str, processes: int, agents: int, *,
                   sign_all: bool = False) -> dict[str, Any]:
    mesh = await Mesh.launch(base / name, seeds=3)
    hosts: list[Host] = []
    observer: AgentNode | None = None
    try:
        urls = [seed.client_url for seed in mesh.seeds]
        observer = AgentNode(Identity.generate(), NodeConfig(
            name="observer", capabilities=capabilities_for("offline", ["vote"]),
            heartbeat_interval=HEARTBEAT), OfflineBackend(),
            BusConfig(servers=(urls[1],), name="observer"))
        await observer.start()
        total = processes * agents
        hosted = 0

        def count(entry: Any) -> None:
            nonlocal hosted
            if entry.host:
                hosted += 1
                if hosted == total:
                    known_at.setdefault("all", time.time())
                    all_known.set()

        known_at: dict[str, float] = {}
        all_known, all_gone = asyncio.Event(), asyncio.Event()
        observer.directory.on_join.append(count)
        hosts = [await Host.spawn(urls, agents, f"{name}{i}", sign_all)
                 for i in range(processes)]
        for host in hosts:  # imported, agents made (keys generated): start them together
            await host.event("ready")
        servers_cpu, own_cpu = _cpu_seconds(mesh), time.process_time()
        for host in hosts:
            await host.tell()
        started = [await host.event("started") for host in hosts]
        first = min(host.events["starting"]["at"] for host in hosts)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(BOUND):
                await all_known.wait()
        # CPU spent by every process while the agents joined (hosts: until their start
        # returned), against the wall time: on 2 cores, the floor is the sum / 2.
        join_cpu = {"hosts": round(sum(event["cpu_s"] for event in started), 3),
                    "observer": round(time.process_time() - own_cpu, 3),
                    "servers": round(_cpu_seconds(mesh) - servers_cpu, 3)}
        await asyncio.sleep(2 * HEARTBEAT)  # late card fetches and sweeps settle
        for host in hosts:
            await host.tell()
        idle = [await host.event("idle") for host in hosts]
        received = dict(observer.bus.received)
        gone: dict[str, str] = {}

        def left(agent_id: str, why: str) -> None:
            gone.setdefault(agent_id, why)
            if len(gone) >= total:
                all_gone.set()

        observer.directory.on_leave.append(left)
        stopping = time.perf_counter()
        await asyncio.gather(*(host.stop() for host in hosts))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(30):
                await all_gone.wait()
        per_agent = [(event["rss_kib"] - event["rss_host_kib"]) / agents for event in idle]
        result = {
            "processes": processes, "agents_per_process": agents, "agents": total,
            "sign_all": sign_all, "heartbeat_s": HEARTBEAT,
            "discoverable_s": round(known_at["all"] - first, 3) if "all" in known_at else None,
            "host_start_s": [event["seconds"] for event in started],
            "join_cpu_s": join_cpu, "cores": os.cpu_count(),
            "rss_per_agent_kib": round(max(per_agent), 1),
            "idle_cpu_pct": round(100 * max(event["cpu"] for event in idle), 1),
            "gone_s": round(time.perf_counter() - stopping, 3) if len(gone) == total else None,
            "gone_reasons": dict(Counter(gone.values())),
            "observer_received_per_s_idle": {
                kind: count for kind, count in received.items()
                if kind in ("heartbeat_batch", "telemetry_batch", "heartbeat", "hello")},
            "observer_rejections": {str(k): v for k, v in observer.bus.rejections.items()},
        }
        for key, target in TARGETS.get(name, {}).items():
            value = result[key]
            result.setdefault("verdicts", {})[key] = {
                "value": value, "target": target,
                "pass": value is not None and value <= target}
        return result
    finally:
        for host in hosts:
            await host.stop()
        if observer is not None:
            await observer.stop(grace=1.0)
        await mesh.stop(grace=2.0)


def _cpu_seconds(mesh: Mesh) -> float:
    """User + system CPU seconds the mesh's server processes have used so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for server in mesh.servers:
        with contextlib.suppress(OSError, TypeError):
            fields = Path(f"/proc/{server.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def report(result: dict[str, Any]) -> None:
    print(f"\nhosted agents: 3-seed mesh, heartbeat {HEARTBEAT:g} s, one host per process, "
          f"observer in the benchmark's process\n")
    print(f"{'scenario':<10} {'agents':>7} {'procs':>5} {'discoverable':>12} {'host start':>18} "
          f"{'RSS/agent':>9} {'idle CPU':>8} {'all gone':>8}")
    for name, r in result["scenarios"].items():
        starts = "/".join(f"{s:.2f}" for s in r["host_start_s"])
        found = "—" if r["discoverable_s"] is None else f"{r['discoverable_s']:.3f} s"
        gone = "—" if r["gone_s"] is None else f"{r['gone_s']:.2f} s"
        print(f"{name:<10} {r['agents']:>7} {r['processes']:>5} {found:>12} {starts:>18} "
              f"{r['rss_per_agent_kib']:>6} KiB {r['idle_cpu_pct']:>6} % {gone:>8}")
    print()
    for name, r in result["scenarios"].items():
        cpu = r["join_cpu_s"]
        print(f"  {name}: gone {r['gone_reasons']}; observer rejections "
              f"{r['observer_rejections'] or 0}; CPU while joining: hosts {cpu['hosts']} s, "
              f"observer {cpu['observer']} s, servers {cpu['servers']} s "
              f"(sum / {r['cores']} cores = {sum(cpu.values()) / r['cores']:.2f} s)")
    print(f"  runtime log warnings: {sum(result['warnings'].values())} "
          f"{dict(result['warnings'].most_common(3))}\n")
    for name, r in result["scenarios"].items():
        for key, verdict in r.get("verdicts", {}).items():
            print(f"{'PASS' if verdict['pass'] else 'FAIL'}  {name}: {key} = {verdict['value']} "
                  f"(target <= {verdict['target']:g})")


async def run(args: argparse.Namespace, warnings: Warnings) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="agoramesh-bench-hosting-"))
    size = 200 if args.quick else 1000
    try:
        scenarios = {"one": await scenario(base, "one", 1, size),
                     "five": await scenario(base, "five", 2 if args.quick else 5, size),
                     "one-sa": await scenario(base, "one-sa", 1, size, sign_all=True)}
        return {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "quick": args.quick,
                "scenarios": scenarios, "warnings": warnings.seen}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 agents a process, 2 processes")
    parser.add_argument("--json", type=Path, help="write the results to this file")
    args = parser.parse_args()
    return run_and_report(run(args, count_warnings()), report, args.json)


if __name__ == "__main__":
    sys.exit(main())
