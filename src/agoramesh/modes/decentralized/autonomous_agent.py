"""``AutonomousAgent``: M-7's decentralized agent, on the mesh.

Each agent decides for itself; there is no coordinator. ``decide_action()``
follows M-7's five steps:

1. read new messages (status updates, help requests, negotiation);
2. analyse the task state: its observation, the allocation every agent
   holds (negotiation.py), what teammates reported done;
3. negotiate when needed: tasks nobody owns (at the start, a task given up
   after ``max_steps_per_task``, or one whose agent was lost) are put to the
   team by ``negotiation_strategy``, the agent bidding as bidding.py says;
4. decide: its own next task's command (policy.py), help it promised, a
   help request when blocked (help.py), ``DONE`` once every task is known
   complete; with ``llm_config.backend`` set, the model picks the command,
   told the policy's choice, and the policy's command stands when the
   model's is not a valid one (llm.py);
5. return the command; ``step()`` carries it out.

``cooperation_level`` shapes how an agent treats others: how many tasks it
takes in a negotiation round (bidding.py) and when it helps (help.py).

Every message goes over NATS through the agent's
:class:`~.communication.CommunicationManager`; nothing is passed in memory.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from agoramesh.errors import AgoraError, ConfigError, InvalidRequest
from agoramesh.modes.decentralized.base import BaseAgent
from agoramesh.modes.decentralized.bidding import TeamBidder
from agoramesh.modes.decentralized.communication import CommunicationManager
from agoramesh.modes.decentralized.config import CooperationLevel, DecentralizedConfig
from agoramesh.modes.decentralized.help import HelpDesk
from agoramesh.modes.decentralized.llm import ask, extract_action, is_allowed, open_model, prompt
from agoramesh.modes.decentralized.negotiation import Negotiator
from agoramesh.modes.decentralized.policy import Plan, plan_task
from agoramesh.modes.decentralized.tasks import Task, point, read_tasks
from agoramesh.protocols.allocation.negotiation import resolve_conflict
from agoramesh.protocols.allocation.voting import default_chooser
from agoramesh.sim.interface import ActionStatus, SimulationEngine

__all__ = ("AutonomousAgent",)

log = logging.getLogger("agoramesh.decentralized")

_COUNTS = ("help_requests_sent", "help_given", "help_received", "status_updates_sent",
           "tasks_given_up", "llm_calls", "llm_fallbacks", "messages_read")


class AutonomousAgent(BaseAgent):
    """One decentralized agent (module docstring)."""

    def __init__(self, simulator: SimulationEngine, sim_id: str,
                 config: DecentralizedConfig | Mapping[str, Any] | None = None, *,
                 communication: CommunicationManager | None = None) -> None:
        settings = DecentralizedConfig.from_mapping(config)
        super().__init__(simulator, sim_id, settings.raw or settings.as_dict())
        self.settings = settings
        self.cooperation = settings.agent.cooperation_level
        self.capabilities = list(simulator.get_agent_capabilities(sim_id))
        self.llm = open_model(settings.llm, max_retries=settings.communication.retry_attempts)
        self.comm = communication or CommunicationManager(
            sim_id, config=settings, capabilities=self.capabilities)
        self.bidder = TeamBidder(sim_id, self.cooperation, self.capabilities)
        self.negotiator = Negotiator(self.comm, self.bidder.offer,
                                     strategy=settings.agent.negotiation_strategy,
                                     rounds=settings.execution.negotiation_rounds)
        self.comm.member.chooser = default_chooser(lambda: self.bidder.profile(1))
        self.comm.on_record = self._record_message
        self.counts: dict[str, int] = dict.fromkeys(_COUNTS, 0)
        self.help = HelpDesk(self.comm, self.cooperation, self.counts)
        self._clear_episode()

    def _clear_episode(self) -> None:
        self.tasks: dict[str, Task] = {}
        self.completed: set[str] = set()
        self.objects: dict[str, dict[str, Any]] = {}
        self.peer_status: dict[str, dict[str, Any]] = {}
        self.current: str | None = None
        self.steps_on_task = 0
        self.last_plan = Plan("WAIT")
        self._last_status: tuple[Any, ...] = ()
        self.help.reset()
        self.bidder.standing = dataclasses.replace(self.bidder.standing, queued=0,
                                                   excluded=frozenset())
        for key in self.counts:
            self.counts[key] = 0

    # -- M-7's calls ---------------------------------------------------------------

    def get_mode_name(self) -> str:
        return "decentralized"

    def get_agent_capabilities(self) -> list[str]:
        return list(self.capabilities)

    def set_peer_agents(self, peer_agents: Sequence[Any]) -> None:
        """Name the teammates (agents, or their sim ids); waits until they are on the mesh."""
        ids = [p if isinstance(p, str) else getattr(p, "sim_id", None) for p in peer_agents]
        if not all(isinstance(i, str) for i in ids):
            raise ConfigError("peers must be agents (with a sim_id) or sim ids")
        missing = self.comm.set_peers([str(i) for i in ids])
        if missing:
            raise AgoraError(f"{self.sim_id}: {self.comm.last_error}")

    def set_task(self, task_description: str) -> None:
        """The episode's goal; the world may have changed, so its tasks and our abilities too."""
        super().set_task(task_description)
        self.capabilities = list(self.simulator.get_agent_capabilities(self.sim_id))
        self.bidder.standing = dataclasses.replace(self.bidder.standing,
                                                   capabilities=tuple(self.capabilities))
        self.tasks = read_tasks(self.simulator.get_tasks())
        # Teammates may negotiate before this agent first decides: bid from where it is.
        self._learn(self.simulator.observe(self.sim_id))

    def communicate_with_peers(self, message: Mapping[str, Any]) -> dict[str, Any]:
        """Send ``message`` to its ``receiver_id`` (or everyone); what happened, as a dict."""
        if not isinstance(message, Mapping):
            raise InvalidRequest(f"a message must be a dict, got {type(message).__name__}")
        receiver = message.get("receiver_id", "broadcast")
        if receiver == "broadcast":
            ok = self.comm.broadcast_message(message)
            reached = self.comm.peers if ok else []
        else:
            ok = self.comm.send_message(str(receiver), message)
            reached = [str(receiver)] if ok else []
        return {"success": ok, "receiver_id": receiver, "delivered_to": reached,
                "protocol": str(self.settings.communication.protocol),
                "error": "" if ok else self.comm.last_error}

    def negotiate_task_allocation(self, available_tasks: Sequence[Mapping[str, Any]]
                                  ) -> dict[str, Any]:
        """Allocate ``available_tasks`` among the team; this agent's share (negotiation.py)."""
        result = self.negotiator.negotiate(available_tasks)
        if self.trajectory_recorder is not None:
            self.trajectory_recorder.record_negotiation(agent_id=self.sim_id, result=result)
        return result

    def evaluate_task_suitability(self, task: Mapping[str, Any]) -> float:
        """0-1: how well this agent suits ``task`` now (0 when it lacks the capability)."""
        return self.bidder.suitability(task)

    def handle_conflict_resolution(self, conflict: Mapping[str, Any]) -> dict[str, Any]:
        """Settle agents claiming one task (the higher score, then the earlier claim)."""
        verdict = resolve_conflict(conflict)
        verdict["keep"] = verdict["winner"] == self.sim_id
        return verdict

    def reset(self) -> None:
        """Clear communication history, negotiation state and allocations (and the episode)."""
        super().reset()
        self.comm.reset()
        self.negotiator.reset()
        self._clear_episode()

    def close(self) -> None:
        """Leave the mesh; the last agent of the process stops the runtime."""
        if self.comm.runtime.running:
            try:
                self.comm.runtime.call(self.negotiator.aclose(), 5.0)
                if self.llm is not None:
                    self.comm.runtime.call(self.llm.aclose(), 5.0)
            except AgoraError as exc:
                log.warning("%s: close: %s", self.sim_id, exc)
        self.comm.close()

    # -- deciding ------------------------------------------------------------------

    def decide_action(self) -> str:
        if not self.tasks:
            self.tasks = read_tasks(self.simulator.get_tasks())
        if self.simulator.is_done():
            return self._decided("DONE")
        self._read_messages()
        observation = self.simulator.observe(self.sim_id)
        self._learn(observation)
        self._negotiate_open_tasks()
        plan = self._plan(observation)
        self._share_status(observation)
        action = plan.command
        if self.llm is not None and action != "DONE":
            action = self._ask_llm(plan)
        self.last_plan = plan
        return self._decided(action)

    def _read_messages(self) -> None:
        for message in self.comm.receive_messages():
            self.counts["messages_read"] += 1
            kind, content = message["message_type"], message["content"]
            sender = message["sender_id"]
            if kind == "status_update":
                self.peer_status[sender] = content
                self.completed.update(str(t) for t in content.get("completed_tasks", ())
                                      if str(t) in self.tasks)
                for name in content.get("identified_objects", ()):
                    self.objects.setdefault(str(name), {})["identified"] = True
            elif kind == "help_request":
                self.help.consider(sender, content, capabilities=self.capabilities,
                                   idle=not self._my_queue(),
                                   position=self.bidder.standing.position)
            elif kind == "task_negotiation" and content.get("help_request_id") is not None:
                self.help.on_answer(sender, content)  # (allocations: the negotiator's)

    def _learn(self, observation: Mapping[str, Any]) -> None:
        for seen in observation.get("objects", ()):
            self.objects[str(seen.get("name"))] = dict(seen)
        for task in observation.get("tasks", ()):
            if task.get("status") == "complete":
                self.completed.add(str(task.get("task_id")))
        mine = [t for t, owner in self.negotiator.owners().items()
                if owner == self.sim_id and t not in self.completed]
        self.bidder.standing = dataclasses.replace(
            self.bidder.standing, position=point(observation.get("position")), queued=len(mine))

    def _negotiate_open_tasks(self) -> None:
        owners = self.negotiator.owners()
        live = {self.sim_id, *self.comm.peers}
        open_tasks = [task.source for tid, task in self.tasks.items()
                      if tid not in self.completed and owners.get(tid) not in live]
        if open_tasks:
            self.negotiate_task_allocation(open_tasks)

    def _my_queue(self) -> list[str]:
        owners = self.negotiator.owners()
        mine = [tid for tid, owner in owners.items()
                if owner == self.sim_id and tid not in self.completed and tid in self.tasks]
        return sorted(mine, key=lambda t: (-self.tasks[t].priority, t))

    def _plan(self, observation: Mapping[str, Any]) -> Plan:
        if self.tasks and set(self.tasks) <= self.completed:
            return Plan("DONE", note="every task is complete")
        position = point(observation.get("position"))
        context: dict[str, Any] = {"position": position, "capabilities": self.capabilities,
                                   "carrying": observation.get("carrying"),
                                   "objects": self.objects}
        helping = self.help.helping(self.objects)
        queue = self._my_queue()
        blocked = True
        own: Plan | None = None
        for tid in queue:
            plan = plan_task(self.tasks[tid], **context)
            if plan.needs is None or plan.needs in self.capabilities:
                own, blocked = plan, False
                self._track(tid)
                break
            self.help.ask(self.tasks[tid], plan.needs, step=self.step_count,
                          objects=self.objects)
            if own is None:
                own = plan
                self._track(tid)
        help_first = self.cooperation is CooperationLevel.HIGH or blocked or not queue
        if helping and help_first:
            return plan_task(helping[0].task(), **context)
        if not queue:
            self.help.take_deferred(self.bidder.standing.position)
        if own is not None:
            if self.steps_on_task > self.settings.execution.max_steps_per_task \
                    and self.current is not None:
                self._give_up(self.current)
            return own
        return Plan("WAIT", note="my tasks are done; others' are under way")

    def _track(self, task_id: str) -> None:
        if task_id != self.current:
            self.current, self.steps_on_task = task_id, 0

    def _give_up(self, task_id: str) -> None:
        """Past max_steps_per_task: hand the task back to the team and say so."""
        self.counts["tasks_given_up"] += 1
        standing = self.bidder.standing
        self.bidder.standing = dataclasses.replace(standing,
                                                   excluded=standing.excluded | {task_id})
        self.help.give_up(task_id, self.steps_on_task)
        self.current, self.steps_on_task = None, 0
        self.negotiate_task_allocation([self.tasks[task_id].source])

    def _share_status(self, observation: Mapping[str, Any]) -> None:
        queue = self._my_queue()
        capacity = self.bidder.capacity
        state = ("done" if self.tasks and set(self.tasks) <= self.completed else
                 "stuck" if self.help.blocked(queue) else "busy" if queue else "idle")
        identified = sorted(n for n, o in self.objects.items() if o.get("identified"))
        key = (state, self.current, frozenset(self.completed), tuple(identified))
        if key == self._last_status or not self.comm.peers:
            return
        self._last_status = key
        mine = [t for t, o in self.negotiator.owners().items() if o == self.sim_id]
        progress = (len([t for t in mine if t in self.completed]) / len(mine)) if mine else 1.0
        self.counts["status_updates_sent"] += 1
        self.comm.broadcast_message({"message_type": "status_update", "content": {
            "agent_status": state, "current_task": self.current, "progress": round(progress, 3),
            "available_capacity": round(max(0, capacity - len(queue)) / capacity, 3),
            "position": list(point(observation.get("position"))),
            "completed_tasks": sorted(self.completed), "identified_objects": identified}})

    def on_step(self, action: str, status: ActionStatus, message: str,
                result: dict[str, Any] | None) -> None:
        self.steps_on_task += 1
        if not result:
            return
        newly = [str(t) for t in result.get("completed_tasks", ())]
        self.completed.update(newly)
        if action.upper().startswith("SCAN") and status is ActionStatus.SUCCESS:
            self._learn(self.simulator.observe(self.sim_id))
        if newly or action.upper().startswith("SCAN"):
            self._share_status(self.simulator.observe(self.sim_id))

    # -- the model (optional) --------------------------------------------------------

    def _ask_llm(self, plan: Plan) -> str:
        assert self.llm is not None
        actions = self.simulator.supported_actions(self.sim_id)
        question = prompt(goal=self.task_description, sim_id=self.sim_id,
                          capabilities=self.capabilities,
                          situation=self.simulator.describe(self.sim_id),
                          queue=self._my_queue(), completed=sorted(self.completed),
                          actions=actions, plan=plan)
        self.counts["llm_calls"] += 1
        try:
            reply = self.comm.runtime.call(ask(self.llm, question),
                                           self.settings.communication.timeout * 4)
        except AgoraError as exc:
            log.warning("%s: the model failed, the planner decides: %s", self.sim_id, exc)
            self.counts["llm_fallbacks"] += 1
            return plan.command
        action = extract_action(reply)
        if self.trajectory_recorder is not None:
            self.trajectory_recorder.record_llm_interaction(
                agent_id=self.sim_id, interaction_index=self.step_count, prompt=question,
                response=reply, extracted_action=action, planner=plan.command)
        if not is_allowed(action, actions):
            self.counts["llm_fallbacks"] += 1
            return plan.command
        return action
