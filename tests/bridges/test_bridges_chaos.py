"""Tasks handed to the mesh through its bridges are not lost when the agents doing them die.

A mesh of processes: an offline seed that does no work here, three ``command`` workers
offering ``chaos.work`` (:mod:`agoramesh.testing.chaos_worker`: each execution's start and
end logged in one shared file, the parent pid naming the node), and the bridge under
test, ``agoramesh a2a`` or ``agoramesh mcp`` (stdio), each driven by its protocol's
official client. While the tasks run, one worker is SIGKILLed and started again and
another frozen (SIGSTOP) for longer than the lease allows, then thawed (SIGCONT). What
is counted, not assumed: tasks the client got no completed answer for (lost), answers
with another task's ``n`` (wrong), and executions per task from the log; a task run more
than once must have been on a faulted worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from a2a.client import A2ACardResolver, ClientConfig, ClientFactory
from a2a.types import Message, Part, Role, SendMessageRequest, TaskState
from mcp_support import stdio_client
from test_a2a_cli import BridgeProcess

from agoramesh.nodes.backends.a2a import output_of, to_value
from agoramesh.testing import NodeProcess
from agoramesh.testing.chaos import CAPABILITY
from agoramesh.testing.chaos_worker import __file__ as WORKER

pytestmark = [pytest.mark.e2e, pytest.mark.chaos, pytest.mark.timeout(180)]

TASKS = 36
AT_ONCE = 6
SECONDS = 0.4  # each execution
KILL_AT, FREEZE_AT, THAW_AT = 0.8, 1.6, 5.6  # frozen 4 s: past 3 missed 1-s leases


@dataclass
class Run:
    """What one chaos run saw: answers by n, and the faults' pids and windows."""

    log: Path
    answers: dict[int, Any] = field(default_factory=dict)
    task_ids: dict[int, str] = field(default_factory=dict)
    faulted: dict[int, tuple[float, float]] = field(default_factory=dict)  # pid -> window
    notes: list[str] = field(default_factory=list)

    def executions(self) -> tuple[Counter[str], dict[str, set[int]]]:
        """Completed runs per task id, and the node pids that started each."""
        ended: Counter[str] = Counter()
        nodes: dict[str, set[int]] = defaultdict(set)
        for line in self.log.read_text().splitlines():
            kind, task_id, _, node, _ = line.split()
            nodes[task_id].add(int(node))
            ended[task_id] += kind == "end"
        return ended, nodes


class Workers:
    """The three workers, leaves of the seed; started again after a kill."""

    def __init__(self, base: Path, seed: NodeProcess) -> None:
        self.base, self.seed = base, seed
        self.log = base / "executions.log"
        self.nodes = [self.start(i) for i in range(3)]

    def start(self, index: int) -> NodeProcess:
        program = f"{sys.executable} -S {WORKER} {self.log}"
        home = self.base / f"worker{index}-{time.monotonic_ns()}"
        return NodeProcess(home, "--name", f"worker{index}", "--type", "command",
                           "--command", program, "--capability", CAPABILITY,
                           "--max-jobs", "0", "--max-tasks", "4", "--heartbeat", "0.25",
                           "--leaf", self.seed.ready["leaf"])

    def reap(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(ProcessLookupError):
                node.process.send_signal(signal.SIGCONT)
            node.reap()


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[tuple[NodeProcess, Workers]]:
    seed = await asyncio.to_thread(NodeProcess, tmp_path / "seed", "--name", "seed",
                                   "--capability", "echo", "--heartbeat", "0.25")
    workers: Workers | None = None
    try:
        workers = await asyncio.to_thread(Workers, tmp_path, seed)
        yield seed, workers
    finally:
        if workers is not None:
            workers.reap()
        seed.reap()


async def faults(workers: Workers, run: Run, started: float) -> None:
    """Kill worker 0 (and start it again), freeze worker 1 past its leases, thaw it."""
    async def at(moment: float) -> None:
        await asyncio.sleep(max(0.0, started + moment - time.monotonic()))

    await at(KILL_AT)
    killed = workers.nodes[0]
    killed.process.send_signal(signal.SIGKILL)
    run.faulted[killed.process.pid] = (time.time(), float("inf"))
    run.notes.append(f"{time.monotonic() - started:.1f}s SIGKILL worker0")
    await asyncio.to_thread(killed.reap)
    workers.nodes[0] = await asyncio.to_thread(workers.start, 0)
    await at(FREEZE_AT)
    frozen = workers.nodes[1]
    frozen.process.send_signal(signal.SIGSTOP)
    began = time.time()
    run.notes.append(f"{time.monotonic() - started:.1f}s SIGSTOP worker1")
    await at(THAW_AT)
    frozen.process.send_signal(signal.SIGCONT)
    run.faulted[frozen.process.pid] = (began, time.time())
    run.notes.append(f"{time.monotonic() - started:.1f}s SIGCONT worker1")


async def drive(send: Callable[[int], Awaitable[tuple[str, Any]]], workers: Workers) -> Run:
    """TASKS tasks, AT_ONCE at a time, through ``send``, while the faults happen."""
    run = Run(workers.log)
    pending = iter(range(TASKS))
    started = time.monotonic()

    async def lane() -> None:
        for n in pending:
            with contextlib.suppress(Exception):  # an error is counted as a lost task
                run.task_ids[n], run.answers[n] = await send(n)

    async with asyncio.timeout(120):
        await asyncio.gather(faults(workers, run, started), *(lane() for _ in range(AT_ONCE)))
    return run


def judge(run: Run, label: str) -> None:
    ended, nodes = run.executions()
    lost = [n for n in range(TASKS) if n not in run.answers]
    wrong = [n for n, answer in run.answers.items() if answer != n]
    repeated = {task_id: count for task_id, count in ended.items() if count > 1}
    unexplained = [task_id for task_id in repeated if not nodes[task_id] & set(run.faulted)]
    never_ran = [n for n, task_id in run.task_ids.items() if not ended[task_id]]
    hit = [task_id for task_id, pids in nodes.items() if pids & set(run.faulted)]
    print(f"\n{label} chaos: {TASKS} tasks, lost {len(lost)}, wrong {len(wrong)}, "
          f"executions {sum(ended.values())}, repeated {len(repeated)} "
          f"(unexplained {len(unexplained)}), {len(hit)} on a faulted worker; "
          f"{'; '.join(run.notes)}")
    assert hit, "the faults hit no task: the run proves nothing"
    assert not lost and not wrong, (lost, wrong)
    assert not never_ran, never_ran  # every answer came from an execution in the log
    assert not unexplained, unexplained


async def test_a2a_tasks_survive_killed_and_frozen_winners(
        tmp_path: Path, mesh: tuple[NodeProcess, Workers]) -> None:
    seed, workers = mesh
    bridge = await asyncio.to_thread(BridgeProcess, "--server", seed.ready["client"],
                                     "--heartbeat", "0.25",
                                     env={"AGORAMESH_HOME": str(tmp_path / "bridge")})
    try:
        async with httpx.AsyncClient(timeout=60) as http:
            card = await A2ACardResolver(http, bridge.ready["a2a"]).get_agent_card()
            client = ClientFactory(ClientConfig(httpx_client=http, streaming=False)).create(card)

            async def send(n: int) -> tuple[str, Any]:
                message = Message(role=Role.ROLE_USER, message_id=uuid.uuid4().hex,
                                  parts=[Part(data=to_value({"n": n, "seconds": SECONDS}))],
                                  metadata={"skill": CAPABILITY})
                events = [e async for e in client.send_message(SendMessageRequest(
                    message=message))]
                task = events[-1].task
                assert task.status.state == TaskState.TASK_STATE_COMPLETED, task.status
                return task.id, output_of(task.artifacts[-1].parts)["n"]

            judge(await drive(send, workers), "A2A")
    finally:
        bridge.reap()


async def test_mcp_tool_calls_survive_killed_and_frozen_winners(
        mesh: tuple[NodeProcess, Workers]) -> None:
    seed, workers = mesh
    async with stdio_client(seed.ready["client"]) as client:
        tools = {tool.name for tool in (await client.list_tools()).tools}
        assert "chaos_work" in tools, tools

        async def send(n: int) -> tuple[str, Any]:
            result = await client.call_tool("chaos_work", {"n": n, "seconds": SECONDS})
            assert not result.is_error, result.content
            answer = result.structured_content or {}
            return str(answer["task_id"]), answer["result"]["n"]

        judge(await drive(send, workers), "MCP")
