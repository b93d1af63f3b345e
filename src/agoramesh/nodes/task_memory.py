"""What an agent remembers of its tasks, so a task asked again is not run again.

A task id is the idempotency key end to end (M-8). An agent asked again for a
task id it is running, or finished a moment ago, answers from what it has: a
second request for a running task waits for the same execution, and one for a
finished task gets the result it had. That is what happens when an
initiator is lost mid-task and the job is auctioned again by another node:
this agent bids as the one that ``holds`` it (protocols/auction/scoring.py) and is
awarded it, and nothing runs twice.

The same id with other content is a different task: asking for it is refused
(``InvalidTask``), never answered with the other task's result. Content is
the capability and parameters, compared by a BLAKE2b digest. Only final
results are remembered (TaskResult.final), at most ``size`` of them for
``ttl`` seconds, and at most ``max_bytes`` of them as messages: once a result
is answered, :meth:`TaskMemory.weigh` puts what was answered in its place
(a result too large to send becomes the ``ResultTooLarge`` failure the
requester got) with its size, and the oldest results go first when the sum
is over. A result is held as it came until it is weighed: a moment, on the
way to its answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

from agoramesh.nodes.task import Task, TaskResult

__all__ = ("Remembered", "TaskMemory", "task_digest")

Holds = Literal["running", "done", ""]


def task_digest(task: Task) -> str:
    """What makes two tasks with one id the same task: type and parameters."""
    canonical = json.dumps([task.capability, task.parameters], sort_keys=True,
                           separators=(",", ":"), default=str, ensure_ascii=False)
    return hashlib.blake2b(canonical.encode("utf-8", "surrogatepass"),
                           digest_size=16).hexdigest()


@dataclass(frozen=True, slots=True)
class Remembered:
    """A task id this agent knows: running (``result`` a future) or done (``done``)."""

    digest: str
    running: asyncio.Future[TaskResult] | None
    done: TaskResult | None


class TaskMemory:
    """Running tasks and recent final results by task id."""

    def __init__(self, *, size: int = 1024, ttl: float = 600.0,
                 max_bytes: int = 32 * 1024 * 1024) -> None:
        self.size = size
        self.ttl = ttl
        self.max_bytes = max_bytes
        self._running: dict[str, tuple[str, asyncio.Future[TaskResult]]] = {}
        #: Final results by task id, oldest first: (expires, digest, result, bytes).
        self._done: OrderedDict[str, tuple[float, str, TaskResult, int]] = OrderedDict()
        self._bytes = 0  # the weighed results' sum

    def recall(self, task: Task) -> Remembered | None:
        """What is known of ``task.task_id``: None if nothing (or only an expired result)."""
        running = self._running.get(task.task_id)
        if running is not None:
            return Remembered(digest=running[0], running=running[1], done=None)
        done = self._done.get(task.task_id)
        if done is None:
            return None
        expires, digest, result, _ = done
        if expires < time.monotonic():
            self._forget(task.task_id)
            return None
        return Remembered(digest=digest, running=None, done=result)

    def holds(self, task: Task) -> Holds:
        """``"running"`` or ``"done"`` if this agent has this very task, else ``""``."""
        known = self.recall(task)
        if known is None or known.digest != task_digest(task):
            return ""
        return "running" if known.running is not None else "done"

    def begin(self, task: Task) -> asyncio.Future[TaskResult]:
        """Note ``task`` as running; its future gets the result (see :meth:`finish`)."""
        future: asyncio.Future[TaskResult] = asyncio.get_running_loop().create_future()
        self._running[task.task_id] = (task_digest(task), future)
        return future

    def finish(self, task: Task, result: TaskResult) -> None:
        """``task`` ended with ``result``: waiters get it; a final one is remembered."""
        entry = self._running.pop(task.task_id, None)
        if entry is not None and not entry[1].done():
            entry[1].set_result(result)
        if not result.final:
            return
        self._forget(task.task_id)
        self._done[task.task_id] = (time.monotonic() + self.ttl,
                                    entry[0] if entry else task_digest(task), result, 0)
        self._trim()

    def weigh(self, task_id: str, answered: TaskResult, nbytes: int) -> None:
        """The result of ``task_id`` was answered as ``answered``, ``nbytes`` as a message:
        remember that (a too-large result's failure, not the result) at that size."""
        known = self._done.get(task_id)
        if known is None or not answered.final:
            return
        expires, digest, _, before = known
        self._done[task_id] = (expires, digest, answered, nbytes)
        self._bytes += nbytes - before
        self._trim()

    def _forget(self, task_id: str) -> None:
        known = self._done.pop(task_id, None)
        if known is not None:
            self._bytes -= known[3]

    def _trim(self) -> None:
        """Drop the oldest results (and so the soonest to expire: one ttl for all) while
        there are too many, too many bytes of them, or the oldest has expired."""
        done, now = self._done, time.monotonic()
        while done and (len(done) > self.size or self._bytes > self.max_bytes
                        or next(iter(done.values()))[0] < now):
            self._bytes -= done.popitem(last=False)[1][3]

    @property
    def held_bytes(self) -> int:
        """The remembered results' size as the messages that answered them."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._running) + len(self._done)
