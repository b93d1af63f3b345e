"""Creating what durable jobs need in JetStream: the job stream, its consumer, the bucket.

The first node or client that finds an asset missing creates it
(``JetStream.ensure``), with the limits of
:class:`~agoramesh.config.JobsConfig` (the assets are described in
:mod:`agoramesh.bus.jetstream`). This is the one place that uses nats-py's
JetStream manager; everything done with the assets afterwards is a plain
request. Right after the seeds start, placement can fail for a moment (the
meta leader has not heard of every peer) and a leader can be being elected:
both are retried until the caller's deadline. With ``replicas`` unset, 3
replicas are tried first, then 2, then 1: whatever the seeds can place.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js import api as js_api

from agoramesh.config import JobsConfig
from agoramesh.errors import AgoraError, JetStreamUnavailable, StoreFull

if TYPE_CHECKING:
    from agoramesh.bus.jetstream import Names

__all__ = ("FULL_CODES", "UNAVAILABLE_CODES", "Assets")

log = logging.getLogger("agoramesh.jetstream")

# JetStream API error codes (nats-server errors.json).
#: "No room": the stream or the store is full.
FULL_CODES = frozenset({10023, 10047, 10077, 10027})
#: Temporarily unavailable, or not enabled.
UNAVAILABLE_CODES = frozenset({10008, 10039, 10076})
_PLACEMENT = frozenset({10005, 10074, 10023})  # too few peers for these replicas


class Assets:
    """The job stream, its consumer and the result bucket of one subject prefix, created
    through ``js`` where missing."""

    def __init__(self, js: JetStreamContext, config: JobsConfig, names: Names) -> None:
        self.js = js
        self.config = config
        self.names = names

    async def create(self, deadline: float) -> float:
        """Create what is missing, retrying until ``deadline`` (``time.monotonic()``);
        the consumer's ``ack_wait``, as it was created (perhaps by another node)."""
        replicas = await self._create(self._stream_config, self.names.stream, deadline)
        await self._create(self._bucket_config, self.names.kv_stream, deadline, replicas)
        return await self._create_consumer(deadline)

    def _stream_config(self, replicas: int) -> js_api.StreamConfig:
        cfg = self.config
        return js_api.StreamConfig(
            name=self.names.stream, subjects=[f"{self.names.jobs}.>"],
            description="agoramesh durable jobs: one message per task, by capability",
            retention=js_api.RetentionPolicy.WORK_QUEUE, storage=js_api.StorageType.FILE,
            discard=js_api.DiscardPolicy.NEW, max_bytes=cfg.max_bytes, max_msgs=cfg.max_jobs,
            max_age=cfg.max_age, duplicate_window=cfg.duplicate_window,
            num_replicas=replicas, allow_direct=True)

    def _bucket_config(self, replicas: int) -> js_api.StreamConfig:
        cfg = self.config
        return js_api.StreamConfig(
            name=self.names.kv_stream, subjects=[f"$KV.{self.names.bucket}.>"],
            description="agoramesh task results by task id (first stored wins)",
            max_msgs_per_subject=1, max_age=cfg.results_ttl, max_bytes=cfg.results_max_bytes,
            discard=js_api.DiscardPolicy.NEW, storage=js_api.StorageType.FILE,
            num_replicas=replicas, allow_direct=True, allow_rollup_hdrs=True, deny_delete=True,
            duplicate_window=min(120.0, cfg.results_ttl), max_consumers=-1, max_msgs=-1,
            republish=self._republish)

    @property
    def _republish(self) -> js_api.RePublish:
        """Every stored result, live on ``<prefix>.result.<task-id>``."""
        return js_api.RePublish(src=f"$KV.{self.names.bucket}.>",
                                dest=f"{self.names.jobs.rpartition('.')[0]}.result.>")

    async def _create(self, config_for: Callable[[int], js_api.StreamConfig], name: str,
                      deadline: float, replicas: int | None = None) -> int:
        """Create stream ``name`` unless it exists; the replicas it has."""
        tries = [replicas] if replicas else (
            [self.config.replicas] if self.config.replicas else [3, 2, 1])
        while True:
            last: Exception | None = None
            try:
                info = await self.js.stream_info(name)
                if name == self.names.kv_stream and info.config.republish is None:
                    # Made before results were republished: add it (nothing else changes).
                    info.config.republish = self._republish
                    await self.js.update_stream(info.config)
                return int(info.config.num_replicas or 1)
            except nats.js.errors.NotFoundError:
                for count in tries:
                    try:
                        await self.js.add_stream(config_for(count))
                        log.info("created %s with %d replica(s)", name, count)
                        return count
                    except nats.js.errors.APIError as exc:
                        last = exc
                        if exc.err_code == 10058:  # created meanwhile by another node
                            break
                        if exc.err_code not in _PLACEMENT and exc.code != 503:
                            raise self._error(exc, f"creating stream {name}") from None
            except nats.js.errors.APIError as exc:  # ServiceUnavailableError among them
                if exc.code not in (None, 503):
                    raise self._error(exc, f"reading stream {name}") from None
                last = exc
            except nats.errors.TimeoutError as exc:  # a leader being elected
                last = exc
            if time.monotonic() >= deadline:
                raise self._error(last, f"creating stream {name}")
            await asyncio.sleep(0.1)

    async def _create_consumer(self, deadline: float) -> float:
        cfg = js_api.ConsumerConfig(
            durable_name=self.names.consumer, name=self.names.consumer,
            description="agoramesh: every node takes jobs from here",
            ack_policy=js_api.AckPolicy.EXPLICIT, ack_wait=self.config.ack_wait,
            max_deliver=-1, filter_subject=f"{self.names.jobs}.>",
            deliver_policy=js_api.DeliverPolicy.ALL, max_ack_pending=-1, max_waiting=4096)
        while True:
            last: Exception | None = None
            try:
                info = await self.js.consumer_info(self.names.stream, self.names.consumer)
                return float(info.config.ack_wait or self.config.ack_wait)
            except nats.js.errors.NotFoundError:
                try:
                    await self.js.add_consumer(self.names.stream, cfg)
                    return self.config.ack_wait
                except nats.js.errors.APIError as exc:
                    # 10148: created meanwhile, with another config: its ack_wait is read next.
                    # 10059, stream not found: the stream was just created (or found) and a
                    # server that joined the cluster a moment ago has not applied it yet.
                    if exc.code != 503 and exc.err_code not in (*_PLACEMENT, 10148, 10059):
                        raise self._error(exc, "creating the job consumer") from None
                    last = exc
            except nats.js.errors.APIError as exc:
                if exc.code not in (None, 503):
                    raise self._error(exc, "reading the job consumer") from None
                last = exc
            except nats.errors.TimeoutError as exc:  # a leader being elected
                last = exc
            if time.monotonic() >= deadline:
                raise self._error(last, "creating the job consumer")
            await asyncio.sleep(0.1)

    @staticmethod
    def _error(exc: BaseException | None, what: str) -> AgoraError:
        if isinstance(exc, nats.js.errors.APIError) and exc.code is not None:
            code, err_code = int(exc.code or 0), int(exc.err_code or 0)
            text = f"JetStream refused {what}: {exc.description} (err_code {err_code})"
            if err_code in FULL_CODES:
                return StoreFull(text)
            if code == 503 or err_code in UNAVAILABLE_CODES:
                return JetStreamUnavailable(text)
            return AgoraError(text)
        return JetStreamUnavailable(f"JetStream unavailable {what}: {exc!r}")
