"""Checking that processes are gone, by PID."""

from __future__ import annotations

from collections.abc import Iterable

from agoramesh.bus.server import process_alive

__all__ = ("alive", "assert_stopped")


alive = process_alive  # True if ``pid`` names a live (not zombie) process


def assert_stopped(pids: Iterable[int | None]) -> None:
    """Fail if any of ``pids`` is still running."""
    running = [pid for pid in pids if pid is not None and alive(pid)]
    if running:
        raise AssertionError(f"processes still running: {running}")
