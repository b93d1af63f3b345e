"""Fixtures shared by the backend tests."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from backend_support import kill_midway

from agoramesh.nodes.backends import base

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


@pytest.fixture
def kill_node(tmp_path: Path) -> Callable[..., None]:
    """``kill_node(kind, program, env, child_pid, size=...)`` SIGKILLs a node mid-run.

    The node is a Python process chatting with a ``kind`` backend that runs
    ``program`` (``env`` is its environment); see :func:`kill_midway`.
    """

    def run(kind: str, program: Path, env: dict[str, str],
            child_pid: Callable[[], int | None], *, size: int = 10) -> None:
        kill_midway([sys.executable, "-c", NODE, kind, str(program), str(size)], env,
                    child_pid, tmp_path / "node.log")

    return run
