"""``agoramesh demo``: the README's main job, with no network and no API keys.

A 3-seed + 2-leaf mesh forms from one bootstrap address each; a signed request
crosses it leaf to leaf; a scatter-gather collects 10 answers and closes early;
a forged envelope is rejected and counted. Then the offline demo agents join,
a client discovers them, a task is auctioned (every bid shown and scored), a
workflow (generate → review → run) runs, two agents debate, three vote, and an
agent in a separate process is SIGKILLed while running a task that is then
re-auctioned and completed elsewhere (cli/demo_steps.py). Killing a leaf's hub
seed is survived. Last, a one-seed secured mesh of its own refuses a stranger,
answers a member, refuses subscriptions a member's JWT does not allow, shows an
observer only sealed bodies and cuts off a revoked member (cli/demo_security.py);
a summary closes the show.

Every step prints a line when it starts and its details as they happen. With
``--json`` those lines go to stderr and stdout gets one JSON summary. It exits
0 once every nats-server it started (and the agent process) is gone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from agoramesh.agent import AgentNode
from agoramesh.bus.bus import Bus, Delivery
from agoramesh.bus.envelope import seal
from agoramesh.bus.identity import Identity
from agoramesh.bus.mesh import Mesh
from agoramesh.bus.server import process_alive
from agoramesh.cli.demo_security import secured_mesh
from agoramesh.cli.demo_steps import (
    WORKFLOW,
    AgentProcess,
    auction,
    debate,
    discovery,
    join,
    recovery,
    retry,
    vote,
    workflow,
)
from agoramesh.cli.output import emit_json
from agoramesh.cli.up import local_mesh
from agoramesh.config import BusConfig, Environment
from agoramesh.errors import AgoraError, BusTimeout, ServerError

__all__ = ("WORKFLOW", "Report", "register")

RESPONDERS = 10
DEADLINE = 90.0  # seconds for the whole show; each wait inside has its own, shorter bound


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "demo", help="run the showcase on a local mesh and exit",
        description="Start a local mesh and offline agents; show signed messaging, discovery, "
                    "an auction, a workflow, a debate, a vote, a killed agent's task recovered, "
                    "a seed failure survived and a secured mesh's refusals; stop everything "
                    "and exit 0.",
    )
    parser.add_argument("--json", action="store_true",
                        help="print a JSON summary on stdout at the end (progress on stderr)")
    parser.set_defaults(handler=_demo)


class Report:
    """The demo's lines, written as they happen, and the numbers its summary shows."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.data: dict[str, Any] = {}  # the --json summary
        self.steps: list[tuple[str, str, float]] = []  # (key, title, ms), finished steps
        self.duplicates = 0  # results dropped by the auctions whose outcome a step shows
        self.started = time.perf_counter()
        self._number = 0

    def say(self, line: str = "") -> None:
        self.stream.write(line + "\n")
        self.stream.flush()

    def detail(self, line: str) -> None:
        self.say("    " + line)

    @contextlib.contextmanager
    def step(self, key: str, title: str) -> Iterator[None]:
        """``[n] title …`` now; the step's time is recorded when it ends."""
        self._number += 1
        self.say(f"[{self._number}] {title} …")
        started = time.perf_counter()
        try:
            yield
        finally:
            self.steps.append((key, title, round((time.perf_counter() - started) * 1000, 1)))


async def _demo(args: argparse.Namespace, env: Environment) -> int:
    report = Report(sys.stderr if args.json else sys.stdout)
    report.say("agoramesh demo: a brokerless mesh on loopback, offline")
    try:
        async with asyncio.timeout(DEADLINE):
            pids = await _show(report, env)
    except TimeoutError as exc:
        if isinstance(exc, AgoraError):
            raise
        raise BusTimeout(f"the demo did not finish within {DEADLINE:g} s") from None
    running = [pid for pid in pids if process_alive(pid)]
    if running:
        raise ServerError(f"processes still running after the demo: {running}")
    report.data["steps_ms"] = {key: ms for key, _, ms in report.steps}
    report.data["total_s"] = round(time.perf_counter() - report.started, 2)
    _summary(report, pids)
    if args.json:
        emit_json(report.data)
    return 0


async def _show(report: Report, env: Environment) -> list[int]:
    """Every step; returns the PIDs of the processes it started (all stopped by then)."""
    buses: list[Bus] = []
    with tempfile.TemporaryDirectory(prefix="agora-demo-") as workdir:
        async with contextlib.AsyncExitStack() as stack:
            with report.step("mesh", "mesh: 3 seeds + 2 leaves on loopback"):
                started = time.perf_counter()
                mesh = await stack.enter_async_context(local_mesh(env, seeds=3, leaves=2))
                report.data["mesh_ms"] = round((time.perf_counter() - started) * 1000, 1)
                for server in mesh.servers:
                    report.detail(f"{server.config.role.value:4}  {server.config.name:6}  pid "
                                  f"{server.pid:<7} {server.client_url}")
                report.detail(f"up in {report.data['mesh_ms']:.0f} ms: seeds fully routed, "
                              f"each leaf linked to a hub")
            pids = [server.pid for server in mesh.servers if server.pid is not None]
            report.data["pids"] = {"servers": list(pids)}

            async def close_buses() -> None:
                await asyncio.gather(*(bus.close(timeout=1.0) for bus in buses))

            stack.push_async_callback(close_buses)
            alice, subject = await _messaging(report, mesh, env, buses)
            victim = AgentProcess("sprinter", "code.run.python", mesh.seeds[-1].client_url, env,
                                  Path(workdir))
            stack.push_async_callback(victim.reap)
            await _agents(report, mesh, env, alice, victim, buses)
            if victim.pid is not None:
                pids.append(victim.pid)
                report.data["pids"]["agent_process"] = victim.pid
            await _failover(report, mesh, alice, subject)
        with report.step("security", "a secured mesh: members, permissions, sealed bodies"):
            pids += await secured_mesh(report, env, Path(workdir) / "secured")
    return pids


async def _connect(url: str, env: Environment, name: str, buses: list[Bus]) -> Bus:
    bus = await Bus.connect(Identity.generate(),
                            BusConfig(servers=(url,), name=name, prefix=env.prefix,
                                      envelope=env.envelope))
    buses.append(bus)
    return bus


async def _messaging(report: Report, mesh: Mesh, env: Environment,
                     buses: list[Bus]) -> tuple[Bus, str]:
    """Steps 2-4: a signed request leaf to leaf, a scatter-gather, a forgery refused."""
    leaf1, leaf2 = mesh.leaves
    with report.step("request", "a signed request from leaf1 to leaf2"):
        alice = await _connect(leaf1.client_url, env, "alice", buses)
        bob = await _connect(leaf2.client_url, env, "bob", buses)
        subject = bob.subjects.cap("echo")

        async def echo(delivery: Delivery) -> None:
            await delivery.respond("task_response", {"status": "COMPLETED",
                                                     "result": delivery.body})

        await bob.subscribe(subject, echo, queue=subject)
        started = time.perf_counter()
        reply = await retry(lambda: alice.request(subject, "task_request",
                                                   {"task_type": "echo", "text": "hello"},
                                                   timeout=1))
        report.data["request_ms"] = round((time.perf_counter() - started) * 1000, 2)
        report.detail(f"alice (leaf1) -> bob (leaf2): answered by {reply.sender[:12]}... with "
                      f"{reply.body['result']['text']!r}, signature verified, in "
                      f"{report.data['request_ms']:.1f} ms")

    with report.step("gather", f"scatter-gather to {RESPONDERS} responders across the mesh"):
        discover = alice.subjects.discover
        for index in range(RESPONDERS):
            server = mesh.servers[index % len(mesh.servers)]
            peer = await _connect(server.client_url, env, f"peer{index}", buses)

            async def card(delivery: Delivery, name: str = f"peer{index}") -> None:
                await delivery.respond("discovery", {"name": name})

            await peer.subscribe(discover, card)
        # Interest crosses routes and leaf links asynchronously: short gathers until every
        # responder is reachable (5 s at most), then the one that is timed and shown.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                while len(await alice.gather(discover, "discovery", {"query": "*"},
                                             expected=RESPONDERS, timeout=0.5)) < RESPONDERS:
                    pass
        started = time.perf_counter()
        answers = await alice.gather(discover, "discovery", {"query": "*"},
                                     expected=RESPONDERS, timeout=5.0)
        report.data["gather_ms"] = round((time.perf_counter() - started) * 1000, 2)
        report.data["gathered"] = len(answers)
        report.detail(f"{len(answers)}/{RESPONDERS} authenticated answers in "
                      f"{report.data['gather_ms']:.1f} ms (closed early; deadline was 5 s)")
        for peer in buses[2:]:
            await peer.close(timeout=1.0)  # their stand-in answers would mix with the agents'
        del buses[2:]

    with report.step("forgery", "a forged envelope"):
        inbox = alice.new_inbox()  # chosen first: the envelope names its reply subject
        forged = bytearray(seal(Identity.generate(), type="task_request", subject=subject,
                                body={"x": 1}, reply=inbox))
        forged[-1] ^= 0x01  # one bit of the signature
        reply_to = await alice.nats.subscribe(inbox, max_msgs=1)
        await alice.nats.publish(subject, bytes(forged), reply=inbox)
        msg = await reply_to.next_msg(timeout=1)
        answer = alice.guard.admit(msg.data, msg.subject, msg.reply)
        report.data["rejections"] = {str(k): v for k, v in bob.rejections.items()}
        report.detail(f"refused ({answer.body['type']}: {answer.body['message'][:44]}…); "
                      f"bob's rejection counters: {report.data['rejections']}")
    return alice, subject


async def _agents(report: Report, mesh: Mesh, env: Environment, alice: Bus,
                  victim: AgentProcess, buses: list[Bus]) -> None:
    """Steps 5-11 with the offline agents; they are stopped before the seed failure."""
    with report.step("agents", "agents join"):
        agents = await join(report, mesh, env)
    driver = agents[0]
    names = {agent.agent_id: agent.config.name for agent in agents}
    try:
        with report.step("discovery", "discovery: alice asks agora.discover who is there"):
            await discovery(report, alice, len(agents))
        with report.step("auction", "auction for text.debate"):
            await auction(report, driver, names)
        with report.step("workflow", "workflow generate → review → run"):
            await workflow(report, driver)
        with report.step("debate", "debate: a four-day work week, pro vs con, 2 rounds"):
            await debate(report, driver)
        with report.step("vote", "vote: every agent offering `vote` casts a ballot"):
            await vote(report, driver)
        with report.step("recovery", "a node killed mid-task, its task re-auctioned"):
            await recovery(report, driver, victim, names)
    finally:
        await asyncio.gather(*(agent.stop(grace=1.0) for agent in agents))
    report.data["totals"] = _totals(agents, buses, killed=1 if victim.pid else 0,
                                    duplicates=report.duplicates)


def _totals(agents: list[AgentNode], buses: list[Bus], *, killed: int,
            duplicates: int) -> dict[str, Any]:
    """What the in-process agents and clients did and refused."""
    rejections: Counter[str] = Counter()
    for bus in [*buses, *(agent.bus for agent in agents)]:
        rejections.update({str(reason): count for reason, count in bus.rejections.items()})
    statuses = [agent.status for agent in agents]
    counted = [agent.metrics.totals() for agent in agents]
    return {
        "agents": len(agents) + killed, "killed": killed,
        "tasks_completed": sum(status.tasks_completed for status in statuses),
        "tasks_failed": sum(status.tasks_failed for status in statuses),
        "auctions": sum(sum(totals["auctions"].values()) for totals in counted),
        "duplicates": duplicates,
        "bids": sum(totals["bids"]["bid"] for totals in counted),
        "refusals": sum(totals["bids"]["refuse"] for totals in counted),
        "envelopes_sent": sum(sum(bus.sent.values()) for bus in
                              [*buses, *(agent.bus for agent in agents)]),
        "rejections": dict(rejections)}


async def _failover(report: Report, mesh: Mesh, alice: Bus, subject: str) -> None:
    """The last step: kill leaf1's hub; leaf1 re-attaches and requests get through again."""
    leaf1 = mesh.leaves[0]
    with report.step("failover", "a seed killed under a leaf"):
        hub_name = await leaf1.wait_hub(timeout=2)
        hub = next(seed for seed in mesh.seeds if seed.config.name == hub_name)
        hub.kill()
        started = time.perf_counter()
        new_hub = await leaf1.wait_hub(exclude=hub_name, timeout=5)
        await retry(lambda: alice.request(subject, "task_request", {"text": "again"},
                                           timeout=0.5), attempts=20)
        report.data["failover_ms"] = round((time.perf_counter() - started) * 1000, 1)
        report.detail(f"killed {hub_name} (pid {hub.pid}, leaf1's hub): leaf1 re-attached to "
                      f"{new_hub}, requests succeed again after "
                      f"{report.data['failover_ms']:.0f} ms")


def _summary(report: Report, pids: list[int]) -> None:
    report.say("summary")
    for number, (_, title, ms) in enumerate(report.steps, 1):
        report.detail(f"[{number:>2}] {title:<52} {ms:>8.1f} ms")
    totals = report.data.get("totals", {})
    recovered = report.data.get("recovery", {})
    report.detail(f"agents: {totals.get('agents')} ({totals.get('killed')} killed; its task "
                  f"completed by {recovered.get('completed_by')}); tasks: "
                  f"{totals.get('tasks_completed')} completed, {totals.get('tasks_failed')} "
                  f"failed; auctions: {totals.get('auctions')}; bids: {totals.get('bids')}, "
                  f"refusals: {totals.get('refusals')}")
    report.detail(f"envelopes sent (signed, or MACed for one agent): "
                  f"{totals.get('envelopes_sent')}; rejected: "
                  f"{totals.get('rejections') or 'none'}")
    report.say(f"done in {report.data['total_s']:.1f} s; every process stopped (pids "
               f"{', '.join(map(str, pids))})")
