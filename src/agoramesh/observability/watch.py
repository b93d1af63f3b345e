"""The model behind ``agoramesh watch``: what the mesh is doing, from what it says.

A :class:`MeshView` ingests the signed messages any client may hear —
presence (hello, heartbeat, bye), discovery and card answers, telemetry
beats (PROTOCOL.md §18) and calls for proposals — and answers what the
screen shows: the agents and their load, rates over a sliding window, the
recent tasks and auctions, envelope rejections by reason. :func:`render`
draws one fixed-size text frame of it and is pure: the frame a test checks
is the frame a terminal shows.

Rates are deltas of cumulative counters sampled whenever an agent reports,
not counts of events, so a lost beat loses no tasks: tasks/s from the
status counters every heartbeat carries, bids/s from telemetry, auctions/s
from the higher of the auctions agents report running and the calls for
proposals heard on ``agora.cfp.>`` — ``agoramesh submit`` runs its auctions
itself and sends no telemetry, but its calls for proposals are on the mesh
like anyone's.

The durable-job store is not heard but asked: :func:`read_job_queue` reads
its counts (one consumer-info and one stream-info request, bounded), and the
watcher hands them to :meth:`MeshView.set_jobs` at most once a second; the
metrics endpoint uses the same reading.

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

import asyncio
import bisect
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import nats.errors

from agoramesh.bus.identity import is_agent_id
from agoramesh.errors import AgoraError
from agoramesh.nodes.card import AgentStatus
from agoramesh.nodes.presence import MAX_BATCH

if TYPE_CHECKING:
    from agoramesh.bus.jetstream import JetStream

__all__ = ("AgentRecord", "JobQueue", "MeshEvent", "MeshView", "Message", "Presence", "Rates",
           "Sample", "natural_height", "read_job_queue", "render")


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


class Presence(StrEnum):
    LIVE = "live"
    LEFT = "left"  # said bye
    LOST = "lost"  # missed its heartbeats


class Sample(NamedTuple):
    t: float
    tasks: int  # completed + failed, from the status
    auctions: int | None  # run by the agent, every outcome; None before its first telemetry
    bids: int | None  # sent by the agent; None before its first telemetry


@dataclass(frozen=True, slots=True)
class MeshEvent:
    """A task or auction an agent reported, or an agent joining or leaving."""

    ts: float
    kind: str  # task | auction | agent
    agent: str  # the reporting agent's id
    capability: str = ""
    outcome: str = ""  # task/auction outcome, or joined | left | lost
    ms: float | None = None
    task_id: str = ""
    bids: int | None = None
    winner: str | None = None

    def as_dict(self, names: Mapping[str, str]) -> dict[str, Any]:
        data: dict[str, Any] = {"ts": round(self.ts, 3), "kind": self.kind,
                                "agent": self.agent, "agent_name": names.get(self.agent, "")}
        if self.kind != "agent":
            data |= {"capability": self.capability, "task_id": self.task_id, "ms": self.ms}
        data["outcome"] = self.outcome
        if self.kind == "auction":
            data |= {"bids": self.bids, "winner": self.winner,
                     "winner_name": names.get(self.winner or "", "")}
        return data


@dataclass(slots=True)
class AgentRecord:
    """One agent as last heard of."""

    id: str
    first_seen: float
    last_seen: float
    name: str = ""
    type: str = ""
    capabilities: tuple[str, ...] = ()
    has_card: bool = False
    has_telemetry: bool = False
    status: AgentStatus = field(default_factory=AgentStatus)
    interval: float = 1.0  # its heartbeat interval, seconds
    host: str = ""  # the host its own card body named: whose batches speak for it
    left_at: float | None = None
    lost_reported: bool = False
    auctions: dict[str, int] = field(default_factory=dict)
    bids: dict[str, int] = field(default_factory=dict)
    rejections: dict[str, int] = field(default_factory=dict)
    samples: deque[Sample] = field(default_factory=deque)

    @property
    def label(self) -> str:
        return self.name or self.id[:8] + "…"

    def presence(self, now: float, missed: int) -> Presence:
        if self.left_at is not None:
            return Presence.LEFT
        if now - self.last_seen > missed * self.interval:
            return Presence.LOST
        return Presence.LIVE

    def gone_since(self, missed: int) -> float:
        return self.left_at if self.left_at is not None else (
            self.last_seen + missed * self.interval)

    def sample(self, now: float) -> Sample:
        tasks = self.status.tasks_completed + self.status.tasks_failed
        if not self.has_telemetry:  # unknown is not zero: no jump when the first one comes
            return Sample(now, tasks, None, None)
        return Sample(now, tasks, sum(self.auctions.values()), self.bids.get("bid", 0))

    def as_dict(self, now: float, missed: int) -> dict[str, Any]:
        presence = self.presence(now, missed)
        return {"id": self.id, "name": self.name, "type": self.type,
                "state": self.status.state if presence is Presence.LIVE else str(presence),
                "presence": str(presence), "capabilities": list(self.capabilities),
                "status": self.status.as_dict(), "auctions": dict(self.auctions),
                "bids": dict(self.bids), "rejections": dict(self.rejections),
                "last_seen_s": round(now - self.last_seen, 3)}


@dataclass(frozen=True, slots=True)
class Rates:
    auctions_per_s: float
    tasks_per_s: float
    bids_per_s: float

    def as_dict(self) -> dict[str, float]:
        return {"auctions_per_s": round(self.auctions_per_s, 3),
                "tasks_per_s": round(self.tasks_per_s, 3),
                "bids_per_s": round(self.bids_per_s, 3)}


@dataclass(frozen=True, slots=True)
class JobQueue:
    """The durable-job store's counts, from its consumer and its result stream."""

    queued: int  # not yet delivered to any node
    running: int  # delivered, not yet acknowledged
    redelivered: int  # delivered more than once, not yet acknowledged
    results: int  # results stored (within their ttl)
    results_bytes: int

    @classmethod
    def from_info(cls, consumer: Mapping[str, Any], results: Mapping[str, Any]) -> JobQueue:
        """From JetStream's consumer info (of the job consumer) and stream info (of the
        result stream)."""
        state = results.get("state")
        state = state if isinstance(state, Mapping) else {}
        return cls(queued=_count(consumer.get("num_pending")),
                   running=_count(consumer.get("num_ack_pending")),
                   redelivered=_count(consumer.get("num_redelivered")),
                   results=_count(state.get("messages")),
                   results_bytes=_count(state.get("bytes")))

    def as_dict(self) -> dict[str, int]:
        return {"queued": self.queued, "running": self.running,
                "redelivered": self.redelivered, "results": self.results,
                "results_bytes": self.results_bytes}


async def read_job_queue(js: JetStream, timeout: float = 1.0) -> JobQueue | None:
    """The job store's counts, or None if JetStream does not answer within ``timeout``
    (none runs, the store is not created yet, a leader is being elected). Never raises
    for the store's sake: an observer carries on without it."""
    try:
        async with asyncio.timeout(timeout):
            consumer = await js.consumer_info()
            results = await js.stream_info(js.names.kv_stream)
    except (AgoraError, TimeoutError, nats.errors.Error, OSError, ValueError):
        return None
    return JobQueue.from_info(consumer, results)


class _Unknown(NamedTuple):
    """An agent a host's batch named before we had its card."""

    host: str  # the batch's signer
    heard: float  # when last named
    interval: float  # the batch's beat interval


class MeshView:
    """The mesh as heard by one watcher; fed by :meth:`ingest`, read by :func:`render`.

    ``window``: seconds the rates average over. ``missed``: heartbeats an
    agent may miss before it shows as lost. ``linger``: seconds a gone agent
    stays on screen. ``keep_events``: recent events kept.
    """

    def __init__(self, *, server: str = "", window: float = 5.0, missed: int = 3,
                 linger: float = 30.0, keep_events: int = 100,
                 started: float | None = None) -> None:
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
        self._status(record, body, now)
        recent = body.get("recent")
        for item in recent[:64] if isinstance(recent, list) else ():
            event = _event_from(item, record.id)
            if event is not None:
                self._event(event)

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


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


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


# -- rendering -------------------------------------------------------------------------

_FIXED_LINES = 8  # header, blank, table header, blank, totals, rejections, blank, recent header
# (plus the jobs line, under rejections, while the job store answers)
_BAR = 8


def natural_height(view: MeshView, *, recent: int = 10) -> int:
    """The height that shows every agent and the last ``recent`` events."""
    return (_fixed_lines(view) + max(1, len(view.agents))
            + min(max(1, len(view.events)), recent))


def _fixed_lines(view: MeshView) -> int:
    return _FIXED_LINES + (view.jobs is not None)


def render(view: MeshView, width: int, height: int, now: float) -> str:
    """One frame: exactly ``height`` lines, none longer than ``width``; no escapes.

    When the agents and the recent events do not all fit, the agents keep
    their rows and the oldest events go first (at least three stay, when the
    height allows); agents that do not fit are summed up in one line.
    """
    width, height = max(10, width), max(1, height)
    rows = view.rows(now)
    events = view.events[::-1]  # newest first
    room = max(0, height - _fixed_lines(view))
    want_agents, want_events = max(1, len(rows)), max(1, len(events))
    agent_lines = max(1, min(want_agents, room - min(want_events, 3)))
    event_lines = max(0, room - agent_lines)

    lines = [_header(view, now, width), ""]
    lines += _agent_table(view, rows, now, agent_lines)
    lines += ["", _totals(view), _rejections(view), *_jobs(view), ""]
    lines += _recent(view, events, event_lines)
    lines = [_fit(line, width) for line in lines[:height]]
    return "\n".join(lines + [""] * (height - len(lines)))


def _fit(line: str, width: int) -> str:
    line = line.rstrip()
    return line if len(line) <= width else line[:width - 1] + "…"


def _header(view: MeshView, now: float, width: int) -> str:
    live = view.live_count(now)
    gone = len(view.agents) - live
    rates = view.rates(now)
    left = (f"agoramesh watch · {view.server or 'mesh'} · {live} agent{'s' * (live != 1)}"
            + (f" (+{gone} gone)" if gone else "")
            + f" · auctions/s {rates.auctions_per_s:.1f} · tasks/s {rates.tasks_per_s:.1f}"
            + f" · bids/s {rates.bids_per_s:.1f}")
    clock = time.strftime("%H:%M:%S", time.localtime(now))
    gap = width - len(left) - len(clock)
    return left + " " * gap + clock if gap >= 2 else left


def _bar(in_flight: int, capacity: int) -> str:
    filled = _BAR if capacity <= 0 else min(_BAR, round(_BAR * in_flight / capacity))
    if in_flight > 0 and filled == 0:
        filled = 1  # any work shows
    return "█" * filled + "░" * (_BAR - filled)


def _agent_table(view: MeshView, rows: list[AgentRecord], now: float,
                 lines: int) -> list[str]:
    name_w = min(18, max([4, *(len(r.label) for r in rows)]))
    type_w = min(10, max([4, *(len(r.type) for r in rows)]))
    head = (f"{'NAME':<{name_w}}  {'TYPE':<{type_w}}  {'STATE':<8}  {'LOAD':>5} {'':<8}  "
            f"{'DONE':>5} {'FAIL':>4}  {'OK%':>4}  {'LAT ms':>7}  CAPABILITIES")
    if not rows:
        return [head, f"(no agents yet: listening for presence on {view.server or 'the mesh'})"]
    shown = rows if len(rows) <= lines else rows[:lines - 1]
    out = [head]
    for record in shown:
        status = record.status
        presence = record.presence(now, view.missed)
        state = status.state if presence is Presence.LIVE else str(presence)
        load = f"{status.in_flight}/{status.capacity}"
        done = status.tasks_completed + status.tasks_failed
        ok = f"{status.success_rate * 100:.0f}" if done else "-"
        latency = f"{status.avg_latency_ms:.1f}" if status.tasks_completed else "-"
        capabilities = (", ".join(record.capabilities) if record.has_card
                        else "(card pending)")
        out.append(f"{_cut(record.label, name_w):<{name_w}}  {_cut(record.type, type_w):<{type_w}}"
                   f"  {state[:8]:<8}  {load:>5} {_bar(status.in_flight, status.capacity)}  "
                   f"{status.tasks_completed:>5} {status.tasks_failed:>4}  {ok:>4}  "
                   f"{latency:>7}  {capabilities}")
    if len(shown) < len(rows):
        hidden = rows[len(shown):]
        gone = sum(1 for r in hidden if r.presence(now, view.missed) is not Presence.LIVE)
        out.append(f"… and {len(hidden)} more agent{'s' * (len(hidden) != 1)}"
                   + (f" ({gone} gone)" if gone else ""))
    return out


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def _joined(counts: Mapping[str, int]) -> str:
    return " · ".join(f"{count} {key}" for key, count in counts.items() if count)


def _totals(view: MeshView) -> str:
    totals = view.totals()
    tasks = _joined(totals["tasks"]) or "none yet"
    auctions = _joined(totals["auctions"]) or "none reported"
    bids = totals["bids"]
    return (f"tasks      {tasks}    auctions run by agents  {auctions}    "
            f"bids {bids.get('bid', 0)} sent · {bids.get('refuse', 0)} refused")


def _rejections(view: MeshView) -> str:
    rejected = view.rejections()
    return "rejected   " + (" · ".join(f"{key} {count}" for key, count in rejected.items())
                            or "none")


def _jobs(view: MeshView) -> list[str]:
    """``jobs       12 queued · 3 running · 1,204 results``; no line without the store."""
    queue = view.jobs
    if queue is None:
        return []
    line = (f"jobs       {queue.queued:,} queued · {queue.running:,} running · "
            f"{queue.results:,} result{'s' * (queue.results != 1)}")
    return [line + (f" · {queue.redelivered:,} redelivered" if queue.redelivered else "")]


def _recent(view: MeshView, events: list[MeshEvent], lines: int) -> list[str]:
    names = view.names()
    cap_w = min(24, max([10, *(len(e.capability) for e in events[:lines])]))
    head = (f"{'RECENT':<8}  {'EVENT':<7}  {'CAPABILITY':<{cap_w}}  {'OUTCOME':<10}  "
            f"{'MS':>8}  AGENT")
    if lines <= 0:
        return [head]
    if not events:
        return [head, "(no tasks or auctions yet)"]
    out = [head]
    for event in events[:lines]:
        agent = names.get(event.agent, event.agent[:8] + "…")
        if event.kind == "auction":
            winner = names.get(event.winner, event.winner[:8] + "…") if event.winner else "-"
            bids = f"{event.bids} bid{'s' * (event.bids != 1)}" if event.bids is not None else ""
            who = f"{winner}  (run by {agent}{', ' + bids if bids else ''})"
        else:
            who = agent
        ms = f"{event.ms:.1f}" if event.ms is not None else "-"
        out.append(f"{time.strftime('%H:%M:%S', time.localtime(event.ts)):<8}  "
                   f"{event.kind:<7}  {_cut(event.capability or '-', cap_w):<{cap_w}}  "
                   f"{event.outcome[:10]:<10}  {ms:>8}  {who}")
    return out
