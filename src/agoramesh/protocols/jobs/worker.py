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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import nats.errors
from nats.aio.msg import Msg

from agoramesh.bus.envelope import looks_like_envelope
from agoramesh.bus.ingress import decode_json, looks_like_json
from agoramesh.bus.jetstream import JetStream, ack, progress_interval, valid_task_id
from agoramesh.config import JobsConfig
from agoramesh.errors import (
    AccessDenied,
    AgoraError,
    AuctionFailed,
    BusTimeout,
    EnvelopeError,
    IngressDenied,
    InvalidInput,
    JetStreamUnavailable,
    MalformedEnvelope,
    NoBidders,
    NotConnected,
    Overloaded,
    TaskCancelled,
    TaskError,
    error_to_wire,
)
from agoramesh.nodes.task import Task, TaskResult, TaskStatus
from agoramesh.protocols.jobs.jobs import ResultStore
from agoramesh.security.acl import Action

if TYPE_CHECKING:
    from agoramesh.nodes.node import BaseNode
    from agoramesh.protocols.auction.auctioneer import Auctioneer

__all__ = ("JobWorker",)

log = logging.getLogger("agoramesh.jobs")

#: A pull request waits this long on the server for jobs to arrive.
_PULL_EXPIRES = 5.0
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
class _Pull:
    remaining: int
    expires: float  # loop time after which the request is forgotten here


@dataclass(slots=True)
class _Job:
    msg: Msg
    task: Task
    requester: str | None
    deliveries: int
    cancelled: bool = False
    had_result: bool = False  # a result was stored before this delivery ran anything
    last_progress: float = 0.0  # loop time of our last "in progress"
    abandoned: bool = False  # we were paused past ack_wait: JetStream gave it to another
    handler: asyncio.Task[None] | None = None


class _Requeue(Exception):  # a signal, not an error: the job goes back to the stream
    """Hand the job back to the stream, to be delivered again after ``delay`` seconds."""

    def __init__(self, delay: float, why: str) -> None:
        super().__init__(why)
        self.delay = delay


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
        self._jobs: dict[str, _Job] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._pulls: dict[str, _Pull] = {}
        self._requested = 0
        self._wake = asyncio.Event()
        self._stopping = False
        self._abandon = False  # killed: hand nothing back, as a crash would
        self._main: asyncio.Task[None] | None = None
        self._subscriptions: list[object] = []

    @property
    def running(self) -> int:
        """Jobs this node is working on now."""
        return len(self._tasks)

    async def start(self) -> None:
        """Start taking jobs in the background (once JetStream answers)."""
        if self.max_jobs > 0 and self._main is None:
            self._main = asyncio.ensure_future(self._serve())
            self._main.set_name(f"{self.node.config.name}-jobs")

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
        if self._main is not None:
            self._main.cancel()
            await asyncio.wait([self._main], timeout=2.0)
        await self._unsubscribe()

    async def kill(self) -> None:
        """Stop at once, as a crash would: running jobs are left for JetStream to redeliver."""
        self._stopping = self._abandon = True
        for task in [*self._tasks, *([self._main] if self._main else [])]:
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
            except (AgoraError, TimeoutError, nats.errors.Error) as exc:
                reason = str(exc) or type(exc).__name__
            if not said:
                self.node.log.info("not taking durable jobs yet: %s; trying again", reason)
                said = True
            await asyncio.sleep(pause)
            pause = min(pause * 2, 30.0)
        nc = self.node.bus.nats
        inbox = self.node.bus.new_inbox()
        self._subscriptions.append(await nc.subscribe(f"{inbox}.*", cb=self._delivered))
        self._subscriptions.append(await nc.subscribe(
            self.node.bus.subjects.cancel(">"), cb=self._on_cancel))
        self.node.log.debug("taking durable jobs (up to %d at once)", self.max_jobs)
        return inbox

    async def _unsubscribe(self) -> None:
        for subscription in self._subscriptions:
            with contextlib.suppress(nats.errors.Error, AttributeError):
                await subscription.unsubscribe()  # type: ignore[attr-defined]
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
                except (AgoraError, nats.errors.Error) as exc:
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

    async def _delivered(self, msg: Msg) -> None:
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
            await ack(msg, b"-NAK")  # not ours to run any more: to another node at once
            return
        task = asyncio.ensure_future(self._handle(msg))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._wake.set()

    async def _on_cancel(self, msg: Msg) -> None:
        task_id = msg.subject.rpartition(".")[2]
        job = self._jobs.get(task_id)
        if job is not None:
            job.cancelled = True
            self.auctioneer.cancel(task_id)

    # -- one job ----------------------------------------------------------------------------

    async def _handle(self, msg: Msg) -> None:
        metrics = self.node.metrics
        try:
            meta = msg.metadata
            deliveries, stored_ms = meta.num_delivered, int(meta.timestamp.timestamp() * 1000)
        except (nats.errors.Error, ValueError, IndexError):
            deliveries, stored_ms = 1, int(time.time() * 1000)
        metrics.jobs["taken"] += 1
        if deliveries > 1:
            metrics.jobs["redelivered"] += 1
        try:
            job = self._parse(msg, deliveries, stored_ms)
        except (EnvelopeError, TaskError, AccessDenied) as exc:
            await self._refused(msg, exc)
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
        self._jobs[job.task.task_id] = job
        job.handler = asyncio.current_task()
        job.last_progress = asyncio.get_running_loop().time()
        if deliveries > 1:
            self.node.log.info("job %s: delivery %d", job.task.task_id, deliveries,
                               extra={"task_id": job.task.task_id})
        keepalive = asyncio.ensure_future(self._keep_alive(job))
        try:
            await self._see_through(job)
        except _Requeue as requeue:
            metrics.jobs["requeued"] += 1
            self.node.log.info("job %s back to the stream for %.2fs: %s", job.task.task_id,
                               requeue.delay, requeue, extra={"task_id": job.task.task_id})
            await ack(job.msg, b"-NAK",
                      json.dumps({"delay": int(requeue.delay * 1e9)}).encode())
        except asyncio.CancelledError:
            if job.abandoned:
                metrics.jobs["abandoned"] += 1
                self.node.log.info("job %s: left to the node it was delivered to while we "
                                   "were paused", job.task.task_id,
                                   extra={"task_id": job.task.task_id})
            elif not self._abandon:  # we are stopping: to another node now
                await asyncio.shield(ack(job.msg, b"-NAK"))
            raise
        except (JetStreamUnavailable, NotConnected) as exc:
            # Not acknowledged: JetStream delivers it again after ack_wait, here or elsewhere.
            self.node.log.warning("job %s left for redelivery: %s", job.task.task_id, exc,
                                  extra={"task_id": job.task.task_id})
        finally:
            keepalive.cancel()
            if self._jobs.get(job.task.task_id) is job:
                del self._jobs[job.task.task_id]

    async def _see_through(self, job: _Job) -> None:
        """One delivery of a job, to its stored result (or a requeue)."""
        metrics = self.node.metrics
        # Whether it has a result already is asked while the bids come in; the auction
        # awards nothing until the answer is no.
        lookup = asyncio.ensure_future(self._lookup(job.task.task_id))
        try:
            result, stored = await self._auction(job, lookup)
        finally:
            if not lookup.done():
                lookup.cancel()
        if result is None:  # it had one (done before, or cancelled): nothing ran
            metrics.jobs["deduplicated" if job.had_result else "cancelled"] += 1
            await ack(job.msg)
            return
        if not stored:
            stored = await self.store.save(result, stored_by=self.node.agent_id,
                                           patience=_STORE_PATIENCE)
        if stored:
            metrics.jobs["completed" if result.status is TaskStatus.COMPLETED else "failed"] += 1
        else:
            metrics.jobs["deduplicated"] += 1  # a result was stored first (a late one)
        await ack(job.msg)

    async def _lookup(self, task_id: str) -> TaskResult | None:
        """The job's stored result, asked until JetStream answers (a leader election after a
        seed died takes seconds); _Requeue if it never does: a job is not run while nobody
        can tell whether it already was."""
        deadline = asyncio.get_running_loop().time() + _STORE_PATIENCE
        pause = 0.05
        while True:
            try:
                return await self.store.load(task_id)
            except (JetStreamUnavailable, NotConnected) as exc:
                if asyncio.get_running_loop().time() + pause >= deadline:
                    raise _Requeue(1.0, f"cannot tell whether it has a result: {exc}") from None
                await asyncio.sleep(pause)
                pause = min(pause * 2, 1.0)

    @staticmethod
    async def _has_result(job: _Job, lookup: asyncio.Future[TaskResult | None]) -> bool:
        """Whether the job has a stored result (its lookup; _Requeue if that gave up)."""
        job.had_result = await lookup is not None
        return job.had_result

    async def _auction(self, job: _Job, lookup: asyncio.Future[TaskResult | None]
                       ) -> tuple[TaskResult | None, bool]:
        """The job's result and whether the winner stored it; (None, True) if it has one
        already, or is cancelled."""
        task, node = job.task, self.node
        timeout = node.config.task_timeout
        if task.deadline is not None:
            timeout = min(timeout, task.deadline - time.time())

        loop = asyncio.get_running_loop()
        early: asyncio.Future[TaskResult | None] | None = lookup  # begun with the delivery
        early_begun = loop.time()

        async def go_ahead() -> bool:
            """No result stored yet, by a lookup begun less than _FRESH_LOOKUP ago: the
            early one if it still is (we were not paused, no winner was lost meanwhile, who
            may have stored its result before it was lost), else a new one."""
            nonlocal early
            for _ in range(3):  # each round asks again only if this process was paused
                if job.cancelled:
                    return False
                if self._lost(job):  # paused past ack_wait: another node drives it now
                    if job.handler is not None:
                        job.handler.cancel()  # the whole delivery stops, quietly
                        await asyncio.sleep(0)
                    return False
                current, begun = early, early_begun
                early = None  # the next call (after a lost winner) asks anew
                if current is None or loop.time() - begun >= _FRESH_LOOKUP:
                    current, begun = asyncio.ensure_future(self._lookup(task.task_id)), loop.time()
                if await self._has_result(job, current):
                    return False
                if loop.time() - begun < _FRESH_LOOKUP:
                    return True
            raise _Requeue(0.5, "paused while asking whether it has a result")

        if job.cancelled or (timeout <= 0 and await self._has_result(job, lookup)):
            return None, True
        if timeout <= 0:
            return self._failed(task, TaskError(f"job {task.task_id} passed its deadline before "
                                                f"an agent could take it")), False
        try:
            outcome = await self.auctioneer.run(task, timeout=timeout, durable=True,
                                                max_wait=_JOB_PATIENCE, go_ahead=go_ahead)
        except TaskCancelled:
            return None, True
        except (NoBidders, Overloaded, AuctionFailed, BusTimeout) as exc:
            if await self._has_result(job, lookup):
                return None, True  # done before: whoever can run it no longer matters
            return self._unplaced(job, exc), False
        result = outcome.result
        if not result.final:  # the winner stopped, or was busy after all: run it again
            raise _Requeue(0.5, f"{(result.error or {}).get('type')}")
        return result, outcome.stored

    def _unplaced(self, job: _Job, exc: AgoraError) -> TaskResult:
        """The result of a job no agent took this time, or _Requeue to try again later."""
        task = job.task
        if isinstance(exc, BusTimeout):  # its deadline (or the task timeout) passed
            return self._failed(task, exc)
        if isinstance(exc, AuctionFailed):
            if job.deliveries >= self.config.max_deliveries:
                return self._failed(task, AuctionFailed(
                    f"{exc} (given up after {job.deliveries} deliveries)"))
            raise _Requeue(1.0, str(exc))
        if task.deadline is not None and time.time() >= task.deadline:
            return self._failed(task, exc)
        raise _Requeue(min(_REQUEUE_LAST, _REQUEUE_FIRST * 2 ** (job.deliveries - 1)), str(exc))

    def _failed(self, task: Task, error: BaseException) -> TaskResult:
        return TaskResult(task_id=task.task_id, status=TaskStatus.FAILED,
                          error=error_to_wire(error), agent_id=self.node.agent_id)

    async def _keep_alive(self, job: _Job) -> None:
        """Tell JetStream this job is still being worked on, so it stays with this node.

        If this process was paused (SIGSTOP, starved) for longer than ack_wait, the
        job has been delivered to another node meanwhile: its run here stops, quietly
        (no acknowledgement, no cancel to the agent working on it: the new owner's
        auction finds that agent holding the task and awards it the same run).
        """
        loop = asyncio.get_running_loop()
        interval = progress_interval(self.js.ack_wait)
        while True:
            await asyncio.sleep(interval)
            if self._lost(job):
                if job.handler is not None:
                    job.handler.cancel()
                return
            job.last_progress = loop.time()
            await ack(job.msg, b"+WPI")  # the latest delivery's, should it be delivered again

    def _lost(self, job: _Job) -> bool:
        """True (and the job marked abandoned) if our last "in progress" is older than
        ack_wait: JetStream has given the job to another node meanwhile."""
        if not job.abandoned and (asyncio.get_running_loop().time() - job.last_progress
                                  > self.js.ack_wait):
            job.abandoned = True
        return job.abandoned

    # -- parsing -----------------------------------------------------------------------------

    def _parse(self, msg: Msg, deliveries: int, stored_ms: int) -> _Job:
        """The job in ``msg``: a signed task_request or plain JSON (PROTOCOL.md §21)."""
        node, bus = self.node, self.node.bus
        capability = bus.subjects.capability_of(msg.subject)
        if capability is None:
            raise InvalidInput(f"{msg.subject} is not a job subject")
        data = msg.data
        requester: str | None = None
        if looks_like_envelope(data):
            envelope = bus.guard.admit(data, msg.subject, None, now=stored_ms, stored=True)
            bus.saw(envelope)
            if envelope.type != "task_request":
                raise InvalidInput(f"a job envelope must be a task_request, not "
                                   f"{envelope.type!r}")
            requester, body = envelope.sender, envelope.body
        elif looks_like_json(data):
            if not node.config.json_ingress:
                raise bus.guard.reject(IngressDenied(
                    f"plain JSON jobs are not accepted by {node.config.name}; send a signed "
                    f"envelope"))
            body = decode_json(data, max_bytes=bus.config.envelope.max_bytes)
            bus.received["json"] += 1
        else:
            raise bus.guard.reject(MalformedEnvelope(
                "job is neither an envelope nor a JSON object"))
        task = Task.from_dict(body, task_type=capability)
        header = (msg.headers or {}).get("Nats-Msg-Id")
        given = body.get("task_id") if isinstance(body, dict) else None
        from_body = given if isinstance(given, str) and given == task.task_id else None
        if header and from_body and header != from_body:
            raise InvalidInput(f"the job's Nats-Msg-Id {header[:60]!r} and its task_id "
                               f"{from_body[:60]!r} differ")
        seq = msg.metadata.sequence.stream if msg.reply else 0
        task = replace(task, task_id=valid_task_id(header or from_body or f"job-{seq}"))
        denied = node.check_access(requester, capability, Action.SUBMIT)
        if denied is not None:
            raise denied
        return _Job(msg=msg, task=task, requester=requester, deliveries=deliveries)

    async def _refused(self, msg: Msg, error: BaseException) -> None:
        """A job that cannot run as sent: its result is the refusal (if its id is readable)."""
        self.node.metrics.jobs["failed"] += 1
        task_id = (msg.headers or {}).get("Nats-Msg-Id")
        if task_id is None:
            with contextlib.suppress(nats.errors.Error, ValueError):
                task_id = f"job-{msg.metadata.sequence.stream}"
        self.node.log.info("job %s refused: %s", task_id, error, extra={"task_id": task_id})
        try:
            result = TaskResult(task_id=valid_task_id(task_id or ""), status=TaskStatus.FAILED,
                                error=error_to_wire(error), agent_id=self.node.agent_id)
            await self.store.save(result, stored_by=self.node.agent_id)
        except InvalidInput:
            pass  # no id to store it under: the refusal is only counted
        except (JetStreamUnavailable, NotConnected):
            return  # delivered again later, refused again then
        await ack(msg)
