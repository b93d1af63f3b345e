"""Subprocesses in tests: the CLI's command line, reading their output with a deadline,
checking that processes are gone by PID."""

from __future__ import annotations

import os
import select
import sys
import time
from collections.abc import Iterable
from typing import IO, Any

from agoramesh.bus.server import process_alive

__all__ = ("AGORAMESH", "LineReader", "alive", "assert_stopped")

#: The CLI as a subprocess command line (``python -m agoramesh.cli``).
AGORAMESH = (sys.executable, "-m", "agoramesh.cli")

alive = process_alive  # True if ``pid`` names a live (not zombie) process


def assert_stopped(pids: Iterable[int | None]) -> None:
    """Fail if any of ``pids`` is still running."""
    running = [pid for pid in pids if pid is not None and alive(pid)]
    if running:
        raise AssertionError(f"processes still running: {running}")


class LineReader:
    """The lines of a subprocess's output pipe, each read against a deadline.

    ``pipe.readline()`` blocks for as long as the process prints nothing; this
    waits on the pipe's descriptor (select) and reads it unbuffered, so a hung
    process costs a deadline, not the whole test run. Whatever it has read
    past the last line returned is in :meth:`rest` (``communicate()`` reads
    the pipe from there on).
    """

    def __init__(self, pipe: IO[Any]) -> None:
        self._fd = pipe.fileno()
        self._buffer = b""
        self._eof = False

    def readline(self, deadline: float) -> str:
        """The next line with its newline; "" at end of output.

        TimeoutError if no whole line arrives before ``deadline`` (``time.monotonic()``).
        """
        while b"\n" not in self._buffer and not self._eof:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no line within the deadline")
            readable, _, _ = select.select([self._fd], [], [], left)
            if readable:
                chunk = os.read(self._fd, 65536)
                self._buffer += chunk
                self._eof = not chunk
        line, newline, self._buffer = self._buffer.partition(b"\n")
        return (line + newline).decode(errors="replace")

    def rest(self) -> str:
        """What was read after the last line returned (and is no longer in the pipe)."""
        rest, self._buffer = self._buffer, b""
        return rest.decode(errors="replace")
