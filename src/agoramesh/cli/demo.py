"""``agoramesh demo``: the README's main job, with no network and no API keys.

A 3-seed + 2-leaf mesh forms from one bootstrap address each, a signed
request crosses it leaf to leaf, a scatter-gather collects 10 answers and
closes early, a forged envelope is rejected and counted; then the offline
demo agents join: a task is auctioned (contract net), a three-step workflow
(generate → review → run) runs, two agents debate and vote; finally killing a
leaf's hub seed is survived.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from agoramesh.bus.bus import Bus, Delivery
from agoramesh.bus.envelope import seal
from agoramesh.bus.identity import Identity
from agoramesh.cli.output import emit, emit_json
from agoramesh.cli.up import demo_agents, local_mesh
from agoramesh.config import BusConfig, Environment
from agoramesh.errors import BusError
from agoramesh.nodes.node import AgentNode
from agoramesh.protocols.collaboration import Collaboration
from agoramesh.protocols.contract_net import Progress
from agoramesh.protocols.workflow import Workflow
from agoramesh.protocols.workflow_engine import run_workflow

__all__ = ("WORKFLOW", "register")

RESPONDERS = 10

#: The showcase workflow (examples/workflows/generate_review_run.yaml, inlined).
WORKFLOW: dict[str, Any] = {
    "name": "generate-review-run",
    "steps": [
        {"name": "generate", "agent": "capability:code.generate.python",
         "parameters": {"spec": "fibonacci numbers"}},
        {"name": "review", "agent": "capability:code.review.python",
         "parameters": {"code": "${steps.generate.output.code}"}},
        {"name": "run", "agent": "capability:code.run.python",
         "when": "${steps.review.output.score} >= 50",
         "parameters": {"code": "${steps.generate.output.code}", "timeout": 5}},
    ],
}


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "demo", help="run the showcase on a local mesh and exit",
        description="Start a local mesh, show signed messaging across it, survive a seed "
                    "failure, stop everything and exit 0.",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON summary at the end")
    parser.set_defaults(handler=_demo)


class _Clock:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def ms(self, since: float | None = None) -> float:
        return (time.perf_counter() - (self.start if since is None else since)) * 1000


async def _demo(args: argparse.Namespace, env: Environment) -> int:
    clock = _Clock()
    summary: dict[str, Any] = {}
    say = (lambda _line: None) if args.json else emit
    say("agoramesh demo: a brokerless mesh on loopback, offline")
    async with local_mesh(env, seeds=3, leaves=2) as mesh:
        summary["mesh_ms"] = round(clock.ms(), 1)
        for server in mesh.servers:
            say(f"  {server.config.role.value:4}  {server.config.name:6}  pid {server.pid:<7} "
                f"{server.client_url}")
        say(f"[1] mesh of 3 seeds + 2 leaves up in {summary['mesh_ms']:.0f} ms")
        buses: list[Bus] = []
        try:
            await _show(mesh, env, buses, summary, say)
        finally:
            await asyncio.gather(*(bus.close(timeout=1.0) for bus in buses))
    say(f"done in {clock.ms() / 1000:.1f} s; every server stopped")
    if args.json:
        emit_json(summary)
    return 0


async def _connect(url: str, env: Environment, name: str, buses: list[Bus]) -> Bus:
    bus = await Bus.connect(Identity.generate(),
                            BusConfig(servers=(url,), name=name, prefix=env.prefix))
    buses.append(bus)
    return bus


async def _show(mesh: Any, env: Environment, buses: list[Bus], summary: dict[str, Any],
                say: Any) -> None:
    leaf1, leaf2 = mesh.leaves
    alice = await _connect(leaf1.client_url, env, "alice", buses)
    bob = await _connect(leaf2.client_url, env, "bob", buses)
    subject = bob.subjects.cap("echo")

    async def echo(delivery: Delivery) -> None:
        await delivery.respond("task_response", {"status": "COMPLETED", "result": delivery.body})

    await bob.subscribe(subject, echo, queue=subject)
    await bob.nats.flush()
    started = time.perf_counter()
    reply = await _retry(lambda: alice.request(subject, "task_request",
                                               {"task_type": "echo", "text": "hello"}, timeout=1))
    summary["request_ms"] = round((time.perf_counter() - started) * 1000, 2)
    say(f"[2] alice (leaf1) -> bob (leaf2): signed request answered by {reply.sender[:12]}... "
        f"with {reply.body['result']['text']!r}, signature verified")

    discover = alice.subjects.discover
    servers = mesh.servers
    for index in range(RESPONDERS):
        peer = await _connect(servers[index % len(servers)].client_url, env, f"peer{index}", buses)

        async def card(delivery: Delivery, name: str = f"peer{index}") -> None:
            await delivery.respond("discovery", {"name": name})

        await peer.subscribe(discover, card)
        await peer.nats.flush()
    await asyncio.sleep(0.2)  # interest propagates across routes and leaf links
    started = time.perf_counter()
    answers = await alice.gather(discover, "discovery", {"query": "*"}, expected=RESPONDERS,
                                 timeout=5.0)
    summary["gather_ms"] = round((time.perf_counter() - started) * 1000, 2)
    summary["gathered"] = len(answers)
    say(f"[3] scatter-gather: {len(answers)}/{RESPONDERS} signed answers from across the mesh "
        f"in {summary['gather_ms']:.1f} ms (closed early; deadline was 5 s)")

    mallory = Identity.generate()
    forged = bytearray(seal(mallory, type="task_request", subject=subject, body={"x": 1}))
    forged[-1] ^= 0x01
    msg = await alice.nats.request(subject, bytes(forged), timeout=1)
    answer = alice.guard.admit(msg.data, msg.subject)
    summary["rejections"] = {str(k): v for k, v in bob.rejections.items()}
    say(f"[4] a forged envelope was refused ({answer.body['type']}: {answer.body['message']}); "
        f"bob's rejection counters: {summary['rejections']}")

    agents = await demo_agents(mesh, env, heartbeat=0.5)
    try:
        await _negotiate(agents, summary, say)
    finally:
        await asyncio.gather(*(agent.stop(grace=1.0) for agent in agents))

    hub_name = await leaf1.wait_hub(timeout=2)
    hub = next(seed for seed in mesh.seeds if seed.config.name == hub_name)
    hub.kill()
    started = time.perf_counter()
    new_hub = await leaf1.wait_hub(timeout=5)
    while new_hub == hub_name:
        await asyncio.sleep(0.05)
        new_hub = await leaf1.wait_hub(timeout=5)
    await _retry(lambda: alice.request(subject, "task_request", {"text": "again"}, timeout=0.5),
                 attempts=20)
    summary["failover_ms"] = round((time.perf_counter() - started) * 1000, 1)
    say(f"[8] killed {hub_name} (leaf1's hub): leaf1 re-attached to {new_hub}, requests "
        f"succeed again after {summary['failover_ms']:.0f} ms")


async def _negotiate(agents: list[AgentNode], summary: dict[str, Any], say: Any) -> None:
    """Steps 5-7: an auction, a workflow and a debate among the offline demo agents."""
    driver = agents[0]  # coder drives; any agent could: there is no controller
    names = {agent.agent_id: agent.config.name for agent in agents}
    everyone = {agent.agent_id for agent in agents}
    joined = asyncio.Event()

    def check(_: object = None) -> None:
        if {entry.id for entry in driver.directory} | {driver.agent_id} >= everyone:
            joined.set()

    driver.directory.on_join.append(check)
    check()
    try:
        async with asyncio.timeout(10):  # hellos cross the mesh in milliseconds
            await joined.wait()
    finally:
        driver.directory.on_join.remove(check)
    dispatcher = driver.dispatcher
    events: list[Progress] = []
    started = time.perf_counter()
    result = await dispatcher.submit("text.debate", {"topic": "open source", "position": "for"},
                                     progress=events.append, timeout=10)
    bids = next(event for event in events if event.event == "bids")
    summary["auction"] = {"bids": bids.detail["bids"], "winner": names.get(result.agent_id or ""),
                          "ms": round((time.perf_counter() - started) * 1000, 1)}
    say(f"[5] auction for text.debate: {bids.detail['bids']} bids, awarded to "
        f"{summary['auction']['winner']} (score: load, latency, cost, success), done in "
        f"{summary['auction']['ms']:.1f} ms")

    flow = await run_workflow(Workflow.from_dict(WORKFLOW), dispatcher, timeout=30)
    steps = {name: step.status.value for name, step in flow.steps.items()}
    summary["workflow"] = {"status": flow.status.value, "steps": steps}
    run = flow.steps["run"].output or {}
    say(f"[6] workflow generate → review (score {flow.steps['review'].output['score']}) → run: "
        f"{flow.status.value}, the generated code printed {str(run.get('stdout', '')).strip()!r}")

    debate = await Collaboration(dispatcher).debate("a four-day work week", ["pro", "con"],
                                                    rounds=2)
    consensus = debate["consensus"]
    summary["debate"] = {"turns": len(debate["debate_history"]),
                         "consensus": consensus["position"]}
    say(f"[7] debate pro vs con, 2 rounds, {len(debate['debate_history'])} arguments; "
        f"the vote's consensus: {consensus['position']}")


async def _retry(call: Any, attempts: int = 10) -> Any:
    """Retry a request while interest is still propagating; bounded by ``attempts``."""
    for _ in range(attempts - 1):
        try:
            return await call()
        except BusError:
            await asyncio.sleep(0.1)
    return await call()
