"""Durable jobs (JetStream, R3) vs the same task non-durable, vs the raw JetStream floor.

All on one 3-seed mesh running JetStream, the job store replicated on all three,
three offline ``echo`` agents (one per seed, each taking jobs), in one run:

* ``latency``  one task at a time, submit to result, in alternating (ABBA) blocks:
               ``durable`` = ``Jobs.run`` (a signed job stored R3, taken by a node,
               auctioned, the result stored R3 by the winner and heard live);
               ``task`` = the same task non-durable: a signed request on
               ``agora.task.echo`` (a node auctions it for the client);
               ``raw`` = nats-py request/reply to a responder echoing the bytes;
               ``jsfloor`` = the least a durable hop costs, in raw nats-py: a job
               published to an R3 work-queue stream (acked), pulled by a consumer
               that stores a value in an R3 key-value bucket, heard by the client
               through the bucket's republish. Target: durable p50 - task p50 <= 3 ms.
* ``throughput``  N jobs submitted twice with 64 in flight while no node takes jobs:
               accepted (publish acked) per second, beside raw nats-py publishing the
               same bytes to an R3 stream in alternating turns of the same run; then three
               offline echo nodes start and drain the 2N queued jobs: completed (result
               stored and heard live) per second, the whole durable path on this machine.
               Targets: >= 1,000 accepted/s and >= 500 completed/s.

    .venv/bin/python benchmarks/bench_jobs.py [--quick] [--rounds N] [--jobs N] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.js import api as js_api

from agoramesh.agent import AgentNode
from agoramesh.bus.bus import Bus
from agoramesh.bus.identity import Identity
from agoramesh.bus.jetstream import JetStream
from agoramesh.bus.mesh import Mesh
from agoramesh.config import BusConfig, JetStreamConfig, JobsConfig, ServerConfig
from agoramesh.nodes.backends.offline import OFFLINE_CAPABILITIES, OfflineBackend
from agoramesh.nodes.capability import Capability
from agoramesh.nodes.node import NodeConfig
from agoramesh.nodes.task import TaskStatus
from agoramesh.protocols.jobs.jobs import Jobs
from agoramesh.testing.node import NodeProcess
from common import (
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
TIMEOUT, BLOCKS = 10.0, 10
LATENCY_TARGET_MS = 3.0  # durable p50 - task p50
ACCEPT_TARGET, COMPLETE_TARGET = 1000.0, 500.0  # per second
IN_FLIGHT = 64
SIDES = ("raw", "task", "durable", "jsfloor")


def echo_agent(name: str, url: str, directory: Any = None) -> AgentNode:
    config = NodeConfig(name=name, capabilities=(Capability(
        name="echo", **OFFLINE_CAPABILITIES["echo"]),), heartbeat_interval=1.0, max_jobs=64)
    return AgentNode(Identity.generate(), config, OfflineBackend(),
                     BusConfig(servers=(url,), name=name), directory=directory)


async def mesh_with_agents(stack: contextlib.AsyncExitStack, base: Path
                           ) -> tuple[Mesh, list[AgentNode]]:
    template = ServerConfig(name="template", data_dir=base, jetstream=JetStreamConfig())
    mesh = await Mesh.launch(base, seeds=3, template=template)
    stack.push_async_callback(mesh.stop, 2.0)
    async with Bus(Identity.generate(), BusConfig(servers=(mesh.url,))) as bus:
        await JetStream(bus, JobsConfig(replicas=3)).ensure(timeout=30)
    agents = [echo_agent(f"echo-{i}", seed.client_url) for i, seed in enumerate(mesh.seeds)]
    stack.push_async_callback(stop_all, agents)
    for node in agents:
        await node.start()
    return mesh, agents


async def js_floor(stack: contextlib.AsyncExitStack, url: str) -> Any:
    """The raw JetStream path of one durable hop; returns the op."""
    worker = await raw_client(stack, url)
    client = await raw_client(stack, url)
    js = worker.jetstream(domain="agora")
    with contextlib.suppress(nats.js.errors.BadRequestError):
        await js.add_stream(name="FLOOR", subjects=["floor.jobs.>"], num_replicas=3,
                            retention=js_api.RetentionPolicy.WORK_QUEUE)
    with contextlib.suppress(nats.js.errors.BadRequestError):
        await js.add_stream(js_api.StreamConfig(
            name="KV_FLOOR", subjects=["$KV.FLOOR.>"], num_replicas=3, max_msgs_per_subject=1,
            allow_direct=True, republish=js_api.RePublish(src="$KV.FLOOR.>",
                                                          dest="floor.result.>")))
    psub = await js.pull_subscribe("floor.jobs.>", durable="FLOOR", stream="FLOOR")

    async def consume() -> None:
        while True:
            try:
                msgs = await psub.fetch(1, timeout=5)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            for msg in msgs:
                key = msg.headers["Nats-Msg-Id"] if msg.headers else "x"
                await worker.request(f"$KV.FLOOR.{key}", msg.data, timeout=TIMEOUT,
                                     headers={"Nats-Expected-Last-Subject-Sequence": "0"})
                await msg.ack()

    consumer = asyncio.ensure_future(consume())
    stack.callback(consumer.cancel)
    arrived: dict[str, asyncio.Future[bytes]] = {}

    async def heard(msg: Msg) -> None:
        future = arrived.pop(msg.subject.rpartition(".")[2], None)
        if future is not None and not future.done():
            future.set_result(msg.data)

    await client.subscribe("floor.result.>", cb=heard)
    cjs = client.jetstream(domain="agora")
    counter = iter(range(10**9))
    body = json.dumps(PARAMS).encode()

    async def op() -> None:
        key = f"f{next(counter)}"
        future = arrived[key] = asyncio.get_running_loop().create_future()
        await cjs.publish("floor.jobs.echo", body, headers={"Nats-Msg-Id": key})
        await asyncio.wait_for(future, TIMEOUT)

    return op


async def latency_run(base: Path, rounds: int) -> dict[str, Any]:
    async with contextlib.AsyncExitStack() as stack:
        mesh, _ = await mesh_with_agents(stack, base / "latency")
        url = mesh.seeds[0].client_url
        bus = await Bus.connect(Identity.generate(), BusConfig(servers=(url,), name="bench"))
        stack.push_async_callback(bus.close, 1.0)
        jobs = Jobs(bus)
        responder = await raw_client(stack, url)

        async def reply(msg: Msg) -> None:
            await responder.publish(msg.reply, msg.data)

        await responder.subscribe("bench.raw.echo", cb=reply)
        nc = await raw_client(stack, url)
        raw_body = json.dumps(PARAMS).encode()

        async def raw() -> None:
            await nc.request("bench.raw.echo", raw_body, timeout=TIMEOUT)

        async def task() -> None:
            reply = await bus.request(bus.subjects.task("echo"), "task_request",
                                      {"parameters": PARAMS}, timeout=TIMEOUT)
            if reply.body.get("status") != "COMPLETED":
                raise WrongAnswer(reply.body)

        async def durable() -> None:
            result = await jobs.run("echo", PARAMS, timeout=TIMEOUT)
            if result.status is not TaskStatus.COMPLETED:
                raise WrongAnswer(result.error)

        ops = {"raw": raw, "task": task, "durable": durable,
               "jsfloor": await js_floor(stack, url)}
        for op in ops.values():  # warm-up: interest spread, caches full
            await until_answers(op)
            for _ in range(max(20, rounds // 10)):
                await op()
        samples, misses, seconds = await alternate({side: ops[side] for side in SIDES}, rounds,
                                                   BLOCKS)
        row: dict[str, Any] = {"rounds": rounds, "seconds": round(seconds, 1),
                               "target_ms": LATENCY_TARGET_MS}
        for side in SIDES:
            row[side] = {"n": len(samples[side]), "misses": misses[side],
                         **latency(samples[side])}
            row[f"{side}_ratio_p50"] = round(row[side]["p50"] / row["raw"]["p50"], 3)
        row["durable_minus_task_ms"] = round(row["durable"]["p50"] - row["task"]["p50"], 3)
        row["durable_minus_floor_ms"] = round(row["durable"]["p50"] - row["jsfloor"]["p50"], 3)
        row["pass"] = row["durable_minus_task_ms"] <= LATENCY_TARGET_MS and not misses["durable"]
        return row


async def throughput_run(base: Path, count: int) -> dict[str, Any]:
    """Accepted: ``count`` jobs submitted while no node takes jobs (the publish path
    alone). Completed: the nodes then start and drain them (the whole durable path)."""
    async with contextlib.AsyncExitStack() as stack:
        template = ServerConfig(name="template", data_dir=base / "throughput",
                                jetstream=JetStreamConfig())
        mesh = await Mesh.launch(base / "throughput", seeds=3, template=template)
        stack.push_async_callback(mesh.stop, 2.0)
        url = mesh.seeds[0].client_url
        bus = await Bus.connect(Identity.generate(), BusConfig(servers=(url,), name="bench"))
        stack.push_async_callback(bus.close, 1.0)
        jobs = Jobs(bus, JobsConfig(replicas=3))
        await jobs.js.ensure(timeout=30)
        nc = await raw_client(stack, url)
        js = nc.jetstream(domain="agora")
        with contextlib.suppress(nats.js.errors.BadRequestError):
            await js.add_stream(name="RAWJOBS", subjects=["rawjobs.>"], num_replicas=3,
                                retention=js_api.RetentionPolicy.WORK_QUEUE)
        payload = bus.seal(bus.subjects.jobs("echo"), "task_request", {"parameters": PARAMS})

        async def pump(op: Any) -> float:
            started = time.perf_counter()
            queue: asyncio.Queue[int] = asyncio.Queue()
            for n in range(count):
                queue.put_nowait(n)

            async def one() -> None:
                while not queue.empty():
                    await op(queue.get_nowait())

            await asyncio.gather(*(one() for _ in range(IN_FLIGHT)))
            return time.perf_counter() - started

        prefix = f"bench{int(time.time())}-"
        rounds = [0.0, 0.0]
        for turn in range(4):  # raw, jobs, jobs, raw: the same bytes, 64 in flight each
            if turn in (0, 3):
                rounds[0] += await pump(lambda n, t=turn: js.publish(
                    f"rawjobs.{n % 7}", payload, headers={"Nats-Msg-Id": f"r{t}-{n}"}))
            else:
                rounds[1] += await pump(lambda n, t=turn: jobs.submit(
                    "echo", PARAMS, task_id=f"{prefix}{t}-{n}"))
        raw_seconds, accepted_seconds = rounds[0] / 2, rounds[1] / 2
        local: list[AgentNode] = []

        async def in_this_process() -> list[AgentNode]:
            local.extend(await start_agents(stack, mesh))
            return local

        in_process = await drain(bus, prefix, 2 * count, in_this_process)
        await stop_all(local)
        # The same again with each node in its own process, as a deployment runs them.
        prefix = f"bench{int(time.time())}p-"
        await pump(lambda n: jobs.submit("echo", PARAMS, task_id=f"{prefix}{n}"))
        processes = await drain(bus, prefix, count, lambda: start_processes(stack, base, mesh))
        row = {"jobs": count, "in_flight": IN_FLIGHT,
               "raw_accepted_per_s": round(count / raw_seconds, 1),
               "accepted_per_s": round(count / accepted_seconds, 1),
               "accepted_ratio": round(raw_seconds / accepted_seconds, 3),
               "completed_per_s": in_process["per_s"], "completed": in_process,
               "completed_processes_per_s": processes["per_s"],
               "completed_processes": processes}
        row["pass"] = (row["accepted_per_s"] >= ACCEPT_TARGET
                       and max(in_process["per_s"], processes["per_s"]) >= COMPLETE_TARGET
                       and in_process["heard"] == in_process["queued"]
                       and processes["heard"] == processes["queued"])
        return row


async def start_agents(stack: contextlib.AsyncExitStack, mesh: Mesh) -> list[AgentNode]:
    """The three echo nodes in this process (one per seed)."""
    agents = [echo_agent(f"echo-{i}", seed.client_url) for i, seed in enumerate(mesh.seeds)]
    stack.push_async_callback(stop_all, agents)
    for node in agents:
        await node.start()
    return agents


async def start_processes(stack: contextlib.AsyncExitStack, base: Path, mesh: Mesh
                          ) -> list[NodeProcess]:
    """The three echo nodes as ``agoramesh node --connect <seed>`` processes."""
    def start(index: int, url: str) -> NodeProcess:
        return NodeProcess(base / f"home-{index}", "--name", f"echo-p{index}", "--connect", url,
                           "--type", "offline", "--capability", "echo", "--max-jobs", "64",
                           "--log-level", "warning")

    nodes = await asyncio.gather(*(asyncio.to_thread(start, index, seed.client_url)
                                   for index, seed in enumerate(mesh.seeds)))
    for node in nodes:
        stack.callback(node.reap)
        stack.callback(node.stop, signal.SIGTERM, 20)
    return list(nodes)


async def drain(bus: Bus, prefix: str, queued: int,
                start: Callable[[], Awaitable[list[Any]]]) -> dict[str, Any]:
    """Start the nodes and time them draining the ``queued`` jobs (ids ``prefix``*): from
    the first result heard to the last, so the nodes' start-up is left out."""
    done = asyncio.Event()
    heard: set[str] = set()
    first = last = 0.0

    async def result(msg: Msg) -> None:
        nonlocal first, last
        task_id = msg.subject.rpartition(".")[2]
        if task_id.startswith(prefix) and task_id not in heard:
            last = time.perf_counter()
            first = first or last
            heard.add(task_id)
            if len(heard) == queued:
                done.set()

    sub = await bus.nats.subscribe(bus.subjects.result(">"), cb=result)
    await bus.flush()
    try:
        nodes = await start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 300)
    finally:
        await sub.unsubscribe()
    row: dict[str, Any] = {"queued": queued, "heard": len(heard),
                           "per_s": round((len(heard) - 1) / max(last - first, 1e-9), 1)}
    if nodes and isinstance(nodes[0], AgentNode):
        row["by_driver"] = {node.config.name: node.metrics.jobs["completed"] for node in nodes}
    return row


async def run(args: argparse.Namespace) -> dict[str, Any]:
    warnings = count_warnings()
    base = Path(tempfile.mkdtemp(prefix="bench-jobs-"))
    try:
        result = {"latency": await latency_run(base, args.rounds),
                  "throughput": await throughput_run(base, args.jobs)}
    finally:
        shutil.rmtree(base, ignore_errors=True)
    result["warnings"] = dict(warnings.seen)
    return result


def report(result: dict[str, Any]) -> None:
    lat = result["latency"]
    print(f"latency ({lat['rounds']} rounds per path, {lat['seconds']}s), ms:")
    print(f"  {'path':<9} {'p50':>8} {'p90':>8} {'p99':>8} {'x raw':>7} {'misses':>6}")
    for side in SIDES:
        row = lat[side]
        print(f"  {side:<9} {row['p50']:>8.3f} {row['p90']:>8.3f} {row['p99']:>8.3f} "
              f"{lat[side + '_ratio_p50']:>7.2f} {row['misses']:>6}")
    print(f"  durable - task p50: {lat['durable_minus_task_ms']:+.3f} ms (target <= "
          f"+{LATENCY_TARGET_MS:g}); durable - jsfloor: {lat['durable_minus_floor_ms']:+.3f} ms"
          f"  {'PASS' if lat['pass'] else 'FAIL'}")
    tp = result["throughput"]
    print(f"throughput ({tp['jobs']} jobs, {tp['in_flight']} in flight):")
    print(f"  raw R3 publish {tp['raw_accepted_per_s']:>8.1f}/s   jobs accepted "
          f"{tp['accepted_per_s']:>8.1f}/s (x{tp['accepted_ratio']:.2f} of raw; target >= "
          f"{ACCEPT_TARGET:g})")
    one, apart = tp["completed"], tp["completed_processes"]
    print(f"  completed, 3 nodes in one process  {one['per_s']:>7.1f}/s "
          f"({one['heard']}/{one['queued']}); by driver {one.get('by_driver')}")
    print(f"  completed, one process per node    {apart['per_s']:>7.1f}/s "
          f"({apart['heard']}/{apart['queued']}; target >= {COMPLETE_TARGET:g})  "
          f"{'PASS' if tp['pass'] else 'FAIL'}")
    if result["warnings"]:
        print(f"warnings: {result['warnings']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 rounds, 1000 jobs")
    parser.add_argument("--rounds", type=int, default=1000, help="latency rounds per path")
    parser.add_argument("--jobs", type=int, default=5000, help="jobs in the throughput run")
    parser.add_argument("--json", type=Path, help="write every number here")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.jobs = 200, 1000
    return run_and_report(run(args), report, args.json)


if __name__ == "__main__":
    sys.exit(main())
