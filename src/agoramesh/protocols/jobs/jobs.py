"""Durable jobs (M-8): a task handed to the mesh is never lost, and its result is stored once.

A job is a task published to JetStream on ``agora.jobs.<capability>`` with the
task id as ``Nats-Msg-Id``; whichever node takes it from the shared consumer
runs the auction (protocols/jobs/worker.py); the first result stored under the
task id is the result (:class:`ResultStore`), published on
``agora.result.<task-id>`` as it is stored. PROTOCOL.md §21 has the formats.

:class:`Jobs` is the submitter's side::

    jobs = Jobs(bus)
    receipt = await jobs.submit("math.evaluate", {"expression": "6*7"})
    result = await jobs.wait(receipt.task_id, timeout=60)     # or later: jobs.result(id)

``run`` does both, listening for the result before the job is stored. The
task id is the idempotency key end to end: submitting the same id again
stores nothing new within the stream's duplicate window, and a job whose
result is stored is never run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from agoramesh.bus.bus import Bus
from agoramesh.bus.ingress import encode_json
from agoramesh.bus.jetstream import JetStream, PubAck, StoredMessage, valid_task_id
from agoramesh.bus.message import Message
from agoramesh.config import JobsConfig
from agoramesh.errors import (
    AgoraError,
    BusTimeout,
    JetStreamUnavailable,
    JobNotFound,
    NotConnected,
    TaskCancelled,
    error_to_wire,
)
from agoramesh.nodes.task import Task, TaskResult, TaskStatus

__all__ = ("JobInfo", "JobReceipt", "Jobs", "JobsStatus", "ResultStore", "result_record")

_POLL = 1.0  # seconds between looks at the store while waiting for a live result


def result_record(result: TaskResult, *, stored_by: str) -> bytes:
    """The stored (and published) form of a result: compact JSON of the task_response
    body plus ``stored_by`` (an agent id) and ``stored_at`` (Unix seconds)."""
    body = {**result.as_dict(), "stored_by": stored_by, "stored_at": round(time.time(), 3)}
    try:
        return encode_json(body)
    except ValueError as exc:  # NaN and friends: store the failure, not a broken record
        failed = TaskResult(task_id=result.task_id, status=TaskStatus.FAILED,
                            error={"type": "BackendBadResponse",
                                   "message": f"the result cannot be stored as JSON: {exc}"},
                            agent_id=result.agent_id)
        return encode_json({**failed.as_dict(), "stored_by": stored_by,
                            "stored_at": round(time.time(), 3)})


def _parse_record(data: bytes) -> TaskResult:
    try:
        body = json.loads(data)
        return TaskResult.from_dict(body)
    except (ValueError, KeyError, TypeError) as exc:
        raise AgoraError(f"unreadable stored result: {exc}") from None


class ResultStore:
    """Results by task id: the first stored is the result, and JetStream publishes it live
    on ``agora.result.<task-id>`` as it stores it (a value that lost the race never is)."""

    def __init__(self, js: JetStream) -> None:
        self.js = js

    async def save(self, result: TaskResult, *, stored_by: str, patience: float = 20.0) -> bool:
        """Store ``result`` unless a result is stored already; True if it is ours.

        JetStream being briefly unavailable (a leader election after a seed
        died) is retried for ``patience`` seconds (with the same key, so at most
        one value is ever stored).
        """
        record = result_record(result, stored_by=stored_by)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + patience
        pause = 0.05
        while True:
            try:  # short attempts, so a new leader is found soon after it is elected
                return await self.js.store_once(
                    result.task_id, record, timeout=max(0.2, min(2.0, deadline - loop.time())))
            except JetStreamUnavailable:
                if loop.time() + pause >= deadline:
                    raise
                await asyncio.sleep(pause)
                pause = min(pause * 2, 1.0)

    async def load(self, task_id: str) -> TaskResult | None:
        data = await self.js.result(task_id)
        return None if data is None else _parse_record(data)


@dataclass(frozen=True, slots=True)
class JobReceipt:
    """A job the stream holds: its task id, stream sequence, and whether it was there already."""

    task_id: str
    capability: str
    seq: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class JobInfo:
    """A job still in the stream: queued, or delivered to a node and not finished."""

    task_id: str
    capability: str
    seq: int
    queued_at: str
    state: str  # queued | running


@dataclass(frozen=True, slots=True)
class JobsStatus:
    """What ``agoramesh jobs`` shows."""

    queued: int  # not yet delivered to any node
    running: int  # delivered, not yet acknowledged
    redelivered: int
    results: int  # results stored (within their ttl)
    results_bytes: int
    jobs: list[JobInfo] = field(default_factory=list)
    recent: list[TaskResult] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"queued": self.queued, "running": self.running,
                "redelivered": self.redelivered, "results": self.results,
                "results_bytes": self.results_bytes,
                "jobs": [_info(job) for job in self.jobs],
                "recent": [result.as_dict() for result in self.recent]}


def _info(job: JobInfo) -> dict[str, Any]:
    return {"task_id": job.task_id, "capability": job.capability, "seq": job.seq,
            "queued_at": job.queued_at, "state": job.state}


class Jobs:
    """Submit durable jobs, wait for or read their results, cancel them, list them."""

    def __init__(self, bus: Bus, config: JobsConfig | None = None) -> None:
        self.bus = bus
        self.js = JetStream(bus, config)
        self.store = ResultStore(self.js)

    async def submit(self, capability: str, parameters: dict[str, Any] | None = None, *,
                     task_id: str | None = None, priority: int = 5,
                     deadline: float | None = None, timeout: float = 10.0,
                     callback: str | None = None) -> JobReceipt:
        """Store a job (signed by this bus's identity) until a node takes it; ``callback``:
        a subject its winner also publishes the result on (each run that finishes it).

        ``timeout`` bounds the wait for the stream to take it: a publish that
        fails while a leader is elected is sent again, with the same task id,
        so it is stored once. Raises StoreFull, JetStreamUnavailable, InvalidTask.
        """
        task = Task(capability=capability, parameters=dict(parameters or {}),
                    task_id=valid_task_id(task_id or uuid.uuid4().hex), priority=priority,
                    deadline=deadline, callback=callback)
        return await self.submit_task(task, timeout=timeout)

    async def submit_task(self, task: Task, *, timeout: float = 10.0) -> JobReceipt:
        valid_task_id(task.task_id)
        subject = self.bus.subjects.jobs(task.capability)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        await self._ensure(deadline)
        wire = self.bus.seal(subject, "task_request", task.as_dict(),
                             ttl_ms=self.bus.ttl_for(max(timeout, 60.0)))
        pause = 0.05
        while True:
            left = deadline - loop.time()
            try:
                ack: PubAck = await self.js.publish(subject, wire, msg_id=task.task_id,
                                                    timeout=max(0.2, min(left, 2.0)))
                return JobReceipt(task_id=task.task_id, capability=task.capability,
                                  seq=ack.seq, duplicate=ack.duplicate)
            except (JetStreamUnavailable, NotConnected):
                if loop.time() + pause >= deadline:
                    raise
                await asyncio.sleep(pause)
                pause = min(pause * 2, 1.0)

    async def _ensure(self, deadline: float) -> None:
        left = deadline - asyncio.get_running_loop().time()
        await self.js.ensure(timeout=max(1.0, left))

    async def run(self, capability: str, parameters: dict[str, Any] | None = None, *,
                  timeout: float = 60.0, task_id: str | None = None,
                  priority: int = 5, deadline: float | None = None,
                  callback: str | None = None) -> TaskResult:
        """Submit and wait: the result, stored and delivered once, within ``timeout``."""
        task = Task(capability=capability, parameters=dict(parameters or {}),
                    task_id=valid_task_id(task_id or uuid.uuid4().hex), priority=priority,
                    deadline=deadline, callback=callback)
        async with self._listening(task.task_id) as arrived:
            await self.submit_task(task, timeout=min(timeout, 10.0))
            return await self._await(task.task_id, arrived, timeout)

    async def wait(self, task_id: str, *, timeout: float = 60.0) -> TaskResult:
        """The result of ``task_id``: at once if stored, else when it is (BusTimeout after
        ``timeout``)."""
        async with self._listening(valid_task_id(task_id)) as arrived:
            with contextlib.suppress(JetStreamUnavailable, NotConnected):
                stored = await self.store.load(task_id)  # done already: no wait at all
                if stored is not None:
                    return stored
            return await self._await(task_id, arrived, timeout)

    @contextlib.asynccontextmanager
    async def _listening(self, task_id: str) -> Any:
        arrived: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_result(msg: Message) -> None:
            arrived.put_nowait(msg.data)

        listener = await self.bus.listen(self.bus.subjects.result(task_id), on_result)
        try:
            yield arrived
        finally:
            await listener.stop()

    async def _await(self, task_id: str, arrived: asyncio.Queue[bytes],
                     timeout: float) -> TaskResult:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # Live results are the fast path; the store is read now and then in case one was
        # published before our interest reached its server, or while we reconnected.
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise BusTimeout(f"no result for job {task_id} within {timeout:g}s; it is "
                                 f"still queued or running: `agoramesh jobs result {task_id}` "
                                 f"reads it later")
            try:
                async with asyncio.timeout(min(left, _POLL)):
                    return _parse_record(await arrived.get())
            except TimeoutError:
                pass
            with contextlib.suppress(JetStreamUnavailable, NotConnected):
                stored = await self.store.load(task_id)
                if stored is not None:
                    return stored

    async def result(self, task_id: str) -> TaskResult | None:
        """The stored result of ``task_id``, or None if there is none (yet)."""
        return await self.store.load(valid_task_id(task_id))

    async def cancel(self, task_id: str) -> TaskResult:
        """Cancel a job: its result becomes FAILED/TaskCancelled unless it has one already.

        Returns the job's result either way (the cancellation, or what it
        finished with). The node driving it is asked to stop its auction and
        the agent running it is told to cancel.
        """
        valid_task_id(task_id)
        cancelled = TaskResult(task_id=task_id, status=TaskStatus.FAILED,
                               error=error_to_wire(TaskCancelled(
                                   f"job {task_id} was cancelled by {self.bus.agent_id[:8]}")))
        await self._ensure(asyncio.get_running_loop().time() + 10.0)
        if not await self.store.save(cancelled, stored_by=self.bus.agent_id):
            stored = await self.store.load(task_id)
            if stored is None:  # expired between the two reads: nothing left to cancel
                raise JobNotFound(f"no job {task_id}")
            if stored.final:  # it finished first
                return stored
            # A cancellation is stored: maybe ours, the reply to our store lost (a seed
            # died) and the retry refused. Its driver must still be told to stop.
            cancelled = stored
        with contextlib.suppress(AgoraError):
            await self.bus.publish_raw(self.bus.subjects.cancel(task_id),
                                       encode_json({"task_id": task_id}))
        return cancelled

    async def status(self, *, limit: int = 20) -> JobsStatus:
        """Counts from the consumer and the result store, the first ``limit`` jobs still in
        the stream and the last ``limit`` results stored."""
        await self._ensure(asyncio.get_running_loop().time() + 5.0)
        consumer = await self.js.consumer_info()
        stream = await self.js.stream_info()
        results = await self.js.stream_info(self.js.names.kv_stream)
        delivered = int((consumer.get("delivered") or {}).get("stream_seq") or 0)
        jobs = await self._jobs(stream, delivered, limit)
        recent = await self._recent(results, limit)
        state = results.get("state") or {}
        return JobsStatus(queued=int(consumer.get("num_pending") or 0),
                          running=int(consumer.get("num_ack_pending") or 0),
                          redelivered=int(consumer.get("num_redelivered") or 0),
                          results=int(state.get("messages") or 0),
                          results_bytes=int(state.get("bytes") or 0), jobs=jobs, recent=recent)

    async def _jobs(self, stream: dict[str, Any], delivered: int, limit: int) -> list[JobInfo]:
        state = stream.get("state") or {}
        seq, last = int(state.get("first_seq") or 0), int(state.get("last_seq") or 0)
        found: list[JobInfo] = []
        while seq and seq <= last and len(found) < limit:
            message = await self.js.get_message(self.js.names.stream, seq=seq,
                                                next_for=f"{self.js.names.jobs}.>")
            if message is None:
                break
            found.append(_job_info(message, self.js.names.jobs,
                                   "running" if message.seq <= delivered else "queued"))
            seq = message.seq + 1
        return found

    async def _recent(self, results: dict[str, Any], limit: int) -> list[TaskResult]:
        state = results.get("state") or {}
        first, seq = int(state.get("first_seq") or 0), int(state.get("last_seq") or 0)
        recent: list[TaskResult] = []
        misses = 0
        while seq >= max(first, 1) and len(recent) < limit and misses < 4 * limit:
            message = await self.js.get_message(self.js.names.kv_stream, seq=seq)
            seq -= 1
            if message is None:
                misses += 1
                continue
            with contextlib.suppress(AgoraError):
                recent.append(_parse_record(message.data))
        return recent


def _job_info(message: StoredMessage, jobs_prefix: str, state: str) -> JobInfo:
    capability = message.subject[len(jobs_prefix) + 1:]
    task_id = message.headers.get("Nats-Msg-Id") or f"job-{message.seq}"
    return JobInfo(task_id=task_id, capability=capability, seq=message.seq,
                   queued_at=message.time, state=state)
