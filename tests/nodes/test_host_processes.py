"""Hosts in their own processes (agoramesh.testing.hosting): an observer elsewhere sees
every hosted agent join, a SIGKILLed host's agents evicted as silent, a SIGTERMed host's
gone at once by its bye. A bounded version of the 5,000-agent benchmark
(benchmarks/bench_hosting.py)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator

import pytest

from agoramesh.agent import AgentNode
from agoramesh.bus.mesh import Mesh
from agoramesh.testing.processes import LineReader, alive
from agoramesh.testing.waiting import wait_until

pytestmark = pytest.mark.integration

PROCESSES, AGENTS, BEAT = 2, 150, 0.5


class HostProcess:
    def __init__(self, urls: list[str], name: str) -> None:
        args = [sys.executable, "-m", "agoramesh.testing.hosting", "--agents", str(AGENTS),
                "--name", name, "--heartbeat", str(BEAT)]
        for url in urls:
            args += ["--server", url]
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE)
        self.lines = LineReader(self.process.stdout)  # type: ignore[arg-type]

    def event(self, name: str, timeout: float = 60.0) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.readline(deadline)
            assert line, f"the host process ended before {name!r}"
            event: dict[str, object] = json.loads(line)
            if event["event"] == name:
                return event

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        assert self.process.stdout is not None
        self.process.stdout.close()


@pytest.fixture
def spawn() -> Iterator[Callable[[list[str], str], HostProcess]]:
    started: list[HostProcess] = []

    def make(urls: list[str], name: str) -> HostProcess:
        started.append(HostProcess(urls, name))
        return started[-1]

    yield make
    for host in started:
        host.stop()
    assert not [h.process.pid for h in started if alive(h.process.pid)]


async def test_hosts_in_other_processes_join_leave_and_die_as_observers_see_it(
        mesh_factory: Callable[..., Awaitable[Mesh]],
        agent_factory: Callable[..., Awaitable[AgentNode]],
        spawn: Callable[[list[str], str], HostProcess]) -> None:
    mesh = await mesh_factory(seeds=3)
    urls = [seed.client_url for seed in mesh.seeds]
    observer = await agent_factory(urls[1], "observer", ["vote"], heartbeat_interval=BEAT)
    gone: dict[str, str] = {}
    observer.directory.on_leave.append(lambda agent_id, why: gone.setdefault(agent_id, why))
    hosts = [spawn(urls, f"p{i}") for i in range(PROCESSES)]
    # Read in threads: a blocking read would stall this loop and the observer with it.
    started = [await asyncio.to_thread(host.event, "started") for host in hosts]
    assert [event["agents"] for event in started] == [AGENTS] * PROCESSES
    by_host: dict[str, set[str]] = {str(event["host"]): set() for event in started}

    def known() -> bool:
        for entry in observer.directory:
            if entry.host in by_host:
                by_host[entry.host].add(entry.id)
        return all(len(ids) == AGENTS for ids in by_host.values())

    await wait_until(known, timeout=30.0, interval=0.05)
    killed, stopped = (str(event["host"]) for event in started)
    os.kill(hosts[0].process.pid, signal.SIGKILL)
    await wait_until(lambda: by_host[killed] <= set(gone), timeout=10 * BEAT + 5)
    assert {gone[agent_id] for agent_id in by_host[killed]} == {"silent"}
    assert not by_host[stopped] & set(gone)  # the other host's agents stay
    hosts[1].process.send_signal(signal.SIGTERM)
    await asyncio.to_thread(hosts[1].event, "stopped", 30.0)
    await wait_until(lambda: by_host[stopped] <= set(gone), timeout=5.0)
    assert {gone[agent_id] for agent_id in by_host[stopped]} == {"bye"}
    assert hosts[1].process.wait(10) == 0
    assert not observer.bus.rejections
