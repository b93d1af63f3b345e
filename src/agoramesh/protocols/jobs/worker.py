"""The node's side of durable jobs: take, auction, store once, acknowledge (M-8).

Every node runs a :class:`JobWorker` (``NodeConfig.max_jobs`` jobs at a time;
0 takes none). It pulls from the one shared consumer of the job stream only
as many jobs as it has room for, so a burst waits in the stream, not in a
node. For each job::

    parse (a signed task_request, or plain JSON where the node's policy allows)
    result already stored?  -> acknowledge, nothing runs (the task id is the key)
    auction it (durable: the winner stores its result itself)
        nobody offers it / everyone busy -> back to the stream, delivered again later
        a result -> stored once (if the winner did not), then acknowledged
    while it runs: "+WPI" every ack_wait/3, so JetStream keeps it with this node

A node that dies, freezes past ``ack_wait`` or loses its connection stops
saying "in progress"; JetStream then delivers the job to another node, which
finds the result if one was stored meanwhile, or auctions it again: the
agent still running it bids as its holder and is awarded it, so the work is
not done twice. A job that failed to find a winner on ``max_deliveries``
deliveries is stored FAILED. A cancel (``agora.cancel.<task-id>``, sent by
:meth:`Jobs.cancel` after it stored the cancellation) stops the auction and
tells the winner to cancel. On ``stop`` the node takes no more jobs, lets the
running ones finish within the grace, and hands the rest back at once.

A job is parsed or refused in :mod:`~agoramesh.protocols.jobs.intake`, and its
delivery seen through in :mod:`~agoramesh.protocols.jobs.delivery`.
"""


from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agoramesh.bus.jetstream import JetStream, ack, delivery_of
from agoramesh.bus.message import Message
from agoramesh.bus.subscription import Listener
from agoramesh.config import JobsConfig
from agoramesh.errors import (
    AccessDenied,
    AgoraError,
    EnvelopeError,
    JetStreamUnavailable,
    NotConnected,
    TaskError,
)
from agoramesh.protocols.jobs.delivery import Delivery, Job, Requeue
from agoramesh.protocols.jobs.intake import parse_job, refuse
from agoramesh.protocols.jobs.jobs import ResultStore
from agoramesh.protocols.jobs.stalls import StallWatch

if TYPE_CHECKING:
    from agoramesh.nodes.node import BaseNode
    from agoramesh.protocols.auction.auctioneer import Auctioneer

__all__ = ("JobWorker",)

log = logging.getLogger("agoramesh.jobs")

#: A pull request waits this long on the server for jobs to arrive.
_PULL_EXPIRES = 5.0

@dataclass(slots=True)
class _Pull:
    remaining: int
    expires: float  # loop time after which the request is forgotten here


class JobWorker:
    """Takes durable jobs for one node (``max_jobs`` at once) and sees each to one result."""

    def __init__(self, node: BaseNode, auctioneer: Auctioneer,
                 config: JobsConfig | None = None, *, max_jobs: int = 32) -> None:
        """``node`` runs jobs it wins and checks access; ``auctioneer`` auctions them."""
        self.node = node
        self.auctioneer = auctioneer
        self.config = config or JobsConfig()
        self.max_jobs = max_jobs
        self.js = JetStream(node.bus, self.config)
        self.store = ResultStore(self.js)
        self._jobs: dict[str, Job] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._pulls: dict[str, _Pull] = {}
        self._requested = 0
        self._wake = asyncio.Event()
        self._stopping = False
        self._abandon = False  # killed: hand nothing back, as a crash would
        self._main: asyncio.Task[None] | None = None
        self._stalls = StallWatch()
        self._stall_watch: asyncio.Task[None] | None = None
        self._subscriptions: list[Listener] = []

    @property
    def running(self) -> int:
        """Jobs this node is working on now."""
        return len(self._tasks)

    async def start(self) -> None:
        """Start taking jobs in the background (once JetStream answers)."""
        if self.max_jobs > 0 and self._main is None:
            self._main = asyncio.ensure_future(self._serve())
            self._main.set_name(f"{self.node.config.name}-jobs")
            self._stall_watch = asyncio.ensure_future(self._stalls.run())

    async def stop(self, grace: float = 5.0) -> None:
        """Take no more jobs; running ones get ``grace`` seconds, the rest go back at once."""
        self._stopping = True
        self._wake.set()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()  # each hands its job back (-NAK) as it unwinds
            if pending:
                await asyncio.wait(pending, timeout=2.0)
        for owned in (self._main, self._stall_watch):
            if owned is not None:
                owned.cancel()
                await asyncio.wait([owned], timeout=2.0)
        await self._unsubscribe()

    async def kill(self) -> None:
        """Stop at once, as a crash would: running jobs are left for JetStream to redeliver."""
        self._stopping = self._abandon = True
        for task in [*self._tasks, *(t for t in (self._main, self._stall_watch) if t)]:
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=2.0)

    # -- taking jobs -------------------------------------------------------------------------

    async def _serve(self) -> None:
        """Take jobs until stopped; whatever goes wrong, start over after a pause."""
        pause = 1.0
        while not self._stopping:
            try:
                inbox = await self._connect()
                pause = 1.0
                await self._pull(inbox)
            except Exception as exc:  # the worker must outlive any failure
                self.node.log.warning("durable jobs: %s: %s; starting over in %.0fs",
                                      type(exc).__name__, exc, pause,
                                      exc_info=not isinstance(exc, AgoraError))
            await self._unsubscribe()
            if not self._stopping:
                await asyncio.sleep(pause)
                pause = min(pause * 2, 30.0)

    async def _connect(self) -> str:
        """Wait for JetStream (a mesh may run without it), then listen; the pull inbox."""
        pause, said = 1.0, False
        while not self._stopping:
            try:
                if await self.js.available():
                    await self.js.ensure()
                    break
                reason = "no JetStream answers"
            except (AgoraError, TimeoutError) as exc:
                reason = str(exc) or type(exc).__name__
            if not said:
                self.node.log.info("not taking durable jobs yet: %s; trying again", reason)
                said = True
            await asyncio.sleep(pause)
            pause = min(pause * 2, 30.0)
        bus = self.node.bus
        inbox = bus.new_inbox()
        self._subscriptions.append(await bus.listen(f"{inbox}.*", self._delivered))
        self._subscriptions.append(await bus.listen(bus.subjects.cancel(">"), self._on_cancel))
        self.node.log.debug("taking durable jobs (up to %d at once)", self.max_jobs)
        return inbox

    async def _unsubscribe(self) -> None:
        for subscription in self._subscriptions:
            await subscription.stop()
        self._subscriptions.clear()
        for reply in list(self._pulls):
            self._forget(reply)

    async def _pull(self, inbox: str) -> None:
        """Keep pull requests out for the room this node has; no more."""
        loop = asyncio.get_running_loop()
        refill = max(1, self.max_jobs // 4)
        number = 0
        while not self._stopping:
            now = loop.time()
            for reply, pull in list(self._pulls.items()):
                if pull.expires < now:  # its 408 never came (we reconnected): forget it
                    self._forget(reply)
            room = self.max_jobs - len(self._tasks) - self._requested
            if room > 0 and (self._requested == 0 or room >= refill):
                number += 1
                reply = f"{inbox}.{number}"
                self._pulls[reply] = _Pull(room, now + _PULL_EXPIRES + 1.0)
                self._requested += room
                try:
                    await self.js.pull(reply, room, _PULL_EXPIRES)
                except AgoraError as exc:
                    self._forget(reply)
                    self.node.log.debug("pull request not sent: %s", exc)
                    await asyncio.sleep(1.0)
                    continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._wake.wait()

    def _forget(self, reply: str) -> None:
        pull = self._pulls.pop(reply, None)
        if pull is not None:
            self._requested -= pull.remaining

    async def _delivered(self, msg: Message) -> None:
        headers = msg.headers or {}
        if not msg.data and "Status" in headers:  # on the pull's reply subject: its end
            if headers["Status"] != "100":
                self._forget(msg.subject)
                if headers["Status"] == "409":
                    log.debug("pull request ended: %s", headers.get("Description", ""))
                self._wake.set()
            return
        # A job arrives with its own subject, not the pull's reply subject: it is counted
        # against the oldest pull request (the consumer serves them in order).
        if self._pulls:
            oldest = next(iter(self._pulls))
            pull = self._pulls[oldest]
            pull.remaining -= 1
            self._requested -= 1
            if pull.remaining <= 0:
                del self._pulls[oldest]
        if self._stopping:
            # Not ours to run any more: to another node at once.
            await ack(self.node.bus, msg, b"-NAK")
            return
        task = asyncio.ensure_future(self._handle(msg))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._wake.set()

    async def _on_cancel(self, msg: Message) -> None:
        task_id = msg.subject.rpartition(".")[2]
        job = self._jobs.get(task_id)
        if job is not None:
            job.cancelled = True
            self.auctioneer.cancel(task_id)

    # -- one job ----------------------------------------------------------------------------

    async def _handle(self, msg: Message) -> None:
        metrics = self.node.metrics
        info = delivery_of(msg)
        deliveries, stored_ms = ((info.deliveries, info.stored_ms) if info is not None
                                 else (1, int(time.time() * 1000)))
        metrics.jobs["taken"] += 1
        if deliveries > 1:
            metrics.jobs["redelivered"] += 1
        try:
            job = parse_job(self.node, msg, deliveries, stored_ms)
        except (EnvelopeError, TaskError, AccessDenied) as exc:
            await refuse(self.node, self.store, msg, exc)
            return
        stalled = self._stalls.latest(self.js.ack_wait)
        if stalled >= self.js.ack_wait - max(0.5, self.js.ack_wait / 6):
            # Read after we were paused for about ack_wait or longer: it may have sat here
            # past its ack_wait and been delivered to another node, which drives it now.
            # Left to JetStream (no ack): it comes back after ack_wait if nobody has it.
            metrics.jobs["abandoned"] += 1
            self.node.log.info("job %s: read after a %.1fs pause, left to JetStream",
                               job.task.task_id, stalled, extra={"task_id": job.task.task_id})
            return
        running = self._jobs.get(job.task.task_id)
        if running is not None and not running.abandoned:
            # Delivered again while we still drive it (our "in progress" got lost, or the
            # consumer's leader changed): the run we have goes on, acknowledging this delivery.
            running.msg, running.deliveries = msg, deliveries
            running.last_progress = asyncio.get_running_loop().time()
            self.node.log.info("job %s: delivery %d, already running here", job.task.task_id,
                               deliveries, extra={"task_id": job.task.task_id})
            return
        # Delivered before, or read after a shorter pause: another node may have driven
        # it, or be driving it. Ours now at once (the pause ate into its ack_wait).
        job.suspect = deliveries > 1 or stalled > 0
        self._jobs[job.task.task_id] = job
        job.handler = asyncio.current_task()
        job.last_progress = asyncio.get_running_loop().time()
        if deliveries > 1:
            self.node.log.info("job %s: delivery %d", job.task.task_id, deliveries,
                               extra={"task_id": job.task.task_id})
        delivery = Delivery(job, self.node, self.auctioneer, self.js, self.store, self.config)
        keepalive = asyncio.ensure_future(delivery.keep_alive())
        try:
            if job.suspect:  # after it is registered: a delivery meanwhile finds it running
                await ack(self.node.bus, msg, b"+WPI")
            await delivery.see_through()
        except Requeue as requeue:
            metrics.jobs["requeued"] += 1
            self.node.log.info("job %s back to the stream for %.2fs: %s", job.task.task_id,
                               requeue.delay, requeue, extra={"task_id": job.task.task_id})
            await ack(self.node.bus, job.msg, b"-NAK",
                      json.dumps({"delay": int(requeue.delay * 1e9)}).encode())
        except asyncio.CancelledError:
            if job.abandoned:
                metrics.jobs["abandoned"] += 1
                self.node.log.info("job %s: left to the node it was delivered to while we "
                                   "were paused", job.task.task_id,
                                   extra={"task_id": job.task.task_id})
            elif not self._abandon:  # we are stopping: to another node now
                await asyncio.shield(ack(self.node.bus, job.msg, b"-NAK"))
            raise
        except (JetStreamUnavailable, NotConnected) as exc:
            # Not acknowledged: JetStream delivers it again after ack_wait, here or elsewhere.
            self.node.log.warning("job %s left for redelivery: %s", job.task.task_id, exc,
                                  extra={"task_id": job.task.task_id})
        finally:
            keepalive.cancel()
            if self._jobs.get(job.task.task_id) is job:
                del self._jobs[job.task.task_id]
