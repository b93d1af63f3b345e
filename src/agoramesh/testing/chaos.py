"""A chaos harness: a mesh of real processes, durable jobs through it, faults, work counted.

One run (:func:`run_chaos`) starts, all on loopback and each in its own process:

- ``agoramesh up --no-agents``: 3 seeds running one JetStream cluster;
- ``workers`` ``agoramesh node --type command`` agents offering ``chaos.work``,
  leaves of all three seeds, taking no jobs themselves (``--max-jobs 0``): they
  bid and execute. Their program (:mod:`agoramesh.testing.chaos_worker`) logs
  every start and end of an execution in one shared file;
- ``drivers`` offline nodes offering only ``echo`` that take the jobs from the
  stream and run the auctions (the "auctioneers").

It then submits ``tasks`` durable jobs at ``rate`` per second from a client
connected to the seeds, injects the :class:`Fault` list (SIGKILL and restart,
SIGSTOP then SIGCONT, of workers, drivers or seeds), waits for every result
(bounded by ``drain``) and reports, counted rather than assumed:

- **lost**: submitted task ids with no stored result at the end;
- **second results**: live results (``agora.result.<id>``) beyond the first;
- **executions**: completed runs per task id, from the workers' log, and which
  re-executions a fault explains (a worker killed or frozen while it ran the task).

Every process is stopped by PID at the end, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from nats.aio.msg import Msg

from agoramesh.bus.bus import Bus
from agoramesh.bus.identity import Identity
from agoramesh.config import BusConfig, JobsConfig
from agoramesh.errors import AgoraError
from agoramesh.protocols.jobs.jobs import Jobs
from agoramesh.testing import chaos_worker
from agoramesh.testing.processes import AGORAMESH, LineReader, alive

__all__ = ("CAPABILITY", "ChaosReport", "ChaosSettings", "Fault", "run_chaos")

#: The capability the chaos workers offer.
CAPABILITY = "chaos.work"
_READY_TIMEOUT = 30.0


@dataclass(frozen=True, kw_only=True)
class Fault:
    """At ``at`` seconds into the submissions, ``action`` (kill | freeze) one ``target``
    (worker | driver | seed, by ``index``); a killed worker or driver is started again
    ``duration`` seconds later (seeds stay dead), a frozen one resumes after it."""

    at: float
    action: str
    target: str
    index: int = 0
    duration: float = 0.5

    def __str__(self) -> str:
        return f"{self.at:g}s {self.action} {self.target}{self.index} ({self.duration:g}s)"


@dataclass(frozen=True, kw_only=True)
class ChaosSettings:
    tasks: int = 300
    workers: int = 3
    drivers: int = 2
    rate: float = 40.0  # submissions per second
    seconds: tuple[float, float] = (0.05, 0.2)  # how long each execution takes (uniform)
    worker_slots: int = 4  # concurrent executions per worker
    ack_wait: float = 3.0  # seconds before a silent driver's job goes to another
    drain: float = 90.0  # bound on waiting for the last results
    seed: int = 1  # of the random task durations


@dataclass
class ChaosReport:
    """What happened, counted."""

    submitted: list[str]
    stored: dict[str, dict[str, Any]]
    live: Counter[str]
    started: Counter[str]
    executions: Counter[str]
    executors: dict[str, list[int]]  # task id -> pids of the programs that completed it
    explained: set[str]  # re-executed task ids a kill or freeze of their executor explains
    faults: list[str]
    seconds: float
    stderr: dict[str, str] = field(default_factory=dict)
    queue: dict[str, Any] = field(default_factory=dict)  # the job consumer at the end
    runs: list[_Execution] = field(default_factory=list)  # every execution logged
    agents: dict[int, str] = field(default_factory=dict)  # node pid -> "name agent-id"
    fault_windows: dict[int, list[tuple[float, float]]] = field(default_factory=dict)
    began: float = 0.0  # Unix time of the first submission

    @property
    def lost(self) -> list[str]:
        return [task_id for task_id in self.submitted if task_id not in self.stored]

    @property
    def second_results(self) -> dict[str, int]:
        return {task_id: count - 1 for task_id, count in self.live.items() if count > 1}

    @property
    def reexecuted(self) -> dict[str, int]:
        """Task ids completed more than once: how many extra times."""
        return {task_id: count - 1 for task_id, count in self.executions.items() if count > 1}

    @property
    def unexplained(self) -> dict[str, int]:
        return {task_id: n for task_id, n in self.reexecuted.items()
                if task_id not in self.explained}

    @property
    def failed(self) -> dict[str, str]:
        return {task_id: str((record.get("error") or {}).get("type"))
                for task_id, record in self.stored.items() if record.get("status") != "COMPLETED"}

    def story(self, task_id: str) -> str:
        """One task's runs, stored result and the faults of its runners, in seconds from
        the first submission: the post-mortem of a task the counts single out."""
        def at(moment: float | None) -> str:
            return "cut" if moment is None else f"{moment - self.began:.2f}"

        parts = []
        for run in (run for run in self.runs if run.task_id == task_id):
            windows = ", ".join(f"{at(began)}-{at(ended)}"
                                for began, ended in self.fault_windows.get(run.node, ()))
            parts.append(f"ran on {self.agents.get(run.node, run.node)} "
                         f"{at(run.start)}-{at(run.end)}"
                         + (f" (faulted {windows})" if windows else ""))
        record = self.stored.get(task_id)
        if record is None:
            parts.append("no result stored")
        else:
            parts.append(f"stored {record.get('status')} from {record.get('agent_id')} "
                         f"at {at(float(record.get('stored_at', 0)))}")
        return "; ".join(parts)

    def summary(self) -> str:
        return (f"{len(self.submitted)} submitted, {len(self.stored)} results stored, "
                f"lost {len(self.lost)}, second results {sum(self.second_results.values())}, "
                f"failed {len(self.failed)}, re-executions {sum(self.reexecuted.values())} "
                f"({sum(self.unexplained.values())} unexplained) in {self.seconds:.1f}s; "
                f"faults: {'; '.join(self.faults) or 'none'}; job queue at the end: "
                f"{self.queue}")


class _Process:
    """A CLI process that prints one JSON ready line; stderr goes to a file."""

    def __init__(self, name: str, args: Sequence[str], env: dict[str, str],
                 stderr: Path) -> None:
        self.name, self.args, self.env, self.stderr_path = name, list(args), env, stderr
        self.process: subprocess.Popen[bytes] | None = None
        self.ready: dict[str, Any] = {}

    def start(self) -> None:
        """Start it and read its ready line (blocking, bounded)."""
        err: IO[bytes] = self.stderr_path.open("ab")
        try:
            self.process = subprocess.Popen([*AGORAMESH, *self.args], stdout=subprocess.PIPE,
                                            stderr=err, env={**os.environ, **self.env})
        finally:
            err.close()
        assert self.process.stdout is not None
        try:
            line = LineReader(self.process.stdout).readline(time.monotonic() + _READY_TIMEOUT)
        except TimeoutError:
            line = ""
        if not line:
            self.reap()
            raise AssertionError(f"{self.name} was not ready: {self.stderr_tail()}")
        self.ready = json.loads(line)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def pids(self) -> list[int]:
        """Its own pid and those of the servers it started."""
        found = [self.pid] if self.process is not None else []
        if "pid" in self.ready:
            found.append(int(self.ready["pid"]))
        for server in self.ready.get("servers", []):
            found.append(int(server["pid"]))
        return found

    def send(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)

    def reap(self, sig: int = signal.SIGKILL) -> None:
        """Stop it (``sig``, then SIGKILL after 10 s) and every server it started."""
        process = self.process
        if process is None:
            return
        servers = [pid for pid in self.pids() if pid != process.pid]
        if process.poll() is None:
            self.send(signal.SIGCONT)
            process.send_signal(sig)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()
        for pid in servers:
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def stderr_tail(self, chars: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return self.stderr_path.read_text(errors="replace")[-chars:]
        return ""


class _Mesh:
    """The processes of one chaos run."""

    def __init__(self, base: Path, settings: ChaosSettings) -> None:
        self.base, self.settings = base, settings
        self.log = base / "executions.log"
        #: Unix-time windows in which a node process was killed or frozen, by its pid.
        self.faulted: dict[int, list[tuple[float, float]]] = defaultdict(list)
        #: The agent id of every worker node process there was, by its pid.
        self.agents: dict[int, str] = {}
        #: What happened when (Unix time), written to timeline.json for a post-mortem.
        self.timeline: list[dict[str, Any]] = []
        self.up = _Process("up", ["up", "--json", "--no-agents", "--seeds", "3", "--dir",
                                  str(base / "mesh"), "--jobs-ack-wait",
                                  f"{settings.ack_wait:g}"], {}, base / "up.err")
        self.workers: list[_Process] = []
        self.drivers: list[_Process] = []

    def node(self, kind: str, index: int) -> _Process:
        """Worker or driver ``index``, ready to start (again)."""
        if kind == "worker":
            # Run as a file, not a module: importing agoramesh would cost each run 0.4 s.
            program = f"{sys.executable} -S {chaos_worker.__file__} {self.log}"
            extra = ["--type", "command", "--command", program, "--capability", CAPABILITY,
                     "--max-jobs", "0", "--max-tasks", str(self.settings.worker_slots)]
        else:
            extra = ["--type", "offline", "--capability", "echo", "--max-jobs", "32"]
        return self._node(kind, index, extra)

    def _node(self, kind: str, index: int, extra: Sequence[str]) -> _Process:
        name = f"{kind}{index}"
        home = self.base / name
        home.mkdir(parents=True, exist_ok=True)
        leaves = [arg for server in self.up.ready["servers"] if server["role"] == "seed"
                  for arg in ("--leaf", server["leaf"])]
        trace = (["--trajectory", str(home / f"trajectory-{time.time():.3f}.jsonl")]
                 if os.environ.get("AGORAMESH_CHAOS_TRACE") else [])
        return _Process(name, ["node", "--json", "--name", name, "--heartbeat", "0.25",
                               "--log-level", "info", *leaves, *trace, *extra],
                        {"AGORAMESH_HOME": str(home)}, self.base / f"{name}.err")

    def start(self) -> None:
        self.up.start()
        self.workers = [self.node("worker", i) for i in range(self.settings.workers)]
        self.drivers = [self.node("driver", i) for i in range(self.settings.drivers)]
        for process in (*self.workers, *self.drivers):
            process.start()
            self.agents[process.pid] = f"{process.name} {process.ready.get('id')}"

    @property
    def seed_urls(self) -> list[str]:
        return [server["client"] for server in self.up.ready["servers"]
                if server["role"] == "seed"]

    def seed_pid(self, index: int) -> int:
        seeds = [server for server in self.up.ready["servers"] if server["role"] == "seed"]
        return int(seeds[index]["pid"])

    def reap(self) -> None:
        for process in (*self.drivers, *self.workers):
            process.reap()
        self.up.reap(signal.SIGTERM)


async def _inject(mesh: _Mesh, fault: Fault, started: float, notes: list[str]) -> None:
    await asyncio.sleep(max(0.0, started + fault.at - time.monotonic()))
    now, began = time.monotonic() - started, time.time()
    if fault.target == "seed":
        pid = mesh.seed_pid(fault.index)
        if fault.action == "kill":
            os.kill(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGSTOP)
            await asyncio.sleep(fault.duration)
            os.kill(pid, signal.SIGCONT)
        notes.append(f"{now:.1f}s {fault.action} seed{fault.index}")
        mesh.timeline.append({"at": began, "fault": str(fault), "pid": pid})
        return
    group = mesh.workers if fault.target == "worker" else mesh.drivers
    process = group[fault.index]
    if fault.action == "kill":
        process.send(signal.SIGKILL)
        mesh.faulted[process.pid].append((began, time.time()))
        await asyncio.to_thread(process.reap)  # its embedded leaf server too
        await asyncio.sleep(fault.duration)
        replacement = mesh.node(fault.target, fault.index)
        await asyncio.to_thread(replacement.start)
        mesh.agents[replacement.pid] = f"{replacement.name} {replacement.ready.get('id')}"
        group[fault.index] = replacement
    else:
        process.send(signal.SIGSTOP)
        await asyncio.sleep(fault.duration)
        process.send(signal.SIGCONT)
        mesh.faulted[process.pid].append((began, time.time()))
    notes.append(f"{now:.1f}s {fault.action} {fault.target}{fault.index} "
                 f"({fault.duration:g}s)")
    mesh.timeline.append({"at": began, "fault": str(fault), "pid": process.pid,
                          "agent": mesh.agents.get(process.pid)})


@dataclass(frozen=True, slots=True)
class _Execution:
    task_id: str
    pid: int
    node: int  # the pid of the node that ran it
    start: float
    end: float | None  # None: cut short


def _read_log(path: Path) -> list[_Execution]:
    starts: dict[tuple[str, int], tuple[int, float]] = {}
    executions: list[_Execution] = []
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text().splitlines():
            kind, task_id, pid, node, at = line.split()
            key = (task_id, int(pid))
            if kind == "start":
                starts[key] = (int(node), float(at))
            elif key in starts:
                node_pid, began = starts.pop(key)
                executions.append(_Execution(task_id, int(pid), node_pid, began, float(at)))
    executions += [_Execution(task_id, pid, node, began, None)
                   for (task_id, pid), (node, began) in starts.items()]
    return executions


def _explained(executions: list[_Execution], faulted: dict[int, list[tuple[float, float]]],
               agents: dict[int, str], stored: dict[str, dict[str, Any]]) -> set[str]:
    """Task ids run again because a node running one was killed or frozen before its result
    was stored: a fault of that node after the run started, unless the stored result is
    that node's own and was stored before the fault."""
    explained: set[str] = set()
    for run in executions:
        record = stored.get(run.task_id, {})
        ours = record.get("agent_id") == agents.get(run.node, "").partition(" ")[2]
        for began, ended in faulted.get(run.node, ()):
            if ended >= run.start and not (ours and float(record.get("stored_at", 0)) < began):
                explained.add(run.task_id)
    return explained


async def run_chaos(base: Path, settings: ChaosSettings, faults: Sequence[Fault] = ()
                    ) -> ChaosReport:
    """One chaos run in ``base`` (see the module docstring); every process is reaped."""
    mesh = _Mesh(base, settings)
    notes: list[str] = []
    try:
        await asyncio.to_thread(mesh.start)
        report = await _drive(mesh, settings, faults, notes)
        executions = _read_log(mesh.log)
        for run in executions:
            report.started[run.task_id] += 1
            if run.end is not None:
                report.executions[run.task_id] += 1
                report.executors.setdefault(run.task_id, []).append(run.pid)
        report.explained = _explained(executions, mesh.faulted, mesh.agents, report.stored)
        report.runs, report.agents = executions, dict(mesh.agents)
        report.fault_windows = {pid: list(windows) for pid, windows in mesh.faulted.items()}
        (base / "timeline.json").write_text(json.dumps(
            {"processes": {str(pid): agent for pid, agent in mesh.agents.items()},
             "events": mesh.timeline}, indent=1))
        report.stderr = {process.name: process.stderr_tail(800)
                         for process in (mesh.up, *mesh.workers, *mesh.drivers)}
        return report
    finally:
        await asyncio.to_thread(mesh.reap)


async def _drive(mesh: _Mesh, settings: ChaosSettings, faults: Sequence[Fault],
                 notes: list[str]) -> ChaosReport:
    rng = random.Random(settings.seed)
    live: Counter[str] = Counter()
    config = BusConfig(servers=tuple(mesh.seed_urls), name="chaos-client",
                       connect_timeout=5.0, request_timeout=5.0)
    async with Bus(Identity.generate(), config) as bus:

        async def heard(msg: Msg) -> None:
            live[msg.subject.rpartition(".")[2]] += 1

        await bus.nats.subscribe(bus.subjects.result(">"), cb=heard)
        await bus.flush()
        jobs = Jobs(bus, JobsConfig(ack_wait=settings.ack_wait))
        await jobs.js.ensure(timeout=20)
        submitted: list[str] = []
        started = time.monotonic()
        first = time.time()
        mesh.timeline.append({"at": first, "event": "first submission"})
        injections = [asyncio.ensure_future(_inject(mesh, fault, started, notes))
                      for fault in faults]
        pending: set[asyncio.Task[Any]] = set()
        try:
            for n in range(settings.tasks):
                await asyncio.sleep(max(0.0, started + n / settings.rate - time.monotonic()))
                task_id = f"chaos-{n:05d}"
                submitted.append(task_id)
                pending.add(asyncio.ensure_future(jobs.submit(
                    CAPABILITY, {"n": n, "seconds": round(rng.uniform(*settings.seconds), 3)},
                    task_id=task_id, timeout=30)))
            done, late = await asyncio.wait(pending, timeout=60) if pending else (set(), set())
            for task in done:
                if task.exception() is not None:
                    notes.append(f"submit failed: {task.exception()!r}")
            if late:
                notes.append(f"{len(late)} submits unanswered after 60s")
            # A fault that could not be injected makes the run's figures meaningless.
            for outcome in await asyncio.gather(*injections, return_exceptions=True):
                if isinstance(outcome, BaseException):
                    raise outcome
        finally:
            for task in (*pending, *injections):
                task.cancel()
            await asyncio.gather(*pending, *injections, return_exceptions=True)
        stored = await _collect(jobs, submitted, started + settings.drain)
        seconds = time.monotonic() - started
        await asyncio.sleep(0.5)  # a late second live result would arrive by now
        queue: dict[str, Any] = {}
        with contextlib.suppress(AgoraError):
            info = await jobs.js.consumer_info()
            queue = {key: info.get(key) for key in ("num_pending", "num_ack_pending",
                                                     "num_redelivered", "num_waiting")}
    return ChaosReport(submitted=submitted, stored=stored, live=live, started=Counter(),
                       executions=Counter(), executors={}, explained=set(), faults=notes,
                       seconds=seconds, queue=queue, began=first)


async def _collect(jobs: Jobs, task_ids: list[str], deadline: float) -> dict[str, dict[str, Any]]:
    """The stored result of every task id, read until all are there or ``deadline``."""
    stored: dict[str, dict[str, Any]] = {}
    while True:
        for task_id in task_ids:
            if task_id in stored:
                continue
            with contextlib.suppress(AgoraError):
                data = await jobs.js.result(task_id)
                if data is not None:
                    stored[task_id] = json.loads(data)
        if len(stored) == len(task_ids) or time.monotonic() >= deadline:
            return stored
        await asyncio.sleep(0.5)
