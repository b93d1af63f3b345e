"""Help between teammates: asking for it when blocked, giving it as the cooperation level says.

An agent blocked on one of its tasks (a delivery of an object nobody has
identified, and no vision of its own) broadcasts a ``help_request`` naming
the capability it needs (PROTOCOL.md §19); it asks again every
:data:`HELP_RETRY_STEPS` steps while nobody has taken it up. A teammate with
that capability answers with a ``task_negotiation`` ``accept`` and inspects
the object; the requester turns down (``reject``) all but the first helper.

``cooperation_level`` shapes the helper: ``high`` takes a request up at once,
before its own work; ``medium`` once its own tasks are done or blocked;
``low`` only when idle and asked a second time. An agent past
``max_steps_per_task`` on one task gives it up with a ``stuck`` request.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from agoramesh.modes.decentralized.communication import CommunicationManager
from agoramesh.modes.decentralized.config import CooperationLevel
from agoramesh.modes.decentralized.policy import estimated_steps
from agoramesh.modes.decentralized.tasks import HelpAsked, HelpTask, Point, Task, point

__all__ = ("HELP_RETRY_STEPS", "HelpDesk")

HELP_RETRY_STEPS = 8  # a help request nobody took is sent again after this many steps


class HelpDesk:
    """One agent's help requests, and the help it gives (module docstring).

    ``counts`` is the agent's: ``help_requests_sent``, ``help_given`` and
    ``help_received`` are counted in it.
    """

    def __init__(self, comm: CommunicationManager, cooperation: CooperationLevel,
                 counts: dict[str, int]) -> None:
        self.comm = comm
        self.cooperation = cooperation
        self.counts = counts
        self.asked: dict[str, HelpAsked] = {}  # task id -> our open request
        self.given: dict[str, HelpTask] = {}  # request id -> the help we give
        self.deferred: dict[str, HelpTask] = {}  # requests not (yet) taken up

    def reset(self) -> None:
        self.asked.clear()
        self.given.clear()
        self.deferred.clear()

    # -- asking --------------------------------------------------------------------

    def ask(self, task: Task, needs: str, *, step: int,
            objects: Mapping[str, Mapping[str, Any]]) -> None:
        """Ask the team for a ``needs`` agent to inspect ``task``'s object, unless asked
        already (and taken up, or asked less than :data:`HELP_RETRY_STEPS` ago)."""
        asked = self.asked.get(task.task_id)
        if asked is not None and (asked.helper or step - asked.step < HELP_RETRY_STEPS):
            return
        name = task.object
        if asked is None:
            asked = self.asked[task.task_id] = HelpAsked(uuid.uuid4().hex[:12], step)
        else:
            asked.step, asked.attempt = step, asked.attempt + 1
        location = point(objects.get(name, {}).get("position"), task.location or (0, 0))
        self.counts["help_requests_sent"] += 1
        self.comm.broadcast_message({"message_type": "help_request", "content": {
            "problem_type": "needs_capability", "required_capability": needs,
            "current_situation": f"{name} must be identified before I can deliver it",
            "requested_help": f"a {needs} agent to SCAN {name}", "task_id": task.task_id,
            "object": name, "request_id": asked.request_id, "location": list(location),
            "attempt": asked.attempt}})

    def blocked(self, queue: Sequence[str]) -> bool:
        """Whether one of the tasks of ``queue`` waits for help nobody has taken up."""
        return any(asked.helper is None for task_id, asked in self.asked.items()
                   if task_id in queue)

    def give_up(self, task_id: str, steps: int) -> None:
        """Tell the team this agent hands ``task_id`` back after ``steps`` steps on it."""
        self.comm.broadcast_message({"message_type": "help_request", "content": {
            "problem_type": "stuck", "task_id": task_id,
            "current_situation": f"no progress on {task_id} in {steps} steps",
            "requested_help": "take this task over", "request_id": uuid.uuid4().hex[:12]}})

    # -- giving --------------------------------------------------------------------

    def consider(self, sender: str, content: Mapping[str, Any], *,
                 capabilities: Sequence[str], idle: bool, position: Point) -> None:
        """A teammate's ``help_request``: taken up now, deferred, or not ours to take."""
        help_task = HelpTask.read(sender, content)
        if not help_task.request_id or help_task.capability not in capabilities:
            return
        if self.cooperation is CooperationLevel.HIGH or (
                self.cooperation is CooperationLevel.MEDIUM and idle):
            self._accept(help_task, position)
        else:
            self.deferred[help_task.request_id] = help_task

    def take_deferred(self, position: Point) -> None:
        """Take up deferred requests (this agent is idle): under ``low``, those asked twice."""
        for request_id, help_task in list(self.deferred.items()):
            if self.cooperation is CooperationLevel.LOW and help_task.attempt < 2:
                continue
            del self.deferred[request_id]
            self._accept(help_task, position)

    def helping(self, objects: Mapping[str, Mapping[str, Any]]) -> list[HelpTask]:
        """The help still to give: requests whose object nobody has identified yet."""
        for request_id, help_task in list(self.given.items()):
            if objects.get(help_task.object, {}).get("identified"):
                del self.given[request_id]
        return list(self.given.values())

    def _accept(self, help_task: HelpTask, position: Point) -> None:
        self.given[help_task.request_id] = help_task
        self.counts["help_given"] += 1
        self.comm.send_message(help_task.requester, {
            "message_type": "task_negotiation",
            "content": {"action": "accept", "help_request_id": help_task.request_id,
                        "object": help_task.object,
                        "estimated_time": estimated_steps(position, help_task.task())}})

    # -- answers -------------------------------------------------------------------

    def on_answer(self, sender: str, content: Mapping[str, Any]) -> None:
        """A ``task_negotiation`` about a help request: a helper's ``accept`` (the first
        helper is taken, later ones are turned down) or a requester's ``reject`` (it has
        help already: ours is no longer wanted)."""
        request_id = str(content.get("help_request_id"))
        if content.get("action") == "reject":
            self.given.pop(request_id, None)
            self.deferred.pop(request_id, None)
            return
        asked = next((a for a in self.asked.values() if a.request_id == request_id), None)
        if asked is None:
            return
        if asked.helper is None:
            asked.helper = sender
            self.counts["help_received"] += 1
        elif asked.helper != sender:  # someone was quicker: thank you, no
            self.comm.send_message(sender, {"message_type": "task_negotiation", "content": {
                "action": "reject", "help_request_id": request_id,
                "reason": f"{asked.helper} is helping already"}})
