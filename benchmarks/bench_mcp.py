"""The mesh as MCP tools: a tool call over stdio vs the same task sent directly, in one run.

One 1-seed Mesh, an offline ``echo`` agent in this process, and ``agoramesh mcp
--server <seed>`` spawned as an MCP host spawns it (the SDK's stdio client, the
initialize handshake as Claude Code and Codex do). Paths, warmed up, then in 10
alternating (ABBA) blocks:

* ``direct``       ``submit_task(bus, Task("echo", …))`` from a client Bus of this
                   process, straight to the capability's queue group: the baseline;
* ``mcp``          the SDK client's ``call_tool("mesh_submit", {capability: echo,
                   parameters, strategy: direct})``: JSON-RPC over the server's stdin and
                   stdout, the server's argument checks, the same task sent direct (streamed)
                   from the server's process, its result back as a tool result and checked.
                   Target: p50(mcp) - p50(direct) <= 1.5 ms;
* ``mcp-sdk``      the same call to a second ``agoramesh mcp --sdk-calls``, whose every call
                   goes through the SDK's dispatcher (informational: what the stdio fast path,
                   bridges/mcp_fast.py, saves);
* ``ping``         the SDK client's ``send_ping()``: MCP over stdio with no mesh behind it
                   (informational: the transport's share of the overhead);
* ``auction``      the task auctioned from this process (``Auctioneer.run``; informational);
* ``mcp-auction``  the ``echo`` capability tool: auctioned from the server (informational).

Then, as what a call costs whatever the load: the CPU time (user + system) the server
process and this process spend per ``mcp`` call, over ``--cpu-rounds`` more calls.

    .venv/bin/python benchmarks/bench_mcp.py [--quick] [--rounds N] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from mcp import Client, StdioServerParameters

from agoramesh.agent import AgentNode
from agoramesh.bus.bus import Bus
from agoramesh.bus.identity import Identity
from agoramesh.bus.mesh import Mesh
from agoramesh.config import BusConfig
from agoramesh.nodes.backends.offline import OFFLINE_CAPABILITIES, OfflineBackend
from agoramesh.nodes.capability import Capability
from agoramesh.nodes.client import submit_task
from agoramesh.nodes.directory import Directory
from agoramesh.nodes.node import NodeConfig
from agoramesh.nodes.task import Task, TaskStatus
from agoramesh.protocols.auction.auctioneer import Auctioneer
from agoramesh.testing.processes import AGORAMESH
from common import WrongAnswer, alternate, count_warnings, latency, run_and_report, stop_all

PARAMS: dict[str, Any] = {"text": "The quick brown fox jumps over the lazy dog."}
EXPECTED = {"echo": PARAMS}
TIMEOUT, BLOCKS, WARM_UP = 10.0, 10, 50
TARGET_MS = 1.5  # p50 mcp - p50 direct
SIDES = ("direct", "mcp", "mcp-sdk", "ping", "auction", "mcp-auction")
Op = Callable[[], Awaitable[None]]


def echo_agent(url: str) -> AgentNode:
    config = NodeConfig(name="echo", capabilities=(Capability(
        name="echo", **OFFLINE_CAPABILITIES["echo"]),), heartbeat_interval=1.0)
    return AgentNode(Identity.generate(), config, OfflineBackend(),
                     BusConfig(servers=(url,), name="echo"))


def server_pid() -> int:
    """The ``agoramesh mcp`` child of this process."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if parent == os.getpid() and b"\0mcp\0" in (entry / "cmdline").read_bytes():
                return int(entry.name)
    raise RuntimeError("no agoramesh mcp child process found")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def cpu_per_call(op: Op, rounds: int) -> dict[str, float]:
    """CPU milliseconds per ``op`` in the server process and in this one."""
    pid = server_pid()
    server, here = cpu_seconds(pid), time.process_time()
    for _ in range(rounds):
        await op()
    return {"server_ms": round((cpu_seconds(pid) - server) / rounds * 1000, 3),
            "client_ms": round((time.process_time() - here) / rounds * 1000, 3)}


def checked(result: Any) -> None:
    """A tool result whose task completed with the echo, else WrongAnswer."""
    record = result.structured_content or {}
    if result.is_error or record.get("result") != EXPECTED:
        raise WrongAnswer(f"unexpected tool result: {result!r:.300}")


async def ops(stack: contextlib.AsyncExitStack, url: str, agent: AgentNode) -> dict[str, Op]:
    bus = await stack.enter_async_context(Bus(Identity.generate(), BusConfig(servers=(url,))))
    directory = Directory()
    directory.seen(agent.card, agent.status, 1.0)
    auctioneer = Auctioneer(bus, directory)
    await auctioneer.start()
    path = os.environ.get("PYTHONPATH")  # a host passes little on; this checkout's code, if set

    async def spawned(*extra: str) -> Client:
        server = StdioServerParameters(command=AGORAMESH[0], args=[
            *AGORAMESH[1:], "mcp", "--server", url, "--log-level", "warning", *extra],
            env={"PYTHONPATH": path} if path else None)
        client = await stack.enter_async_context(Client(server, mode="legacy",
                                                        read_timeout_seconds=TIMEOUT))
        await client.list_tools()
        return client

    client, sdk_client = await spawned(), await spawned("--sdk-calls")

    async def direct() -> None:
        result = await submit_task(bus, Task(capability="echo", parameters=PARAMS),
                                   timeout=TIMEOUT)
        if result.status is not TaskStatus.COMPLETED or result.result != EXPECTED:
            raise WrongAnswer(f"unexpected result: {result!r:.300}")

    async def mcp() -> None:
        checked(await client.call_tool("mesh_submit", {
            "capability": "echo", "parameters": PARAMS, "strategy": "direct"}))

    async def mcp_sdk() -> None:
        checked(await sdk_client.call_tool("mesh_submit", {
            "capability": "echo", "parameters": PARAMS, "strategy": "direct"}))

    async def ping() -> None:
        await client.send_ping()

    async def auction() -> None:
        outcome = await auctioneer.run(Task(capability="echo", parameters=PARAMS),
                                       timeout=TIMEOUT)
        if outcome.result.result != EXPECTED:
            raise WrongAnswer(f"unexpected result: {outcome.result!r:.300}")

    async def mcp_auction() -> None:
        checked(await client.call_tool("echo", PARAMS))

    return {"direct": direct, "mcp": mcp, "mcp-sdk": mcp_sdk, "ping": ping, "auction": auction,
            "mcp-auction": mcp_auction}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    warnings = count_warnings()
    base = Path(tempfile.mkdtemp(prefix="bench-mcp-"))
    try:
        async with contextlib.AsyncExitStack() as stack:
            mesh = await Mesh.launch(base, seeds=1)
            stack.push_async_callback(mesh.stop, 2.0)
            agent = echo_agent(mesh.url)
            stack.push_async_callback(stop_all, [agent])
            await agent.start()
            paths = await ops(stack, mesh.url, agent)
            for op in paths.values():
                for _ in range(WARM_UP):
                    await op()
            samples, misses, seconds = await alternate(paths, args.rounds, BLOCKS)
            cpu = await cpu_per_call(paths["mcp"], args.cpu_rounds)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    result: dict[str, Any] = {"rounds": args.rounds, "seconds": round(seconds, 1),
                              "target_ms": TARGET_MS, "cpu_per_mcp_call": cpu,
                              "cpu_rounds": args.cpu_rounds, "warnings": dict(warnings.seen)}
    for side in SIDES:
        result[side] = {"n": len(samples[side]), "misses": misses[side],
                        **latency(samples[side])}
    overhead = result["mcp"]["p50"] - result["direct"]["p50"]
    result["mcp_minus_direct_ms"] = round(overhead, 3)
    result["mcp_sdk_minus_direct_ms"] = round(result["mcp-sdk"]["p50"] - result["direct"]["p50"], 3)
    result["mcp_auction_minus_auction_ms"] = round(
        result["mcp-auction"]["p50"] - result["auction"]["p50"], 3)
    result["pass"] = overhead <= TARGET_MS and not any(misses.values())
    return result


def report(result: dict[str, Any]) -> None:
    print(f"{result['rounds']} rounds per path, {BLOCKS} alternating blocks, "
          f"{result['seconds']}s; ms:")
    print(f"  {'path':<12} {'p50':>8} {'p90':>8} {'p99':>8} {'misses':>6}")
    for side in SIDES:
        row = result[side]
        print(f"  {side:<12} {row['p50']:>8.3f} {row['p90']:>8.3f} {row['p99']:>8.3f} "
              f"{row['misses']:>6}")
    print(f"  mcp - direct p50: {result['mcp_minus_direct_ms']:+.3f} ms (target <= "
          f"+{TARGET_MS:g}); mcp-auction - auction p50: "
          f"{result['mcp_auction_minus_auction_ms']:+.3f} ms  "
          f"{'PASS' if result['pass'] else 'FAIL'}")
    print(f"  mcp-sdk - direct p50 (every call through the SDK's dispatcher, --sdk-calls): "
          f"{result['mcp_sdk_minus_direct_ms']:+.3f} ms")
    cpu = result["cpu_per_mcp_call"]
    print(f"  CPU per mcp call ({result['cpu_rounds']} calls): server {cpu['server_ms']:.3f} ms, "
          f"client (this process, the echo agent included) {cpu['client_ms']:.3f} ms")
    if result["warnings"]:
        print(f"warnings: {result['warnings']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 rounds per path")
    parser.add_argument("--rounds", type=int, default=2000, help="rounds per path")
    parser.add_argument("--cpu-rounds", type=int, default=1000,
                        help="mcp calls the CPU per call is measured over")
    parser.add_argument("--json", type=Path, help="write every number here")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.cpu_rounds = 200, 200
    started = time.monotonic()
    code = run_and_report(run(args), report, args.json)
    print(f"({time.monotonic() - started:.0f}s in all)")
    return code


if __name__ == "__main__":
    sys.exit(main())
