"""A2A through the mesh vs an A2A agent served by a2a-sdk alone, called the same way.

One run, uvloop, one process: a 1-seed Mesh (embedded ``nats-server`` on loopback), an
offline ``echo`` AgentNode, and the A2A bridge (``A2AServer``, as ``agoramesh a2a`` runs
it: an AgentHost hosting no agent, following presence, its Dispatcher the initiator).
Every path is the same a2a-sdk 1.x client call (``ClientFactory``, JSON-RPC 1.0,
``message/send`` not streamed, one keep-alive httpx client): a message whose one data
part is ``{"text": …}`` and whose metadata names the skill ``echo``; the answer must be
a completed task whose artifact holds ``{"echo": {"text": …}}`` (else it is a miss, not
timed). Paths, in alternating (ABBA) blocks after a warm-up:

* ``sdk``     an echo agent served by a2a-sdk alone (its ``DefaultRequestHandler`` and
              routes on the same uvicorn server, ``AsgiSite``): the executor answers at
              once with what the bridge sends a blocking send (the whole task in one
              event: completed, one artifact). The baseline: A2A's own HTTP stack.
* ``mesh``    the bridge at ``/``: the message becomes a task auctioned among the agents
              offering ``echo`` (one here, so the auction awards it directly, without
              a call for proposals: PROTOCOL.md §16), the winner's result its artifact.
* ``cfp``     the same, with direct awards off (``AuctionPolicy(direct_award=False)``
              for these sends): a call for proposals, its bid, then the award (info:
              the auction of a capability more than one agent offers).
* ``agent``   the bridge at ``/agents/echo-agent/``: the task sent to that agent, no
              auction (info).
* ``auction`` ``Dispatcher.submit`` alone, no A2A (info: what the mesh part costs).

Target: p50 mesh/sdk <= 1.3 (the mesh's negotiation costs less than a third of A2A's
own HTTP stack).

The echo agent runs in this process, or with ``--split`` in a child process
(``--serve``), as a mesh agent would run on another node: then the bridge's process
does only the bridge's work (and the client's, on every path alike).

    .venv/bin/python benchmarks/bench_a2a.py [--quick] [--split] [--rounds N] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import uvloop
from a2a.client import A2ACardResolver, Client, ClientConfig, ClientFactory
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore
from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    Artifact,
    Message,
    Part,
    Role,
    SendMessageRequest,
    Task,
    TaskState,
    TaskStatus,
)
from starlette.applications import Starlette

from agoramesh.agent import AgentNode
from agoramesh.bridges.a2a_server import A2AServer
from agoramesh.bridges.asgi import AsgiSite
from agoramesh.bus.identity import Identity
from agoramesh.bus.mesh import Mesh
from agoramesh.config import BusConfig
from agoramesh.nodes.backends.a2a import output_of, to_value
from agoramesh.nodes.backends.offline import OfflineBackend
from agoramesh.nodes.catalog import capabilities_for
from agoramesh.nodes.host import AgentHost
from agoramesh.nodes.node import NodeConfig
from agoramesh.nodes.task import TaskStatus as MeshStatus
from agoramesh.protocols.allocation.dispatch import Dispatcher
from agoramesh.protocols.auction.auctioneer import Auctioneer
from agoramesh.protocols.auction.policy import AuctionPolicy
from common import (
    Warnings,
    WrongAnswer,
    alternate,
    count_warnings,
    latency,
    run_and_report,
    serve_until_stdin_closes,
    spawn_child,
    stop_all,
    stop_child,
    until_answers,
)

PARAMS: dict[str, Any] = {"text": "The quick brown fox jumps over the lazy dog."}
EXPECTED = {"echo": PARAMS}
TARGET, BLOCKS, TIMEOUT = 1.3, 10, 10.0  # p50 mesh/sdk; ABBA blocks; seconds per call
SIDES = ("sdk", "mesh", "cfp", "agent", "auction")
Op = Callable[[], Awaitable[object]]


class Echo(AgentExecutor):
    """The baseline agent, answering a blocking send as the bridge does: the whole task
    in one event, completed, its echo as one artifact."""

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        assert context.message is not None and context.task_id and context.context_id
        echo = to_value({"echo": output_of(context.message.parts)})
        await event_queue.enqueue_event(Task(
            id=context.task_id, context_id=context.context_id,
            status=TaskStatus(state=TaskState.TASK_STATE_COMPLETED), history=[context.message],
            artifacts=[Artifact(artifact_id=uuid.uuid4().hex, name="result",
                                parts=[Part(data=echo)])]))

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        raise NotImplementedError


def sdk_site() -> AsgiSite:
    card = AgentCard(name="echo", description="a2a-sdk alone", version="1",
                     capabilities=AgentCapabilities(streaming=True),
                     default_input_modes=["application/json"],
                     default_output_modes=["application/json"],
                     supported_interfaces=[AgentInterface(url="http://placeholder/",
                                                          protocol_binding="JSONRPC",
                                                          protocol_version="1.0")],
                     skills=[AgentSkill(id="echo", name="echo", description="echo",
                                        tags=["echo"])])
    site: AsgiSite

    async def located(served: AgentCard) -> AgentCard:
        copy = AgentCard()
        copy.CopyFrom(served)
        copy.supported_interfaces[0].url = site.url + "/"
        return copy

    handler = DefaultRequestHandler(agent_executor=Echo(), task_store=InMemoryTaskStore(),
                                    agent_card=card)
    site = AsgiSite(Starlette(routes=[*create_agent_card_routes(card, card_modifier=located),
                                      *create_jsonrpc_routes(handler, "/")]))
    return site


def a2a_op(client: Client) -> Op:
    async def send() -> None:
        message = Message(role=Role.ROLE_USER, message_id=uuid.uuid4().hex,
                          parts=[Part(data=to_value(PARAMS))], metadata={"skill": "echo"})
        async with asyncio.timeout(TIMEOUT):
            answers = [a async for a in client.send_message(SendMessageRequest(message=message))]
        task = answers[-1].task
        if task.status.state != TaskState.TASK_STATE_COMPLETED or output_of(
                task.artifacts[-1].parts) != EXPECTED:
            raise WrongAnswer(str(task)[:300])

    return send


def with_policy(op: Op, auctioneer: Auctioneer, policy: AuctionPolicy) -> Op:
    """``op`` with the auctioneer running ``policy`` (the paths run one at a time)."""
    async def run() -> None:
        saved, auctioneer.policy = auctioneer.policy, policy
        try:
            await op()
        finally:
            auctioneer.policy = saved

    return run


def auction_op(dispatcher: Dispatcher) -> Op:
    async def submit() -> None:
        result = await dispatcher.submit("echo", PARAMS, timeout=TIMEOUT)
        if result.status is not MeshStatus.COMPLETED or result.result != EXPECTED:
            raise WrongAnswer(result.error)

    return submit


async def client_for(http: httpx.AsyncClient, url: str) -> Client:
    card = await A2ACardResolver(http, url).get_agent_card()
    return ClientFactory(ClientConfig(httpx_client=http, streaming=False)).create(card)


def echo_agent(url: str) -> AgentNode:
    return AgentNode(Identity.generate(),
                     NodeConfig(name="echo-agent", capabilities=capabilities_for(
                         "offline", ["echo"]), heartbeat_interval=1.0),
                     OfflineBackend(), BusConfig(servers=(url,), name="echo-agent"))


async def serve(url: str) -> None:
    """Child side of --split: the echo agent until stdin closes (bounded)."""
    agent = echo_agent(url)
    await agent.start()
    try:
        await serve_until_stdin_closes()
    finally:
        await stop_all([agent])


async def measure(base: Path, rounds: int, split: bool) -> dict[str, Any]:
    async with contextlib.AsyncExitStack() as stack:
        mesh = await Mesh.launch(base / "mesh", seeds=1)
        stack.push_async_callback(mesh.stop, 2.0)
        url = mesh.seeds[0].client_url
        if split:
            child = await spawn_child(__file__, "--serve", url)
            stack.push_async_callback(stop_child, child)
        else:
            echo = echo_agent(url)
            stack.push_async_callback(stop_all, [echo])
            await echo.start()
        host = AgentHost(BusConfig(servers=(url,), name="bridge"), name="bridge")
        await host.start()
        stack.push_async_callback(host.stop, 1.0)
        dispatcher = Dispatcher(host.bus, host.directory)
        await until_answers(auction_op(dispatcher))
        await host.watch.sweep(0.5)
        bridge = await stack.enter_async_context(A2AServer(dispatcher))
        baseline = await stack.enter_async_context(sdk_site())
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=TIMEOUT))
        ops = {"sdk": a2a_op(await client_for(http, baseline.url)),
               "mesh": a2a_op(await client_for(http, bridge.url)),
               "cfp": with_policy(a2a_op(await client_for(http, bridge.url)),
                                  dispatcher.auctioneer, AuctionPolicy(direct_award=False)),
               "agent": a2a_op(await client_for(http, bridge.url + "/agents/echo-agent")),
               "auction": auction_op(dispatcher)}
        for op in ops.values():  # warm-up
            for _ in range(max(20, rounds // 10)):
                await op()
        samples, misses, seconds = await alternate({side: ops[side] for side in SIDES},
                                                   rounds, BLOCKS)
        row: dict[str, Any] = {"rounds": rounds, "seconds": round(seconds, 1),
                               "target": TARGET}
        for side in SIDES:
            row[side] = {"n": len(samples[side]), "misses": misses[side],
                         **latency(samples[side])}
            row[f"{side}_ratio_p50"] = round(row[side]["p50"] / row["sdk"]["p50"], 3)
        row["mesh_minus_sdk_ms"] = round(row["mesh"]["p50"] - row["sdk"]["p50"], 3)
        row["pass"] = row["mesh_ratio_p50"] <= TARGET and not misses["mesh"]
        return row


def report(result: dict[str, Any]) -> None:
    r = result["send"]
    where = ("split: the echo agent in a child process" if result["mode"] == "split"
             else "single process")
    print(f"\nA2A message/send (a2a-sdk client, JSON-RPC 1.0, not streamed); 1-seed mesh; "
          f"{where}; {result['loop']}; {r['rounds']} rounds per path in {result['blocks']} "
          f"alternating blocks; {r['seconds']} s measured\n")
    print(f"{'path':<60} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} {'miss':>4} {'/sdk':>5}")
    titles = {"sdk": "sdk: echo agent served by a2a-sdk alone (uvicorn)",
              "mesh": "mesh: A2AServer / -> auction -> offline echo agent",
              "cfp": "cfp: the same, direct awards off (cfp, bid, award)",
              "agent": "agent: A2AServer /agents/echo-agent/ -> that agent",
              "auction": "auction: Dispatcher.submit alone (no A2A)"}
    for side in SIDES:
        row = r[side]
        print(f"{titles[side]:<60} {row['p50']:7.3f} {row['p90']:7.3f} {row['p99']:7.3f} "
              f"{row['misses']:4d} {r[side + '_ratio_p50']:5.2f}")
    print(f"\n  {'runtime log warnings':<40} {sum(result['warnings'].values())} "
          f"{dict(result['warnings'].most_common(3))}\n")
    print(f"{'PASS' if r['pass'] else 'FAIL'}  send: p50 mesh/sdk = {r['mesh_ratio_p50']:.2f} "
          f"(target <= {r['target']:.1f}); the mesh adds {r['mesh_minus_sdk_ms']:.3f} ms "
          f"at p50 (an auction alone: {r['auction']['p50']:.3f} ms)")


async def run(args: argparse.Namespace, warnings: Warnings) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="agoramesh-bench-a2a-"))
    try:
        return {"mode": "split" if args.split else "single", "loop": "uvloop",
                "blocks": BLOCKS, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "send": await measure(base, args.rounds or (300 if args.quick else 2000),
                                      args.split),
                "warnings": warnings.seen}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="300 rounds per path")
    parser.add_argument("--rounds", type=int, help="rounds per path (2000)")
    parser.add_argument("--split", action="store_true",
                        help="the echo agent in a child process")
    parser.add_argument("--json", type=Path, help="write the results to this file")
    parser.add_argument("--serve", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        uvloop.run(serve(args.serve))
        return 0
    return run_and_report(run(args, count_warnings()), report, args.json)


if __name__ == "__main__":
    sys.exit(main())
