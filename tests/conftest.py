"""What the whole suite shares: the plugin's servers, offline agents for the HTTP API and
collaboration tests, and the check that a test's kind markers are true.

Kinds (pyproject.toml, ``markers``): a test that starts a nats-server must be
marked ``integration``, one that runs the agoramesh CLI as a subprocess ``e2e``,
so that ``-m "not integration"`` or ``-m "not e2e"`` leaves out what it says.
Every process a test starts goes through ``subprocess.Popen`` (asyncio's too),
so the command lines are read there, for whichever test is running, its
fixtures included; a test that starts one of these unmarked fails and says
which marker it lacks. ``nats-server -t`` only checks a configuration file.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from agoramesh.agent import AgentNode
from agoramesh.bus.server import EmbeddedServer
from agoramesh.nodes.backends.offline import OfflineBackend
from agoramesh.nodes.task import StreamItem, Task
from agoramesh.testing import wait_until

pytest_plugins = ["agoramesh.testing.plugin"]

#: The kind marker a process asks for, and what such a process is.
KINDS = {"integration": "starts a nats-server", "e2e": "runs the agoramesh CLI as a subprocess"}
_CLI_MODULES = ("agoramesh", "agoramesh.cli")
_started = pytest.StashKey[set[str]]()
_running: list[pytest.Item] = []  # the test whose setup, call or teardown is under way


def process_kind(args: Any) -> str | None:
    """The kind marker a test needs to start a process with command line ``args``, if any."""
    if isinstance(args, str | bytes | os.PathLike):
        argv = os.fsdecode(args).split()
    else:
        argv = [os.fsdecode(arg) for arg in args]
    program = Path(argv[0]).name if argv else ""
    if program == "nats-server" and not {"-t", "-v", "--version"} & set(argv):
        return "integration"  # a server, not a config check or a version
    modules = [argv[i + 1] for i in range(len(argv) - 1) if argv[i] == "-m"][:1]
    if program == "agoramesh" or any(module in _CLI_MODULES for module in modules):
        return "e2e"
    return None


def _recording(popen_init: Callable[..., None]) -> Callable[..., None]:
    """``Popen.__init__`` that notes, on the running test, the kinds of what it starts."""
    def init(self: subprocess.Popen[Any], args: Any, *rest: Any, **options: Any) -> None:
        if _running and (kind := process_kind(args)):
            _running[-1].stash.setdefault(_started, set()).add(kind)
        popen_init(self, args, *rest, **options)

    return init


@pytest.fixture(scope="session", autouse=True)
def _processes_noted() -> Iterator[None]:
    """Every process started from here on is noted on the test that started it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(subprocess.Popen, "__init__", _recording(subprocess.Popen.__init__))
        yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    """While a test runs (fixtures included), what it starts is noted on it."""
    _running.append(item)
    try:
        return (yield)
    finally:
        _running.pop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A test that passed but started a process its markers do not admit fails."""
    report = yield
    if call.when == "call" and report.passed:
        unmarked = sorted(kind for kind in item.stash.get(_started, set())
                          if item.get_closest_marker(kind) is None)
        if unmarked:
            report.outcome = "failed"
            report.longrepr = "\n".join(
                f"{item.nodeid} {KINDS[kind]} but is not marked {kind!r}: add "
                f"`pytestmark = pytest.mark.{kind}` to its module (or mark the test)"
                for kind in unmarked)
    return report


class Sloth(OfflineBackend):
    """Takes two seconds over every task."""

    async def execute(self, task: Task, context: dict[str, Any] | None = None
                      ) -> AsyncIterator[StreamItem]:
        await asyncio.sleep(2)
        async for item in super().execute(task, context):
            yield item


@pytest.fixture
def sloth_backend() -> Sloth:
    """A backend that takes two seconds over every task, for timeout tests."""
    return Sloth()


@pytest_asyncio.fixture
async def driver(nats_server: EmbeddedServer, agent_factory: Any) -> AgentNode:
    """``analyst`` (text.summarize, echo, math.evaluate), with ``pro`` and ``con``
    (text.debate, vote) in its directory."""
    url = nats_server.client_url
    node: AgentNode = await agent_factory(url, "analyst", ["text.summarize", "echo",
                                                           "math.evaluate"])
    debaters = [await agent_factory(url, name, ["text.debate", "vote"]) for name in ("pro", "con")]
    await wait_until(lambda: all(debater.agent_id in node.directory for debater in debaters),
                     timeout=5)
    return node
