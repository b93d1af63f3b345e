"""Subprocesses in tests: the CLI's command line, reading their output with a deadline,
one CLI process reaped with its servers, checking that processes are gone by PID."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from typing import IO, Any

from agoramesh.bus.server import process_alive

__all__ = ("AGORAMESH", "CLIProcess", "LineReader", "alive", "assert_stopped")

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


class CLIProcess:
    """``agoramesh *args`` with its output piped; :meth:`reap` (safe at any time) cleans up.

    ``env`` adds to the environment. A subclass reads the ready output and
    names, in :meth:`servers`, the PIDs of the servers the process started.
    """

    def __init__(self, *args: str, env: Mapping[str, str] | None = None) -> None:
        self.process = subprocess.Popen([*AGORAMESH, *args], env={**os.environ, **(env or {})},
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)
        self.stderr = ""
        self._reaped = False

    def servers(self) -> Iterable[int]:
        """PIDs of the servers it started, killed by :meth:`reap` if they outlive it."""
        return ()

    def _stop(self, sig: int, timeout: float) -> str:
        """Send ``sig`` (unless it exited) and wait up to ``timeout``; the rest of stdout."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        out, self.stderr = self.process.communicate(timeout=timeout)
        self._reaped = True
        return out

    def reap(self) -> None:
        """Kill whatever is left: the process, then any server of it that outlived it."""
        if self.process.poll() is None:
            self.process.kill()
        if not self._reaped:
            _, self.stderr = self.process.communicate(timeout=10)  # also closes the pipes
            self._reaped = True
        for pid in self.servers():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
