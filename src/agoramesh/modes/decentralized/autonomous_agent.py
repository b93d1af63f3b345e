"""``AutonomousAgent``: the second seed's decentralized agent, on the mesh (M-7).

Each agent decides for itself; there is no coordinator. ``decide_action()``
follows the seed's five steps:

1. read new messages (status updates, help requests, negotiation);
2. analyse the task state: its observation, the allocation every agent
   holds (negotiation.py), what teammates reported done;
3. negotiate when needed: tasks nobody owns (at the start, a task given up
   after ``max_steps_per_task``, or one whose agent was lost) are put to the
   team by ``negotiation_strategy``;
4. decide: its own next task's command (policy.py), help it promised, a
   help request when blocked, ``DONE`` once every task is known complete;
   with ``llm_config.backend`` set, the model picks the command, told the
   policy's choice, and the policy's command stands when the model's is not
   a valid one;
5. return the command; ``step()`` carries it out.

``cooperation_level`` shapes how an agent treats others: ``high`` answers a
help request at once, before its own work, and takes up to 3 tasks in a
negotiation round; ``medium`` helps once its own tasks are done or blocked
(2 tasks a round); ``low`` helps only when idle and asked a second time
(1 task a round; more only as a counter-offer in a later round).

Every message goes over NATS through the agent's
:class:`~.communication.CommunicationManager`; nothing is passed in memory.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from agoramesh.errors import AgoraError, InvalidInput
from agoramesh.modes.decentralized.base import BaseAgent
from agoramesh.modes.decentralized.communication import CommunicationManager
from agoramesh.modes.decentralized.config import CooperationLevel, DecentralizedConfig
from agoramesh.modes.decentralized.negotiation import Negotiator, Offer, bid_of
from agoramesh.modes.decentralized.policy import Plan, estimated_steps, plan_task, point
from agoramesh.protocols.allocation.negotiation import resolve_conflict
from agoramesh.protocols.allocation.strategies import AgentProfile, TaskSpec
from agoramesh.protocols.allocation.voting import default_chooser
from agoramesh.protocols.auction.scoring import SUITABILITY
from agoramesh.sim.interface import ActionStatus, SimulationEngine

__all__ = ("AutonomousAgent",)

log = logging.getLogger("agoramesh.decentralized")

_CAPACITY = {CooperationLevel.LOW: 1, CooperationLevel.MEDIUM: 2, CooperationLevel.HIGH: 3}
HELP_RETRY_STEPS = 8  # a help request nobody took is sent again after this many steps
_COMMAND = re.compile(r"[A-Za-z]+")  # a command's first word
_ACTION = re.compile(r"^\s*(?:agent_\w+_)?action\s*[:\uff1a]\s*(.+)$", re.IGNORECASE)


class AutonomousAgent(BaseAgent):
    """One decentralized agent (module docstring)."""

    def __init__(self, simulator: SimulationEngine, agent_id: str,
                 config: DecentralizedConfig | Mapping[str, Any] | None = None, *,
                 communication: CommunicationManager | None = None) -> None:
        settings = DecentralizedConfig.from_mapping(config)
        super().__init__(simulator, agent_id, settings.raw or settings.as_dict())
        self.settings = settings
        self.cooperation = settings.agent.cooperation_level
        self.capabilities = list(simulator.get_agent_capabilities(agent_id))
        self.comm = communication or CommunicationManager(
            agent_id, config=settings, capabilities=self.capabilities)
        self.negotiator = Negotiator(self.comm, self._offer,
                                     strategy=settings.agent.negotiation_strategy,
                                     rounds=settings.execution.negotiation_rounds)
        self.comm.member.chooser = default_chooser(lambda: self._profile(1))
        self.comm.on_record = self._record_message
        self.peers: list[AutonomousAgent] = []
        self.llm: Any = None
        if settings.llm.backend is not None:
            from agoramesh.nodes.backends.base import BackendConfig
            from agoramesh.nodes.backends.registry import create_backend

            self.llm = create_backend(settings.llm.backend, BackendConfig(
                model=settings.llm.model_name, temperature=settings.llm.temperature,
                api_key=settings.llm.api_key(), base_url=settings.llm.base_url,
                max_retries=settings.communication.retry_attempts))
        # What the bidder (on the runtime's loop) knows of us: position, tasks queued, tasks
        # given up. Replaced whole and read whole, so the two threads need no lock.
        self._snapshot: tuple[tuple[int, int], int, frozenset[str]] = ((0, 0), 0, frozenset())
        self._clear_episode()

    def _clear_episode(self) -> None:
        self.tasks: dict[str, dict[str, Any]] = {}
        self.completed: set[str] = set()
        self.objects: dict[str, dict[str, Any]] = {}
        self.peer_status: dict[str, dict[str, Any]] = {}
        self.excluded: set[str] = set()  # tasks this agent gave up: it bids on them no more
        self.help_given: dict[str, dict[str, Any]] = {}  # request id -> the help task
        self.help_deferred: dict[str, dict[str, Any]] = {}  # requests not (yet) taken up
        self.help_asked: dict[str, dict[str, Any]] = {}  # task id -> our open request
        self.current: str | None = None
        self.steps_on_task = 0
        self.last_plan = Plan("WAIT")
        self._last_status: tuple[Any, ...] = ()
        self.counts: dict[str, int] = {"help_requests_sent": 0, "help_given": 0,
                                       "help_received": 0, "status_updates_sent": 0,
                                       "tasks_given_up": 0, "llm_calls": 0, "llm_fallbacks": 0,
                                       "messages_read": 0}

    # -- the seed's API ------------------------------------------------------------

    def get_mode_name(self) -> str:
        return "decentralized"

    def get_agent_capabilities(self) -> list[str]:
        return list(self.capabilities)

    def set_peer_agents(self, peer_agents: Sequence[Any]) -> None:
        """Name the teammates (agents, or their ids); waits until they are on the mesh."""
        self.peers = [p for p in peer_agents if isinstance(p, AutonomousAgent)]
        ids = [p if isinstance(p, str) else getattr(p, "agent_id", None) for p in peer_agents]
        if not all(isinstance(i, str) for i in ids):
            raise InvalidInput("peers must be agents (with an agent_id) or agent ids")
        missing = self.comm.set_peers([str(i) for i in ids])
        if missing:
            raise AgoraError(f"{self.agent_id}: {self.comm.last_error}")

    def set_task(self, task_description: str) -> None:
        """The episode's goal; the world may have changed, so its tasks and our abilities too."""
        super().set_task(task_description)
        self.capabilities = list(self.simulator.get_agent_capabilities(self.agent_id))
        self.tasks = {str(t["task_id"]): dict(t) for t in self.simulator.get_tasks()}
        # Teammates may negotiate before this agent first decides: bid from where it is.
        self._learn(self.simulator.observe(self.agent_id))

    def communicate_with_peers(self, message: Mapping[str, Any]) -> dict[str, Any]:
        """Send ``message`` to its ``receiver_id`` (or everyone); what happened, as a dict."""
        if not isinstance(message, Mapping):
            raise InvalidInput(f"a message must be a dict, got {type(message).__name__}")
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
            self.trajectory_recorder.record_negotiation(agent_id=self.agent_id, result=result)
        return result

    def evaluate_task_suitability(self, task: Mapping[str, Any]) -> float:
        """0-1: how well this agent suits ``task`` now (0 when it lacks the capability)."""
        spec = TaskSpec.from_dict(task)
        profile, bids = self._offer([spec], 1)
        if not bids:
            return 0.0
        return round(SUITABILITY([bid_of(self.agent_id, profile, bids[0])])[0], 4)

    def handle_conflict_resolution(self, conflict: Mapping[str, Any]) -> dict[str, Any]:
        """Settle agents claiming one task (the higher score, then the earlier claim)."""
        verdict = resolve_conflict(conflict)
        verdict["keep"] = verdict["winner"] == self.agent_id
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
                log.warning("%s: close: %s", self.agent_id, exc)
        self.comm.close()

    # -- deciding ------------------------------------------------------------------

    def decide_action(self) -> str:
        if not self.tasks:
            self.tasks = {str(t["task_id"]): dict(t) for t in self.simulator.get_tasks()}
        if self.simulator.is_done():
            return self._decided("DONE")
        self._read_messages()
        observation = self.simulator.observe(self.agent_id)
        self._learn(observation)
        self._negotiate_open_tasks()
        plan = self._plan(observation)
        self._share_status(observation)
        action = plan.command
        if self.llm is not None and action != "DONE":
            action = self._ask_llm(observation, plan)
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
                self._consider_help(sender, content)
            elif kind == "task_negotiation":
                self._on_negotiation(sender, content)

    def _learn(self, observation: Mapping[str, Any]) -> None:
        for seen in observation.get("objects", ()):
            self.objects[str(seen.get("name"))] = dict(seen)
        for task in observation.get("tasks", ()):
            if task.get("status") == "complete":
                self.completed.add(str(task.get("task_id")))
        owners = self.negotiator.owners()
        mine = [t for t, owner in owners.items() if owner == self.agent_id
                and t not in self.completed]
        self._snapshot = (point(observation.get("position")), len(mine),
                          frozenset(self.excluded))

    def _negotiate_open_tasks(self) -> None:
        owners = self.negotiator.owners()
        live = {self.agent_id, *self.comm.peers}
        open_tasks = [task for tid, task in self.tasks.items() if tid not in self.completed
                      and owners.get(tid) not in live]
        if open_tasks:
            self.negotiate_task_allocation(open_tasks)

    def _my_queue(self) -> list[str]:
        owners = self.negotiator.owners()
        mine = [tid for tid, owner in owners.items()
                if owner == self.agent_id and tid not in self.completed and tid in self.tasks]
        return sorted(mine, key=lambda t: (-int(self.tasks[t].get("priority", 5)), t))

    def _plan(self, observation: Mapping[str, Any]) -> Plan:
        if self.tasks and set(self.tasks) <= self.completed:
            return Plan("DONE", note="every task is complete")
        position = point(observation.get("position"))
        carrying = observation.get("carrying")
        context: dict[str, Any] = {"position": position, "capabilities": self.capabilities,
                                   "carrying": carrying, "objects": self.objects}
        helping = [h for h in self.help_given.values()
                   if not self.objects.get(str(h.get("object")), {}).get("identified")]
        for done in [r for r, h in self.help_given.items() if h not in helping]:
            del self.help_given[done]
        queue = self._my_queue()
        blocked = True
        own: Plan | None = None
        for tid in queue:
            plan = plan_task(self.tasks[tid], **context)
            if plan.needs is None or plan.needs in self.capabilities:
                own, blocked = plan, False
                self._track(tid)
                break
            self._ask_help(tid, plan)
            if own is None:
                own = plan
                self._track(tid)
        help_first = self.cooperation is CooperationLevel.HIGH or blocked or not queue
        if helping and help_first:
            return plan_task(helping[0], **context)
        if not queue:
            self._take_deferred_help()
        if own is not None:
            if self.steps_on_task > self.settings.execution.max_steps_per_task \
                    and self.current is not None:
                self._give_up(self.current)
            return own
        return Plan("WAIT", note="my tasks are done; others' are under way")

    def _track(self, task_id: str) -> None:
        if task_id != self.current:
            self.current, self.steps_on_task = task_id, 0

    # -- help ----------------------------------------------------------------------

    def _ask_help(self, task_id: str, plan: Plan) -> None:
        asked = self.help_asked.get(task_id)
        if asked is not None and (asked.get("helper") or
                                  self.step_count - asked["step"] < HELP_RETRY_STEPS):
            return
        task = self.tasks[task_id]
        name = str(task.get("object") or "")
        attempt = 1 if asked is None else asked["attempt"] + 1
        request_id = asked["request_id"] if asked else uuid.uuid4().hex[:12]
        seen = self.objects.get(name, {})
        content = {"problem_type": "needs_capability", "required_capability": plan.needs,
                   "current_situation": f"{name} must be identified before I can deliver it",
                   "requested_help": f"a {plan.needs} agent to SCAN {name}",
                   "task_id": task_id, "object": name, "request_id": request_id,
                   "location": list(point(seen.get("position"), point(task.get("location")))),
                   "attempt": attempt}
        self.help_asked[task_id] = {"step": self.step_count, "attempt": attempt,
                                    "request_id": request_id, "helper": None}
        self.counts["help_requests_sent"] += 1
        self.comm.broadcast_message({"message_type": "help_request", "content": content})

    def _consider_help(self, sender: str, content: Mapping[str, Any]) -> None:
        needed = content.get("required_capability")
        request_id = str(content.get("request_id", ""))
        if not request_id or needed not in self.capabilities:
            return
        help_task = {"kind": "inspect", "object": content.get("object"),
                     "location": content.get("location"), "requester": sender,
                     "request_id": request_id, "attempt": content.get("attempt", 1)}
        if self.cooperation is CooperationLevel.HIGH or (
                self.cooperation is CooperationLevel.MEDIUM and not self._my_queue()):
            self._accept_help(help_task)
        else:
            self.help_deferred[request_id] = help_task

    def _take_deferred_help(self) -> None:
        for request_id, help_task in list(self.help_deferred.items()):
            if self.cooperation is CooperationLevel.LOW and int(help_task["attempt"]) < 2:
                continue
            del self.help_deferred[request_id]
            self._accept_help(help_task)

    def _accept_help(self, help_task: dict[str, Any]) -> None:
        self.help_given[str(help_task["request_id"])] = help_task
        self.counts["help_given"] += 1
        self.comm.send_message(str(help_task["requester"]), {
            "message_type": "task_negotiation",
            "content": {"action": "accept", "help_request_id": help_task["request_id"],
                        "object": help_task["object"],
                        "estimated_time": estimated_steps(self._snapshot[0], help_task)}})

    def _on_negotiation(self, sender: str, content: Mapping[str, Any]) -> None:
        request_id = content.get("help_request_id")
        if request_id is None:
            return  # allocation traffic: the negotiator has handled it
        if content.get("action") == "reject":
            self.help_given.pop(str(request_id), None)
            self.help_deferred.pop(str(request_id), None)
            return
        asked = next((a for a in self.help_asked.values()
                      if a["request_id"] == request_id), None)
        if asked is None:
            return
        if asked["helper"] is None:
            asked["helper"] = sender
            self.counts["help_received"] += 1
        elif asked["helper"] != sender:  # someone was quicker: thank you, no
            self.comm.send_message(sender, {"message_type": "task_negotiation", "content": {
                "action": "reject", "help_request_id": request_id,
                "reason": f"{asked['helper']} is helping already"}})

    def _give_up(self, task_id: str) -> None:
        """Past max_steps_per_task: hand the task back to the team and say so."""
        self.counts["tasks_given_up"] += 1
        self.excluded.add(task_id)
        self.comm.broadcast_message({"message_type": "help_request", "content": {
            "problem_type": "stuck", "task_id": task_id,
            "current_situation": f"no progress on {task_id} in "
                                 f"{self.steps_on_task} steps",
            "requested_help": "take this task over", "request_id": uuid.uuid4().hex[:12]}})
        self.current, self.steps_on_task = None, 0
        self._snapshot = (self._snapshot[0], self._snapshot[1], frozenset(self.excluded))
        self.negotiate_task_allocation([self.tasks[task_id]])

    # -- status --------------------------------------------------------------------

    def _share_status(self, observation: Mapping[str, Any]) -> None:
        queue = self._my_queue()
        capacity = _CAPACITY[self.cooperation]
        blocked = any(a["helper"] is None for t, a in self.help_asked.items()
                      if t in queue)
        state = ("done" if self.tasks and set(self.tasks) <= self.completed else
                 "stuck" if blocked else "busy" if queue else "idle")
        identified = sorted(n for n, o in self.objects.items() if o.get("identified"))
        key = (state, self.current, frozenset(self.completed), tuple(identified))
        if key == self._last_status or not self.comm.peers:
            return
        self._last_status = key
        mine = [t for t, o in self.negotiator.owners().items() if o == self.agent_id]
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
            observation = self.simulator.observe(self.agent_id)
            self._learn(observation)
        if newly or action.upper().startswith("SCAN"):
            self._share_status(self.simulator.observe(self.agent_id))

    # -- the agent's side of a negotiation (on the runtime's loop) -------------------

    def _profile(self, round_: int) -> AgentProfile:
        queued = self._snapshot[1]
        capacity = _CAPACITY[self.cooperation]
        digits = "".join(c for c in self.agent_id if c.isdigit())
        # A later round is for counter-offers: room for one more task a round past the queue.
        room = capacity if round_ == 1 else max(capacity, queued) + round_ - 1
        return AgentProfile(agent_id=self.agent_id, name=self.agent_id,
                            capabilities=tuple(self.capabilities),
                            capacity=room, in_flight=queued,
                            load=min(1.0, queued / capacity),
                            priority=max(0, 100 - int(digits or 0)))

    def _offer(self, specs: Sequence[TaskSpec], round_: int) -> Offer:
        position, queued, excluded = self._snapshot
        profile = self._profile(round_)
        full = queued >= _CAPACITY[self.cooperation]
        bids = []
        for spec in specs:
            if spec.task_id in excluded or not profile.can_do(spec.capability):
                continue
            if full and round_ == 1:
                continue  # a counter-offer waits for a later round
            bids.append({"task_id": spec.wire_id,
                         "action": "counter_offer" if full else "bid",
                         "capabilities": list(self.capabilities),
                         "estimated_time": estimated_steps(position, spec.as_dict()),
                         "bid_value": 0.0})
        return profile, bids

    # -- the model (optional) --------------------------------------------------------

    def _ask_llm(self, observation: Mapping[str, Any], plan: Plan) -> str:
        from agoramesh.nodes.backends.base import collect

        actions = self.simulator.supported_actions(self.agent_id)
        allowed = {m.group(0).upper() for line in actions.splitlines()
                   if (m := _COMMAND.match(line.strip()))}
        queue = ", ".join(self._my_queue()) or "none"
        prompt = (f"Team task: {self.task_description}\n\n"
                  f"You are {self.agent_id}; capabilities: {', '.join(self.capabilities)}.\n"
                  f"{self.simulator.describe(self.agent_id)}\n\nYour allocated tasks: {queue}.\n"
                  f"Known complete: {', '.join(sorted(self.completed)) or 'none'}.\n"
                  f"Available actions:\n{actions}\n\nA planner suggests: {plan.command}"
                  f"{' (' + plan.note + ')' if plan.note else ''}.\n"
                  "Answer with one line: Action: <command>")
        messages = [{"role": "system", "content": "You control one robot in a grid world, "
                     "working with a team. Reply with exactly one action."},
                    {"role": "user", "content": prompt}]
        self.counts["llm_calls"] += 1
        try:
            completion = self.comm.runtime.call(collect(self.llm.chat(messages)),
                                                self.settings.communication.timeout * 4)
        except AgoraError as exc:
            log.warning("%s: the model failed, the planner decides: %s", self.agent_id, exc)
            self.counts["llm_fallbacks"] += 1
            return plan.command
        text = str(completion.output)
        # The seed's parsing: the "Action:" line, else the last line of the reply.
        lines = text.strip().splitlines() or [""]
        action = next((m.group(1) for line in lines if (m := _ACTION.match(line))), lines[-1])
        action = action.strip().rstrip(".!\u3002")
        if self.trajectory_recorder is not None:
            self.trajectory_recorder.record_llm_interaction(
                agent_id=self.agent_id, interaction_index=self.step_count, prompt=prompt,
                response=text, extracted_action=action, planner=plan.command)
        word = _COMMAND.match(action)
        if word is None or word.group(0).upper() not in allowed or len(action) > 200:
            self.counts["llm_fallbacks"] += 1
            return plan.command
        return action

    def _record_message(self, direction: str, message: dict[str, Any]) -> None:
        if self.trajectory_recorder is not None:
            self.trajectory_recorder.record_message(agent_id=self.agent_id,
                                                    direction=direction, message=message)
