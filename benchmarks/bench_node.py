"""The node runtime (AgentNode) vs raw nats-py, and 100 agents joining a mesh.

* ``direct``  a task to an offline ``echo`` agent on a 1-seed Mesh, four paths on one server,
              in alternating (ABBA) batches: ``raw`` nats-py request/reply to a responder
              echoing the bytes; ``node`` = ``submit_task`` from a signed Bus to the AgentNode;
              ``json`` = plain JSON from a raw client to ``agora.cap.echo``, as ``nats req``
              sends it; ``bus`` = signed ``Bus.request`` to a bare Bus responder answering a
              TaskResult-sized body (the signed floor under ``node``). Target: node/raw p50.
* ``join100`` 100 AgentNodes in this process under one AgentHost (each its own Identity,
              signing its own hello; one connection per seed, one directory, one heartbeat
              batch a second; capability ``echo``) start on a 3-seed mesh, spread over the
              seeds; an observer AgentNode times until its directory holds all 100 and until
              ``find_agents_by_capability("echo")`` returns all 100, both from the moment the
              first agent starts. Also start-up and stop times, CPU while the 100 idle, VmRSS
              per hosted agent (after gc), and tracemalloc's heap per standalone agent (10).
              benchmarks/bench_hosting.py does 1,000 in one process and 5,000 over five.

    .venv/bin/python benchmarks/bench_node.py [--quick] [--rounds N] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import shutil
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from agoramesh.agent import AgentNode
from agoramesh.bus.bus import Bus, Delivery
from agoramesh.bus.identity import Identity
from agoramesh.bus.mesh import Mesh
from agoramesh.config import BusConfig
from agoramesh.nodes.backends.offline import OFFLINE_CAPABILITIES, OfflineBackend
from agoramesh.nodes.capability import Capability
from agoramesh.nodes.client import submit_task
from agoramesh.nodes.host import AgentHost
from agoramesh.nodes.node import NodeConfig
from agoramesh.nodes.task import Task, TaskResult, TaskStatus
from common import (
    Warnings,
    WrongAnswer,
    alternate,
    count_warnings,
    latency,
    raw_client,
    run_and_report,
    stop_all,
    until_answers,
)

PARAMS: dict[str, Any] = {"text": "The quick brown fox jumps over the lazy dog."}
TASK = Task(capability="echo", parameters=PARAMS, task_id="t-000123").as_dict()
RAW = json.dumps(TASK, separators=(",", ":")).encode()  # the task body as plain bytes
PLAIN = json.dumps(PARAMS, separators=(",", ":")).encode()  # `nats req agora.cap.echo '{…}'`
RESULT = TaskResult(task_id="t-000123", status=TaskStatus.COMPLETED, result={"echo": PARAMS},
                    agent_id="U" * 56).as_dict()
TIMEOUT, BLOCKS = 2.0, 10  # seconds per round (a miss is counted, not timed); ABBA blocks
DIRECT_TARGET = 2.0  # p50 node/raw
AGENTS, HEARTBEAT, JOIN_TARGET = 100, 1.0, 2.0  # target: seconds until all are discoverable
JOIN_BOUND = 60.0  # give up waiting for discovery after this long
SIDES = ("raw", "node", "json", "bus")
Op = Callable[[], Awaitable[object]]






def settled_rss_kib() -> int:
    gc.collect()
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])


def agent(name: str, capability: Capability, url: str,
          host: AgentHost | None = None) -> AgentNode:
    config = NodeConfig(name=name, capabilities=(capability,), heartbeat_interval=HEARTBEAT)
    return AgentNode(Identity.generate(), config, OfflineBackend(),
                     BusConfig(servers=(url,), name=name), host=host)


# -- direct ------------------------------------------------------------------------------

def direct_ops(nc: NatsClient, bus: Bus) -> dict[str, Op]:
    async def raw() -> None:
        await nc.request("bench.raw.echo", RAW, timeout=TIMEOUT)

    async def node() -> None:
        result = await submit_task(bus, Task(capability="echo", parameters=PARAMS),
                                   timeout=TIMEOUT)
        if result.status is not TaskStatus.COMPLETED:
            raise WrongAnswer(result.error)

    async def plain() -> None:
        msg = await nc.request(bus.subjects.cap("echo"), PLAIN, timeout=TIMEOUT)
        if b'"COMPLETED"' not in msg.data:
            raise WrongAnswer(msg.data[:200])

    async def signed() -> None:
        await bus.request("bench.bus.echo", "task_request", TASK, timeout=TIMEOUT)

    return {"raw": raw, "node": node, "json": plain, "bus": signed}


async def direct(base: Path, rounds: int) -> dict[str, Any]:
    async with contextlib.AsyncExitStack() as stack:
        mesh = await Mesh.launch(base / "direct", seeds=1)
        stack.push_async_callback(mesh.stop, 2.0)
        url = mesh.seeds[0].client_url
        node = agent("echo-agent", Capability(name="echo", **OFFLINE_CAPABILITIES["echo"]), url)
        stack.push_async_callback(stop_all, [node])
        await node.start()
        responder = await raw_client(stack, url)

        async def reply(msg: Msg) -> None:
            await responder.publish(msg.reply, msg.data)

        async def answer(delivery: Delivery) -> None:
            await delivery.respond("task_response", RESULT)

        await responder.subscribe("bench.raw.echo", cb=reply)
        await responder.flush(timeout=5)
        nc = await raw_client(stack, url)
        buses = [await Bus.connect(Identity.generate(), BusConfig(servers=(url,), name=name))
                 for name in ("bench", "bench-responder")]
        for bus in buses:
            stack.push_async_callback(bus.close, 1.0)
        await buses[1].subscribe("bench.bus.echo", answer)
        ops = direct_ops(nc, buses[0])
        for op in ops.values():  # warm-up
            await until_answers(op)
            for _ in range(max(20, rounds // 10)):
                await op()
        samples, misses, seconds = await alternate({side: ops[side] for side in SIDES}, rounds,
                                                   BLOCKS)
        row: dict[str, Any] = {"rounds": rounds, "seconds": round(seconds, 1),
                               "target": DIRECT_TARGET}
        for side in SIDES:
            row[side] = {"n": len(samples[side]), "misses": misses[side],
                         **latency(samples[side])}
            row[f"{side}_ratio_p50"] = round(row[side]["p50"] / row["raw"]["p50"], 3)
        row["pass"] = row["node_ratio_p50"] <= DIRECT_TARGET and not misses["node"]
        return row


# -- join100 -----------------------------------------------------------------------------

async def join(base: Path) -> dict[str, Any]:
    async with contextlib.AsyncExitStack() as stack:
        mesh = await Mesh.launch(base / "join", seeds=3)
        stack.push_async_callback(mesh.stop, 2.0)
        urls = [seed.client_url for seed in mesh.seeds]
        echo = Capability(name="echo", **OFFLINE_CAPABILITIES["echo"])  # shared: frozen
        observer = agent("observer", Capability(name="vote", **OFFLINE_CAPABILITIES["vote"]),
                         urls[0])
        stack.push_async_callback(stop_all, [observer])
        await observer.start()
        for nc in [await raw_client(stack, url) for url in urls]:  # observer reachable
            await until_answers(partial(nc.request, "$SRV.PING.observer", b"", timeout=0.5))
        rss_before = settled_rss_kib()
        # Hosted agents share a connection per seed, one directory and one beat (AgentHost).
        host = AgentHost(BusConfig(servers=(urls[0],), name="host"), heartbeat_interval=HEARTBEAT)
        await host.start()
        stack.push_async_callback(host.stop, 1.0)
        agents = [agent(f"agent-{i:03d}", echo, urls[i % len(urls)], host)
                  for i in range(AGENTS)]
        stack.push_async_callback(stop_all, agents)  # runs first; stop() is idempotent
        marks: dict[str, float] = {}
        known_at_stop: set[str] = set()
        left: dict[str, str] = {}  # agent id -> why the observer dropped it, after stop began
        all_gone = asyncio.Event()

        def on_join(_: object) -> None:
            if len(observer.directory) >= AGENTS:
                marks.setdefault("directory", time.perf_counter() - t0)

        def on_leave(agent_id: str, reason: str) -> None:
            if agent_id in known_at_stop and agent_id not in left:
                left[agent_id] = reason
                if len(left) == len(known_at_stop):
                    marks["gone"] = time.perf_counter() - marks["stop"]
                    all_gone.set()

        observer.directory.on_join.append(on_join)
        observer.directory.on_leave.append(on_leave)

        async def discover() -> None:
            while time.perf_counter() - t0 < JOIN_BOUND:
                if len(await observer.find_agents_by_capability("echo")) >= AGENTS:
                    marks["discover"] = time.perf_counter() - t0
                    return

        async def start(node: AgentNode) -> float:
            await node.start()
            return time.perf_counter() - t0

        t0 = time.perf_counter()
        poller = asyncio.ensure_future(discover())
        try:
            async with asyncio.timeout(JOIN_BOUND):
                marks["last_start"] = max(await asyncio.gather(*map(start, agents)))
            marks["startup"] = time.perf_counter() - t0
            async with asyncio.timeout(JOIN_BOUND + 5):
                await poller
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(poller, 5)
        while time.perf_counter() - t0 < JOIN_BOUND:  # bounded poll: all know all (+observer)
            if len(host.directory) > AGENTS:  # the 100 and the observer
                marks["converged"] = time.perf_counter() - t0
                break
            await asyncio.sleep(0.05)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(5 * HEARTBEAT)  # the 100 idle: heartbeats only
        idle_cpu = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
        rss_after = settled_rss_kib()
        known_at_stop.update(node.agent_id for node in agents if node.agent_id in
                             observer.directory)
        marks["stop"] = time.perf_counter()
        await stop_all(agents)
        stopped = time.perf_counter() - marks["stop"]
        with contextlib.suppress(TimeoutError):  # the byes reach the observer
            async with asyncio.timeout(10):
                await all_gone.wait()
        times = {f"{name}_s": round(marks[name], 3) if name in marks else None for name in
                 ("last_start", "startup", "directory", "discover", "converged", "gone")}
        return {"agents": AGENTS, "seeds": len(urls), "heartbeat_s": HEARTBEAT, **times,
                "target_s": JOIN_TARGET, "idle_cpu_pct": round(100 * idle_cpu, 1),
                "known_at_stop": len(known_at_stop), "stop_s": round(stopped, 3),
                "gone_reasons": dict(Counter(left.values())),
                "rss_before_mib": round(rss_before / 1024, 1),
                "rss_after_mib": round(rss_after / 1024, 1),
                "rss_per_agent_kib": round((rss_after - rss_before) / AGENTS, 1),
                "heap_per_agent_kib": await traced_heap(urls[0]),
                "pass": marks.get("discover", math.inf) <= JOIN_TARGET}


async def traced_heap(url: str, extra: int = 10) -> float | None:
    """Python heap per agent with tracemalloc: ``extra`` agents start on an otherwise idle
    mesh (the 100 are stopped: tracemalloc would slow them into a backlog); once every one
    knows the others and envelope lifetimes have passed, traced growth / ``extra``."""
    capability = Capability(name="echo", **OFFLINE_CAPABILITIES["echo"])
    nodes = [agent(f"traced-{i}", capability, url) for i in range(extra)]
    gc.collect()
    tracemalloc.start()
    try:
        before, started = tracemalloc.get_traced_memory()[0], time.perf_counter()
        async with asyncio.timeout(30):
            await asyncio.gather(*(node.start() for node in nodes))
        while time.perf_counter() - started < 30:  # bounded poll (observer counts too)
            if all(len(node.directory) >= extra for node in nodes):
                await asyncio.sleep(3 * HEARTBEAT)  # hello envelopes have expired
                gc.collect()
                return round((tracemalloc.get_traced_memory()[0] - before) / 1024 / extra, 1)
            await asyncio.sleep(0.1)
        return None
    finally:
        tracemalloc.stop()
        await stop_all(nodes)


# -- report ------------------------------------------------------------------------------

def report(result: dict[str, Any]) -> None:
    d, j = result["direct"], result["join100"]
    print(f"\ndirect: 1-seed mesh; {result['loop']}; {d['rounds']} rounds per path in "
          f"{result['blocks']} alternating blocks; {d['seconds']} s measured\n")
    print(f"{'path':<56} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} {'miss':>4} {'/raw':>5}")
    titles = {"raw": f"raw nats-py request/reply ({len(RAW)} B echoed)",
              "node": "node: submit_task -> AgentNode echo (signed, offline)",
              "json": f"json: plain JSON ({len(PLAIN)} B) -> agora.cap.echo, raw nc",
              "bus": "bus: signed Bus.request -> bare Bus responder"}
    for side in SIDES:
        r = d[side]
        print(f"{titles[side]:<56} {r['p50']:7.3f} {r['p90']:7.3f} {r['p99']:7.3f} "
              f"{r['misses']:4d} {d[side + '_ratio_p50']:5.2f}")
    print(f"\njoin100: {j['agents']} agents on a {j['seeds']}-seed mesh, heartbeat "
          f"{j['heartbeat_s']:g} s, one process\n")

    def secs(value: float | None) -> str:
        return "not reached" if value is None else f"{value:.3f} s"

    heap = j["heap_per_agent_kib"]
    for label, value in (
        ("start-up: the last start() returned", secs(j["last_start_s"])),
        ("start-up: gather of the 100 start()s returned", secs(j["startup_s"])),
        ("observer directory holds all 100", secs(j["directory_s"])),
        ("find_agents_by_capability('echo') returns 100", secs(j["discover_s"])),
        ("every agent knows the other 99 and the observer", secs(j["converged_s"])),
        ("CPU while the 100 idle 5 s (heartbeats)", f"{j['idle_cpu_pct']} % of one core"),
        ("RSS before / after (gc, after idle)", f"{j['rss_before_mib']} / "
         f"{j['rss_after_mib']} MiB"),
        ("RSS per hosted agent", f"{j['rss_per_agent_kib']} KiB"),
        ("stop of all 100 (concurrent, grace 1 s)", secs(j["stop_s"])),
        (f"observer dropped all {j['known_at_stop']} it knew", f"{secs(j['gone_s'])} "
         f"{j['gone_reasons']}"),
        ("Python heap per agent (tracemalloc, 10 agents)",
         "not settled" if heap is None else f"{heap} KiB"),
    ):
        print(f"  {label:<48} {value}")
    print(f"  {'runtime log warnings':<48} {sum(result['warnings'].values())} "
          f"{dict(result['warnings'].most_common(3))}\n")
    print(f"{'PASS' if d['pass'] else 'FAIL'}  direct: p50 node/raw = {d['node_ratio_p50']:.2f} "
          f"(target <= {d['target']:.1f})")
    print(f"info  direct-json: p50 json/raw = {d['json_ratio_p50']:.2f}; signed floor "
          f"bus/raw = {d['bus_ratio_p50']:.2f}")
    print(f"{'PASS' if j['pass'] else 'FAIL'}  join100: all {j['agents']} discoverable in "
          f"{secs(j['discover_s'])} (target <= {j['target_s']:g} s)")


async def run(args: argparse.Namespace, warnings: Warnings) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="agoramesh-bench-node-"))
    try:
        return {"loop": "uvloop", "blocks": BLOCKS, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "payload_bytes": {"raw": len(RAW), "json": len(PLAIN)},
                "direct": await direct(base, args.rounds or (300 if args.quick else 3000)),
                "join100": await join(base), "warnings": warnings.seen}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="300 direct rounds per path")
    parser.add_argument("--rounds", type=int, help="direct rounds per path (3000)")
    parser.add_argument("--json", type=Path, help="write the results to this file")
    args = parser.parse_args()
    return run_and_report(run(args, count_warnings()), report, args.json)


if __name__ == "__main__":
    sys.exit(main())
