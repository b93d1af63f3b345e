"""Fixtures shared by the backend tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agoramesh.nodes.backends import base
from agoramesh.testing.processes import alive

# A node in miniature: one chat with one backend (prompt of `size` bytes), in its own process.
NODE = """
import asyncio, sys
from agoramesh.nodes.backends.base import BackendConfig, collect
from agoramesh.nodes.backends.registry import create_backend

kind, program, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
backend = create_backend(kind, BackendConfig(command=(program,), timeout=60))
asyncio.run(collect(backend.chat([{"role": "user", "content": "x" * size}])))
"""


@pytest.fixture
def retry_waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The waits the retry loop chose, in order; it does not actually sleep."""
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(base, "_pause", record)
    return waits


def gone(pid: int, timeout: float = 10.0) -> bool:
    """True once ``pid`` has stopped running (a zombie counts), False after ``timeout``."""
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def kill_node(tmp_path: Path) -> Callable[..., None]:
    """``kill_node(kind, program, env, child_pid, size=...)`` SIGKILLs a node mid-run.

    The node is a Python process chatting with a ``kind`` backend that runs
    ``program`` (``env`` is its environment). Once ``child_pid()`` names the
    program's process, the node is SIGKILLed; the program must be gone soon
    after. Both are killed by PID, whatever happens.
    """

    def run(kind: str, program: Path, env: dict[str, str],
                  child_pid: Callable[[], int | None], *, size: int = 10) -> None:
        log = tmp_path / "node.log"
        with log.open("wb") as stderr:
            node = subprocess.Popen([sys.executable, "-c", NODE, kind, str(program), str(size)],
                                    env={**os.environ, **env}, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=stderr)
        child: int | None = None
        try:
            deadline = time.monotonic() + 30
            while (child := child_pid()) is None and node.poll() is None:
                assert time.monotonic() < deadline, "the backend's program never started"
                time.sleep(0.02)
            assert child is not None, f"the node exited first: {log.read_text()}"
            pid = child
            assert alive(pid)
            node.kill()
            node.wait(timeout=10)
            assert gone(pid), f"pid {pid} outlived its node"
        finally:
            if node.poll() is None:
                node.kill()
                node.wait(timeout=10)
            if child is not None and alive(child):
                os.kill(child, signal.SIGKILL)

    return run
