"""Attackers, forgeries and checks shared by the hostile-input suite (fixtures: conftest.py).

Every test in this directory attacks a real mesh: nats-server processes from
``agoramesh.testing.plugin``, real :class:`AgentNode` s, and an attacker that
is nothing but a plain NATS client holding an nkey of its own (:class:`Attacker`).
What the tests assert, whatever the attack: the hostile input is rejected and
counted under its reason (``bus.rejections`` and the exported
``agoramesh_envelopes_rejected_total``), it has no effect, no handler fails
unexpectedly (:func:`unexpected_errors`), and the nodes keep serving.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import msgpack
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agoramesh.agent import AgentNode
from agoramesh.bus.bus import Bus
from agoramesh.bus.e2e import E2EKeys
from agoramesh.bus.envelope import (
    AUTH_MAC,
    AUTH_SIG,
    TAG_SIZE,
    VERSION,
    Envelope,
    is_boxed,
    mac,
    new_id,
    now_ms,
    parse,
)
from agoramesh.bus.identity import Identity, is_agent_id, verify
from agoramesh.config import MAX_MESSAGE_BYTES, EnvelopePolicy
from agoramesh.errors import EnvelopeError, RejectReason
from agoramesh.monitoring.metrics import MeshCollector, new_registry
from agoramesh.testing.raw import flush
from agoramesh.testing.workers import Worker

#: The capability subject of the :data:`~agoramesh.testing.workers.WORK` agents under attack.
CAP = "agora.cap.work.do"

#: The policy of the nodes under attack: small enough that an envelope over it
#: still fits the servers' max_payload (1 MiB + 64 KiB), so oversize is the node's call.
SMALL = EnvelopePolicy(max_bytes=64 * 1024)


def _error_names() -> dict[RejectReason, str]:
    names: dict[RejectReason, str] = {}
    pending: list[type[EnvelopeError]] = [EnvelopeError]
    while pending:
        kind = pending.pop()
        pending += kind.__subclasses__()
        if kind is not EnvelopeError:
            names.setdefault(kind.reason, kind.__name__)
    return names


#: The error type name a rejection is answered with (PROTOCOL.md §8).
ERROR_NAMES = _error_names()


def answered(reason: RejectReason) -> bool:
    """Whether a rejected request that has a reply subject gets an error reply.

    Replays are never answered (PROTOCOL.md §9); everything else is, expired
    requests included (the protocol's vector 4 is such an answer).
    """
    return reason is not RejectReason.REPLAYED


# -- forgeries -------------------------------------------------------------------------


def forge(signer: Identity, *, type: str, subject: str, body: Any, sender: str | None = None,
          to: str = "*", reply: str = "", ts: int | None = None, ttl_ms: int = 60_000,
          id: str | None = None, cid: str | None = None, auth: str = AUTH_SIG) -> bytes:
    """An envelope claiming to come from ``sender`` (default: the signer), made by ``signer``.

    ``reply``: the reply subject it names (it must be published with that one to pass).
    ``auth`` "sig": signed with the signer's key; "mac": MACed with the key the
    signer shares with ``to`` (:func:`resign`).
    """
    sealed_at = now_ms() if ts is None else ts
    envelope_id = id or new_id()
    return resign(signer, {
        "v": VERSION, "id": envelope_id, "type": type, "from": sender or signer.agent_id,
        "to": to, "subject": subject, "reply": reply, "ts": sealed_at, "exp": sealed_at + ttl_ms,
        "cid": cid or envelope_id, "auth": auth, "body": body})


def fields_of(wire: bytes) -> dict[str, Any]:
    """The authenticated map of an envelope, decoded (no checks)."""
    fields: dict[str, Any] = msgpack.unpackb(wire[:-TAG_SIZE], raw=False,
                                             strict_map_key=False)
    return fields


def tag(signer: Identity, signed: bytes, *, to: str | None = None) -> bytes:
    """The tag ``signer`` puts on ``signed``: its signature, or with ``to`` its MAC with ``to``."""
    if to is None:
        return signer.sign(signed)
    return mac(E2EKeys(signer).pair_key(to), signed)


def resign(signer: Identity, fields: Any) -> bytes:
    """``fields`` packed as they are, then authenticated by ``signer``: MACed with the key
    it shares with ``fields["to"]`` when ``fields["auth"]`` is "mac" (and ``to`` is an
    agent id), signed otherwise."""
    signed: bytes = msgpack.packb(fields, use_bin_type=True)
    if isinstance(fields, dict) and fields.get("auth") == AUTH_MAC:
        to = fields.get("to")
        if isinstance(to, str) and is_agent_id(to):
            return signed + tag(signer, signed, to=to)
    return signed + tag(signer, signed)


def oversize(signer: Identity, subject: str, policy: EnvelopePolicy = SMALL, **fields: Any
             ) -> bytes:
    """A correctly signed envelope just over ``policy.max_bytes`` (and far under 1 MiB)."""
    body = {"padding": b"x" * policy.max_bytes}
    wire = forge(signer, type=fields.pop("type", "task_request"), subject=subject, body=body,
                 **fields)
    assert policy.max_bytes < len(wire) < MAX_MESSAGE_BYTES
    return wire


def strict_json(data: bytes) -> Any:
    """RFC 8259 JSON only: valid UTF-8, and no NaN / Infinity, which Python would accept."""
    def refuse(constant: str) -> Any:
        raise AssertionError(f"reply is not JSON: it contains {constant}")
    return json.loads(data.decode("utf-8"), parse_constant=refuse)


def check_error_envelope(reply: bytes, *, signer: str, inbox: str, reason: RejectReason
                         ) -> None:
    """An ``error`` reply to a rejected request (PROTOCOL.md §9, case 2)."""
    envelope = parse(reply)
    assert envelope.auth == AUTH_SIG  # to anyone: signed, never MACed
    assert verify(signer, envelope.signed, envelope.signature)
    assert envelope.sender == signer and envelope.subject == inbox and envelope.reply == ""
    assert envelope.type == "error" and envelope.to == "*" and envelope.cid == envelope.id
    assert envelope.body["type"] == ERROR_NAMES[reason]
    assert isinstance(envelope.body["message"], str) and envelope.body["message"]


def check_json_error(reply: bytes, reason: RejectReason) -> None:
    error = strict_json(reply)["error"]
    assert error["type"] == ERROR_NAMES[reason] and isinstance(error["message"], str)


# -- the attacker ----------------------------------------------------------------------

#: Envelope bytes made for the reply subject (the inbox) they will be published with.
Sealer = Callable[[str], bytes]
#: What :meth:`Attacker.request` sends: bytes as they are, or a :data:`Sealer`.
Payload = bytes | Sealer


class Attacker:
    """A plain NATS client with an nkey of its own: it publishes anything it likes.

    ``inbox()`` names a fresh reply subject; replies to it are kept in arrival
    order (:meth:`reply` waits for the next). ``no_echo``: it never hears
    its own messages on the subjects it listens to.
    """

    def __init__(self, nc: NatsClient, identity: Identity) -> None:
        self.nc = nc
        self.identity = identity
        self.keys = E2EKeys(identity)
        self.prefix = f"_INBOX.attacker.{new_id()}"
        self.replies: dict[str, asyncio.Queue[bytes]] = {}
        self._numbers = itertools.count()

    @property
    def agent_id(self) -> str:
        return self.identity.agent_id

    @classmethod
    async def connect(cls, url: str) -> Attacker:
        nc = NatsClient()
        await nc.connect(url, connect_timeout=2, allow_reconnect=False, no_echo=True,
                         max_reconnect_attempts=0)
        attacker = cls(nc, Identity.generate())
        await nc.subscribe(f"{attacker.prefix}.>", cb=attacker._on_reply)
        await flush(nc)
        return attacker

    async def _on_reply(self, msg: Msg) -> None:
        self._queue(msg.subject).put_nowait(msg.data)

    def _queue(self, inbox: str) -> asyncio.Queue[bytes]:
        return self.replies.setdefault(inbox, asyncio.Queue())

    def inbox(self) -> str:
        return f"{self.prefix}.{next(self._numbers)}"

    async def reply(self, inbox: str, timeout: float = 5.0) -> bytes:
        """The next reply that arrives on ``inbox``; TimeoutError after ``timeout``."""
        async with asyncio.timeout(timeout):
            return await self._queue(inbox).get()

    def unanswered(self, inbox: str) -> bool:
        return self._queue(inbox).empty()

    def open(self, reply: bytes) -> Envelope:
        """A reply envelope addressed to the attacker, its body decrypted if boxed.

        A MACed one must carry the MAC of the key its sender shares with the attacker.
        """
        envelope = parse(reply)
        if envelope.auth == AUTH_MAC:
            assert envelope.to == self.agent_id
            assert hmac.compare_digest(
                mac(self.keys.pair_key(envelope.sender), envelope.signed), envelope.tag)
        return self.keys.open(envelope) if is_boxed(envelope.body) else envelope

    def forge(self, **fields: Any) -> Sealer:
        """:func:`forge` by the attacker, for the inbox it will be sent with: ``reply=inbox``."""
        return lambda inbox: forge(self.identity, reply=inbox, **fields)

    async def publish(self, subject: str, payload: bytes, *, reply: str = "") -> None:
        await self.nc.publish(subject, payload, reply=reply)

    async def request(self, subject: str, payload: Payload, timeout: float = 5.0) -> bytes:
        """Publish with a fresh inbox and wait for the first reply."""
        return (await self.ask(subject, payload, timeout))[1]

    async def ask(self, subject: str, payload: Payload, timeout: float = 5.0
                  ) -> tuple[str, bytes]:
        """Like :meth:`request`, and the inbox the reply came to.

        ``payload``: bytes, sent as they are; or a function of the inbox that makes
        them, for an envelope that must name the reply subject it is sent with.
        """
        inbox = self.inbox()
        await self.publish(subject, payload(inbox) if callable(payload) else payload,
                           reply=inbox)
        return inbox, await self.reply(inbox, timeout)

    async def listen(self, subject: str, callback: Callable[[Msg], Awaitable[None]]) -> None:
        """Hear ``subject`` (wildcards allowed); returns once the server has the interest."""
        await self.nc.subscribe(subject, cb=callback)
        await flush(self.nc)

    async def flush(self) -> None:
        """Return once the server has processed everything sent so far."""
        await flush(self.nc)

    async def close(self) -> None:
        if not self.nc.is_closed:
            await self.nc.close()


# -- nodes under attack ----------------------------------------------------------------


AttackerFactory = Callable[[str], Awaitable[Attacker]]
NodeFactory = Callable[..., Awaitable[AgentNode]]


def serving(nodes: Iterable[AgentNode]) -> list[str]:
    """Names of the nodes that are NOT running with a connected bus (empty: all fine)."""
    return [node.config.name for node in nodes
            if node.status.state not in ("ready", "busy") or not node.bus.is_connected]


def exported_rejections(nodes: Iterable[AgentNode]) -> dict[str, Counter[str]]:
    """``agoramesh_envelopes_rejected_total`` by agent and reason, as Prometheus scrapes it."""
    collector = MeshCollector()
    for node in nodes:
        collector.add_agent(node)
    text = generate_latest(new_registry(collector)).decode()
    exported: dict[str, Counter[str]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "agoramesh_envelopes_rejected":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                exported.setdefault(sample.labels["agent"], Counter())[
                    sample.labels["reason"]] += int(sample.value)
    return exported


def exported_agree(*nodes: AgentNode) -> None:
    """Each node's exported rejections are the ones its bus counted."""
    exported = exported_rejections(nodes)
    for node in nodes:
        assert exported.get(node.config.name, Counter()) == counted(node), node.config.name


def started(node: AgentNode) -> list[str]:
    """The task ids a :class:`Worker` node has started, in order."""
    backend = node.backend
    assert isinstance(backend, Worker)
    return backend.started


def counted(owner: AgentNode | Bus) -> Counter[str]:
    """A node's (or a bus's) rejections by reason name, as they are exported."""
    bus = owner.bus if isinstance(owner, AgentNode) else owner
    return Counter({str(reason): n for reason, n in bus.rejections.items() if n})
