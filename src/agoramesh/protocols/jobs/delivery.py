"""One delivery of a durable job, seen through to its stored result (M-8).

The :class:`~agoramesh.protocols.jobs.worker.JobWorker` takes a job and makes a
:class:`Delivery` of it: whether the job has a result is asked while its auction
collects bids (nothing is awarded until the answer is no), the result is stored
once, and while it runs JetStream is told every ack_wait/3 that it is in progress.
A delivery that cannot finish here raises :class:`Requeue`: the job goes back to
the stream, to be delivered again.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agoramesh.bus.jetstream import JetStream, ack, progress_interval
from agoramesh.bus.message import Message
from agoramesh.config import JobsConfig
from agoramesh.errors import (
    AgoraError,
    AuctionFailed,
    BusTimeout,
    JetStreamUnavailable,
    NoBidders,
    NotConnected,
    Overloaded,
    TaskCancelled,
    TaskError,
    error_to_wire,
)
from agoramesh.nodes.task import Task, TaskResult, TaskStatus
from agoramesh.protocols.jobs.jobs import ResultStore

if TYPE_CHECKING:
    from agoramesh.nodes.node import BaseNode
    from agoramesh.protocols.auction.auctioneer import Auctioneer

__all__ = ("Delivery", "Job", "Requeue")

#: How long an auction of a job keeps calling while every capable agent is busy,
#: before the job goes back to the stream for a while (another node may have room).
_JOB_PATIENCE = 10.0
#: Seconds the early "has it a result?" answer stands for the award: older (this process
#: was paused, the bids kept us waiting), a result stored meanwhile elsewhere is asked for.
_FRESH_LOOKUP = 1.0
_REQUEUE_FIRST, _REQUEUE_LAST = 0.25, 5.0
#: How long a result lookup or store keeps asking while JetStream does not answer (a
#: stream's new leader is elected within 4-9 s of the old one's server dying).
_STORE_PATIENCE = 20.0


@dataclass(slots=True)
class Job:
    """A job taken from the stream, as its latest delivery left it."""

    msg: Message
    task: Task
    requester: str | None
    deliveries: int
    cancelled: bool = False
    had_result: bool = False  # a result was stored before this delivery ran anything
    last_progress: float = 0.0  # loop time of our last "in progress"
    abandoned: bool = False  # we were paused past ack_wait: JetStream gave it to another
    #: Another node may be driving it as well (delivered before, or we were paused): only
    #: a lookup begun after the bids, before each award, says it has no result yet.
    suspect: bool = False
    handler: asyncio.Task[None] | None = None


class Requeue(Exception):  # a signal, not an error: the job goes back to the stream
    """Hand the job back to the stream, to be delivered again after ``delay`` seconds."""

    def __init__(self, delay: float, why: str) -> None:
        super().__init__(why)
        self.delay = delay


class Delivery:
    """One delivery of ``job``: its auction, its result stored once, its acknowledgement."""

    def __init__(self, job: Job, node: BaseNode, auctioneer: Auctioneer, js: JetStream,
                 store: ResultStore, config: JobsConfig) -> None:
        self.job = job
        self.node = node
        self.auctioneer = auctioneer
        self.js = js
        self.store = store
        self.config = config

    async def see_through(self) -> None:
        """One delivery of a job, to its stored result (or a requeue)."""
        job, metrics = self.job, self.node.metrics
        # Whether it has a result already is asked while the bids come in; the auction
        # awards nothing until the answer is no.
        lookup = asyncio.ensure_future(self._lookup(job.task.task_id))
        try:
            result, stored = await self._auction(lookup)
        finally:
            if not lookup.done():
                lookup.cancel()
        if result is None:  # it had one (done before, or cancelled): nothing ran
            metrics.jobs["deduplicated" if job.had_result else "cancelled"] += 1
            await ack(self.node.bus, job.msg)
            return
        if not stored:
            stored = await self.store.save(result, stored_by=self.node.agent_id,
                                           patience=_STORE_PATIENCE)
        if stored:
            metrics.jobs["completed" if result.status is TaskStatus.COMPLETED else "failed"] += 1
        else:
            metrics.jobs["deduplicated"] += 1  # a result was stored first (a late one)
        await ack(self.node.bus, job.msg)

    async def _lookup(self, task_id: str) -> TaskResult | None:
        """The job's stored result, asked until JetStream answers (a leader election after a
        seed died takes seconds); Requeue if it never does: a job is not run while nobody
        can tell whether it already was."""
        deadline = asyncio.get_running_loop().time() + _STORE_PATIENCE
        pause = 0.05
        while True:
            try:
                return await self.store.load(task_id)
            except (JetStreamUnavailable, NotConnected) as exc:
                if asyncio.get_running_loop().time() + pause >= deadline:
                    raise Requeue(1.0, f"cannot tell whether it has a result: {exc}") from None
                await asyncio.sleep(pause)
                pause = min(pause * 2, 1.0)

    async def _has_result(self, lookup: asyncio.Future[TaskResult | None]) -> bool:
        """Whether the job has a stored result (its lookup; Requeue if that gave up)."""
        self.job.had_result = await lookup is not None
        return self.job.had_result

    async def _auction(self, lookup: asyncio.Future[TaskResult | None]
                       ) -> tuple[TaskResult | None, bool]:
        """The job's result and whether the winner stored it; (None, True) if it has one
        already, or is cancelled."""
        job, task, node = self.job, self.job.task, self.node
        timeout = node.config.task_timeout
        if task.deadline is not None:
            timeout = min(timeout, task.deadline - time.time())

        loop = asyncio.get_running_loop()
        early: asyncio.Future[TaskResult | None] | None = lookup  # begun with the delivery
        early_begun = loop.time()

        async def go_ahead() -> bool:
            """No result stored yet, by a lookup begun less than _FRESH_LOOKUP ago: the
            early one if it still is (we were not paused, no winner was lost meanwhile, who
            may have stored its result before it was lost, and no other node may be driving
            it: the job is not suspect), else a new one."""
            nonlocal early
            for _ in range(3):  # each round asks again only if this process was paused
                if job.cancelled:
                    return False
                if self.lost():  # paused past ack_wait: another node drives it now
                    if job.handler is not None:
                        job.handler.cancel()  # the whole delivery stops, quietly
                        await asyncio.sleep(0)
                    return False
                current, begun = early, early_begun
                early = None  # the next call (after a lost winner) asks anew
                if current is None or job.suspect or loop.time() - begun >= _FRESH_LOOKUP:
                    current, begun = asyncio.ensure_future(self._lookup(task.task_id)), loop.time()
                if await self._has_result(current):
                    return False
                if loop.time() - begun < _FRESH_LOOKUP:
                    return True
            raise Requeue(0.5, "paused while asking whether it has a result")

        if job.cancelled or (timeout <= 0 and await self._has_result(lookup)):
            return None, True
        if timeout <= 0:
            return self._failed(task, TaskError(f"job {task.task_id} passed its deadline before "
                                                f"an agent could take it")), False
        try:
            outcome = await self.auctioneer.run(task, timeout=timeout, durable=True,
                                                max_wait=_JOB_PATIENCE, go_ahead=go_ahead,
                                                go_ahead_each=job.suspect)
        except TaskCancelled:
            return None, True
        except (NoBidders, Overloaded, AuctionFailed, BusTimeout) as exc:
            if await self._has_result(lookup):
                return None, True  # done before: whoever can run it no longer matters
            return self._unplaced(exc), False
        result = outcome.result
        if not result.final:  # the winner stopped, or was busy after all: run it again
            raise Requeue(0.5, f"{(result.error or {}).get('type')}")
        return result, outcome.stored

    def _unplaced(self, exc: AgoraError) -> TaskResult:
        """The result of a job no agent took this time, or Requeue to try again later."""
        job = self.job
        task = job.task
        if isinstance(exc, BusTimeout):  # its deadline (or the task timeout) passed
            return self._failed(task, exc)
        if isinstance(exc, AuctionFailed):
            if job.deliveries >= self.config.max_deliveries:
                return self._failed(task, AuctionFailed(
                    f"{exc} (given up after {job.deliveries} deliveries)"))
            raise Requeue(1.0, str(exc))
        if task.deadline is not None and time.time() >= task.deadline:
            return self._failed(task, exc)
        raise Requeue(min(_REQUEUE_LAST, _REQUEUE_FIRST * 2 ** (job.deliveries - 1)), str(exc))

    def _failed(self, task: Task, error: BaseException) -> TaskResult:
        return TaskResult(task_id=task.task_id, status=TaskStatus.FAILED,
                          error=error_to_wire(error), agent_id=self.node.agent_id)

    async def keep_alive(self) -> None:
        """Tell JetStream this job is still being worked on, so it stays with this node.

        If this process was paused (SIGSTOP, starved) for longer than ack_wait, the
        job has been delivered to another node meanwhile: its run here stops, quietly
        (no acknowledgement, no cancel to the agent working on it: the new owner's
        auction finds that agent holding the task and awards it the same run).
        """
        job, loop = self.job, asyncio.get_running_loop()
        interval = progress_interval(self.js.ack_wait)
        while True:
            await asyncio.sleep(interval)
            if self.lost():
                if job.handler is not None:
                    job.handler.cancel()
                return
            job.last_progress = loop.time()
            # The latest delivery's, should it be delivered again.
            await ack(self.node.bus, job.msg, b"+WPI")

    def lost(self) -> bool:
        """True (and the job marked abandoned) if our last "in progress" is older than
        ack_wait: JetStream has given the job to another node meanwhile."""
        job = self.job
        if not job.abandoned and (asyncio.get_running_loop().time() - job.last_progress
                                  > self.js.ack_wait):
            job.abandoned = True
        return job.abandoned
