"""The agents' part of ``agoramesh demo``: join, discovery, auction, workflow, debate, vote,
and a node killed mid-task whose task is recovered.

The offline agents of ``agoramesh up`` (:data:`~agoramesh.cli.up.DEMO_AGENTS`) run in this
process, one per server of the mesh. Two of them quote prices and speeds so the auction's
scoring has something to weigh, and the analyst votes too. The agent that is killed runs
in a separate process (``agoramesh node --connect …``) so that it dies as a crash kills
one: SIGKILL, no goodbye, no last message. Each step prints as it goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from agoramesh.agent import AgentNode
from agoramesh.bus.bus import Bus
from agoramesh.bus.mesh import Mesh
from agoramesh.bus.server import parent_death_signal
from agoramesh.cli.output import clip
from agoramesh.cli.up import demo_agents
from agoramesh.config import Environment
from agoramesh.errors import AgoraError, BusError, ServerError
from agoramesh.nodes.directory import Directory, PeerEntry
from agoramesh.nodes.task import Task
from agoramesh.protocols.allocation.dispatch import discover
from agoramesh.protocols.auction.policy import AuctionPolicy, Progress
from agoramesh.protocols.auction.scoring import rank
from agoramesh.protocols.collaboration.collaboration import Collaboration
from agoramesh.protocols.workflow.engine import EventKind, WorkflowEvent, run_workflow
from agoramesh.protocols.workflow.workflow import Workflow

if TYPE_CHECKING:
    from agoramesh.cli.demo import Report

__all__ = ("SLOW_TASK", "WORKFLOW", "AgentProcess", "auction", "debate", "discovery",
           "join", "recovery", "retry", "vote", "workflow")

T = TypeVar("T")

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

#: About a second of work; it stops early if its agent dies (its parent changes).
SLOW_TASK = (
    "import os, time\n"
    "parent = os.getppid()\n"
    "for _ in range(20):\n"
    "    time.sleep(0.05)\n"
    "    if os.getppid() != parent:\n"
    "        raise SystemExit('orphaned: my agent died')\n"
    "print('slow task done')\n"
)
KILL_AFTER = 0.3  # seconds into the slow task
#: The driver's auctions ask for a lease every 0.25 s and give up after 4 missed ones (1 s);
#: the bid window closes as soon as every known bidder answered, 2 s at most.
DEMO_AUCTIONS = AuctionPolicy(bid_window=2.0, lease_interval=0.25, missed_leases=4)
#: (latency hint in ms, USD per 1000 tokens): a cheap slow debater and a dear fast one.
_QUOTES = {"pro": (150, 0.002), "con": (90, 0.004)}
_EXTRA_CAPABILITIES = {"analyst": ("vote",)}


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000


async def _until_known(directory: Directory, ids: Iterable[str], timeout: float) -> None:
    """Wait until ``directory`` has heard of every agent in ``ids``; bounded by ``timeout``."""
    wanted, known = set(ids), asyncio.Event()

    def check(_: PeerEntry | None = None) -> None:
        if wanted <= {peer.id for peer in directory}:
            known.set()

    directory.on_join.append(check)
    try:
        check()
        async with asyncio.timeout(timeout):
            await known.wait()
    finally:
        directory.on_join.remove(check)


async def retry(call: Callable[[], Awaitable[T]], attempts: int = 10) -> T:
    """Retry a request while interest is still propagating; bounded by ``attempts``.

    A subscription's flush can return before its server has the interest (nats-py
    writes the PING ahead of the SUB it still queues), so the first request after
    one may find no responders: a failed attempt is tried again 0.1 s later.
    """
    for _ in range(attempts - 1):
        try:
            return await call()
        except BusError:
            await asyncio.sleep(0.1)
    return await call()


# --- agents join, discovery -----------------------------------------------------------------

async def join(report: Report, mesh: Mesh, env: Environment) -> list[AgentNode]:
    """Start the demo agents, one per server, sharing one directory; all or none."""
    started = time.perf_counter()
    first: list[AgentNode] = []

    def joined(entry: PeerEntry) -> None:
        report.detail(f"{entry.card.name:<8} joined from {entry.card.metadata.get('server')}: "
                      f"its hello reached {first[0].config.name} after {_ms(started):.0f} ms")

    def on_started(agent: AgentNode) -> None:
        if not first:
            first.append(agent)
            report.detail(f"{agent.config.name:<8} started on {agent.config.metadata['server']}; "
                          f"it drives the work below (any agent could: there is no controller)")
            agent.directory.on_join.append(joined)

    agents = await demo_agents(mesh, env, heartbeat=0.5, extra_capabilities=_EXTRA_CAPABILITIES,
                               quotes=_QUOTES, label_servers=True, auction_policy=DEMO_AUCTIONS,
                               started=on_started)
    driver = agents[0]
    try:
        await _until_known(driver.directory, [agent.agent_id for agent in agents[1:]], 10)
    except BaseException:
        await asyncio.gather(*(agent.stop(grace=1.0) for agent in agents))
        raise
    finally:
        driver.directory.on_join.remove(joined)
    report.data["agents_ms"] = round(_ms(started), 1)
    report.detail(f"{len(agents)} agents on {len(mesh.servers)} servers, all known to "
                  f"{driver.config.name} in {report.data['agents_ms']:.0f} ms")
    return agents


async def discovery(report: Report, client: Bus, expected: int) -> None:
    """A client (no agent, no history) asks ``agora.discover``; every agent answers its card."""
    directory = Directory()
    started = time.perf_counter()
    answered = await discover(client, directory, timeout=2.0, expected=expected)
    elapsed = _ms(started)
    rows = [{"name": entry.card.name, "type": entry.card.type,
             "server": entry.card.metadata.get("server", "?"), "endpoint": entry.card.endpoint,
             "capabilities": [cap.name for cap in entry.card.capabilities]}
            for entry in sorted(directory, key=lambda entry: entry.card.name)]
    report.detail(f"{'name':<8} {'type':<8} {'server':<6} {'endpoint':<27} capabilities")
    for row in rows:
        report.detail(f"{row['name']:<8} {row['type']:<8} {row['server']:<6} "
                      f"{clip(row['endpoint'], 27):<27} {', '.join(row['capabilities'])}")
    report.data["discovery"] = {"answered": answered, "ms": round(elapsed, 2), "agents": rows}
    closed = "closed early" if answered >= expected else "closed at the deadline"
    report.detail(f"{answered}/{expected} agents answered alice's scatter-gather in "
                  f"{elapsed:.1f} ms ({closed}; deadline was 2 s)")


# --- auction, workflow, debate, vote ------------------------------------------------------------

async def auction(report: Report, driver: AgentNode, names: dict[str, str]) -> None:
    """One contract-net auction with every bid shown and scored."""
    capability = "text.debate"
    started = time.perf_counter()

    def progress(event: Progress) -> None:
        if event.event == "cfp":
            report.detail(f"cfp on {driver.bus.subjects.cfp(capability)} to "
                          f"{event.detail['known']} known bidders")
        elif event.event == "bids":
            report.detail(f"bidding closed after {_ms(started):.1f} ms: {event.detail['bids']} "
                          f"bid(s) from {event.detail['answered']} answer(s)")

    outcome = await driver.auctioneer.run(
        Task(capability=capability, parameters={"topic": "open source", "position": "for"},
             deadline=time.time() + 10), timeout=10, progress=progress)
    elapsed = _ms(started)
    report.duplicates += outcome.duplicates
    bidders = []
    report.detail(f"{'bidder':<8} {'cost USD':>9} {'time ms':>8} {'load':>5} {'success':>7} "
                  f"{'score':>6}")
    for score, bid in rank(list(outcome.bids), driver.auctioneer.policy.scorer):
        won = bid.agent_id == outcome.winner
        name = names.get(bid.agent_id, bid.agent_id[:8])
        bidders.append({"name": name, "cost_usd": round(bid.cost_usd, 9),
                        "latency_ms": bid.latency_ms, "load": round(bid.load, 4),
                        "success_rate": bid.success_rate,
                        "score": round(score, 4), "winner": won})
        report.detail(f"{name:<8} {bid.cost_usd:>9.6f} {bid.latency_ms:>8.0f} {bid.load:>5.2f} "
                      f"{bid.success_rate:>7.2f} {score:>6.3f}{'  <- winner' if won else ''}")
    winner = names.get(outcome.winner, outcome.winner[:8])
    result = outcome.result
    report.data["auction"] = {"capability": capability, "bids": len(outcome.bids),
                              "winner": winner, "status": result.status.value,
                              "ms": round(elapsed, 1), "bidders": bidders}
    argument = (result.result or {}).get("argument", "") if isinstance(result.result, dict) else ""
    report.detail(f"awarded to {winner} (score = .30 load + .25 time + .20 cost + .25 success): "
                  f"{result.status.value} in {elapsed:.1f} ms, {clip(argument, 48)!r}")


async def workflow(report: Report, driver: AgentNode) -> None:
    """generate → review → run, each step auctioned among the capable agents."""
    def on_event(event: WorkflowEvent) -> None:
        if event.kind is EventKind.FINISHED:
            report.detail(f"{event.step:<8} by {event.agent_name or '?':<8} "
                          f"{event.status.value if event.status else '?'} "
                          f"after {(event.elapsed_ms or 0):.0f} ms")
        elif event.kind in (EventKind.SKIPPED, EventKind.RETRYING):
            report.detail(f"{event.step:<8} {event.kind.value}: {event.detail}")

    started = time.perf_counter()
    flow = await run_workflow(Workflow.from_dict(WORKFLOW), driver.dispatcher,
                              on_event=on_event, timeout=30)
    steps = {name: step.status.value for name, step in flow.steps.items()}
    report.data["workflow"] = {"status": flow.status.value, "steps": steps}
    review = flow.steps["review"].output or {}
    run = flow.steps["run"].output or {}
    report.detail(f"{flow.status.value} in {_ms(started):.0f} ms: review score "
                  f"{review.get('score')}, the generated code printed "
                  f"{str(run.get('stdout', '')).strip()!r}")


async def debate(report: Report, driver: AgentNode) -> None:
    """Two rounds of arguments for and against, then the debaters vote on the consensus."""
    def on_event(event: dict[str, Any]) -> None:
        if event["event"] == "argument":
            report.detail(f"round {event['round']} {event['agent']:<4} ({event['position']:>7}): "
                          f"{clip(event['argument'], 64)}")
        elif event["event"] == "vote":
            report.detail(f"{event['agent']} votes {event['choice']}")

    started = time.perf_counter()
    result = await Collaboration(driver.dispatcher, on_event=on_event).debate(
        "a four-day work week", ["pro", "con"], rounds=2)
    consensus = result["consensus"]
    report.data["debate"] = {"turns": len(result["debate_history"]),
                             "consensus": consensus["position"], "votes": consensus["votes"],
                             "decided_by": consensus["decided_by"], "ms": round(_ms(started), 1)}
    report.detail(f"consensus: {consensus['position']} (votes {consensus['votes']}, decided by "
                  f"{consensus['decided_by']}) in {report.data['debate']['ms']:.0f} ms")


async def vote(report: Report, driver: AgentNode) -> None:
    """A separate vote: every agent offering ``vote`` picks one option; the most votes win."""
    question = "Which language should the next mesh service be written in?"
    options = ["Python", "Rust", "Go"]

    def on_event(event: dict[str, Any]) -> None:
        if event["event"] == "vote":
            report.detail(f"{event['agent']:<8} votes {event['choice']}")
        elif event["event"] == "abstain":
            report.detail(f"{event['agent']:<8} abstains: {event['error']}")

    started = time.perf_counter()
    report.detail(f"{question} {' / '.join(options)}")
    result = await Collaboration(driver.dispatcher, on_event=on_event).voting(question, options)
    report.data["vote"] = {"question": question, "options": options, "tally": result["tally"],
                           "winner": result["winner"], "voters": len(result["votes"]),
                           "abstained": len(result["abstained"]), "ms": round(_ms(started), 1)}
    report.detail(f"winner: {result['winner']} ({result['tally']}) in "
                  f"{report.data['vote']['ms']:.0f} ms")


# --- a node killed mid-task -------------------------------------------------------------------

@contextlib.asynccontextmanager
async def _first_error() -> AsyncIterator[None]:
    """A task group's failure as its first error, so the CLI can print it in one line."""
    try:
        yield
    except BaseExceptionGroup as failure:
        raise failure.exceptions[0] from None


class AgentProcess:
    """``agoramesh node --connect URL`` in a process of its own, to be killed like a crash."""

    def __init__(self, name: str, capability: str, url: str, env: Environment,
                 workdir: Path) -> None:
        self.name, self.capability, self.url = name, capability, url
        self.env, self.workdir = env, workdir
        self.process: asyncio.subprocess.Process | None = None
        self.agent_id = ""

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    async def start(self, timeout: float = 20.0) -> str:
        """Start it and wait for its ready line; returns its agent id."""
        log = self.workdir / f"{self.name}.log"
        environ = {**os.environ, "AGORAMESH_PREFIX": self.env.prefix,
                   "AGORAMESH_HOME": str(self.workdir),
                   "TMPDIR": str(self.workdir)}  # a killed task's sandbox dir is removed with it
        with log.open("wb") as stderr:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "agoramesh.cli", "node", "--type", "offline",
                "--name", self.name, "--capability", self.capability, "--connect", self.url,
                "--heartbeat", "0.25", "--key-file", str(self.workdir / f"{self.name}.nk"),
                "--json", stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=stderr, env=environ, preexec_fn=parent_death_signal())
        assert self.process.stdout is not None
        line = b""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                line = await self.process.stdout.readline()
        try:
            ready = json.loads(line)
            self.agent_id = str(ready["id"])
        except (ValueError, KeyError, TypeError):
            tail = " ".join(log.read_text(errors="replace").split()[-30:])
            raise ServerError(f"agent process {self.name} did not start: {tail or 'no output'}"
                              ) from None
        return self.agent_id

    def kill(self) -> None:
        """SIGKILL: no goodbye, no last lease, no result."""
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)

    async def reap(self) -> int | None:
        """Kill it if it still runs and wait for it; its exit code."""
        if self.process is None:
            return None
        self.kill()
        async with asyncio.timeout(5.0):
            return await self.process.wait()


async def recovery(report: Report, driver: AgentNode, victim: AgentProcess,
                   names: dict[str, str]) -> None:
    """The slow task's winner is SIGKILLed mid-task; the task is re-auctioned and completes."""
    started = time.perf_counter()
    victim_id = await victim.start()
    names[victim_id] = victim.name
    await _until_known(driver.directory, [victim_id], 10)
    report.detail(f"{victim.name} (a separate `agoramesh node` process, pid {victim.pid}) "
                  f"joined: known to {driver.config.name} after {_ms(started):.0f} ms")
    accepted: list[str] = []
    ready = asyncio.Event()
    killed_at = 0.0
    noticed: dict[str, Any] = {}

    def since_kill() -> float:
        return _ms(killed_at) if killed_at else 0.0

    def left(agent_id: str, reason: str) -> None:
        if agent_id == victim_id:
            noticed.setdefault("by", f"directory ({reason})")
            noticed.setdefault("ms", since_kill())
            report.detail(f"{victim.name} left {driver.config.name}'s directory ({reason}) "
                          f"{since_kill():.0f} ms after the kill")

    def progress(event: Progress) -> None:
        agent = names.get(str(event.detail.get("agent", "")), "?")
        if event.event == "bids":
            ranking = ", ".join(names.get(i, i[:8]) for i in event.detail["ranking"])
            report.detail(f"attempt {event.detail['attempt']}: {event.detail['bids']} bid(s), "
                          f"ranked {ranking}")
        elif event.event == "accepted":
            accepted.append(str(event.detail["agent"]))
            ready.set()
            report.detail(f"{agent} accepted and runs the slow task (about 1 s)")
        elif event.event == "lost":
            why = ("it left the directory" if "by" in noticed else "no lease for "
                   f"{DEMO_AUCTIONS.lease_interval * DEMO_AUCTIONS.missed_leases:g} s")
            noticed.setdefault("by", "leases")
            noticed.setdefault("ms", since_kill())
            report.detail(f"{driver.config.name}'s auctioneer lost {agent} {since_kill():.0f} ms "
                          f"after the kill ({why})")
        elif event.event == "reauction":
            report.detail(f"re-auctioned without {names.get(str(event.detail.get('lost')), '?')}")

    task = Task(capability=victim.capability, parameters={"code": SLOW_TASK, "timeout": 5},
                deadline=time.time() + 20)
    driver.directory.on_leave.append(left)
    try:
        async with asyncio.timeout(20), _first_error(), asyncio.TaskGroup() as group:
            running = group.create_task(driver.auctioneer.run(task, timeout=20,
                                                              progress=progress))
            await ready.wait()
            if accepted[0] != victim_id:
                raise AgoraError(f"demo: {names.get(accepted[0])} won the slow task, not "
                                 f"{victim.name}; nothing to kill")
            await asyncio.sleep(KILL_AFTER)
            victim.kill()
            killed_at = time.perf_counter()
            code = await victim.reap()
            report.detail(f"SIGKILL to pid {victim.pid} ({victim.name}) {KILL_AFTER * 1000:.0f} "
                          f"ms into its task; it exited with {code}")
    finally:
        driver.directory.on_leave.remove(left)
    outcome = running.result()
    report.duplicates += outcome.duplicates
    result = outcome.result
    output = result.result if isinstance(result.result, dict) else {}
    completed_by = names.get(outcome.winner, outcome.winner[:8])
    report.data["recovery"] = {
        "killed": victim.name, "killed_pid": victim.pid, "first_winner": names.get(accepted[0]),
        "completed_by": completed_by, "status": result.status.value,
        "attempts": outcome.attempts, "noticed_by": noticed.get("by"),
        "noticed_ms": round(noticed.get("ms", 0.0), 1), "recovered_ms": round(since_kill(), 1),
        "stdout": str(output.get("stdout", "")).strip()}
    report.detail(f"recovered: {completed_by} completed it ({result.status.value}, printed "
                  f"{report.data['recovery']['stdout']!r}) {since_kill():.0f} ms after the "
                  f"kill, in {outcome.attempts} auctions")
