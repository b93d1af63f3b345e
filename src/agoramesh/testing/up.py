"""``agoramesh up`` as a subprocess for end-to-end tests: started, parsed, always reaped."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from agoramesh.testing.processes import alive

__all__ = ("AGORAMESH", "UpProcess")

#: The CLI as a subprocess command line (``python -m agoramesh.cli``).
AGORAMESH = (sys.executable, "-m", "agoramesh.cli")
_READY = re.compile(r"mesh ready: (nats://127\.0\.0\.1:\d+)\n")


class UpProcess:
    """A running ``agoramesh up --dir DIR *args``: its URL, server PIDs, HTTP API and metrics."""

    def __init__(self, data_dir: Path, *args: str) -> None:
        self.process = subprocess.Popen([*AGORAMESH, "up", "--dir", str(data_dir), *args],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)
        self.pids: list[int] = []
        self.http: str | None = None  # with --http-port
        self.metrics: str | None = None  # with --metrics-port: the /metrics URL
        self.url = ""
        self.stderr = ""
        self._reaped = False
        assert self.process.stdout is not None
        for _ in range(60):  # bounded: a line per server and agent, then "mesh ready"
            line = self.process.stdout.readline()
            if not line:
                break
            self.pids += [int(pid) for pid in re.findall(r"pid=(\d+)", line)]
            if line.startswith("http api: "):
                self.http = line.split(": ", 1)[1].strip()
            if line.startswith("metrics: "):
                self.metrics = line.split(": ", 1)[1].strip()
            if match := _READY.fullmatch(line):
                self.url = match.group(1)
                return
        self.reap()
        raise AssertionError(f"agoramesh up did not become ready: {self.stderr}")

    def interrupt(self, timeout: float = 20) -> tuple[str, str]:
        """SIGINT, as Ctrl-C: the orderly stop. Returns the rest of (stdout, stderr)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        out, self.stderr = self.process.communicate(timeout=timeout)
        self._reaped = True
        return out, self.stderr

    def reap(self) -> None:
        """Kill whatever is left: the process, then any server it did not stop."""
        if self.process.poll() is None:
            self.process.kill()
        if not self._reaped:
            _, self.stderr = self.process.communicate(timeout=10)  # also closes the pipes
            self._reaped = True
        for pid in self.pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
