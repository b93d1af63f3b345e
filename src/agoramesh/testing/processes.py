"""Checking that processes are gone, by PID."""

from __future__ import annotations

import os
from collections.abc import Iterable

__all__ = ("alive", "assert_stopped")


def alive(pid: int) -> bool:
    """True if ``pid`` names a live (not zombie) process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def assert_stopped(pids: Iterable[int | None]) -> None:
    """Fail if any of ``pids`` is still running."""
    running = [pid for pid in pids if pid is not None and alive(pid)]
    if running:
        raise AssertionError(f"processes still running: {running}")
