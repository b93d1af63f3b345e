"""``agoramesh node --json`` as a subprocess for end-to-end tests: started, ready, reaped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agoramesh.testing.processes import AGORAMESH, LineReader, alive
from agoramesh.testing.up import READY_TIMEOUT

__all__ = ("NodeProcess",)


class NodeProcess:
    """A running ``agoramesh node --json *args`` with ``AGORAMESH_HOME=home``.

    ``ready`` is the node's ready line (``id``, ``client``, ``cluster``, ``pid``
    of its embedded server, ...). ``env`` adds to the environment. Stop it with
    :meth:`stop`; :meth:`reap` (safe to call at any time) kills what is left,
    the embedded server included.
    """

    def __init__(self, home: Path, *args: str, env: Mapping[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [*AGORAMESH, "node", "--json", *args],
            env={**os.environ, "AGORAMESH_HOME": str(home), **(env or {})},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.ready: dict[str, Any] = {}
        self.stderr = ""
        self._reaped = False
        assert self.process.stdout is not None
        try:
            line = LineReader(self.process.stdout).readline(time.monotonic() + READY_TIMEOUT)
            self.ready = json.loads(line) if line else {}  # "": it exited first
        except TimeoutError:
            pass
        except BaseException:  # not JSON, or interrupted: never leave the node running
            self.reap()
            raise
        if not self.ready:
            self.reap()
            raise AssertionError(f"agoramesh node was not ready within {READY_TIMEOUT:g}s: "
                                 f"{self.stderr}")

    @property
    def id(self) -> str:
        """The agent id of the node."""
        return str(self.ready["id"])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        """Send ``sig`` (SIGTERM: the orderly stop) and wait; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        _, self.stderr = self.process.communicate(timeout=timeout)
        self._reaped = True
        return self.process.returncode

    def reap(self) -> None:
        """Kill whatever is left: the process, then its embedded server if it outlived it."""
        if self.process.poll() is None:
            self.process.kill()
        if not self._reaped:
            _, self.stderr = self.process.communicate(timeout=10)  # also closes the pipes
            self._reaped = True
        pid = self.ready.get("pid")
        if pid and alive(int(pid)):
            os.kill(int(pid), signal.SIGKILL)
