"""A job as it comes off the stream: parsed and checked, or refused (PROTOCOL.md §21)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from agoramesh.bus.envelope import looks_like_envelope
from agoramesh.bus.ingress import decode_json, looks_like_json
from agoramesh.bus.jetstream import ack, delivery_of, valid_task_id
from agoramesh.bus.message import Message
from agoramesh.errors import (
    IngressDenied,
    InvalidTask,
    JetStreamUnavailable,
    MalformedEnvelope,
    NotConnected,
    SubjectError,
    error_to_wire,
)
from agoramesh.nodes.task import Task, TaskResult, TaskStatus
from agoramesh.protocols.jobs.delivery import Job
from agoramesh.protocols.jobs.jobs import ResultStore
from agoramesh.security.acl import Action

if TYPE_CHECKING:
    from agoramesh.nodes.node import BaseNode

__all__ = ("parse_job", "refuse")


def parse_job(node: BaseNode, msg: Message, deliveries: int, stored_ms: int) -> Job:
    """The job in ``msg``: a signed task_request or plain JSON (PROTOCOL.md §21)."""
    bus = node.bus
    capability = bus.subjects.capability_of(msg.subject)
    if capability is None:
        raise SubjectError(f"{msg.subject} is not a job subject")
    data = msg.data
    requester: str | None = None
    if looks_like_envelope(data):
        envelope = bus.guard.admit(data, msg.subject, None, now=stored_ms, stored=True)
        bus.saw(envelope)
        if envelope.type != "task_request":
            raise InvalidTask(f"a job envelope must be a task_request, not "
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
    task = Task.from_dict(body, capability=capability)
    header = (msg.headers or {}).get("Nats-Msg-Id")
    given = body.get("task_id") if isinstance(body, dict) else None
    from_body = given if isinstance(given, str) and given == task.task_id else None
    if header and from_body and header != from_body:
        raise InvalidTask(f"the job's Nats-Msg-Id {header[:60]!r} and its task_id "
                          f"{from_body[:60]!r} differ")
    delivery = delivery_of(msg)
    seq = delivery.sequence if delivery is not None else 0
    task = replace(task, task_id=valid_task_id(header or from_body or f"job-{seq}"))
    denied = node.check_access(requester, capability, Action.SUBMIT)
    if denied is not None:
        raise denied
    return Job(msg=msg, task=task, requester=requester, deliveries=deliveries)


async def refuse(node: BaseNode, store: ResultStore, msg: Message,
             error: BaseException) -> None:
    """A job that cannot run as sent: its result is the refusal (if its id is readable)."""
    node.metrics.jobs["failed"] += 1
    task_id = (msg.headers or {}).get("Nats-Msg-Id")
    delivery = delivery_of(msg)
    if task_id is None and delivery is not None:
        task_id = f"job-{delivery.sequence}"
    node.log.info("job %s refused: %s", task_id, error, extra={"task_id": task_id})
    try:
        result = TaskResult(task_id=valid_task_id(task_id or ""), status=TaskStatus.FAILED,
                            error=error_to_wire(error), agent_id=node.agent_id)
        await store.save(result, stored_by=node.agent_id)
    except InvalidTask:
        pass  # no id to store it under: the refusal is only counted
    except (JetStreamUnavailable, NotConnected):
        return  # delivered again later, refused again then
    await ack(node.bus, msg)
