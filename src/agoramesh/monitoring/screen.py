"""The frame of ``agoramesh watch``: a :class:`~agoramesh.monitoring.mesh_view.MeshView`
drawn as text.

:func:`render` draws one fixed-size frame and is pure: the frame a test
checks is the frame a terminal shows. A header with the rates, the agents
with their load, the totals, rejections and job store, then the recent
events; when they do not all fit, the agents keep their rows and the oldest
events go first.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from agoramesh.monitoring.records import Presence

if TYPE_CHECKING:
    from agoramesh.monitoring.mesh_view import MeshView
    from agoramesh.monitoring.records import AgentRecord, MeshEvent

__all__ = ("natural_height", "render")

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
            # Awarded on no bid: a direct award (one agent known to offer the capability).
            bids = ("direct" if event.bids == 0 and event.outcome == "awarded"
                    else f"{event.bids} bid{'s' * (event.bids != 1)}"
                    if event.bids is not None else "")
            who = f"{winner}  (run by {agent}{', ' + bids if bids else ''})"
        else:
            who = agent
        ms = f"{event.ms:.1f}" if event.ms is not None else "-"
        out.append(f"{time.strftime('%H:%M:%S', time.localtime(event.ts)):<8}  "
                   f"{event.kind:<7}  {_cut(event.capability or '-', cap_w):<{cap_w}}  "
                   f"{event.outcome[:10]:<10}  {ms:>8}  {who}")
    return out
