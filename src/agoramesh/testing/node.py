"""``agoramesh node --json`` as a subprocess for end-to-end tests: started, ready, reaped."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from agoramesh.testing.processes import CLIProcess, LineReader
from agoramesh.testing.up import READY_TIMEOUT

__all__ = ("NodeProcess",)


class NodeProcess(CLIProcess):
    """A running ``agoramesh node --json *args`` with ``AGORAMESH_HOME=home``.

    ``ready`` is the node's ready line (``id``, ``client``, ``cluster``, ``pid``
    of its embedded server, ...). ``env`` adds to the environment. Stop it with
    :meth:`stop`; :meth:`reap` (safe to call at any time) kills what is left,
    the embedded server included.
    """

    def __init__(self, home: Path, *args: str, env: Mapping[str, str] | None = None) -> None:
        super().__init__("node", "--json", *args,
                         env={"AGORAMESH_HOME": str(home), **(env or {})})
        self.ready: dict[str, Any] = {}
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
        self._stop(sig, timeout)
        return self.process.returncode

    def servers(self) -> Iterable[int]:
        """The embedded server, once the node said it is ready."""
        pid = self.ready.get("pid")
        return [int(pid)] if pid else []
