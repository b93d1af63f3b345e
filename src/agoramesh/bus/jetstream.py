"""JetStream as agoramesh uses it: the job stream, the result bucket, the shared consumer.

The seeds run one JetStream cluster in the domain ``agora`` (every seed's
``JetStreamConfig.domain``); a client reaches its API as ``$JS.<domain>.API``
from a seed, a leaf or a ``--connect`` node alike (nats-server refuses the
plain ``$JS.API`` across leaf links). Three assets, created by the first node
or client that finds them missing (:meth:`JetStream.ensure`), with the limits
of :class:`~agoramesh.config.JobsConfig`:

- the stream ``AGORA_JOBS`` on ``agora.jobs.>``: work-queue retention, file
  storage, de-duplication by ``Nats-Msg-Id`` (the task id) within
  ``duplicate_window``, and ``discard: new`` so a full stream refuses a job
  (:class:`~agoramesh.errors.StoreFull`) rather than dropping an old one;
- the pull consumer ``AGORA_WORKERS`` every node takes jobs from: explicit
  acks, ``ack_wait``, unlimited deliveries (nodes count them themselves);
- the key-value bucket ``AGORA_RESULTS`` (stream ``KV_AGORA_RESULTS``), one
  value per task id, kept ``results_ttl``: the first result stored for a task
  id is its result (:meth:`JetStream.store_once`). The stream republishes
  each value it stores on ``agora.result.<task-id>``: waiters hear the result
  from JetStream itself, once, as soon as it is committed, and never a value
  that lost the race to be stored.

With another subject prefix the names follow it (``FOO_JOBS`` for ``foo``).
Hot paths (publish, store, get, pull, acks) are plain NATS requests with the
JetStream headers, so each costs one round trip; creating the assets
(:mod:`agoramesh.bus.jetstream_assets`) uses nats-py's JetStream manager.
Failures map to agoramesh errors: no JetStream reachable or no leader yet is
:class:`~agoramesh.errors.JetStreamUnavailable`, a full store
:class:`~agoramesh.errors.StoreFull`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

import nats.errors
from nats.aio.msg import Msg

from agoramesh.bus.bus import Bus
from agoramesh.bus.connection import bus_error
from agoramesh.bus.jetstream_assets import FULL_CODES, UNAVAILABLE_CODES, Assets
from agoramesh.bus.message import Message
from agoramesh.config import JobsConfig
from agoramesh.errors import (
    AgoraError,
    InvalidTask,
    JetStreamUnavailable,
    NotConnected,
    StoreFull,
)

__all__ = ("JetStream", "JobDelivery", "Names", "PubAck", "StoredMessage", "ack", "delivery_of",
           "names_for",
           "progress_interval", "valid_task_id")

log = logging.getLogger("agoramesh.jetstream")

#: A task id that can be a result key and a subject token: what durable jobs accept.
_TASK_ID = re.compile(r"[A-Za-z0-9_=-]{1,128}")
# JetStream API error codes (nats-server errors.json); more in jetstream_assets.
_WRONG_LAST_SEQUENCE = frozenset({10071, 10164})  # "wrong last sequence" (with/without it)
# Headers the server adds to a direct get, and publish expectations stored with a message.
#: JetStream's "no message found" (a message get of a subject never stored).
_NO_MESSAGE = 10037
_DIRECT_GET_HEADERS = frozenset({"Nats-Stream", "Nats-Sequence", "Nats-Subject",
                                 "Nats-Time-Stamp", "Nats-Num-Pending", "Nats-Last-Sequence",
                                 "Nats-Expected-Stream", "Nats-Expected-Last-Subject-Sequence"})


def valid_task_id(task_id: str) -> str:
    """``task_id`` if a durable job may have it (1-128 of ``A-Z a-z 0-9 _ = -``), else
    a one-line InvalidTask: it is a result key and a subject token."""
    if not isinstance(task_id, str) or not _TASK_ID.fullmatch(task_id):
        raise InvalidTask(f"a durable task id must be 1-128 letters, digits, '_', '=' or "
                          f"'-', got {str(task_id)[:60]!r}")
    return task_id


@dataclass(frozen=True, slots=True)
class Names:
    """The JetStream names for one subject prefix."""

    stream: str  # AGORA_JOBS
    consumer: str  # AGORA_WORKERS
    bucket: str  # AGORA_RESULTS
    jobs: str  # agora.jobs  (jobs go to agora.jobs.<capability>)

    @property
    def kv_stream(self) -> str:
        return f"KV_{self.bucket}"

    def kv_subject(self, key: str) -> str:
        return f"$KV.{self.bucket}.{key}"


def names_for(prefix: str) -> Names:
    base = prefix.upper().replace(".", "_")
    return Names(stream=f"{base}_JOBS", consumer=f"{base}_WORKERS", bucket=f"{base}_RESULTS",
                 jobs=f"{prefix}.jobs")


@dataclass(frozen=True, slots=True)
class PubAck:
    """What the stream said about a published job."""

    stream: str
    seq: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message read back from a stream (a queued job, a stored result)."""

    subject: str
    seq: int
    data: bytes
    headers: dict[str, str]
    time: str  # RFC 3339, as the server stamped it


def _api_error(data: bytes) -> tuple[int, int, str] | None:
    """(code, err_code, description) of a JetStream API error reply, or None."""
    try:
        reply = json.loads(data)
    except ValueError:
        return None
    error = reply.get("error") if isinstance(reply, dict) else None
    if not isinstance(error, dict):
        return None
    return (int(error.get("code") or 0), int(error.get("err_code") or 0),
            str(error.get("description") or "")[:300])


class JetStream:
    """One Bus's access to the mesh's JetStream (the job stream, its consumer, results)."""

    def __init__(self, bus: Bus, config: JobsConfig | None = None) -> None:
        self.bus = bus
        self.config = config or JobsConfig()
        self.names = names_for(bus.config.prefix)
        self.api = f"$JS.{self.config.domain}.API"
        #: The job consumer's ack_wait, as created (read by ensure): a node must say
        #: "in progress" well within it, whatever its own settings say.
        self.ack_wait = self.config.ack_wait
        self._ensured = False
        self._ensuring = asyncio.Lock()

    # -- requests ------------------------------------------------------------------------

    async def _request(self, subject: str, payload: bytes, *, headers: dict[str, str] | None = None,
                       timeout: float | None = None, what: str) -> Msg:
        wait = timeout or self.config.api_timeout
        try:
            return await self.bus.nats.request(subject, payload, timeout=wait, headers=headers)
        except nats.errors.NoRespondersError:
            raise JetStreamUnavailable(
                f"no JetStream answers {what} (domain {self.config.domain!r}): no seed runs "
                f"JetStream, or the stream is not created yet") from None
        except nats.errors.TimeoutError:
            raise JetStreamUnavailable(f"JetStream did not answer {what} within {wait:g}s "
                                       f"(a leader may be being elected)") from None
        except nats.errors.ConnectionClosedError as exc:
            raise NotConnected("cannot reach JetStream: connection closed") from exc
        except nats.errors.Error as exc:
            raise bus_error(exc, f"send {what} to JetStream") from exc

    def _raise_for(self, error: tuple[int, int, str], what: str) -> None:
        code, err_code, description = error
        text = f"JetStream refused {what}: {description} (err_code {err_code})"
        if err_code in FULL_CODES or "maximum" in description or "exceeded" in description:
            raise StoreFull(text)
        if code == 503 or err_code in UNAVAILABLE_CODES:
            raise JetStreamUnavailable(text)
        raise AgoraError(text)

    async def api_call(self, verb: str, body: dict[str, Any] | None = None, *,
                       timeout: float | None = None) -> dict[str, Any]:
        """One JSON request to ``$JS.<domain>.API.<verb>``; the reply, errors raised."""
        msg = await self._request(f"{self.api}.{verb}",
                                  b"" if body is None else json.dumps(body).encode(),
                                  timeout=timeout, what=verb.split(".", 2)[0].lower())
        error = _api_error(msg.data)
        if error is not None:
            self._raise_for(error, verb)
        reply: dict[str, Any] = json.loads(msg.data)
        return reply

    async def _reachable(self, deadline: float) -> None:
        """Return once JetStream answers; JetStreamUnavailable at once if nobody serves its
        API here, or at ``deadline`` if it stays unavailable (no meta leader yet)."""
        while True:
            try:
                msg = await self.bus.nats.request(f"{self.api}.INFO", b"", timeout=2.0)
            except nats.errors.NoRespondersError:
                raise JetStreamUnavailable(
                    f"no JetStream answers in domain {self.config.domain!r}: no seed of this "
                    f"mesh runs JetStream (started with --no-jetstream, a secured mesh, or "
                    f"another domain)") from None
            except nats.errors.TimeoutError:
                why = "no answer within 2s"
            except nats.errors.ConnectionClosedError as exc:
                raise NotConnected("cannot reach JetStream: connection closed") from exc
            except nats.errors.Error as exc:
                raise bus_error(exc, "reach JetStream") from exc
            else:
                error = _api_error(msg.data)
                if error is None:
                    return
                if error[0] != 503 and error[1] not in UNAVAILABLE_CODES:
                    self._raise_for(error, "an account info request")
                why = error[2]
            if time.monotonic() >= deadline:
                raise JetStreamUnavailable(
                    f"JetStream is not available yet: {why} (its seeds have no leader: a "
                    f"clustered JetStream needs two seeds up, so a lone first seed has none "
                    f"until a second joins; `agoramesh up --seeds 1` runs a standalone one)")
            await asyncio.sleep(0.1)

    async def available(self) -> bool:
        """True if JetStream answers here (account info), False if nobody does."""
        try:
            await self.api_call("INFO", timeout=2.0)
        except (JetStreamUnavailable, NotConnected):
            return False
        return True

    # -- the assets ---------------------------------------------------------------------

    async def ensure(self, *, timeout: float = 15.0) -> None:
        """Create the job stream, its consumer and the result bucket where missing.

        Placement right after the seeds start can fail for a moment (the leader
        has not heard of every peer): retried within ``timeout``. With
        ``replicas`` unset, 3 replicas are tried first, then fewer.
        """
        if self._ensured:
            return
        async with self._ensuring:  # one creation at a time; the others find it done
            await self._ensure(timeout)

    async def _ensure(self, timeout: float) -> None:
        if self._ensured:
            return
        deadline = time.monotonic() + timeout
        await self._reachable(deadline)
        js = self.bus.nats.jetstream(domain=self.config.domain, timeout=self.config.api_timeout)
        try:
            self.ack_wait = await Assets(js, self.config, self.names).create(deadline)
        except nats.errors.Error as exc:  # what Assets does not take for a refusal
            raise bus_error(exc, "create the JetStream assets") from exc
        self._ensured = True

    # -- jobs ------------------------------------------------------------------------------

    def job_subject(self, capability: str) -> str:
        return f"{self.names.jobs}.{capability}"

    async def publish(self, subject: str, payload: bytes, *, msg_id: str,
                      headers: dict[str, str] | None = None,
                      timeout: float | None = None) -> PubAck:
        """Store one job; ``msg_id`` (the task id) de-duplicates within the window."""
        hdrs = {"Nats-Msg-Id": msg_id, "Nats-Expected-Stream": self.names.stream,
                **(headers or {})}
        msg = await self._request(subject, payload, headers=hdrs, timeout=timeout,
                                  what=f"a job on {subject}")
        error = _api_error(msg.data)
        if error is not None:
            self._raise_for(error, f"the job {msg_id}")
        reply = json.loads(msg.data)
        return PubAck(stream=str(reply.get("stream")), seq=int(reply.get("seq") or 0),
                      duplicate=bool(reply.get("duplicate")))

    async def pull(self, reply: str, batch: int, expires: float) -> None:
        """Ask the shared consumer for up to ``batch`` jobs, delivered to ``reply`` as they
        come within ``expires`` seconds (then a 408 status message ends the request)."""
        body = {"batch": batch, "expires": int(expires * 1e9)}
        await self.bus.publish_raw(
            f"{self.api}.CONSUMER.MSG.NEXT.{self.names.stream}.{self.names.consumer}",
            json.dumps(body).encode(), reply=reply)

    async def consumer_info(self) -> dict[str, Any]:
        return await self.api_call(f"CONSUMER.INFO.{self.names.stream}.{self.names.consumer}")

    async def stream_info(self, stream: str | None = None) -> dict[str, Any]:
        return await self.api_call(f"STREAM.INFO.{stream or self.names.stream}")

    async def get_message(self, stream: str, *, seq: int | None = None,
                          last_for: str | None = None,
                          next_for: str | None = None) -> StoredMessage | None:
        """A stored message by sequence (``next_for``: the first at or after ``seq`` on that
        subject filter), or the last on subject ``last_for``; None if there is none."""
        if last_for is not None:
            subject, payload = f"{self.api}.DIRECT.GET.{stream}.{last_for}", b""
        else:
            request: dict[str, Any] = {"seq": seq}
            if next_for is not None:
                request["next_by_subj"] = next_for
            subject, payload = f"{self.api}.DIRECT.GET.{stream}", json.dumps(request).encode()
        msg = await self._request(subject, payload, what=f"a read of {stream}")
        headers = dict(msg.headers or {})
        status = headers.get("Status")
        if status or "Nats-Sequence" not in headers:
            if status in ("404", "408") or not headers:
                return None
            raise JetStreamUnavailable(f"JetStream could not read {stream}: status {status} "
                                       f"{headers.get('Description', '')}".rstrip())
        return StoredMessage(subject=headers.get("Nats-Subject", ""),
                             seq=int(headers["Nats-Sequence"]), data=bytes(msg.data),
                             headers={k: v for k, v in headers.items()
                                      if k not in _DIRECT_GET_HEADERS},
                             time=headers.get("Nats-Time-Stamp", ""))

    # -- results -----------------------------------------------------------------------------

    async def store_once(self, task_id: str, value: bytes, *,
                         timeout: float | None = None) -> bool:
        """Store ``value`` as the result of ``task_id`` unless one is stored; True if ours is.

        Exactly one store per task id succeeds (JetStream checks the key's last
        sequence is 0); the others get False.
        """
        # Through the domain's API prefix: nats-server keeps $KV.> from crossing leaf links.
        subject = f"{self.api}.{self.names.kv_subject(valid_task_id(task_id))}"
        msg = await self._request(subject, value, timeout=timeout, what="a result",
                                  headers={"Nats-Expected-Last-Subject-Sequence": "0"})
        error = _api_error(msg.data)
        if error is None:
            return True
        if error[1] in _WRONG_LAST_SEQUENCE:
            return False
        self._raise_for(error, f"the result of {task_id}")
        return False  # pragma: no cover - _raise_for raised

    async def result(self, task_id: str) -> bytes | None:
        """The stored result of ``task_id``, or None.

        Asked of the stream's leader, not of any replica (a direct get): a follower
        may not have a result stored a moment ago yet (a seed just died, a leader
        was elected), and "no result" is what decides whether a job runs again.
        """
        subject = self.names.kv_subject(valid_task_id(task_id))
        reply = await self._request(f"{self.api}.STREAM.MSG.GET.{self.names.kv_stream}",
                                    json.dumps({"last_by_subj": subject}).encode(),
                                    what="a read of the results")
        error = _api_error(reply.data)
        if error is not None:
            if error[1] == _NO_MESSAGE or error[0] == 404:
                return None
            self._raise_for(error, f"the read of the result of {task_id}")
        try:
            message = json.loads(reply.data)["message"]
            headers = base64.b64decode(message.get("hdrs") or "")
            data = base64.b64decode(message.get("data") or "")
        except (ValueError, KeyError, TypeError) as exc:
            raise JetStreamUnavailable(f"unreadable result of {task_id}: {exc}") from None
        if b"KV-Operation: DEL" in headers or b"KV-Operation: PURGE" in headers:
            return None
        return data


async def ack(bus: Bus, msg: Message, kind: bytes = b"+ACK", body: bytes = b"") -> None:
    """Acknowledge a delivered job (``+ACK``, ``+WPI``, ``-NAK``, ``+TERM``) on ``bus``;
    best effort."""
    if not msg.reply:
        return
    try:
        await bus.publish_raw(msg.reply, kind + body)
    except AgoraError as exc:  # the redelivery decides, then
        log.debug("%s for %s not sent: %s", kind.decode(), msg.subject, exc)


@dataclass(frozen=True, slots=True)
class JobDelivery:
    """What a delivered job's reply subject says about it."""

    deliveries: int  # how many times it was delivered, this time included
    sequence: int  # its sequence in the job stream
    stored_ms: int  # when it was stored, Unix milliseconds


def delivery_of(msg: Message) -> JobDelivery | None:
    """The delivery data of a message a JetStream consumer delivered; None for another."""
    try:
        meta = Msg.Metadata._from_reply(msg.reply)
    except (nats.errors.Error, ValueError, IndexError):
        return None
    return JobDelivery(meta.num_delivered, meta.sequence.stream,
                       int(meta.timestamp.timestamp() * 1000))


def progress_interval(ack_wait: float) -> float:
    """How often a node says it is still working on a job: three times per ``ack_wait``."""
    return max(0.3, ack_wait / 3)

