"""A winner lost while it is only paused (SIGSTOP past its lease) is waited for, not given
up on, when no other agent can take the task (PROTOCOL.md §16, Leases): its late result
is the result, and the task runs once."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from agoramesh.nodes.task import TaskStatus
from agoramesh.protocols.auction.policy import AuctionPolicy, Progress
from agoramesh.testing import NodeProcess, wait_until
from agoramesh.testing.chaos import CAPABILITY
from agoramesh.testing.chaos_worker import __file__ as WORKER
from agoramesh.testing.plugin import AgentFactory

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.chaos,
              pytest.mark.timeout(120)]


async def test_a_lone_winner_frozen_past_its_lease_is_waited_for(
        tmp_path: Path, nats_server: Any, agent_factory: AgentFactory) -> None:
    log = tmp_path / "executions.log"
    worker = await asyncio.to_thread(
        NodeProcess, tmp_path / "worker", "--name", "worker", "--type", "command",
        "--command", f"{sys.executable} -S {WORKER} {log}", "--capability", CAPABILITY,
        "--max-jobs", "0", "--heartbeat", "0.25", "--connect", nats_server.client_url)
    try:
        policy = AuctionPolicy(lease_interval=0.2, missed_leases=3, bid_window=0.3,
                               max_wait=20)
        driver = await agent_factory(nats_server.client_url, "driver", ["vote"],
                                     auction_policy=policy)
        await wait_until(lambda: worker.ready["id"] in driver.directory, timeout=10)
        events: list[Progress] = []
        running = asyncio.ensure_future(driver.dispatcher.submit(
            CAPABILITY, {"n": 7, "seconds": 1.5}, timeout=30, progress=events.append))
        # Frozen once it has accepted (its leases then stop) and its run has started.
        await wait_until(lambda: any(e.event == "accepted" for e in events)
                         and log.exists() and "start" in log.read_text(), timeout=10)
        worker.process.send_signal(signal.SIGSTOP)
        try:
            await wait_until(lambda: any(e.event == "lost" for e in events), timeout=10)
            await asyncio.sleep(1.5)  # nobody else can take it: the auction keeps calling
            assert not running.done(), running
            assert any(e.event == "waiting" for e in events)
        finally:
            worker.process.send_signal(signal.SIGCONT)
        result = await asyncio.wait_for(running, 20)
        assert result.status is TaskStatus.COMPLETED and result.result["n"] == 7
        assert result.agent_id == worker.ready["id"]
        ends = [line for line in log.read_text().splitlines() if line.startswith("end ")]
        assert len(ends) == 1, ends  # one execution: the paused run's result is the answer
        answered = [e.event for e in events if e.event in ("late", "award")]
        assert answered[-1] == "late" or answered.count("award") == 2, events
    finally:
        worker.process.send_signal(signal.SIGCONT)
        await asyncio.to_thread(worker.reap)


async def test_a_lone_winner_killed_and_started_again_runs_the_task_again(
        tmp_path: Path, nats_server: Any, agent_factory: AgentFactory) -> None:
    """SIGKILLed mid-task and started again (the same identity, no memory of the task):
    lost, then asked again, it bids without holding the task and, alone, is awarded."""
    log = tmp_path / "executions.log"
    args = ("--name", "worker", "--type", "command",
            "--command", f"{sys.executable} -S {WORKER} {log}", "--capability", CAPABILITY,
            "--max-jobs", "0", "--heartbeat", "0.25", "--connect", nats_server.client_url)
    home = tmp_path / "worker"
    worker = await asyncio.to_thread(NodeProcess, home, *args)
    again: NodeProcess | None = None
    try:
        policy = AuctionPolicy(lease_interval=0.2, missed_leases=3, bid_window=0.3,
                               max_wait=20)
        driver = await agent_factory(nats_server.client_url, "driver", ["vote"],
                                     auction_policy=policy)
        await wait_until(lambda: worker.ready["id"] in driver.directory, timeout=10)
        events: list[Progress] = []
        running = asyncio.ensure_future(driver.dispatcher.submit(
            CAPABILITY, {"n": 8, "seconds": 1.0}, timeout=30, progress=events.append))
        await wait_until(lambda: any(e.event == "accepted" for e in events)
                         and log.exists() and "start" in log.read_text(), timeout=10)
        worker.process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(worker.reap)
        await wait_until(lambda: any(e.event == "lost" for e in events), timeout=10)
        again = await asyncio.to_thread(NodeProcess, home, *args)
        assert again.ready["id"] == worker.ready["id"]
        result = await asyncio.wait_for(running, 25)
        assert result.status is TaskStatus.COMPLETED and result.result["n"] == 8
        lines = log.read_text().splitlines()
        assert sum(line.startswith("start ") for line in lines) == 2
        assert sum(line.startswith("end ") for line in lines) == 1  # the killed run never ended
    finally:
        await asyncio.to_thread(worker.reap)
        if again is not None:
            await asyncio.to_thread(again.reap)
