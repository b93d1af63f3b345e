"""A lone capable agent frozen before an auction (SIGSTOP, evicted from the initiator's
directory for silence) is called until ``max_wait``, not given up on at once: when it
resumes within that time it bids and runs the task, once (PROTOCOL.md §16, "Busy is not
absent"). One that said bye is gone, and so is one that was killed (no responders to its
ping): nobody is known, NoBidders at once."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agoramesh.agent import AgentNode
from agoramesh.errors import NoBidders
from agoramesh.nodes.task import TaskStatus
from agoramesh.protocols.auction.policy import AuctionPolicy, Progress
from agoramesh.testing import NodeProcess, wait_until
from agoramesh.testing.chaos import CAPABILITY
from agoramesh.testing.chaos_worker import __file__ as WORKER
from agoramesh.testing.plugin import AgentFactory

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.chaos,
              pytest.mark.timeout(120)]


@dataclass
class Lone:
    """A worker node process, the only agent offering CAPABILITY, and a driver that knows
    it; ``left``: why the driver's directory dropped whom."""

    worker: NodeProcess
    driver: AgentNode
    left: dict[str, str] = field(default_factory=dict)

    @property
    def agent_id(self) -> str:
        return str(self.worker.ready["id"])


@contextlib.asynccontextmanager
async def lone(tmp_path: Path, url: str, factory: AgentFactory) -> AsyncIterator[Lone]:
    log = tmp_path / "executions.log"
    worker = await asyncio.to_thread(
        NodeProcess, tmp_path / "worker", "--name", "worker", "--type", "command",
        "--command", f"{sys.executable} -S {WORKER} {log}", "--capability", CAPABILITY,
        "--max-jobs", "0", "--heartbeat", "0.25", "--connect", url)
    try:
        driver = await factory(url, "driver", ["vote"],
                               auction_policy=AuctionPolicy(bid_window=0.3, max_wait=20))
        found = Lone(worker, driver)
        driver.directory.on_leave.append(lambda gone, why: found.left.setdefault(gone, why))
        await wait_until(lambda: found.agent_id in driver.directory, timeout=10)
        yield found
    finally:
        worker.process.send_signal(signal.SIGCONT)
        await asyncio.to_thread(worker.reap)


async def nobody_waited_for(found: Lone) -> None:
    """The auction finds nobody known and fails at once: called once, not again until
    max_wait."""
    events: list[Progress] = []
    with pytest.raises(NoBidders, match="none is known here"):
        await found.driver.dispatcher.submit(CAPABILITY, {"n": 1}, timeout=30,
                                             progress=events.append)
    assert [e.event for e in events if e.event in ("cfp", "waiting")] == ["cfp"], events
    assert events[0].detail["known"] == 0


async def test_a_lone_agent_frozen_before_the_auction_is_called_until_it_resumes(
        tmp_path: Path, nats_server: Any, agent_factory: AgentFactory) -> None:
    async with lone(tmp_path, nats_server.client_url, agent_factory) as found:
        agent_id, driver, worker = found.agent_id, found.driver, found.worker
        worker.process.send_signal(signal.SIGSTOP)
        try:
            await wait_until(lambda: agent_id not in driver.directory, timeout=10)
            assert found.left[agent_id] == "silent"
            events: list[Progress] = []
            running = asyncio.ensure_future(driver.dispatcher.submit(
                CAPABILITY, {"n": 3, "seconds": 0.1}, timeout=30, progress=events.append))
            await wait_until(lambda: sum(e.event == "cfp" for e in events) >= 3, timeout=10)
            assert not running.done(), running
            first = events[0]  # no direct award to an agent only lately known
            assert first.event == "cfp" and first.detail["known"] == 1, events
            assert any(e.event == "waiting" for e in events), events
        finally:
            worker.process.send_signal(signal.SIGCONT)
        result = await asyncio.wait_for(running, 20)
        assert result.status is TaskStatus.COMPLETED and result.result["n"] == 3
        assert result.agent_id == agent_id
        lines = (tmp_path / "executions.log").read_text().splitlines()
        assert sum(line.startswith("start ") for line in lines) == 1, lines
        assert sum(line.startswith("end ") for line in lines) == 1, lines


async def test_a_lone_agent_that_said_bye_is_not_waited_for(
        tmp_path: Path, nats_server: Any, agent_factory: AgentFactory) -> None:
    async with lone(tmp_path, nats_server.client_url, agent_factory) as found:
        assert await asyncio.to_thread(found.worker.stop) == 0
        await wait_until(lambda: found.agent_id not in found.driver.directory, timeout=10)
        assert found.left[found.agent_id] == "bye"
        await nobody_waited_for(found)


async def test_a_lone_agent_that_was_killed_is_not_waited_for(
        tmp_path: Path, nats_server: Any, agent_factory: AgentFactory) -> None:
    async with lone(tmp_path, nats_server.client_url, agent_factory) as found:
        found.worker.process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(found.worker.reap)
        await wait_until(lambda: found.agent_id not in found.driver.directory, timeout=10)
        assert found.left[found.agent_id] == "silent"  # no bye: it may have been paused
        assert found.driver.directory.lapsed(CAPABILITY, 20) == {found.agent_id}
        await nobody_waited_for(found)
        assert found.driver.directory.lapsed(CAPABILITY, 20) == frozenset()  # forgotten
