"""The model behind ``agoramesh watch``: what the mesh is doing, from what it says.

A :class:`MeshView` ingests the signed messages any client may hear —
presence (hello, heartbeat, bye), discovery and card answers, telemetry
beats (PROTOCOL.md §18) and calls for proposals — and answers what the
screen shows: the agents and their load, rates over a sliding window, the
recent tasks and auctions, envelope rejections by reason
(:mod:`~agoramesh.monitoring.screen` draws them).

Rates are deltas of cumulative counters sampled whenever an agent reports,
not counts of events, so a lost beat loses no tasks: tasks/s from the
status counters every heartbeat carries, bids/s from telemetry, auctions/s
from the higher of the auctions agents report running and the calls for
proposals heard on ``agora.cfp.>`` — ``agoramesh submit`` runs its auctions
itself and sends no telemetry, but its calls for proposals are on the mesh
like anyone's.

The durable-job store is not heard but asked
(:mod:`~agoramesh.monitoring.job_queue`); the watcher hands its counts to
:meth:`MeshView.set_jobs`.

Agents hosted in one process (nodes/host.py) do not beat themselves: their
host signs one ``heartbeat_batch`` and one ``telemetry_batch`` a beat for
all of them, and its ``bye`` takes them all along. A batch entry speaks for an
agent only if that agent's own signed hello, card or discovery answer named
the batch's signer as its ``host``; an entry for an agent not known yet
shows nothing, but lists the agent in :meth:`MeshView.missing_cards`, so
the watcher fetches its card and the card says whether that host speaks
for it.

Time is the caller's: every method that depends on it takes ``now`` (epoch
seconds), so the view is deterministic under test.
"""

from __future__ import annotations

import bisect
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple, Protocol

from agoramesh.bus.identity import is_agent_id
from agoramesh.monitoring.auctions import History
from agoramesh.monitoring.job_queue import JobQueue
from agoramesh.monitoring.records import AgentRecord, MeshEvent, Presence, Rates
from agoramesh.nodes.card import AgentStatus
from agoramesh.nodes.presence import MAX_BATCH

__all__ = ("MeshView", "Message")


class Message(Protocol):
    """What :meth:`MeshView.ingest` reads: a bus Delivery or a gathered Envelope."""

    @property
    def sender(self) -> str | None: ...
    @property
    def type(self) -> str | None: ...
    @property
    def body(self) -> Any: ...
    @property
    def subject(self) -> str: ...


#: Message types an agent (or a host) sends on its own subject (``<prefix>.<kind>.<id>``).
_OWN_SUBJECT = frozenset(["hello", "heartbeat", "bye", "telemetry", "heartbeat_batch",
                          "telemetry_batch"])
#: Agents named in host batches before we know their card, remembered at most.
_MAX_UNKNOWN = 4096


class _Unknown(NamedTuple):
    """An agent a host's batch named before we had its card."""

    host: str  # the batch's signer
    heard: float  # when last named
    interval: float  # the batch's beat interval


class MeshView:
    """The mesh as heard by one watcher; fed by :meth:`ingest`, drawn by
    :func:`~agoramesh.monitoring.screen.render`.

    ``window``: seconds the rates average over. ``missed``: heartbeats an
    agent may miss before it shows as lost. ``linger``: seconds a gone agent
    stays on screen. ``keep_events``: recent events kept. ``keep_auctions``,
    ``keep_tasks``: kept in :attr:`history` (the web console's).
    """

    def __init__(self, *, server: str = "", window: float = 5.0, missed: int = 3,
                 linger: float = 30.0, keep_events: int = 100, keep_auctions: int = 0,
                 keep_tasks: int = 0, started: float | None = None) -> None:
        self.server = server
        self.window = window
        self.missed = missed
        self.linger = linger
        self.started = time.time() if started is None else started
        self.agents: dict[str, AgentRecord] = {}
        self.events: list[MeshEvent] = []  # by ts, oldest first
        self._keep_events = keep_events
        self._cfps: deque[float] = deque()  # when each auction's first call was heard
        self._auction_ids: OrderedDict[str, None] = OrderedDict()  # seen, bounded
        #: Agents named in host batches whose card we lack, by id (bounded, oldest first).
        self._unknown: OrderedDict[str, _Unknown] = OrderedDict()
        #: The job store's counts as last read; None while JetStream does not answer.
        self.jobs: JobQueue | None = None
        self.history = History(keep_auctions=keep_auctions, keep_tasks=keep_tasks)

    # -- ingesting -----------------------------------------------------------------

    def ingest(self, message: Message, *, now: float | None = None) -> bool:
        """Take in one admitted envelope; False if it was not for us or unusable."""
        if message.sender is None or message.type is None:
            return False
        return self.observe(message.type, message.sender, message.body,
                            subject=message.subject, now=now)

    def observe(self, type: str, sender: str, body: Any, *, subject: str | None = None,
                now: float | None = None) -> bool:
        """Take in a message of ``type`` signed by ``sender``; see :meth:`ingest`."""
        now = time.time() if now is None else now
        if not isinstance(body, Mapping):
            return False
        if type == "cfp":
            return self._cfp(body, now)
        if type in _OWN_SUBJECT and subject is not None and not subject.endswith("." + sender):
            return False  # an agent speaks for itself only, on its own subject
        if type == "bye":
            return self._bye(sender, now)
        if type in ("hello", "discovery", "card"):
            return self._card(type, sender, body, now)
        if type == "heartbeat":
            record = self._record(sender, now)
            self._status(record, body, now)
            return True
        if type == "telemetry":
            self._telemetry(self._record(sender, now), body, now)
            return True
        if type == "heartbeat_batch":
            return self._batch(sender, body, "beats", now)
        if type == "telemetry_batch":
            return self._batch(sender, body, "agents", now)
        return False

    def _bye(self, sender: str, now: float) -> bool:
        """An agent leaves; a host's bye takes along every agent that named it."""
        for agent_id, unknown in list(self._unknown.items()):
            if unknown.host == sender:
                del self._unknown[agent_id]
        leaving = [record for record in self.agents.values() if record.left_at is None
                   and (record.id == sender or record.host == sender)]
        for record in leaving:
            record.left_at = now
            self._event(MeshEvent(ts=now, kind="agent", agent=record.id, outcome="left"))
        return bool(leaving)

    def _batch(self, host: str, body: Mapping[str, Any], key: str, now: float) -> bool:
        """A host's ``heartbeat_batch`` (``key`` "beats") or ``telemetry_batch`` ("agents").

        Each entry is applied as the agent's own heartbeat or telemetry would
        be, but only to an agent whose card named ``host``; an agent we do not
        know yet is remembered for a card fetch, one whose card named another
        host (or none) is left alone (unless it is gone: then its card is asked
        again, in case it moved), an entry that is not a map with an id is skipped.
        """
        entries = body.get(key)
        if not isinstance(entries, list) or len(entries) > MAX_BATCH:
            return False
        interval = _number(body.get("interval"))
        if interval is not None and interval <= 0:
            interval = None
        used = False
        for entry in entries:
            agent_id = entry.get("id") if isinstance(entry, Mapping) else None
            if not isinstance(agent_id, str) or not agent_id:
                continue
            record = self.agents.get(agent_id)
            if record is None or (record.host != host and record.presence(
                    now, self.missed) is not Presence.LIVE):
                if is_agent_id(agent_id):  # a subject we may ask for its card
                    self._remember_unknown(agent_id, host, interval, now)
                    used = True
            elif record.host == host:
                if key == "beats":
                    self._status(record, {"status": entry.get("status"),
                                          "interval": interval}, now)
                else:
                    self._telemetry(record, entry, now)
                used = True
        return used

    def _remember_unknown(self, agent_id: str, host: str, interval: float | None,
                          now: float) -> None:
        was = self._unknown.pop(agent_id, None)
        if interval is None:
            interval = was.interval if was is not None and was.host == host else 1.0
        self._unknown[agent_id] = _Unknown(host, now, interval)
        while len(self._unknown) > _MAX_UNKNOWN:
            self._unknown.popitem(last=False)

    def _record(self, agent_id: str, now: float) -> AgentRecord:
        record = self.agents.get(agent_id)
        if record is None:
            record = self.agents[agent_id] = AgentRecord(id=agent_id, first_seen=now,
                                                         last_seen=now)
        return record

    def _card(self, type: str, sender: str, body: Mapping[str, Any], now: float) -> bool:
        card = body.get("card")
        if not isinstance(card, Mapping) or card.get("id") != sender:
            return False
        was = self.agents.get(sender)
        joined = type == "hello" and (was is None or was.presence(now, self.missed)
                                      is not Presence.LIVE)
        record = self._record(sender, now)
        self._unknown.pop(sender, None)
        host = body.get("host")
        # Only the agent's own body says who beats for it; a malformed host is none.
        record.host = host if isinstance(host, str) and is_agent_id(host) else ""
        record.name = str(card.get("name") or record.name)
        record.type = str(card.get("type") or record.type)
        capabilities = card.get("capabilities")
        if isinstance(capabilities, list):
            record.capabilities = tuple(str(c.get("name")) for c in capabilities
                                        if isinstance(c, Mapping) and c.get("name"))
        record.has_card = True
        self._status(record, body, now)
        if joined:
            self._event(MeshEvent(ts=now, kind="agent", agent=sender, outcome="joined"))
        return True

    def _status(self, record: AgentRecord, body: Mapping[str, Any], now: float) -> None:
        status = body.get("status")
        if isinstance(status, Mapping):
            record.status = AgentStatus.from_dict(status)
        interval = _number(body.get("interval"))
        if interval is not None and interval > 0:
            record.interval = interval
        record.last_seen = now
        record.left_at = None
        record.lost_reported = False
        self._sample(record, now)

    def _telemetry(self, record: AgentRecord, body: Mapping[str, Any], now: float) -> None:
        """An agent's telemetry beat (its own, or its entry in its host's batch)."""
        if not record.has_card:  # a card, once known, names the agent; until then, this does
            record.name = str(body.get("name") or record.name)
            record.type = str(body.get("type") or record.type)
        record.auctions = _counts(body.get("auctions"), record.auctions)
        record.bids = _counts(body.get("bids"), record.bids)
        record.rejections = _counts(body.get("rejections"), record.rejections)
        record.has_telemetry = True
        record.server = _server(body.get("server"), record.server)
        self._status(record, body, now)
        recent = body.get("recent")
        for item in recent[:64] if isinstance(recent, list) else ():
            event = _event_from(item, record.id)
            if event is not None:
                self._event(event)
                self.history.add(event, item)

    def _cfp(self, body: Mapping[str, Any], now: float) -> bool:
        auction_id = body.get("auction_id")
        if not isinstance(auction_id, str) or auction_id in self._auction_ids:
            return False  # a re-auction of one we counted
        self._auction_ids[auction_id] = None
        if len(self._auction_ids) > 4096:
            self._auction_ids.popitem(last=False)
        self._cfps.append(now)
        while self._cfps and self._cfps[0] <= now - self.window:
            self._cfps.popleft()
        return True

    def _sample(self, record: AgentRecord, now: float) -> None:
        samples = record.samples
        samples.append(record.sample(now))
        # Keep one sample at or before the window's start: the baseline of the delta.
        while len(samples) > 2 and (samples[1].t <= now - self.window or len(samples) > 512):
            samples.popleft()

    def _event(self, event: MeshEvent) -> None:
        bisect.insort(self.events, event, key=lambda e: e.ts)
        if len(self.events) > self._keep_events:
            del self.events[:len(self.events) - self._keep_events]

    def set_jobs(self, queue: JobQueue | None) -> None:
        """The job store's counts as just read (None: JetStream did not answer)."""
        self.jobs = queue

    def prune(self, now: float) -> None:
        """Note agents that fell silent, drop those gone for longer than ``linger``
        (and forget unknown agents no host has named for ``missed`` of its beats)."""
        for agent_id, unknown in list(self._unknown.items()):
            if not self._claimed(unknown, now):
                del self._unknown[agent_id]
        for record in list(self.agents.values()):
            presence = record.presence(now, self.missed)
            if presence is Presence.LOST and not record.lost_reported:
                record.lost_reported = True
                self._event(MeshEvent(ts=record.gone_since(self.missed), kind="agent",
                                      agent=record.id, outcome="lost"))
            gone_for = now - record.gone_since(self.missed)
            if presence is not Presence.LIVE and gone_for > self.linger:
                del self.agents[record.id]

    def missing_cards(self, now: float) -> list[str]:
        """Agents to ask for their card: live ones heard from without it (we joined after
        their hello), and those a host's batch named lately that we do not know yet."""
        missing = [record.id for record in self.agents.values()
                   if not record.has_card and record.presence(now, self.missed) is Presence.LIVE]
        return missing + [agent_id for agent_id, unknown in self._unknown.items()
                          if self._claimed(unknown, now) and (
                              agent_id not in self.agents or self.agents[agent_id]
                              .presence(now, self.missed) is not Presence.LIVE)]

    def _claimed(self, unknown: _Unknown, now: float) -> bool:
        """Whether a host named this unknown agent within ``missed`` of its beats."""
        return now - unknown.heard <= self.missed * unknown.interval

    # -- reading -------------------------------------------------------------------

    def rows(self, now: float) -> list[AgentRecord]:
        """Agents to show: live ones by name, then the gone ones."""
        return sorted(self.agents.values(), key=lambda r: (
            r.presence(now, self.missed) is not Presence.LIVE, r.label, r.id))

    def live_count(self, now: float) -> int:
        return sum(1 for record in self.agents.values()
                   if record.presence(now, self.missed) is Presence.LIVE)

    def rates(self, now: float) -> Rates:
        """Per second over the last ``window`` seconds (less, just after starting)."""
        span = max(1.0, min(self.window, now - self.started))
        since = now - self.window
        tasks = auctions = bids = 0
        for record in self.agents.values():
            tasks += _delta([s.tasks for s in record.samples if s.t <= since],
                            [s.tasks for s in record.samples if s.t > since])
            auctions += _delta([s.auctions for s in record.samples if s.t <= since],
                               [s.auctions for s in record.samples if s.t > since])
            bids += _delta([s.bids for s in record.samples if s.t <= since],
                           [s.bids for s in record.samples if s.t > since])
        heard = len(self._cfps) - bisect.bisect_right(self._cfps, since)
        return Rates(auctions_per_s=max(auctions, heard) / span, tasks_per_s=tasks / span,
                     bids_per_s=bids / span)

    def names(self) -> dict[str, str]:
        return {record.id: record.label for record in self.agents.values()}

    def rejections(self) -> dict[str, int]:
        """Envelope rejections by reason, summed over the agents, most frequent first."""
        return _summed(record.rejections for record in self.agents.values())

    def totals(self) -> dict[str, dict[str, int]]:
        """Tasks done and failed, auctions by outcome, bids by decision: all agents."""
        return {"tasks": {"completed": sum(r.status.tasks_completed
                                           for r in self.agents.values()),
                          "failed": sum(r.status.tasks_failed for r in self.agents.values())},
                "auctions": _summed(r.auctions for r in self.agents.values()),
                "bids": _summed(r.bids for r in self.agents.values())}

    def snapshot(self, now: float) -> dict[str, Any]:
        """Everything the frame shows, as one JSON-ready object."""
        names = self.names()
        return {"server": self.server, "ts": round(now, 3), "window_s": self.window,
                "agents": [record.as_dict(now, self.missed) for record in self.rows(now)],
                "rates": self.rates(now).as_dict(), "totals": self.totals(),
                "rejections": self.rejections(),
                "jobs": None if self.jobs is None else self.jobs.as_dict(),
                "recent": [event.as_dict(names) for event in self.events]}


# -- decoding what agents send (defensively: a bad field never breaks the view) -------

def _counts(value: Any, previous: dict[str, int]) -> dict[str, int]:
    if not isinstance(value, Mapping):
        return previous
    return {str(key): int(count) for key, count in list(value.items())[:64]
            if isinstance(count, int) and not isinstance(count, bool) and count >= 0}


def _summed(maps: Iterable[Mapping[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for counts in maps:
        for key, count in counts.items():
            total[key] = total.get(key, 0) + count
    return dict(sorted(total.items(), key=lambda item: (-item[1], item[0])))


def _delta(before: list[int | None], during: list[int | None]) -> int:
    """How much a counter grew in the window: its last value minus its value at the start.

    The start is the last value known before the window, else the first in it
    (an agent first heard of inside the window: its earlier work is not ours
    to count). Unknown values (None) are skipped; a restart never counts
    negative.
    """
    known = [v for v in before if v is not None][-1:] + [v for v in during if v is not None]
    return max(0, known[-1] - known[0]) if known else 0


def _server(value: Any, previous: tuple[str, str]) -> tuple[str, str]:
    """(id, name) of the server a telemetry body says its agent is on, else ``previous``."""
    if isinstance(value, Mapping) and isinstance(value.get("id"), str):
        return value["id"][:64], str(value.get("name") or "")[:64]
    return previous


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _event_from(item: Any, sender: str) -> MeshEvent | None:
    if not isinstance(item, Mapping) or item.get("kind") not in ("task", "auction"):
        return None
    ts = _number(item.get("ts"))
    if ts is None:
        return None
    winner = item.get("winner")
    bids = item.get("bids")
    return MeshEvent(ts=ts, kind=str(item["kind"]), agent=sender,
                     capability=str(item.get("capability") or "")[:128],
                     outcome=str(item.get("outcome") or "")[:32], ms=_number(item.get("ms")),
                     task_id=str(item.get("task_id") or "")[:64],
                     bids=bids if isinstance(bids, int) and not isinstance(bids, bool) else None,
                     winner=winner if isinstance(winner, str) else None)
