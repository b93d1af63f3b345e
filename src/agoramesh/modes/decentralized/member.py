"""One decentralized-mode agent on the mesh: identity, server, bus, roster and inbox.

A :class:`Member` lives on the runtime's event loop (runtime.py). It gives
its agent a fresh nkey identity, an embedded nats-server of its own (unless
the mesh is joined by URL), a :class:`~agoramesh.bus.bus.Bus`, and:

- **presence** like every node's: a ``hello`` with its card, a heartbeat
  each interval and a ``bye`` on close (``agoramesh agents`` and ``watch``
  list it, type ``autonomous``), answers to ``card_request`` and discovery;
- a **roster** of its team: seed agent ids (``agent_2``) mapped to agent ids
  (nkeys) and capabilities, learnt from ``roster`` messages on
  ``agora.team.<team>.roster``; a teammate that misses three heartbeats, or
  says ``bye``, is lost and ``on_lost`` hooks hear of it;
- **delivery** of the seed's messages: signed requests answered with an
  ``ack`` saying whether the message was taken (PROTOCOL.md §19). A full
  inbox (``max_message_queue``) refuses new messages and counts them as
  dropped; a message id seen before is acknowledged and not delivered twice.

Sending is direct (one acknowledged request to ``agora.agent.<id>``, retried
``retry_attempts`` times), broadcast (one publish on
``agora.team.<team>.<message_type>`` gathering every teammate's ack) or
gossip (see :meth:`Member.gossip`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agoramesh._version import __version__
from agoramesh.bus.bus import Bus, Delivery
from agoramesh.bus.identity import Identity
from agoramesh.bus.ingress import IngressPolicy
from agoramesh.bus.server import EmbeddedServer
from agoramesh.bus.subscription import Subscription
from agoramesh.config import BusConfig
from agoramesh.errors import AgoraError, BusError, EnvelopeError, InvalidInput
from agoramesh.modes.decentralized.config import CommunicationSettings
from agoramesh.modes.decentralized.runtime import MeshRuntime
from agoramesh.nodes.capability import Capability
from agoramesh.nodes.card import AgentCard, AgentStatus, card_digest
from agoramesh.nodes.presence import answer_discovery
from agoramesh.protocols.allocation.voting import ballot_handler

__all__ = ("MESSAGE_TYPES", "Member", "Teammate")

log = logging.getLogger("agoramesh.decentralized")

#: The seed's message types (M-1.4, M-7).
MESSAGE_TYPES = ("task_negotiation", "status_update", "help_request")
ACK = "ack"
ROSTER = "roster"
MAX_MESSAGE_BYTES = 64 * 1024
_SEEN_IDS = 8192

#: Takes a delivered message; returns whether it was taken (False: refused, e.g. inbox full).
Deliver = Callable[[dict[str, Any]], Awaitable[bool]]


@dataclass(slots=True)
class Teammate:
    """A teammate as the roster knows it."""

    sim_id: str
    agent_id: str  # its nkey public key
    capabilities: tuple[str, ...] = ()
    last_seen: float = field(default_factory=time.monotonic)
    lost: bool = False


class Member:
    """One agent's link to the mesh (module docstring). Lives on the runtime's loop."""

    def __init__(self, runtime: MeshRuntime, sim_id: str, *, capabilities: Sequence[str],
                 settings: CommunicationSettings, heartbeat_interval: float = 1.0) -> None:
        self.runtime = runtime
        self.sim_id = sim_id
        self.team = runtime.team
        self.settings = settings
        self.heartbeat_interval = heartbeat_interval
        self.identity = Identity.generate()
        self.capabilities = tuple(capabilities)
        self.roster: dict[str, Teammate] = {}
        self.stats: Counter[str] = Counter()
        #: Hooks: a message before it is queued; a teammate lost; a vote asked.
        self.on_message: Deliver | None = None
        self.on_lost: list[Callable[[Teammate], None]] = []
        self.chooser: Callable[[dict[str, Any]], tuple[str, str]] | None = None
        self.bus: Bus | None = None
        self.server: EmbeddedServer | None = None
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._joined = asyncio.Event()
        self._roster_changed = asyncio.Condition()
        self._watching: dict[str, Subscription] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._random = random.Random()
        self._closed = False
        self.card = AgentCard(
            id=self.identity.agent_id, name=sim_id, type="autonomous", version=__version__,
            endpoint=f"{runtime.settings.prefix}.agent.{self.identity.agent_id}",
            capabilities=tuple(Capability(name=cap, description=f"simulated {cap}")
                               for cap in self.capabilities),
            metadata={"team": self.team, "mode": "decentralized", "sim_agent_id": sim_id})
        self._card = self.card.as_dict()
        self._digest = card_digest(self._card)

    @property
    def agent_id(self) -> str:
        return self.identity.agent_id

    @property
    def live_teammates(self) -> list[Teammate]:
        return [mate for mate in self.roster.values() if not mate.lost]

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Embed a server (or use the mesh URL), connect, subscribe, say hello."""
        self.server = await self.runtime.embed_server()
        try:
            self.bus = Bus(self.identity, BusConfig(
                servers=(self.runtime.url_of(self.server),), name=f"{self.team}-{self.sim_id}",
                prefix=self.runtime.settings.prefix, request_timeout=self.settings.timeout))
            await self.bus.start()
            subjects = self.bus.subjects
            # Handlers may wait on each other (a gossip forward awaits the next ack): room.
            await self.bus.subscribe(subjects.agent(self.agent_id), self._on_direct,
                                     concurrency=32)
            await self.bus.subscribe(subjects.team(self.team), self._on_team, concurrency=32)
            await self.bus.subscribe(subjects.discover, self._on_discover,
                                     ingress=IngressPolicy.ALLOW)
            await self._presence("hello")
            await self.bus.publish(subjects.team(self.team, ROSTER), ROSTER, self._roster_body())
        except BaseException:
            await self.close()
            raise
        self._spawn(self._heartbeats())

    async def close(self) -> None:
        """Say bye, stop heartbeats, drain the bus, stop the server; idempotent."""
        if self._closed:
            return
        self._closed = True
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.wait(list(self._background), timeout=2.0)
        if self.bus is not None and self.bus.is_connected:
            with contextlib.suppress(AgoraError):
                await self._presence("bye")
            await self.bus.close(timeout=1.0)
        await self.runtime.release_server(self.server)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- presence and roster -------------------------------------------------------

    def _roster_body(self) -> dict[str, Any]:
        return {"sim_id": self.sim_id, "capabilities": list(self.capabilities),
                "team": self.team}

    async def _presence(self, kind: str) -> None:
        assert self.bus is not None
        status = AgentStatus(capacity=1, state="ready").as_dict()
        body: dict[str, Any] = ({} if kind == "bye" else
                                {"status": status, "interval": self.heartbeat_interval,
                                 "digest": self._digest})
        if kind == "hello":
            body["card"] = self._card
        await self.bus.publish(self.bus.subjects.presence(self.agent_id), kind, body,
                               ttl_ms=max(1000, int(self.heartbeat_interval * 3000)))

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            try:
                await self._presence("heartbeat")
            except AgoraError as exc:  # reconnecting: the next beat will do
                log.debug("%s: heartbeat not sent: %s", self.sim_id, exc)
            silent = time.monotonic() - 3 * self.heartbeat_interval
            for mate in self.live_teammates:
                if mate.last_seen < silent:
                    await self._lose(mate, "missed 3 heartbeats")

    async def _lose(self, mate: Teammate, reason: str) -> None:
        if mate.lost:
            return
        mate.lost = True
        self.stats["teammates_lost"] += 1
        log.info("%s: teammate %s lost (%s)", self.sim_id, mate.sim_id, reason)
        watch = self._watching.pop(mate.agent_id, None)
        if watch is not None:
            with contextlib.suppress(AgoraError):
                await watch.stop(timeout=0.5)
        for hook in self.on_lost:
            hook(mate)
        async with self._roster_changed:
            self._roster_changed.notify_all()

    async def _learn(self, agent_id: str, body: Any) -> None:
        """A teammate's roster entry, from its signed roster message."""
        if (not isinstance(body, dict) or body.get("team") != self.team
                or agent_id == self.agent_id):
            return
        sim_id, caps = body.get("sim_id"), body.get("capabilities")
        if not isinstance(sim_id, str) or not 0 < len(sim_id) <= 64 or sim_id == self.sim_id:
            return
        if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
            caps = []
        known = self.roster.get(sim_id)
        if known is not None and not known.lost:
            if known.agent_id == agent_id:
                known.last_seen = time.monotonic()
            else:  # a live teammate's name, claimed by another key: not a takeover
                self.stats["roster_conflicts"] += 1
                log.warning("%s: %s claims the name of live teammate %s", self.sim_id,
                            agent_id[:12], sim_id)
            return
        self.roster[sim_id] = Teammate(sim_id, agent_id, tuple(caps[:32]))
        assert self.bus is not None
        self._watching[agent_id] = await self.bus.subscribe(
            self.bus.subjects.presence(agent_id), self._on_presence)
        async with self._roster_changed:
            self._roster_changed.notify_all()

    async def wait_for(self, sim_ids: Sequence[str], timeout: float) -> list[str]:
        """Wait until every one of ``sim_ids`` is on the roster; returns those still missing."""

        def missing() -> list[str]:
            return [sid for sid in sim_ids if sid != self.sim_id and (
                sid not in self.roster or self.roster[sid].lost)]

        assert self.bus is not None
        deadline = asyncio.get_running_loop().time() + timeout
        while missing() and (left := deadline - asyncio.get_running_loop().time()) > 0:
            # Say who we are again: a teammate that missed our first roster answers this.
            with contextlib.suppress(AgoraError):
                await self.bus.publish(self.bus.subjects.team(self.team, ROSTER), ROSTER,
                                       self._roster_body())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, 0.25)), self._roster_changed:
                    await self._roster_changed.wait_for(lambda: not missing())
        return missing()

    async def _on_presence(self, delivery: Delivery) -> None:
        mate = next((m for m in self.roster.values() if m.agent_id == delivery.sender), None)
        if mate is None:
            return
        if delivery.type == "bye":
            await self._lose(mate, "said bye")
        else:
            mate.last_seen = time.monotonic()

    async def _on_discover(self, delivery: Delivery) -> None:
        await answer_discovery(delivery, self.card, lambda: {
            "card": self._card, "status": AgentStatus(capacity=1).as_dict(),
            "interval": self.heartbeat_interval, "digest": self._digest})

    # -- receiving -----------------------------------------------------------------

    async def _on_team(self, delivery: Delivery) -> None:
        if delivery.sender == self.agent_id:
            return  # our own broadcast
        if delivery.type == ROSTER:
            await self._learn(str(delivery.sender), delivery.body)
            assert self.bus is not None
            with contextlib.suppress(AgoraError):  # tell the newcomer who we are
                await self.bus.publish(self.bus.subjects.agent(str(delivery.sender)), ROSTER,
                                       self._roster_body(), to=str(delivery.sender))
            return
        await self._receive(delivery)

    async def _on_direct(self, delivery: Delivery) -> None:
        kind = delivery.type
        if kind == ROSTER:
            await self._learn(str(delivery.sender), delivery.body)
        elif kind == "card_request":
            await delivery.respond("card", self._card)
        elif kind == "ballot" and self.chooser is not None:
            await ballot_handler(self.chooser)(delivery)
        elif kind in MESSAGE_TYPES:
            await self._receive(delivery)
        else:
            self.stats["rejected"] += 1
            await delivery.respond_error(InvalidInput(
                f"agent {self.sim_id} does not handle {kind!r} messages"))

    async def _receive(self, delivery: Delivery) -> None:
        """Check, deduplicate, forward (gossip), deliver and acknowledge one message."""
        try:
            message = self._check_incoming(delivery)
        except InvalidInput as exc:
            self.stats["rejected"] += 1
            await delivery.respond_error(exc)
            return
        message_id = message["message_id"]
        if message_id in self._seen:
            self.stats["duplicates"] += 1
            await delivery.respond(ACK, {"accepted": True, "duplicate": True})
            return
        self._seen[message_id] = None
        if len(self._seen) > _SEEN_IDS:
            self._seen.popitem(last=False)
        share = message.pop("gossip", None)
        message.pop("via", None)
        if isinstance(share, list) and share:
            self.stats["forwarded"] += 1
            await self.gossip(message, [s for s in share if isinstance(s, str)])
        accepted = await self._deliver(message)
        await delivery.respond(ACK, {"accepted": accepted,
                                     **({} if accepted else {"reason": "inbox full"})})

    def _check_incoming(self, delivery: Delivery) -> dict[str, Any]:
        body = delivery.body
        if not isinstance(body, dict):
            raise InvalidInput("a message must be an object")
        signer = self.sender_of(str(delivery.sender))
        origin = body.get("sender_id")
        # A gossiped message is signed by the teammate passing it on (``via``), which
        # vouches for its origin: teammates are trusted to forward what they got.
        relayed = "gossip" in body and body.get("via") == signer
        if signer is None or (origin != signer and not (relayed and origin in self.roster)):
            raise InvalidInput(f"message not signed by a teammate of {self.team} "
                               f"(sender_id {origin!r:.40})")
        if body.get("message_type") != delivery.type:
            raise InvalidInput("message_type does not match the envelope type")
        if not isinstance(body.get("message_id"), str) or not body["message_id"]:
            raise InvalidInput("a message needs a message_id")
        if not isinstance(body.get("content"), dict):
            raise InvalidInput("a message's content must be an object")
        return dict(body)

    def sender_of(self, agent_id: str) -> str | None:
        """The seed id of the teammate with nkey ``agent_id``."""
        mate = next((m for m in self.roster.values() if m.agent_id == agent_id), None)
        return mate.sim_id if mate is not None else None

    async def _deliver(self, message: dict[str, Any]) -> bool:
        self.stats["received"] += 1
        taken = True
        if self.on_message is not None:
            taken = await self.on_message(message)
        return taken

    # -- sending -------------------------------------------------------------------

    async def send(self, target: str, message: dict[str, Any], *,
                   gossip_share: Sequence[str] = ()) -> bool:
        """One acknowledged direct message; retried; True once the target took it."""
        mate = self.roster.get(target)
        if mate is None or mate.lost:
            self.stats["unknown_target"] += 1
            return False
        assert self.bus is not None
        relayed = message.get("sender_id") != self.sim_id
        body = ({**message, "gossip": list(gossip_share), "via": self.sim_id}
                if gossip_share or relayed else message)
        subject = self.bus.subjects.agent(mate.agent_id)
        for attempt in range(self.settings.retry_attempts + 1):
            if attempt:
                self.stats["retries"] += 1
                await asyncio.sleep(min(0.05 * 2 ** attempt, 0.5))
            try:
                self.stats["sent"] += 1
                reply = await self.bus.request(subject, message["message_type"], body,
                                               to=mate.agent_id, timeout=self.settings.timeout)
            except (BusError, EnvelopeError) as exc:
                log.debug("%s -> %s: %s", self.sim_id, target, exc)
                continue
            except AgoraError as exc:  # the receiver refused it: retrying will not help
                self.stats["refused"] += 1
                log.info("%s -> %s refused: %s", self.sim_id, target, exc)
                return False
            accepted = isinstance(reply.body, dict) and reply.body.get("accepted") is True
            if not accepted:
                self.stats["refused"] += 1
            return accepted
        self.stats["failed_sends"] += 1
        return False

    async def broadcast(self, message: dict[str, Any]) -> bool:
        """One publish to the team subject; True when every live teammate acknowledged."""
        assert self.bus is not None
        expected = {mate.agent_id for mate in self.live_teammates}
        self.stats["sent"] += 1
        replies = await self.bus.gather(
            self.bus.subjects.team(self.team, message["message_type"]),
            message["message_type"], message, timeout=self.settings.timeout,
            expected_from=expected)
        acked = {r.sender for r in replies if r.type == ACK and isinstance(r.body, dict)
                 and r.body.get("accepted") is True}
        missing = [m.sim_id for m in self.live_teammates if m.agent_id not in acked]
        for sim_id in missing:  # a lost publish or a full inbox: one direct try each
            if not await self.send(sim_id, message):
                return False
        return True

    async def send_all(self, message: dict[str, Any], targets: Sequence[str]) -> bool:
        """The direct protocol's broadcast: one acknowledged message per teammate, at once."""
        results = await asyncio.gather(*(self.send(t, message) for t in targets))
        return all(results)

    async def gossip(self, message: dict[str, Any], targets: Sequence[str],
                     fanout: int = 2) -> bool:
        """Pass ``message`` on to ``targets`` through at most ``fanout`` of them.

        ``fanout`` random targets each get the message with a share of the
        rest to pass on the same way; each acknowledges once its share has it.
        A broadcast so reaches N teammates in about log2 N hops with N
        messages and no agent sending more than ``fanout``. A target that
        does not answer has its share sent to directly.
        """
        targets = [t for t in dict.fromkeys(targets) if t != self.sim_id]
        if not targets:
            return True
        self._random.shuffle(targets)
        heads = targets[:fanout]
        shares: list[list[str]] = [targets[fanout + i::fanout] for i in range(len(heads))]
        sent = await asyncio.gather(*(self.send(head, message, gossip_share=share)
                                      for head, share in zip(heads, shares, strict=True)))
        ok = True
        for was_sent, share in zip(sent, shares, strict=True):
            if not was_sent:
                ok = False
                if share:
                    ok = await self.send_all(message, share) and ok
        return ok
