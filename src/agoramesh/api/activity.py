"""What this API runs beyond single tasks, as it goes: collaborations and workflows.

A collaboration (``POST /api/collaborate``) or a workflow (``POST
/api/workflows``) run through the API is a :class:`Run` in the API's
:class:`Activity`: a debate's transcript grows turn by turn from the
collaboration's events, a workflow's steps change state from the engine's
events, and the run ends completed or failed. The web console shows the
last :data:`KEEP` of them; nothing here is on the wire (other nodes' runs
are theirs to show).
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agoramesh.protocols.workflow.engine import EventKind, WorkflowEvent, WorkflowResult
from agoramesh.protocols.workflow.workflow import Workflow

__all__ = ("KEEP", "Activity", "Run")

KEEP = 50
#: Turns of a transcript kept, and characters of one turn's text.
_TURNS, _TEXT = 200, 4000


@dataclass(slots=True, kw_only=True)
class Run:
    """One collaboration or workflow run here."""

    activity: Activity
    kind: str  # collaboration | workflow
    title: str
    mode: str = ""
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    started: float = field(default_factory=time.time)
    status: str = "running"  # running | completed | failed
    error: str = ""
    transcript: list[dict[str, Any]] = field(default_factory=list)
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    outcome: dict[str, Any] = field(default_factory=dict)

    def collaboration_event(self, event: Mapping[str, Any]) -> None:
        """A collaboration's progress (protocols/collaboration/crew.py ``emit``)."""
        kind = event.get("event")
        if kind in ("argument", "failed", "consensus") and len(self.transcript) < _TURNS:
            text = event.get("argument") or event.get("summary") or event.get("error") or ""
            self.transcript.append({
                "kind": kind, "round": event.get("round"), "agent": str(event.get("agent") or ""),
                "position": str(event.get("position") or ""),
                "text": (text if isinstance(text, str) else str(text))[:_TEXT]})
            self.activity.changed()

    def workflow_event(self, event: WorkflowEvent) -> None:
        """A workflow step's progress (protocols/workflow/engine.py)."""
        step = self.steps.get(event.step)
        if step is None:
            return
        if event.kind is EventKind.STARTED:
            step["state"] = "RUNNING"
        elif event.kind is EventKind.SKIPPED:
            step["state"] = "SKIPPED"
        elif event.kind is EventKind.FINISHED and event.status is not None:
            step["state"] = event.status.value
        if event.agent_name or event.agent_id:
            step["agent"] = event.agent_name or event.agent_id
        if event.detail and event.kind is not EventKind.PROGRESS:
            step["detail"] = event.detail[:_TEXT]
        self.activity.changed()

    def finish(self, outcome: Mapping[str, Any], *, ok: bool = True, error: str = "") -> None:
        self.status = "completed" if ok else "failed"
        self.error = error[:_TEXT]
        self.outcome = dict(outcome)
        self.activity.changed()

    def fail(self, error: BaseException) -> None:
        self.finish({}, ok=False, error=f"{type(error).__name__}: {error}")

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "title": self.title, "mode": self.mode,
                "started": round(self.started, 3), "status": self.status, "error": self.error,
                "transcript": self.transcript, "steps": list(self.steps.values()),
                "outcome": self.outcome}


class Activity:
    """The last ``keep`` runs, newest last; ``version`` grows with every change."""

    def __init__(self, keep: int = KEEP) -> None:
        self.runs: deque[Run] = deque(maxlen=keep)
        self.version = 0

    def changed(self) -> None:
        self.version += 1

    def collaboration(self, mode: str, topic: str) -> Run:
        run = Run(activity=self, kind="collaboration", title=topic[:200], mode=mode)
        self.runs.append(run)
        self.changed()
        return run

    def workflow(self, workflow: Workflow) -> Run:
        """A workflow run about to start: its DAG, every step PENDING."""
        run = Run(activity=self, kind="workflow", title=workflow.name[:200])
        for name in workflow.order:
            step = workflow.step(name)
            run.steps[name] = {"name": name, "needs": sorted(step.needs), "state": "PENDING",
                               "what": step.capability or step.agent or ""}
        self.runs.append(run)
        self.changed()
        return run

    @staticmethod
    def workflow_outcome(result: WorkflowResult) -> dict[str, Any]:
        return {"status": result.status.value, "elapsed_ms": round(result.elapsed_ms, 1),
                "outputs": result.outputs}

    def as_list(self) -> list[dict[str, Any]]:
        return [run.as_dict() for run in self.runs]
