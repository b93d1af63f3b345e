"""One decentralized-mode agent on the mesh: identity, server, bus, roster and delivery.

A :class:`Member` lives on the runtime's event loop (runtime.py). It gives
its agent a fresh nkey identity, an embedded nats-server of its own (unless
the mesh is joined by URL), a :class:`~agoramesh.bus.bus.Bus`, and:

- **presence** like every node's (presence.py): ``hello``, heartbeats and
  ``bye``, card and discovery answers (``agoramesh agents`` and ``watch`` list
  it, type ``autonomous``); a teammate that says ``bye``, or misses three
  heartbeats, is lost;
- a **roster** of its team (roster.py): sim ids (``agent_2``) mapped to agent
  ids (nkeys) and capabilities, learnt from ``roster`` messages on
  ``agora.team.<team>.roster``; a teammate is live while it is on the roster,
  not lost, and its presence is heard;
- **delivery** of the team's messages (M-1.4, M-7): signed requests answered
  with an ``ack`` saying whether the message was taken (PROTOCOL.md §19). A
  full inbox (``max_message_queue``) refuses new messages and counts them as
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
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from agoramesh._version import __version__
from agoramesh.bus.bus import Bus, Delivery
from agoramesh.bus.identity import Identity
from agoramesh.bus.ingress import IngressPolicy
from agoramesh.bus.server import EmbeddedServer
from agoramesh.bus.subjects import Subjects
from agoramesh.config import BusConfig
from agoramesh.errors import AgoraError, BusError, EnvelopeError, InvalidRequest
from agoramesh.modes.decentralized.config import CommunicationSettings
from agoramesh.modes.decentralized.presence import TeamPresence
from agoramesh.modes.decentralized.roster import ROSTER, Roster, Teammate
from agoramesh.modes.decentralized.runtime import MeshRuntime
from agoramesh.nodes.capability import Capability
from agoramesh.nodes.card import AgentCard
from agoramesh.protocols.allocation.voting import Chooser, ballot_handler

__all__ = ("MAX_MESSAGE_BYTES", "MESSAGE_TYPES", "Member")

log = logging.getLogger("agoramesh.decentralized")

#: The message types teammates exchange (M-1.4, M-7).
MESSAGE_TYPES = ("task_negotiation", "status_update", "help_request")
ACK = "ack"
MAX_MESSAGE_BYTES = 64 * 1024
_SEEN_IDS = 8192

#: Takes a delivered message; returns whether it was taken (False: refused, e.g. inbox full).
Deliver = Callable[[dict[str, Any]], Awaitable[bool]]


def _checked(delivery: Delivery, roster: Roster) -> dict[str, Any]:
    """A team message's body, if it is one a teammate may send (InvalidRequest otherwise)."""
    body = delivery.body
    if not isinstance(body, dict):
        raise InvalidRequest("a message must be an object")
    mate = roster.by_agent(str(delivery.sender))
    signer = mate.sim_id if mate is not None else None
    origin = body.get("sender_id")
    # A gossiped message is signed by the teammate passing it on (``via``), which
    # vouches for its origin: teammates are trusted to forward what they got.
    relayed = "gossip" in body and body.get("via") == signer
    if signer is None or (origin != signer and not (relayed and origin in roster)):
        raise InvalidRequest(f"message not signed by a teammate of {roster.team} "
                           f"(sender_id {origin!r:.40})")
    if body.get("message_type") != delivery.type:
        raise InvalidRequest("message_type does not match the envelope type")
    if not isinstance(body.get("message_id"), str) or not body["message_id"]:
        raise InvalidRequest("a message needs a message_id")
    if not isinstance(body.get("content"), dict):
        raise InvalidRequest("a message's content must be an object")
    return dict(body)


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
        self.stats: Counter[str] = Counter()
        self.roster = Roster(sim_id, self.team, capabilities, self.stats)
        #: Hooks: a message before it is queued; a vote asked.
        self.on_message: Deliver | None = None
        self.chooser: Chooser | None = None
        self.bus: Bus | None = None
        self.server: EmbeddedServer | None = None
        self.presence: TeamPresence | None = None
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._changed = asyncio.Event()  # the roster, or a teammate's liveness, changed
        self._background: set[asyncio.Task[None]] = set()
        self._random = random.Random()
        self._closed = False
        self.card = AgentCard(
            id=self.agent_id, name=sim_id, type="autonomous", version=__version__,
            endpoint=Subjects(runtime.settings.prefix).agent(self.agent_id),
            capabilities=tuple(Capability(name=cap, description=f"simulated {cap}")
                               for cap in self.roster.capabilities),
            metadata={"team": self.team, "mode": "decentralized", "sim_agent_id": sim_id})

    @property
    def agent_id(self) -> str:
        return self.identity.agent_id

    @property
    def live_teammates(self) -> list[Teammate]:
        return [mate for mate in self.roster.values() if self._is_live(mate)]

    def _is_live(self, mate: Teammate | None) -> bool:
        return (mate is not None and not mate.lost and self.presence is not None
                and self.presence.is_live(mate.agent_id))

    @property
    def _bus(self) -> Bus:
        if self.bus is None:
            raise AgoraError(f"agent {self.sim_id} has not joined the mesh")
        return self.bus

    @property
    def _presence(self) -> TeamPresence:
        if self.presence is None:
            raise AgoraError(f"agent {self.sim_id} has not joined the mesh")
        return self.presence

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Embed a server (or use the mesh URL), connect, subscribe, say hello."""
        self.server = await self.runtime.embed_server()
        try:
            bus = self.bus = Bus(self.identity, BusConfig(
                servers=(self.runtime.url_of(self.server),), name=f"{self.team}-{self.sim_id}",
                prefix=self.runtime.settings.prefix, request_timeout=self.settings.timeout))
            await bus.start()
            presence = self.presence = TeamPresence(
                bus, self.card, interval=self.heartbeat_interval, spawn=self._spawn,
                running=lambda: not self._closed)
            presence.directory.on_join.append(lambda _entry: self._changed.set())
            presence.directory.on_leave.append(self._lose)
            # Handlers may wait on each other (a gossip forward awaits the next ack): room.
            await bus.subscribe(bus.subjects.agent(self.agent_id), self._on_direct,
                                concurrency=32)
            await bus.subscribe(bus.subjects.team(self.team), self._on_team, concurrency=32)
            await bus.subscribe(bus.subjects.discover, presence.on_discover,
                                ingress=IngressPolicy.ALLOW)
            await presence.announce("hello")
            await bus.publish(bus.subjects.team(self.team, ROSTER), ROSTER, self.roster.body())
        except BaseException:
            await self.close()
            raise
        self._spawn(presence.beat(), "beat")

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
            if self.presence is not None:
                with contextlib.suppress(AgoraError):
                    await self.presence.announce("bye")
            await self.bus.close(timeout=1.0)
        await self.runtime.release_server(self.server)

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(f"{self.sim_id}-{name}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- roster and liveness -------------------------------------------------------

    def _lose(self, agent_id: str, reason: str) -> None:
        """The directory dropped a peer (``bye`` or ``silent``): a teammate is lost."""
        mate = self.roster.by_agent(agent_id)
        if mate is None or mate.lost:
            return
        mate.lost = True
        self.stats["teammates_lost"] += 1
        log.info("%s: teammate %s lost (%s)", self.sim_id, mate.sim_id, reason)
        self._presence.unfollow(agent_id)
        self._changed.set()

    async def _learn(self, agent_id: str, body: Any) -> None:
        """A teammate's roster entry, from its signed roster message."""
        if agent_id != self.agent_id and self.roster.read(agent_id, body) is not None:
            await self._presence.follow(agent_id)
            self._changed.set()

    async def wait_for(self, sim_ids: Sequence[str], timeout: float) -> list[str]:
        """Wait until every one of ``sim_ids`` is a live teammate; returns those still missing."""

        def missing() -> list[str]:
            return [sid for sid in sim_ids
                    if sid != self.sim_id and not self._is_live(self.roster.get(sid))]

        bus = self._bus
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while missing() and (left := deadline - loop.time()) > 0:
            # Say who we are again: a teammate that missed our first roster answers this.
            with contextlib.suppress(AgoraError):
                await bus.publish(bus.subjects.team(self.team, ROSTER), ROSTER,
                                  self.roster.body())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, 0.25)):
                    while True:
                        self._changed.clear()
                        if not missing():
                            break
                        await self._changed.wait()
        return missing()

    # -- receiving -----------------------------------------------------------------

    async def _on_team(self, delivery: Delivery) -> None:
        sender = str(delivery.sender)
        if sender == self.agent_id:
            return  # our own broadcast
        if delivery.type == ROSTER:
            await self._learn(sender, delivery.body)
            bus = self._bus
            with contextlib.suppress(AgoraError):  # tell the newcomer who we are
                await bus.publish(bus.subjects.agent(sender), ROSTER, self.roster.body(),
                                  to=sender)
            return
        await self._receive(delivery)

    async def _on_direct(self, delivery: Delivery) -> None:
        kind = delivery.type
        if kind == ROSTER:
            await self._learn(str(delivery.sender), delivery.body)
        elif kind == "card_request":
            await self._presence.on_card_request(delivery)
        elif kind == "ballot" and self.chooser is not None:
            await ballot_handler(self.chooser)(delivery)
        elif kind in MESSAGE_TYPES:
            await self._receive(delivery)
        else:
            self.stats["rejected"] += 1
            await delivery.respond_error(InvalidRequest(
                f"agent {self.sim_id} does not handle {kind!r} messages"))

    async def _receive(self, delivery: Delivery) -> None:
        """Check, deduplicate, forward (gossip), deliver and acknowledge one message."""
        try:
            message = _checked(delivery, self.roster)
        except InvalidRequest as exc:
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
        self.stats["received"] += 1
        accepted = True if self.on_message is None else await self.on_message(message)
        await delivery.respond(ACK, {"accepted": accepted,
                                     **({} if accepted else {"reason": "inbox full"})})

    # -- sending -------------------------------------------------------------------

    async def send(self, target: str, message: dict[str, Any], *,
                   gossip_share: Sequence[str] = ()) -> bool:
        """One acknowledged direct message; retried; True once the target took it."""
        mate = self.roster.get(target)
        if mate is None or not self._is_live(mate):
            self.stats["unknown_target"] += 1
            return False
        bus = self._bus
        relayed = message.get("sender_id") != self.sim_id
        body = ({**message, "gossip": list(gossip_share), "via": self.sim_id}
                if gossip_share or relayed else message)
        subject = bus.subjects.agent(mate.agent_id)
        for attempt in range(self.settings.retry_attempts + 1):
            if attempt:
                self.stats["retries"] += 1
                await asyncio.sleep(min(0.05 * 2 ** attempt, 0.5))
            try:
                self.stats["sent"] += 1
                reply = await bus.request(subject, message["message_type"], body,
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
        bus = self._bus
        live = self.live_teammates
        self.stats["sent"] += 1
        replies = await bus.gather(
            bus.subjects.team(self.team, message["message_type"]),
            message["message_type"], message, timeout=self.settings.timeout,
            expected_from={mate.agent_id for mate in live})
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
