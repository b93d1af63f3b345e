"""Running tasks: one agent's execution path, from a task request to its one answer.

:class:`TaskRunner` is what :class:`~agoramesh.nodes.node.BaseNode` runs its
tasks with, on every path that runs one (``agora.cap.<capability>``, a direct
``task_request``, an award): the task is parsed and checked against the
capability's input schema, run once per task id (:class:`TaskMemory`), under its
deadline and ``task_timeout``, cancellable by its requester; the answer is
sealed before the task counts (a result too large for one message becomes a
FAILED ``ResultTooLarge``); a durable job's result is stored first; a
``callback`` subject gets the final result too. While tracing is on, a task
runs in an ``agoramesh.execute`` span (a child of the requester's, with the
GenAI semantic conventions' model and token attributes) and its answer goes out
in an ``agoramesh.result`` span.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from agoramesh.bus.bus import Delivery, Reply
from agoramesh.bus.envelope import BROADCAST
from agoramesh.bus.ingress import encode_json
from agoramesh.bus.replies import error_headers, headers_size, reply_error
from agoramesh.config import MAX_MESSAGE_BYTES
from agoramesh.errors import (
    AgoraError,
    BackendBadResponse,
    BackendError,
    EnvelopeError,
    InvalidTask,
    OversizeEnvelope,
    ResultTooLarge,
    TaskCancelled,
    TaskError,
    error_to_wire,
)
from agoramesh.nodes.capability import Capability
from agoramesh.nodes.task import Chunk, Completion, Task, TaskResult, TaskStatus
from agoramesh.nodes.task_memory import TaskMemory, task_digest
from agoramesh.observability.tracing import Span, SpanKind, span

if TYPE_CHECKING:
    from agoramesh.nodes.node import BaseNode

__all__ = ("UNREADABLE_TASK_ID", "TaskRunner", "described", "publish_callback",
           "readable_task_id")

# A failed task's error type -> its outcome label (agoramesh_tasks_total); others: failed.
_OUTCOMES = {"TaskCancelled": "cancelled", "InvalidInput": "rejected",
             "InvalidTask": "rejected", "UnknownCapability": "rejected"}
#: Appended to the error of a FAILED task_response whose request's task_id was unreadable.
UNREADABLE_TASK_ID = "; the request's task_id could not be read (task_id is null)"


def described(error: Mapping[str, Any] | None) -> str | None:
    """``"<type>: <message>"`` of a wire error (``$SRV.STATS`` last_error), None for none."""
    if not error:
        return None
    return f"{error.get('type')}: {error.get('message')}"


def readable_task_id(body: Any) -> str | None:
    """The request's ``task_id`` if it is one (a string of 1-128 characters), else None."""
    task_id = body.get("task_id") if isinstance(body, dict) else None
    return task_id if isinstance(task_id, str) and 0 < len(task_id) <= 128 else None


class TaskRunner:
    """The tasks of one agent: those running, those just done, and the counts of both."""

    def __init__(self, node: BaseNode) -> None:
        self.node = node
        # task id -> (its runner, its requester (None: plain JSON), its capability)
        self.running: dict[str, tuple[asyncio.Task[Any], str | None, str]] = {}
        self._cancel_requested: set[str] = set()
        #: Running tasks and recent results by task id: a task asked again is not run again.
        self.memory = TaskMemory()
        #: Results published on tasks' callback subjects: "published", and "failed" (logged).
        self.callbacks: Counter[str] = Counter()
        self.completed = self.failed = self.tokens = 0
        self.total_cost_usd = 0.0
        self.latency_ms = 0.0

    def cancel(self, task_id: str, requester: str | None) -> bool:
        """Cancel a running task for its requester (anyone, for plain JSON); False if not."""
        running = self.running.get(task_id)
        if running is None or running[1] not in (None, requester):
            return False
        self._cancel_requested.add(task_id)
        running[0].cancel()
        return True

    async def serve(self, delivery: Delivery, capability: Capability, *,
                    durable: bool = False) -> None:
        """Run the task in ``delivery.body`` and answer with its result (or failure).

        A result that does not fit in one message is answered FAILED with
        ``ResultTooLarge`` instead (and counted as a failed task). A task id this
        agent is running or has just finished is answered from that run, not run
        again (:class:`TaskMemory`). ``durable`` (an award of a durable job): the
        final result is stored in the result store before the answer, which
        says ``stored``. A task with a ``callback`` has its final result published
        there too, after the answer, unless it was answered from an earlier run
        (:func:`publish_callback`).
        """
        with span("agoramesh.execute", SpanKind.SERVER, parent=delivery.trace_parent,
                  attributes={"agoramesh.capability": capability.name}) as execution:
            await self._serve(delivery, capability, durable, execution)

    async def _serve(self, delivery: Delivery, capability: Capability, durable: bool,
                     execution: Span) -> None:
        started = time.perf_counter()
        body = dict(delivery.body) if isinstance(delivery.body, dict) else delivery.body
        stream = bool(isinstance(body, dict) and body.pop("stream", False)) and not delivery.is_json
        task_id = readable_task_id(body)  # None until known: answered as null
        task: Task | None = None
        callback: str | None = None
        fresh = True  # False: answered from an earlier (or still running) run of this task
        try:
            task = Task.from_dict(body, capability=capability.name)
            task_id = task.task_id
            callback = self._callback_of(task)
            capability.validate_input(task.parameters)
            result, fresh = await self._run_once(task, delivery, stream, started, execution)
        except TaskError as error:
            result = self.failure(task_id, error, started)
        except asyncio.CancelledError:  # the node is stopping: tell the requester, then go
            failure = self.failure(task_id, TaskCancelled(
                f"agent {self.node.config.name} stopped before task {task_id} finished"), started)
            self._finished(capability.name, failure, time.perf_counter() - started)
            await asyncio.shield(self.reply(delivery, failure))
            raise
        except Exception as exc:  # a bug in a backend (or below): still a task_response
            self.node.log.exception("task %s failed unexpectedly", task_id,
                               extra={"task_id": task_id})
            result = self.failure(task_id, BackendError(
                f"{self.node.config.type} backend failed: {type(exc).__name__}: {exc}"[:1000]),
                started)
        if execution.is_recording():
            execution.set_attributes({"agoramesh.task_id": result.task_id,
                                      "agoramesh.status": result.status.value})
        store = durable and task is not None and result.final
        result, reply = self._prepare(delivery, result, started, stored=store)
        if fresh and task is not None:
            self.memory.weigh(task.task_id, result, _answered_size(delivery, result, reply))
        if store and not await self._store(result) and reply is not None:
            reply = self._response(delivery, result, stored=False)  # rare: sealed again
        elapsed = time.perf_counter() - started
        self.node.reception.endpoint(capability.name).record(int(elapsed * 1e9),
                                                             described(result.error))
        if fresh:
            self._finished(capability.name, result, elapsed)
        if reply is not None:
            await self._send(delivery, result, reply)
            execution.add_event("task_response")
        if callback is not None and fresh and result.final:
            outcome = await publish_callback(self.node, delivery, callback, result)
            self.callbacks[outcome] += 1

    def _callback_of(self, task: Task) -> str | None:
        """The task's callback subject; InvalidTask for one of the mesh's own subjects,
        where agents would take the result, published in our name, for a request."""
        callback, prefix = task.callback, self.node.bus.subjects.prefix
        if callback is not None and (callback == prefix or callback.startswith(prefix + ".")):
            raise InvalidTask(f"callback {callback[:80]!r} is one of the mesh's own subjects "
                              f"({prefix}.>): name a subject outside them")
        return callback

    async def _run_once(self, task: Task, delivery: Delivery, stream: bool,
                        started: float, execution: Span) -> tuple[TaskResult, bool]:
        """The task's result, from this run or from the run of it already made here."""
        known = self.memory.recall(task)
        if known is not None:
            if known.digest != task_digest(task):
                raise InvalidTask(f"task id {task.task_id} was used here for another task; "
                                  f"a task id names one task")
            self.node.metrics.answered_from_memory += 1
            if known.done is not None:
                return known.done, False
            assert known.running is not None
            return await asyncio.shield(known.running), False
        self.memory.begin(task)
        result: TaskResult | None = None
        try:
            result = await self._run(task, delivery, stream, started, execution)
        except TaskError as error:
            result = self.failure(task.task_id, error, started)
        finally:
            self.memory.finish(task, result or TaskResult(
                task_id=task.task_id, status=TaskStatus.FAILED, agent_id=self.node.agent_id,
                error={"type": "TaskCancelled", "message": f"task {task.task_id} stopped"}))
        return result, True

    async def _store(self, result: TaskResult) -> bool:
        """Store a durable job's final result (``result_store``): True once it is in;
        False (logged) if it is not, and the initiator then stores it."""
        if self.node.result_store is None:
            return False
        try:
            await self.node.result_store(result)
        except AgoraError as exc:  # the initiator stores it then
            self.node.log.warning("could not store the result of %s: %s", result.task_id, exc,
                             extra={"task_id": result.task_id})
            return False
        return True

    @staticmethod
    def _response(delivery: Delivery, result: TaskResult, *, stored: bool) -> Reply:
        """The task_response, saying ``stored`` when asked to and it still fits."""
        body = result.as_dict()
        if stored:
            with contextlib.suppress(OversizeEnvelope):  # else the initiator finds it stored
                return delivery.prepare("task_response", {**body, "stored": True})
        return delivery.prepare("task_response", body)

    def _prepare(self, delivery: Delivery, result: TaskResult, started: float, *,
                 stored: bool = False) -> tuple[TaskResult, Reply | None]:
        """The result and its reply; a FAILED ResultTooLarge one if it does not fit.

        Nothing to send (None) when the request has no reply subject (or when not
        even the failure fits, with a ``max_bytes`` of a few hundred bytes).
        """
        if not delivery.can_respond:
            return result, None
        try:
            return result, self._response(delivery, result, stored=stored)
        except OversizeEnvelope:
            size = delivery.measure("task_response", result.as_dict())
        if result.status is TaskStatus.COMPLETED:
            self.completed -= 1  # counted as done in _run; it fails now
        name = f"task {result.task_id}" if result.task_id else "the task"
        self.node.log.warning("the result of %s is too large to send (%d bytes)", name, size,
                         extra={"task_id": result.task_id})
        failure = self.failure(result.task_id or None, ResultTooLarge(
            f"the result of {name} is {size} bytes as a message, over the "
            f"{self.node.bus.config.envelope.max_bytes}-byte limit"), started)
        try:
            return failure, self._response(delivery, failure, stored=stored)
        except OversizeEnvelope as exc:  # a max_bytes too small even for that (128 bytes)
            self.node.log.warning("could not send the result of %s: %s", name, exc,
                             extra={"task_id": result.task_id})
            return failure, None

    def _finished(self, capability: str, result: TaskResult, seconds: float) -> None:
        if result.status is TaskStatus.COMPLETED:
            outcome = "completed"
        else:
            outcome = _OUTCOMES.get(str((result.error or {}).get("type")), "failed")
        self.node.metrics.task_finished(capability, outcome, seconds, result.task_id)
        if self.node.trajectory is not None:
            self.node.trajectory.decided("finish", task_id=result.task_id, capability=capability,
                                    outcome=outcome, ms=round(seconds * 1000, 3))

    async def _run(self, task: Task, delivery: Delivery, stream: bool,
                   started: float, execution: Span) -> TaskResult:
        runner = asyncio.ensure_future(self._execute(task, delivery, stream))
        self.running[task.task_id] = (runner, delivery.sender, task.capability)
        try:
            completion = await runner
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.task_id in self._cancel_requested and not (current and current.cancelling()):
                raise TaskCancelled(f"task {task.task_id} was cancelled") from None
            raise
        finally:
            self.running.pop(task.task_id, None)
            self._cancel_requested.discard(task.task_id)
            if not runner.done():
                runner.cancel()
        elapsed = (time.perf_counter() - started) * 1000
        usage = completion.usage
        model = completion.model or self.node.backend.model
        self.node.metrics.spent(self.node.config.type, model, usage)
        if execution.is_recording():
            execution.set_attributes({
                "gen_ai.system": self.node.config.type,
                "gen_ai.request.model": self.node.backend.model,
                "gen_ai.response.model": model,
                "gen_ai.usage.input_tokens": usage.input_tokens,
                "gen_ai.usage.output_tokens": usage.output_tokens,
                "agoramesh.cost_usd": usage.cost_usd, "agoramesh.task_id": task.task_id,
                "agoramesh.agent_id": self.node.agent_id})
        self.completed += 1
        self.tokens += usage.total_tokens
        self.total_cost_usd += usage.cost_usd
        # Exponentially weighted: recent tasks count most for routing and bids.
        previous = self.latency_ms if self.completed > 1 else elapsed
        self.latency_ms = 0.8 * previous + 0.2 * elapsed
        return TaskResult(task_id=task.task_id, status=TaskStatus.COMPLETED,
                          result=completion.output, execution_time_ms=elapsed,
                          tokens_used=usage.total_tokens, cost_usd=usage.cost_usd,
                          agent_id=self.node.agent_id)

    async def _execute(self, task: Task, delivery: Delivery, stream: bool) -> Completion:
        limit = self.node.config.task_timeout
        if task.deadline is not None:
            limit = min(limit, task.deadline - time.time())
            if limit <= 0:  # the requester has stopped waiting: not even a quick start
                raise TaskError(f"task {task.task_id} was past its deadline before it ran")
        completion: Completion | None = None
        sequence = 0
        try:
            async with asyncio.timeout(max(0.0, limit)):
                # aclosing: a timeout or cancel landing mid-stream closes the backend's stream.
                async with contextlib.aclosing(
                        self.node.backend.execute(task, {"agent": self.node.card})) as items:
                    async for item in items:
                        if isinstance(item, Completion):
                            completion = item
                        elif isinstance(item, Chunk) and stream and delivery.msg.reply:
                            sequence += 1
                            await self.node.bus.publish(
                                delivery.msg.reply, "task_chunk",
                                {"task_id": task.task_id, "seq": sequence, "text": item.text},
                                to=delivery.sender or "*",
                                cid=delivery.envelope.cid if delivery.envelope else None)
        except TimeoutError:
            raise TaskError(f"task {task.task_id} exceeded its {limit:.1f}s time limit") from None
        if completion is None:
            raise BackendBadResponse(f"{self.node.config.type} backend ended without a result")
        if delivery.is_json:  # NaN, say: fail the task now rather than the reply later
            try:
                encode_json(completion.output)
            except ValueError as exc:
                raise BackendBadResponse(f"{self.node.config.type} backend's result cannot be "
                                         f"answered in plain JSON: {exc}") from None
        return completion

    def failure(self, task_id: str | None, error: BaseException, started: float
                 ) -> TaskResult:
        """A FAILED result; ``task_id`` None: the request's was unreadable (answered null)."""
        self.failed += 1
        elapsed = (time.perf_counter() - started) * 1000 if started else 0.0
        wire = error_to_wire(error)
        if task_id is None:
            wire["message"] += UNREADABLE_TASK_ID
        return TaskResult(task_id=task_id or "", status=TaskStatus.FAILED, error=wire,
                          execution_time_ms=elapsed, agent_id=self.node.agent_id)

    async def reply(self, delivery: Delivery, result: TaskResult) -> None:
        """Answer with a result known to fit (a failure); errors are logged."""
        if not delivery.can_respond:
            return
        try:
            reply = delivery.prepare("task_response", result.as_dict())
        except (EnvelopeError, AgoraError) as exc:
            self.node.log.warning("could not send the result of %s: %s", result.task_id, exc,
                             extra={"task_id": result.task_id})
            return
        await self._send(delivery, result, reply)

    async def _send(self, delivery: Delivery, result: TaskResult, reply: Reply) -> None:
        try:
            await delivery.send(reply)
        except (EnvelopeError, AgoraError) as exc:
            self.node.log.warning("could not send the result of %s: %s", result.task_id, exc,
                             extra={"task_id": result.task_id})


def _answered_size(delivery: Delivery, result: TaskResult, reply: Reply | None) -> int:
    """How many bytes ``result`` took (or would take) as its answer to ``delivery``."""
    if reply is not None:
        return reply.size
    try:  # no reply subject (or not even a failure fits): its body's size, as JSON (an
        # estimate within the envelope's few hundred bytes; sealing it would sign it)
        return len(encode_json(result.as_dict()))
    except (AgoraError, ValueError, TypeError):
        return MAX_MESSAGE_BYTES  # not even encodable: weighed as the largest message


async def publish_callback(node: BaseNode, delivery: Delivery, subject: str,
                           result: TaskResult) -> str:
    """Publish ``result`` on the task's callback subject, as the reply carries it; returns
    "published", or "failed" (logged): what the runner counts in ``callbacks``.

    To an envelope: a ``task_response`` addressed to ``*``, so signed and never
    encrypted (who reads the callback is not known), with the request's cid. To
    plain JSON: the JSON of the reply. A FAILED result has the error headers.
    A failure (too large, disconnected) is not the task's; the server's refusal of a
    subject we may not publish on comes later, as every permission refusal does
    (logged, ``Bus.permission_denials``).
    """
    body = result.as_dict()
    error = reply_error("task_response", body)
    headers = error_headers(*error) if error else None
    try:
        if delivery.envelope is None:
            payload = encode_json(body)
            limit = node.bus.config.envelope.max_bytes
            size = len(payload) + headers_size(headers)
            if size > limit:
                raise OversizeEnvelope(f"{size} bytes exceed the {limit}-byte limit")
            await node.bus.publish_raw(subject, payload, headers=headers)
        else:
            await node.bus.publish(subject, "task_response", body, to=BROADCAST,
                                   cid=delivery.envelope.cid, headers=headers)
    except (AgoraError, ValueError) as exc:
        node.log.warning("could not publish the result of %s on its callback %s: %s",
                         result.task_id, subject, exc, extra={"task_id": result.task_id})
        return "failed"
    return "published"
