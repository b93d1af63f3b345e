"""Killing a node mid-run and checking its backend's program dies with it (shared by the
backend tests and their conftest)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from agoramesh.testing.processes import alive


def gone(pid: int, timeout: float = 10.0) -> bool:
    """True once ``pid`` has stopped running (a zombie counts), False after ``timeout``."""
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def kill_midway(argv: list[str], env: dict[str, str], child_pid: Callable[[], int | None],
                log: Path) -> None:
    """Run the node ``argv``; once ``child_pid()`` names its program's process, SIGKILL the
    node: the program must be gone soon after. Both are killed by PID, whatever happens."""
    with log.open("wb") as stderr:
        node = subprocess.Popen(argv, env={**os.environ, **env}, stdin=subprocess.DEVNULL,
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
