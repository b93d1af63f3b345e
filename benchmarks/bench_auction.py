"""Contract-net auctions vs raw nats-py scatter-gather + request/reply, side by side.

Setup (one run, uvloop in every process): a 3-seed Mesh (embedded ``nats-server``s on
loopback) in this process, and 2 child processes (this script, ``--serve``). Each child
hosts 5 offline AgentNodes (capability ``echo`` from ``capabilities_for("offline",
["echo"])``, OfflineBackend, heartbeat 1 s, one shared directory per process) and, for
the raw path, 5 raw nats-py connections; bidder ``g`` (0-9) and raw responder ``g`` both
connect to seed ``g % 3``. Raw responder ``g`` answers ``raw.sg`` with a bid-sized body
and ``raw.rr.<g>`` with a result-sized body. The initiator (this process, on seed 3) is
a Bus with its own Identity and a Directory filled by ``discover(bus, directory,
expected=10)``, so every auction closes its bid window as soon as the 10 have answered.

* ``seq``  sequential rounds, warmed up, in 10 alternating (ABBA) blocks:
           ``auction`` = ``Auctioneer(bus, directory).run(Task(capability="echo",
           parameters={"text": …}), timeout=10)`` — cfp to the 10, 10 bids, award to the
           best, its result (and the reject broadcast the auction sends); the result must be
           COMPLETED and echo this round's text (a wrong answer fails the run).
           ``raw`` = scatter-gather (fresh inbox, publish a cfp-sized body to ``raw.sg``,
           wait for 10 bid-sized replies) then one request/reply (award-sized request to
           ``raw.rr.<g>``, result-sized reply), ``g`` cycling over the 10 responders as the
           auction's winner moves over the 10 bidders. Bodies are the auction's own bodies
           as compact JSON. Also the parts of a round (p50/p90): raw sg and rr; the
           auction's cfp, bid window, pick (rank + verify the best bid), award -> result,
           and reject + close, from its progress events. Target: p50 auction/raw <= 2.0;
           p99 reported.
* ``tput`` 64 operations in flight (64 worker coroutines) from the one initiator, the raw
           and the auction path in halves raw, auction, auction, raw (after a warm-up at
           64 in flight): operations/s, latency under load, CPU seconds of every process
           (initiator, each bidder process, the 3 nats-servers) and per operation, and the
           messages per auction. Target: >= 1,000 auctions/s, or the profile
           (``--profile``: cProfile over the auction halves in the initiator and in each
           bidder process; top functions by own time are printed, ``--profile-dir`` keeps
           the ``.prof`` files). Throughput under ``--profile`` is not the figure.

A wrong answer makes the exit status 1; a FAIL verdict is a finding (exit status 0).

    .venv/bin/python benchmarks/bench_auction.py [--quick] [--rounds N] [--auctions N]
        [--profile] [--profile-dir DIR] [--profile-clock wall|cpu] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import itertools
import json
import math
import os
import pstats
import resource
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import nats.errors
import uvloop
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from agoramesh.agent import AgentNode
from agoramesh.bus.bus import Bus
from agoramesh.bus.envelope import seal
from agoramesh.bus.identity import Identity
from agoramesh.bus.mesh import Mesh
from agoramesh.bus.server import EmbeddedServer
from agoramesh.config import BusConfig
from agoramesh.errors import AgoraError
from agoramesh.nodes.backends.offline import OfflineBackend
from agoramesh.nodes.catalog import capabilities_for
from agoramesh.nodes.directory import Directory
from agoramesh.nodes.node import NodeConfig
from agoramesh.nodes.task import Task, TaskResult, TaskStatus
from agoramesh.protocols.allocation.dispatch import discover
from agoramesh.protocols.auction.auctioneer import Auctioneer
from agoramesh.protocols.auction.policy import Progress
from agoramesh.protocols.auction.scoring import Bid
from common import (
    Warnings,
    WrongAnswer,
    count_warnings,
    latency,
    raw_client,
    stop_all,
    until_answers,
)

SEEDS, CHILDREN, PER_CHILD = 3, 2, 5
BIDDERS = CHILDREN * PER_CHILD
TEXT = "The quick brown fox jumps over the lazy dog."
TIMEOUT = 10.0  # seconds per auction (Auctioneer.run) and per raw round; a miss is counted
BLOCKS = 10  # alternating raw/auction batches in seq
IN_FLIGHT = 64
HEARTBEAT = 1.0
SEQ_TARGET, TPUT_TARGET = 2.0, 1000.0  # p50 auction/raw; auctions/s
PHASE_BOUND = 150.0  # seconds: a throughput half that takes longer is cut short
SG_SUBJECT, RR_SUBJECT = "raw.sg", "raw.rr"
SIDES = ("raw", "auction")
TOP = 15  # profile rows
Op = Callable[[], Awaitable[None]]
Phases = dict[str, list[int]]  # part of an operation -> durations, ns


def _bodies() -> dict[str, dict[str, Any]]:
    """The auction's message bodies for one echo task (docs/PROTOCOL.md §16 shapes)."""
    # Fixed ids (uuid4 hex-sized): the same bytes in every process of a run.
    task = Task(capability="echo", parameters={"text": f"{TEXT} #0000000"}, task_id="7" * 32)
    auction_id, agent = "a" * 32, "U" * 56
    bid = Bid(agent_id=agent, load=0.125, latency_ms=0.412, capacity=8, agent_type="offline")
    result = TaskResult(task_id=task.task_id, status=TaskStatus.COMPLETED,
                        result={"echo": task.parameters}, execution_time_ms=0.321,
                        tokens_used=20, agent_id=agent)
    return {"cfp": {"auction_id": auction_id, "task": task.as_dict(), "terms": {},
                    "exclude": []},
            "bid": {"auction_id": auction_id, **bid.as_dict()},
            "award": {"auction_id": auction_id, "task": {**task.as_dict(), "stream": False},
                      "lease_interval": 1.0},
            "result": result.as_dict()}


BODIES = _bodies()
RAW = {name: json.dumps(body, separators=(",", ":")).encode() for name, body in BODIES.items()}


# -- the bidder processes (--serve) -------------------------------------------------------

async def serve(spec: dict[str, Any], warnings: Warnings) -> None:
    """Host the bidders and raw responders of ``spec``; answer commands on stdin until EOF.

    Commands (one line each, one JSON line back): ``stats`` (CPU seconds and counters),
    ``profile-on``, ``profile-off`` (dumps the accumulated profile to ``profile_out``).
    """
    profiler = new_profiler(spec["profile_clock"]) if spec.get("profile_out") else None
    async with contextlib.AsyncExitStack() as stack:
        nodes: list[AgentNode] = []
        stack.push_async_callback(stop_all, nodes)
        directory: Directory | None = None  # the first agent's, shared by the others
        for index, url in spec["agents"]:
            name = f"bidder-{index:02d}"
            config = NodeConfig(name=name, capabilities=capabilities_for("offline", ["echo"]),
                                heartbeat_interval=HEARTBEAT)
            node = AgentNode(Identity.generate(), config, OfflineBackend(),
                             BusConfig(servers=(url,), name=name), directory=directory)
            directory = node.directory
            nodes.append(node)
        async with asyncio.timeout(60):
            await asyncio.gather(*(node.start() for node in nodes))
            for index, url in spec["agents"]:
                nc = await raw_client(stack, url)

                async def bid(msg: Msg, nc: NatsClient = nc) -> None:
                    await nc.publish(msg.reply, RAW["bid"])

                async def result(msg: Msg, nc: NatsClient = nc) -> None:
                    await nc.publish(msg.reply, RAW["result"])

                await nc.subscribe(SG_SUBJECT, cb=bid)
                await nc.subscribe(f"{RR_SUBJECT}.{index}", cb=result)
                await nc.flush(timeout=5)
        print("READY", flush=True)

        def decisions(family: str, decision: str) -> int:
            """Bids, refusals, awards or declines of every hosted agent (node.metrics)."""
            return sum(count for node in nodes
                       for (_, seen), count in getattr(node.metrics, family).items()
                       if seen == decision)

        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while True:
            try:
                async with asyncio.timeout(4 * 3600):
                    line = await reader.readline()
            except TimeoutError:
                break
            command = line.decode().strip()
            if not command:
                break  # EOF: the parent is done (or gone)
            answer: dict[str, Any] = {}
            if command == "stats":
                usage = resource.getrusage(resource.RUSAGE_SELF)
                answer = {"cpu_s": time.process_time(), "sys_s": usage.ru_stime,
                          "bids": decisions("bids", "bid"),
                          "refusals": decisions("bids", "refuse"),
                          "awards": decisions("awards", "accept"),
                          "declines": decisions("awards", "decline"),
                          "completed": sum(node.status.tasks_completed for node in nodes),
                          "rejections": sum(sum(node.bus.rejections.values()) for node in nodes),
                          "warnings": dict(warnings.seen)}
            elif command == "profile-on" and profiler is not None:
                profiler.enable()
            elif command == "profile-off" and profiler is not None:
                profiler.disable()
                profiler.dump_stats(spec["profile_out"])
            print(json.dumps(answer), flush=True)


class Child:
    """One bidder process: its line protocol, and a bounded stop."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name, self.proc = name, proc

    @classmethod
    async def spawn(cls, name: str, spec: dict[str, Any]) -> Child:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--serve", json.dumps(spec),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        child = cls(name, proc)
        try:
            assert proc.stdout is not None
            async with asyncio.timeout(90):
                line = await proc.stdout.readline()
            if line.strip() != b"READY":
                raise RuntimeError(f"bidder process {name} failed to start: {line!r}")
        except BaseException:
            await child.stop()
            raise
        return child

    async def ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command.encode() + b"\n")
        async with asyncio.timeout(30):
            await self.proc.stdin.drain()
            line = await self.proc.stdout.readline()
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            async with asyncio.timeout(20):
                await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            async with asyncio.timeout(5):
                await self.proc.wait()


# -- one operation of each path -----------------------------------------------------------

def raw_op(nc: NatsClient, phases: Phases | None = None) -> Op:
    """Scatter-gather to the 10 raw responders, then one request/reply, as raw bytes.
    ``phases`` collects how long each part took (ns): ``sg``, ``rr``."""
    turn = itertools.count()
    clock = time.perf_counter_ns

    async def op() -> None:
        start = clock()
        inbox, got, enough = nc.new_inbox(), [], asyncio.Event()

        async def collect(msg: Msg) -> None:
            got.append(msg.data)
            if len(got) >= BIDDERS:
                enough.set()

        sub = await nc.subscribe(inbox, cb=collect)
        try:
            await nc.publish(SG_SUBJECT, RAW["cfp"], reply=inbox)
            async with asyncio.timeout(TIMEOUT):
                await enough.wait()
        finally:
            await sub.unsubscribe()
        gathered = clock()
        msg = await nc.request(f"{RR_SUBJECT}.{next(turn) % BIDDERS}", RAW["award"],
                               timeout=TIMEOUT)
        if msg.data != RAW["result"]:
            raise WrongAnswer(msg.data[:200])
        if phases is not None:
            phases["sg"].append(gathered - start)
            phases["rr"].append(clock() - gathered)
    return op


#: An auction's parts, between its progress events (and the start and end of ``run``).
AUCTION_PHASES = (("cfp", "start", "cfp"), ("bids", "cfp", "bids"), ("pick", "bids", "award"),
                  ("result", "award", "result"), ("finish", "result", "end"))
PHASE_TITLES = {"sg": "raw sg x10", "rr": "raw rr", "cfp": "open + sign/publish cfp",
                "bids": "bid window (10 answers)", "pick": "rank + verify the best bid",
                "result": "award -> result", "finish": "reject + close"}


def auction_op(auctioneer: Auctioneer, phases: Phases | None = None) -> Op:
    """One auction of an echo task among the 10; the result must echo this round's text.
    ``phases`` collects the parts of each auction (ns), from its progress events."""
    turn = itertools.count()
    clock = time.perf_counter_ns

    async def op() -> None:
        params = {"text": f"{TEXT} #{next(turn):07d}"}
        task = Task(capability="echo", parameters=params)
        marks = {"start": clock()}

        def progress(event: Progress) -> None:
            marks.setdefault(event.event, clock())

        outcome = await auctioneer.run(task, timeout=TIMEOUT,
                                       progress=None if phases is None else progress)
        marks["end"] = clock()
        result = outcome.result
        if (result.status is not TaskStatus.COMPLETED or result.task_id != task.task_id
                or result.result != {"echo": params}):
            raise WrongAnswer(f"{result.status}: {result.result or result.error}")
        if phases is not None and all(mark in marks for _, mark, _ in AUCTION_PHASES):
            for name, begin, end in AUCTION_PHASES:
                phases[name].append(marks[end] - marks[begin])
    return op


class Tally:
    """Latency samples and the rounds that failed, by kind."""

    def __init__(self) -> None:
        self.samples: list[int] = []
        self.misses: Counter[str] = Counter()  # timeouts and protocol errors, by type
        self.wrong = 0
        self.first_wrong: str | None = None

    async def time(self, op: Op) -> None:
        start = time.perf_counter_ns()
        try:
            await op()
        except WrongAnswer as exc:
            self.wrong += 1
            self.first_wrong = self.first_wrong or str(exc)
        except (TimeoutError, AgoraError, nats.errors.Error) as exc:
            self.misses[type(exc).__name__] += 1
        else:
            self.samples.append(time.perf_counter_ns() - start)

    def row(self) -> dict[str, Any]:
        return {"n": len(self.samples), "misses": sum(self.misses.values()),
                "miss_kinds": dict(self.misses), "wrong": self.wrong,
                "first_wrong": self.first_wrong, **latency(self.samples)}


# -- scenarios ------------------------------------------------------------------------------

async def sequential(ops: dict[str, Op], rounds: int, phases: Phases) -> dict[str, Any]:
    for op in ops.values():  # warm-up
        await until_answers(op)
        for _ in range(max(20, rounds // 10)):
            await op()
    for samples in phases.values():
        samples.clear()
    tallies = {side: Tally() for side in SIDES}
    started = time.monotonic()
    for block in range(BLOCKS):
        for side in SIDES if block % 2 == 0 else SIDES[::-1]:
            for _ in range(math.ceil(rounds / BLOCKS)):
                await tallies[side].time(ops[side])
    row: dict[str, Any] = {"rounds": rounds, "seconds": round(time.monotonic() - started, 1),
                           "target": SEQ_TARGET, **{side: tallies[side].row() for side in SIDES}}
    raw, auction = row["raw"], row["auction"]
    row["phases"] = {name: latency(samples) for name, samples in phases.items()}
    row["ratio_p50"] = round(auction["p50"] / raw["p50"], 3) if raw["p50"] else None
    row["ratio_p99"] = round(auction["p99"] / raw["p99"], 3) if raw["p99"] else None
    row["pass"] = (row["ratio_p50"] is not None and row["ratio_p50"] <= SEQ_TARGET
                   and not auction["misses"] and not auction["wrong"])
    return row


async def flood(op: Op, total: int, tally: Tally) -> tuple[int, float, bool]:
    """``total`` operations, IN_FLIGHT at a time; (operations started, wall s, cut short)."""
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await tally.time(op)

    started = time.perf_counter()
    try:
        async with asyncio.timeout(PHASE_BOUND):
            await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    except TimeoutError:
        return total - remaining, time.perf_counter() - started, True
    return total, time.perf_counter() - started, False


def server_cpu(servers: list[EmbeddedServer]) -> tuple[float, float]:
    """CPU seconds (user + system, and system alone) the nats-servers have used so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = system = 0.0
    for server in servers:
        if server.pid is None:
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{server.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
            system += int(fields[12]) / ticks
    return total, system


def machine_cpu() -> float:
    """CPU seconds every process on the machine has used (/proc/stat: all but idle, iowait)."""
    with contextlib.suppress(OSError, ValueError):
        ticks = [int(field) for field in Path("/proc/stat").read_text().split("\n", 1)[0]
                 .split()[1:9]]
        return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    return math.nan


async def cpu_now(children: list[Child], servers: list[EmbeddedServer]) -> dict[str, float]:
    """CPU seconds used so far by each of our processes, and by the whole machine."""
    stats = await asyncio.gather(*(child.ask("stats") for child in children))
    servers_total, servers_sys = server_cpu(servers)
    return {"initiator": time.process_time(),
            **{child.name: float(s["cpu_s"]) for child, s in zip(children, stats, strict=True)},
            "nats-servers": servers_total, "machine": machine_cpu(),
            "sys:initiator": resource.getrusage(resource.RUSAGE_SELF).ru_stime,
            **{f"sys:{child.name}": float(s["sys_s"])
               for child, s in zip(children, stats, strict=True)},
            "sys:nats-servers": servers_sys}


async def throughput(ops: dict[str, Op], total: int, bus: Bus, children: list[Child],
                     servers: list[EmbeddedServer], profiler: cProfile.Profile | None
                     ) -> dict[str, Any]:
    for op in ops.values():  # warm-up at full concurrency
        await flood(op, 2 * IN_FLIGHT, Tally())
    tallies = {side: Tally() for side in SIDES}
    done, wall = dict.fromkeys(SIDES, 0), dict.fromkeys(SIDES, 0.0)
    cut = dict.fromkeys(SIDES, False)
    cpu: dict[str, dict[str, float]] = {side: {} for side in SIDES}
    sent0, received0 = Counter(bus.sent), Counter(bus.received)
    child0 = await asyncio.gather(*(child.ask("stats") for child in children))
    for side in ("raw", "auction", "auction", "raw"):
        half = total // 2
        profiling = profiler is not None and side == "auction"
        if profiling:
            await asyncio.gather(*(child.ask("profile-on") for child in children))
        before = await cpu_now(children, servers)
        if profiling and profiler is not None:
            profiler.enable()
        started, seconds, short = await flood(ops[side], half, tallies[side])
        if profiling and profiler is not None:
            profiler.disable()
        after = await cpu_now(children, servers)
        if profiling:
            await asyncio.gather(*(child.ask("profile-off") for child in children))
        done[side] += started
        wall[side] += seconds
        cut[side] = cut[side] or short
        for name in before:
            cpu[side][name] = cpu[side].get(name, 0.0) + after[name] - before[name]
    child1 = await asyncio.gather(*(child.ask("stats") for child in children))
    auctions = max(1, done["auction"])
    row: dict[str, Any] = {"ops": total, "in_flight": IN_FLIGHT, "target": TPUT_TARGET,
                           "profiled": profiler is not None}
    for side in SIDES:
        ops_done = max(1, done[side])
        machine = cpu[side].pop("machine")
        kernel = {name[4:]: cpu[side].pop(name) for name in list(cpu[side])
                  if name.startswith("sys:")}
        # Other sessions' processes share the 2 cores: what they took is reported, not ours.
        others = max(0.0, machine - sum(cpu[side].values()))
        row[side] = {"others_cores": round(others / wall[side], 2),
                     "machine_cores": round(machine / wall[side], 2),
                     **tallies[side].row(), "started": done[side],
                     "seconds": round(wall[side], 2), "cut_short": cut[side],
                     "per_s": round(len(tallies[side].samples) / wall[side], 1),
                     "cpu_s": {name: round(value, 3) for name, value in cpu[side].items()},
                     "cpu_s_total": round(sum(cpu[side].values()), 3),
                     "sys_pct": {name: round(100 * value / cpu[side][name], 1)
                                 if cpu[side][name] else 0.0 for name, value in kernel.items()},
                     "cpu_us_per_op": {name: round(1e6 * value / ops_done, 1)
                                       for name, value in cpu[side].items()}}
        row[side]["cpu_us_per_op_total"] = round(1e6 * row[side]["cpu_s_total"] / ops_done, 1)
        row[side]["cpu_cores"] = round(row[side]["cpu_s_total"] / wall[side], 2)
    counters = ("bids", "refusals", "awards", "declines", "completed", "rejections")
    row["bidders_per_auction"] = {
        key: round(sum(b[key] - a[key] for a, b in zip(child0, child1, strict=True))
                   / auctions, 3) for key in counters}
    # Measured halves only: the seq phase and warm-ups ran before sent0/received0.
    row["initiator_sent_per_auction"] = {
        kind: round((count - sent0[kind]) / auctions, 3)
        for kind, count in sorted(bus.sent.items()) if count > sent0[kind]}
    row["initiator_received_per_auction"] = {
        kind: round((count - received0[kind]) / auctions, 3)
        for kind, count in sorted(bus.received.items()) if count > received0[kind]}
    row["pass"] = (row["auction"]["per_s"] >= TPUT_TARGET and not row["auction"]["wrong"])
    return row


# -- profiles ------------------------------------------------------------------------------

def new_profiler(clock: str) -> cProfile.Profile:
    """cProfile timing by wall clock (its default), or by this thread's CPU time.

    On a saturated 2-core machine a wall-clock profile charges the time a process waits
    for a core to whatever it was doing (often a socket write). CPU time does not, but
    reading it is a system call (~0.4 us, against ~0.08 us) on every call and return, which
    triples the profiled time and inflates small functions (len, isinstance): wall is the
    better default."""
    if clock == "cpu":
        return cProfile.Profile(time.thread_time_ns, 1e-9)
    return cProfile.Profile()


def _where(file: str, line: int, name: str) -> str:
    if file == "~":
        return name
    for marker in ("site-packages/", "src/", "lib/python3.11/"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    return f"{file}:{line}({name})"


def profile_summary(stats: pstats.Stats, auctions: int) -> dict[str, Any]:
    """Top functions by own time, and the crypto calls, per auction."""
    table: dict[tuple[str, int, str], tuple[int, int, float, float, Any]] = getattr(
        stats, "stats", {})
    total = sum(entry[2] for entry in table.values())
    rows = sorted(table.items(), key=lambda item: item[1][2], reverse=True)[:TOP]
    top = [{"function": _where(*key), "ncalls_per_auction": round(nc / auctions, 2),
            "tottime_s": round(tt, 3), "tottime_pct": round(100 * tt / total, 1) if total else 0,
            "tottime_us_per_auction": round(1e6 * tt / auctions, 1),
            "cumtime_us_per_auction": round(1e6 * ct / auctions, 1)}
           for key, (_cc, nc, tt, ct, _callers) in rows]
    crypto: dict[str, dict[str, float]] = {}
    for (file, _line, name), (_cc, nc, _tt, ct, _callers) in table.items():
        if "nacl/bindings" in file and name in ("crypto_sign", "crypto_sign_open"):
            # The binding's cumulative time: the libsodium call and its buffer handling.
            crypto[name] = {"calls_per_auction": round(nc / auctions, 2),
                            "us_per_call": round(1e6 * ct / nc, 1) if nc else 0.0,
                            "us_per_auction": round(1e6 * ct / auctions, 1)}
    return {"profiled_s": round(total, 3), "us_per_auction": round(1e6 * total / auctions, 1),
            "top": top, "crypto": crypto}


# -- the run ---------------------------------------------------------------------------------

async def run(args: argparse.Namespace, warnings: Warnings) -> dict[str, Any]:
    rounds = args.rounds or (200 if args.quick else 1000)
    total = args.auctions or (600 if args.quick else 3000)
    base = Path(tempfile.mkdtemp(prefix="agoramesh-bench-auction-"))
    profiles = args.profile_dir or base
    profiles.mkdir(parents=True, exist_ok=True)
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(shutil.rmtree, base, True)  # runs last
        mesh = await Mesh.launch(base / "mesh", seeds=SEEDS)
        stack.push_async_callback(mesh.stop, 2.0)
        urls = [seed.client_url for seed in mesh.seeds]
        specs = [{"agents": [[g, urls[g % SEEDS]] for g in range(c * PER_CHILD,
                                                                  (c + 1) * PER_CHILD)],
                  "profile_out": str(profiles / f"bidders-{c + 1}.prof") if args.profile else None,
                  "profile_clock": args.profile_clock}
                 for c in range(CHILDREN)]
        spawned = await asyncio.gather(*(Child.spawn(f"bidders-{c + 1}", spec)
                                         for c, spec in enumerate(specs)),
                                       return_exceptions=True)
        children = [child for child in spawned if isinstance(child, Child)]
        for child in children:
            stack.push_async_callback(child.stop)
        for failure in spawned:
            if isinstance(failure, BaseException):
                raise failure
        bus = await Bus.connect(Identity.generate(),
                                BusConfig(servers=(urls[-1],), name="initiator"))
        stack.push_async_callback(bus.close, 1.0)
        directory = Directory()
        async with asyncio.timeout(30):
            while len(directory.capable("echo")) < BIDDERS:
                await discover(bus, directory, timeout=1.0, expected=BIDDERS)
        nc = await raw_client(stack, urls[-1])
        auctioneer = Auctioneer(bus, directory)
        phases: Phases = {name: [] for name in PHASE_TITLES}
        seq = await sequential({"raw": raw_op(nc, phases),
                                "auction": auction_op(auctioneer, phases)}, rounds, phases)
        ops = {"raw": raw_op(nc), "auction": auction_op(auctioneer)}
        profiler = new_profiler(args.profile_clock) if args.profile else None
        tput = await throughput(ops, total, bus, children, list(mesh.seeds), profiler)
        finals = await asyncio.gather(*(child.ask("stats") for child in children))
        result: dict[str, Any] = {
            "loop": "uvloop", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seeds": SEEDS, "bidders": BIDDERS, "processes": CHILDREN, "blocks": BLOCKS,
            "bytes": {name: {"body": len(RAW[name]),
                             "envelope": len(seal(Identity.generate(), type=name,
                                                  subject="agora.cfp.echo", body=body,
                                                  ttl_ms=2000))}
                      for name, body in BODIES.items()},
            "seq": seq, "tput": tput,
            "warnings": {"initiator": dict(warnings.seen),
                         **{child.name: final["warnings"]
                            for child, final in zip(children, finals, strict=True)}},
            "rejections": {"initiator": sum(bus.rejections.values()),
                           **{child.name: final["rejections"]
                              for child, final in zip(children, finals, strict=True)}},
        }
        if profiler is not None:
            await asyncio.gather(*(child.stop() for child in children))  # profiles written
            auctions = max(1, tput["auction"]["started"])
            profiler.dump_stats(profiles / "initiator.prof")
            result["profile"] = {
                "initiator": profile_summary(pstats.Stats(profiler), auctions),
                "bidders-1": profile_summary(pstats.Stats(str(profiles / "bidders-1.prof")),
                                             auctions)}
            if args.profile_dir:
                result["profile_dir"] = str(args.profile_dir)
        return result
    raise AssertionError("unreachable")  # pragma: no cover - the stack does not swallow


# -- report ---------------------------------------------------------------------------------

def report(result: dict[str, Any]) -> None:
    seq, tput, sizes = result["seq"], result["tput"], result["bytes"]
    print(f"\n{result['seeds']}-seed mesh; {result['bidders']} bidders (offline echo "
          f"AgentNodes) in {result['processes']} processes; {result['loop']}")
    print("bodies / signed envelopes, bytes: " + ", ".join(
        f"{name} {size['body']}/{size['envelope']}" for name, size in sizes.items()))
    print(f"\nseq: {seq['rounds']} rounds per path in {result['blocks']} alternating blocks; "
          f"{seq['seconds']} s measured\n")
    titles = {"raw": "raw: sg x10 (cfp -> 10 bids) + rr (award -> result)",
              "auction": "auction: Auctioneer.run, 10 bidders, closes at 10"}
    print(f"{'path':<54} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} {'miss':>4} {'wrong':>5}")
    for side in SIDES:
        r = seq[side]
        print(f"{titles[side]:<54} {r['p50']:7.3f} {r['p90']:7.3f} {r['p99']:7.3f} "
              f"{r['misses']:4d} {r['wrong']:5d}")
    print("\nparts of a round, p50 / p90 ms:")
    for name, title in PHASE_TITLES.items():
        part = seq["phases"][name]
        print(f"  {title:<30} {part['p50']:7.3f} {part['p90']:7.3f}")
    print(f"\ntput: {tput['ops']} operations per path, {tput['in_flight']} in flight, halves "
          f"raw/auction/auction/raw{' (auction halves under cProfile)' if tput['profiled'] else ''}"
          f"\n")
    names = list(tput["auction"]["cpu_s"])
    print(f"{'path':<8} {'ops/s':>7} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} {'miss':>4} "
          f"{'wrong':>5} {'cores':>5} {'other':>5}  CPU us/op: "
          + " ".join(f"{n:>12}" for n in names) + f" {'total':>7}")
    for side in SIDES:
        r = tput[side]
        print(f"{side:<8} {r['per_s']:7.0f} {r['p50']:7.2f} {r['p90']:7.2f} {r['p99']:7.2f} "
              f"{r['misses']:4d} {r['wrong']:5d} {r['cpu_cores']:5.2f} {r['others_cores']:5.2f}"
              f"  {'':10}" + " ".join(f"{r['cpu_us_per_op'][n]:12.0f}" for n in names)
              + f" {r['cpu_us_per_op_total']:7.0f}" + ("  (cut short)" if r["cut_short"] else ""))
    print("  (cores: CPU of our processes / wall; other: the rest of the machine meanwhile)")
    for side in SIDES:
        print(f"  {side}: share of that CPU in the kernel (sys): " + ", ".join(
            f"{name} {pct:.0f} %" for name, pct in tput[side]["sys_pct"].items()))
    print(f"\n  per auction, initiator sent      {tput['initiator_sent_per_auction']}")
    print(f"  per auction, initiator received  {tput['initiator_received_per_auction']}")
    print(f"  per auction, bidder side         {tput['bidders_per_auction']}")
    print(f"  envelope rejections              {result['rejections']}")
    print(f"  runtime log warnings             "
          f"{ {name: sum(seen.values()) for name, seen in result['warnings'].items()} }")
    for name, prof in result.get("profile", {}).items():
        print(f"\nprofile ({name}, auction halves): {prof['us_per_auction']:.0f} us of profiled "
              f"Python per auction; crypto {prof['crypto']}")
        print(f"  {'own us/auc':>10} {'%':>5} {'calls/auc':>9} {'cum us/auc':>10}  function "
              f"(wall clock; a coroutine's calls count its resumptions)")
        for row in prof["top"]:
            print(f"  {row['tottime_us_per_auction']:10.1f} {row['tottime_pct']:5.1f} "
                  f"{row['ncalls_per_auction']:9.2f} {row['cumtime_us_per_auction']:10.1f}  "
                  f"{row['function']}")
    print()
    for side in SIDES:
        if seq[side]["wrong"] or tput[side]["wrong"]:
            first = seq[side]["first_wrong"] or tput[side]["first_wrong"]
            print(f"WRONG ANSWERS on the {side} path: seq {seq[side]['wrong']}, tput "
                  f"{tput[side]['wrong']}; first: {first}")
    print(f"{'PASS' if seq['pass'] else 'FAIL'}  seq: p50 auction/raw = {seq['ratio_p50']:.2f} "
          f"(target <= {seq['target']:.1f}); p99 auction/raw = {seq['ratio_p99']:.2f}")
    print(f"{'PASS' if tput['pass'] else 'FAIL'}  tput: {tput['auction']['per_s']:.0f} auctions/s "
          f"with {tput['in_flight']} in flight (target >= {tput['target']:.0f}); raw "
          f"sg10+rr {tput['raw']['per_s']:.0f}/s"
          + (" — profiled, run without --profile for the figure" if tput["profiled"] else ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 seq rounds, 600 tput ops")
    parser.add_argument("--rounds", type=int, help="seq rounds per path (1000)")
    parser.add_argument("--auctions", type=int, help="tput operations per path (3000)")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile the auction throughput halves (initiator, bidders)")
    parser.add_argument("--profile-clock", choices=("wall", "cpu"), default="wall",
                        help="what the profile's times measure (default: wall clock)")
    parser.add_argument("--profile-dir", type=Path,
                        help="keep initiator.prof and bidders-N.prof here (implies --profile)")
    parser.add_argument("--json", type=Path, help="write the results to this file")
    parser.add_argument("--serve", metavar="SPEC", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.profile = args.profile or args.profile_dir is not None
    warnings = count_warnings()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        if args.serve:
            runner.run(serve(json.loads(args.serve), warnings))
            return 0
        result = runner.run(run(args, warnings))
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    wrong = sum(result[phase][side]["wrong"] for phase in ("seq", "tput") for side in SIDES)
    return 1 if wrong else 0  # a FAIL verdict is a finding; a wrong answer is a bug


if __name__ == "__main__":
    sys.exit(main())
