"""``CommunicationManager``: synchronous messaging over the real mesh (M-7).

``CommunicationManager(sim_id)`` joins the mesh through the process's
:class:`~.runtime.MeshRuntime` (started on first use) as a
:class:`~.member.Member` with its own key, server and bus, then offers the
three calls M-7 specifies:

- ``send_message(target, message) -> bool``: True once ``target`` has the
  message in its inbox (an acknowledged, retried request);
- ``broadcast_message(message) -> bool``: to every teammate, by the
  configured protocol (``direct``: one message each; ``broadcast``: one
  publish on the team subject; ``gossip``: passed on peer to peer); True once
  every live teammate acknowledged it;
- ``receive_messages() -> list``: what arrived since the last call, oldest
  first, at most ``max_message_queue`` waiting (more are refused, and the
  sender's call returns False).

Agents are named by their sim ids (the simulator's names, ``agent_1``). A
message is a dict: ``sender_id``, ``receiver_id`` (a sim id or
``"broadcast"``), ``message_type`` (``task_negotiation``, ``status_update``
or ``help_request``), ``content`` (an object) and ``timestamp`` (ISO 8601,
UTC); we add ``message_id``. Missing fields are filled in; a message of the
wrong shape or over 64 KiB is InvalidRequest.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import threading
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

from agoramesh.errors import AgoraError, InvalidRequest, SubjectError
from agoramesh.modes.decentralized.config import CommunicationProtocol, DecentralizedConfig
from agoramesh.modes.decentralized.member import MAX_MESSAGE_BYTES, MESSAGE_TYPES, Member
from agoramesh.modes.decentralized.runtime import MeshRuntime

__all__ = ("CommunicationManager", "check_sim_id", "make_message")

log = logging.getLogger("agoramesh.decentralized")

#: Sees each delivered message on the runtime's loop before it is queued.
MessageHook = Callable[[dict[str, Any]], Awaitable[None]]
T = TypeVar("T")
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
_HISTORY = 1000


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def make_message(sender_id: str, receiver_id: str, message_type: str,
                 content: Mapping[str, Any]) -> dict[str, Any]:
    """A message of M-7's shape, with a fresh ``message_id`` and the time now."""
    return {"sender_id": sender_id, "receiver_id": receiver_id, "message_type": message_type,
            "content": dict(content), "timestamp": _now_iso(),
            "message_id": uuid.uuid4().hex}


def check_sim_id(sim_id: Any) -> str:
    """A sim id (an agent's name in the simulator), or SubjectError."""
    if (not isinstance(sim_id, str) or not 0 < len(sim_id) <= 64
            or not set(sim_id) <= _ID_CHARS or sim_id == "broadcast"):
        raise SubjectError(f"sim ids are 1-64 letters, digits, '_' or '-' (not 'broadcast'), "
                           f"got {sim_id!r:.60}")
    return sim_id


class CommunicationManager:
    """One agent's messaging: M-7's calls over a :class:`Member` (module docstring)."""

    def __init__(self, sim_id: str, *,
                 config: DecentralizedConfig | Mapping[str, Any] | None = None,
                 capabilities: Sequence[str] = (), runtime: MeshRuntime | None = None,
                 start_timeout: float = 30.0) -> None:
        self.sim_id = check_sim_id(sim_id)
        self.config = DecentralizedConfig.from_mapping(config)
        self.settings = self.config.communication
        self._owns_runtime = runtime is None
        self.runtime = runtime if runtime is not None else MeshRuntime.shared(self.config.mesh)
        self.member = Member(self.runtime, sim_id, capabilities=capabilities,
                             settings=self.settings,
                             heartbeat_interval=self.config.mesh.heartbeat_interval)
        self.member.on_message = self._on_message
        #: Run on the loop for every delivered message (negotiation answers bids with one).
        self.hooks: list[MessageHook] = []
        #: Called with ``("sent" | "received", message)``: a trajectory recorder's hook.
        self.on_record: Callable[[str, dict[str, Any]], None] | None = None
        self.history: deque[tuple[str, dict[str, Any]]] = deque(maxlen=_HISTORY)
        self.last_error = ""
        self._inbox: deque[dict[str, Any]] = deque()
        self._lock = threading.Lock()
        self._peers: list[str] = []
        self._closed = False
        try:
            self.runtime.call(self.member.start(), start_timeout)
        except BaseException:
            self._release()
            raise

    # -- M-7's calls ---------------------------------------------------------------

    def send_message(self, target_sim_id: str, message: Mapping[str, Any]) -> bool:
        """Send to one teammate; True once it has the message (module docstring)."""
        target = check_sim_id(target_sim_id)
        prepared = self._prepare(message, target)
        self.last_error = ""
        if target == self.sim_id:
            self.last_error = "an agent does not send messages to itself"
            return False
        ok = self._run(self.member.send(target, prepared))
        self._after_send(prepared, ok, target)
        return ok

    def broadcast_message(self, message: Mapping[str, Any]) -> bool:
        """Send to every teammate by the configured protocol; True once all have it."""
        prepared = self._prepare(message, "broadcast")
        self.last_error = ""
        targets = self.peers
        if not targets:
            self.last_error = "no teammates to broadcast to"
            return False
        call = self.broadcast_coro(prepared, targets)
        ok = self._run(call, hops=math.ceil(math.log2(len(targets) + 1)))
        self._after_send(prepared, ok, "broadcast")
        return ok

    def receive_messages(self) -> list[dict[str, Any]]:
        """Every message received since the last call, oldest first."""
        with self._lock:
            messages = list(self._inbox)
            self._inbox.clear()
        return messages

    # -- ours ----------------------------------------------------------------------

    def broadcast_coro(self, message: dict[str, Any], targets: Sequence[str]
                       ) -> Coroutine[Any, Any, bool]:
        """The configured protocol's broadcast of a prepared message, to await on the loop."""
        protocol = self.settings.protocol
        if protocol is CommunicationProtocol.BROADCAST:
            return self.member.broadcast(message)
        if protocol is CommunicationProtocol.GOSSIP:
            return self.member.gossip(message, targets)
        return self.member.send_all(message, targets)

    @property
    def peers(self) -> list[str]:
        """Teammates a broadcast goes to: those set, else every live one on the roster."""
        live = {mate.sim_id for mate in self.member.live_teammates}
        return [p for p in self._peers if p in live] if self._peers else sorted(live)

    def set_peers(self, peer_ids: Sequence[str], *, timeout: float | None = None) -> list[str]:
        """Name the teammates; waits (bounded) until each is on the roster. Returns the missing."""
        ids = [check_sim_id(p) for p in peer_ids if p != self.sim_id]
        self._peers = list(dict.fromkeys(ids))
        wait = self.settings.timeout if timeout is None else timeout
        missing = self._run(self.member.wait_for(self._peers, wait), extra=wait)
        if missing:
            self.last_error = f"teammates not on the mesh after {wait:g}s: {', '.join(missing)}"
            log.warning("%s: %s", self.sim_id, self.last_error)
        return missing

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._inbox)

    @property
    def stats(self) -> dict[str, int]:
        """Counters: sent, received, dropped, duplicates, retries, refused, failed_sends…"""
        return dict(self.member.stats)

    def reset(self) -> None:
        """Forget queued messages and the history (counters are kept)."""
        with self._lock:
            self._inbox.clear()
            self.history.clear()
        self.last_error = ""

    def close(self) -> None:
        """Leave the mesh (bye, stop the server); the last agent stops the runtime."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.runtime.running:
                self.runtime.call(self.member.close(), 10.0)
        except AgoraError as exc:
            log.warning("%s: close: %s", self.sim_id, exc)
        finally:
            self._release()

    def __enter__(self) -> CommunicationManager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _release(self) -> None:
        if self._owns_runtime:
            self.runtime.release()

    # -- internals -----------------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T], *, hops: int = 1, extra: float = 0.0) -> T:
        if self._closed:
            coro.close()
            raise AgoraError(f"agent {self.sim_id} has left the mesh (closed)")
        # Each hop may retry every attempt up to the timeout: the bound covers them all.
        bound = (self.settings.timeout * (self.settings.retry_attempts + 1) + 1.0) * hops + extra
        return self.runtime.call(coro, bound)

    def _prepare(self, message: Mapping[str, Any], receiver: str) -> dict[str, Any]:
        if not isinstance(message, Mapping):
            raise InvalidRequest(f"a message must be a dict, got {type(message).__name__}")
        kind = message.get("message_type")
        if kind not in MESSAGE_TYPES:
            raise InvalidRequest(f"message_type must be one of {', '.join(MESSAGE_TYPES)}, "
                               f"got {kind!r:.40}")
        sender = message.get("sender_id", self.sim_id)
        if sender != self.sim_id:
            raise InvalidRequest(f"sender_id must be this agent ({self.sim_id}), "
                               f"got {sender!r:.40}")
        content = message.get("content", {})
        if not isinstance(content, Mapping):
            raise InvalidRequest(f"content must be a dict, got {type(content).__name__}")
        prepared = {**make_message(self.sim_id, receiver, kind, content),
                    **{k: v for k, v in message.items() if k in ("timestamp", "message_id")
                       and isinstance(v, str) and v}}
        try:
            size = len(json.dumps(prepared, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise InvalidRequest(f"a message must be JSON data: {exc}") from None
        if size > MAX_MESSAGE_BYTES:
            raise InvalidRequest(f"message is {size} bytes; the limit is {MAX_MESSAGE_BYTES}")
        return prepared

    def _after_send(self, message: dict[str, Any], ok: bool, target: str) -> None:
        if not ok:
            known = target == "broadcast" or target in self.peers
            self.last_error = (f"{target} did not take message {message['message_id']}" if known
                               else f"no teammate {target} on the mesh (known: "
                                    f"{', '.join(self.peers) or 'none'})")
        self.record("sent", message)

    def record(self, direction: str, message: dict[str, Any]) -> None:
        """Add to the history and tell ``on_record`` (also for the negotiator's messages)."""
        with self._lock:
            self.history.append((direction, message))
        if self.on_record is not None:
            try:
                self.on_record(direction, message)
            except Exception as exc:  # a recorder must not break messaging
                log.warning("%s: recording a message failed: %s", self.sim_id, exc)

    async def _on_message(self, message: dict[str, Any]) -> bool:
        """On the loop: hooks first, then the inbox (refused when full)."""
        for hook in self.hooks:
            try:
                await hook(message)
            except AgoraError as exc:
                log.warning("%s: a message hook failed: %s", self.sim_id, exc)
        message["received_at"] = _now_iso()
        with self._lock:
            full = len(self._inbox) >= self.settings.max_message_queue
            if not full:
                self._inbox.append(message)
        if full:
            self.member.stats["dropped"] += 1
            # Negotiation was handled by the hooks already: taken, though not queued.
            return message["message_type"] == "task_negotiation" and bool(self.hooks)
        self.record("received", message)
        return True
