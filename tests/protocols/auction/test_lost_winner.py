"""A winner lost while it is only paused (SIGSTOP past its lease) is waited for, not given
up on, when no other agent can take the task (PROTOCOL.md §16, Leases): its late result
is the result, and the task runs once. It is not awarded again, and one that was killed
is gone from the mesh (no responders to its ping): the auction fails without waiting."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agoramesh.errors import AuctionFailed
from agoramesh.nodes.task import TaskResult, TaskStatus
from agoramesh.protocols.auction.policy import AuctionPolicy, Progress
from agoramesh.testing import NodeProcess, wait_until
from agoramesh.testing.chaos import CAPABILITY
from agoramesh.testing.chaos_worker import __file__ as WORKER
from agoramesh.testing.plugin import AgentFactory

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.chaos,
              pytest.mark.timeout(120)]


@dataclass
class Running:
    """A task running on the one worker node process a driver knows, its run started."""

    worker: NodeProcess
    submitted: asyncio.Future[TaskResult]
    events: list[Progress]
    log: Path  # the worker's executions: "start …" and "end …" lines

    def lines(self, prefix: str) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if line.startswith(prefix)]


@contextlib.asynccontextmanager
async def running(tmp_path: Path, url: str, factory: AgentFactory, *, max_wait: float,
                  parameters: dict[str, Any]) -> AsyncIterator[Running]:
    log = tmp_path / "executions.log"
    worker = await asyncio.to_thread(
        NodeProcess, tmp_path / "worker", "--name", "worker", "--type", "command",
        "--command", f"{sys.executable} -S {WORKER} {log}", "--capability", CAPABILITY,
        "--max-jobs", "0", "--heartbeat", "0.25", "--connect", url)
    submitted: asyncio.Future[TaskResult] | None = None
    try:
        policy = AuctionPolicy(lease_interval=0.2, missed_leases=3, bid_window=0.3,
                               max_wait=max_wait)
        driver = await factory(url, "driver", ["vote"], auction_policy=policy)
        await wait_until(lambda: worker.ready["id"] in driver.directory, timeout=10)
        events: list[Progress] = []
        submitted = asyncio.ensure_future(driver.dispatcher.submit(
            CAPABILITY, parameters, timeout=30, progress=events.append))
        # Its leases stop once it is frozen or killed: only after it accepted and started.
        await wait_until(lambda: any(e.event == "accepted" for e in events)
                         and log.exists() and "start" in log.read_text(), timeout=10)
        yield Running(worker, submitted, events, log)
    finally:
        if submitted is not None and not submitted.done():
            submitted.cancel()
        worker.process.send_signal(signal.SIGCONT)
        await asyncio.to_thread(worker.reap)


async def test_a_lone_winner_frozen_past_its_lease_is_waited_for(
        tmp_path: Path, nats_server: Any, agent_factory: AgentFactory) -> None:
    async with running(tmp_path, nats_server.client_url, agent_factory, max_wait=20,
                       parameters={"n": 7, "seconds": 1.5}) as run:
        run.worker.process.send_signal(signal.SIGSTOP)
        try:
            await wait_until(lambda: any(e.event == "lost" for e in run.events), timeout=10)
            await asyncio.sleep(1.5)  # nobody else can take it: the auction keeps calling
            assert not run.submitted.done(), run.submitted
            assert any(e.event == "waiting" for e in run.events)
        finally:
            run.worker.process.send_signal(signal.SIGCONT)
        result = await asyncio.wait_for(run.submitted, 20)
        assert result.status is TaskStatus.COMPLETED and result.result["n"] == 7
        assert result.agent_id == run.worker.ready["id"]
        assert len(run.lines("end ")) == 1  # one execution: the paused run's result is the answer
        answered = [e.event for e in run.events if e.event in ("late", "award")]
        assert answered == ["award", "late"], run.events  # never awarded again


async def test_a_lone_winner_killed_is_not_waited_for(
        tmp_path: Path, nats_server: Any, agent_factory: AgentFactory) -> None:
    """Its connection closed with it: its ping draws "no responders", so the run fails
    without waiting out max_wait (60 s here; the run is given 20)."""
    async with running(tmp_path, nats_server.client_url, agent_factory, max_wait=60,
                       parameters={"n": 8, "seconds": 1.0}) as run:
        run.worker.process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(run.worker.reap)
        with pytest.raises(AuctionFailed, match="were lost, gone from the mesh, and no other "
                                                "agent bid"):
            await asyncio.wait_for(run.submitted, 20)
        kinds = [e.event for e in run.events]
        assert "waiting" not in kinds[kinds.index("lost"):] and kinds.count("award") == 1, kinds
        assert len(run.lines("end ")) == 0  # the killed run never ended
