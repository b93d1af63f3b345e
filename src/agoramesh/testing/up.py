"""``agoramesh up`` as a subprocess for end-to-end tests: started, parsed, always reaped."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterable
from pathlib import Path

from agoramesh.testing.processes import AGORAMESH, CLIProcess, LineReader, assert_stopped

__all__ = ("AGORAMESH", "READY_TIMEOUT", "UpProcess")

#: Seconds a CLI process may take to print that it is ready.
READY_TIMEOUT = 30.0
_READY = re.compile(r"mesh ready: ((?:nats|tls)://127\.0\.0\.1:\d+)\n")


class UpProcess(CLIProcess):
    """A running ``agoramesh up --dir DIR *args``: its URL, server PIDs, HTTP API and metrics."""

    def __init__(self, data_dir: Path, *args: str) -> None:
        super().__init__("up", "--dir", str(data_dir), *args)
        self.pids: list[int] = []
        self.leaf_addresses: list[str] = []  # the seeds' leafnode addresses, host:port
        self.seed_urls: list[str] = []  # the seeds' client URLs, in order
        self.http: str | None = None  # with --http-port
        self.metrics: str | None = None  # with --metrics-port: the /metrics URL
        self.url = ""
        assert self.process.stdout is not None
        self._lines = LineReader(self.process.stdout)
        try:
            ready = self._read_until_ready(time.monotonic() + READY_TIMEOUT)
        except BaseException:  # interrupted: never leave the mesh running
            self.reap()
            raise
        if not ready:
            self.reap()
            raise AssertionError(f"agoramesh up did not become ready within {READY_TIMEOUT:g}s: "
                                 f"{self.stderr}")

    def _read_until_ready(self, deadline: float) -> bool:
        """Read a line per server and agent up to "mesh ready"; False at EOF or the deadline."""
        while True:
            try:
                line = self._lines.readline(deadline)
            except TimeoutError:
                return False
            if not line:
                return False
            self.pids += [int(pid) for pid in re.findall(r"pid=(\d+)", line)]
            self.leaf_addresses += re.findall(r"leaf=(\S+)", line)
            if "role=seed" in line:
                self.seed_urls += re.findall(r"client=(\S+)", line)
            if line.startswith("http api: "):
                self.http = line.split(": ", 1)[1].strip()
            if line.startswith("metrics: "):
                self.metrics = line.split(": ", 1)[1].strip()
            if match := _READY.fullmatch(line):
                self.url = match.group(1)
                return True

    def interrupt(self, timeout: float = 20) -> tuple[str, str]:
        """SIGINT, as Ctrl-C: the orderly stop. Returns the rest of (stdout, stderr)."""
        out = self._stop(signal.SIGINT, timeout)
        return self._lines.rest() + out, self.stderr

    def stop_cleanly(self) -> None:
        """:meth:`interrupt`, then assert it exited 0 and every server it started is gone."""
        self.interrupt()
        assert self.process.returncode == 0, self.stderr
        assert_stopped(self.pids)

    def servers(self) -> Iterable[int]:
        """The servers it printed as started."""
        return self.pids
