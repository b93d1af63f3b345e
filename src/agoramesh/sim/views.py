"""What a grid world shows: one agent's partial view (as data and as prose), the whole map,
the team's task briefing and the episode's score."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from agoramesh.sim.grid import Cell, fmt, manhattan
from agoramesh.sim.state import KIND_CAPABILITY, WorldState

__all__ = ("describe", "evaluate", "observe", "render", "task_description")


def task_description(state: WorldState) -> str:
    grid = state.grid
    listed = "; ".join(
        f"{t.task_id} {t.description} ("
        f"{'at ' if t.target is None else 'from '}{fmt(t.location)}"
        f"{'' if t.target is None else ' to ' + fmt(t.target)}, "
        f"needs {KIND_CAPABILITY[t.kind]})" for t in state.tasks)
    return (f"The team ({', '.join(state.agents)}) shares a grid world of "
            f"{grid.width}x{grid.height} cells and must complete all "
            f"{len(state.tasks)} tasks: {listed}. "
            "Objects must be identified by a vision agent (SCAN) before anyone can "
            "PICK them. When every task is complete, one agent says DONE.")


def evaluate(state: WorldState) -> dict[str, Any]:
    completed = [t.task_id for t in state.tasks if t.complete]
    return {
        "success": state.done and len(completed) == len(state.tasks),
        "done": state.done, "tasks_total": len(state.tasks),
        "tasks_completed": len(completed), "completed": completed,
        "steps": state.steps, "steps_by_agent": dict(state.steps_by_agent),
        "invalid_actions": state.invalid, "failed_actions": state.failed}


def observe(state: WorldState, sim_id: str, view_radius: int) -> dict[str, Any]:
    """What ``sim_id`` sees within ``view_radius`` cells (Manhattan), and what it carries."""
    agent = state.agent(sim_id)

    def seen(cells: Iterable[Cell | None]) -> bool:
        return any(c is not None and manhattan(c, agent.position) <= view_radius
                   for c in cells)

    return {
        "agent_id": sim_id, "position": list(agent.position),
        "capabilities": sorted(agent.capabilities), "carrying": agent.carrying,
        "step": state.steps, "done": state.done,
        "objects": [{"name": o.name, "position": list(o.position),
                     "identified": o.identified, "carried_by": o.carried_by}
                    for o in state.objects.values()
                    if o.carried_by == sim_id or seen([o.position])],
        "zones": [{"name": n, "position": list(c)}
                  for n, c in state.zones.items() if seen([c])],
        "waypoints": [{"name": n, "position": list(c)}
                      for n, c in state.waypoints.items() if seen([c])],
        "agents": [{"agent_id": a.sim_id, "position": list(a.position)}
                   for a in state.agents.values()
                   if a.sim_id != sim_id and seen([a.position])],
        "tasks": [{"task_id": t.task_id, "status": "complete" if t.complete else "open"}
                  for t in state.tasks if seen([t.location, t.target, state.object_at(t)])]}


def describe(state: WorldState, sim_id: str, view_radius: int) -> str:
    """:func:`observe` as the few lines of prose an LLM agent reads."""
    view = observe(state, sim_id, view_radius)
    things = [f"{o['name']} at {fmt(o['position'])} "
              f"({'identified' if o['identified'] else 'unidentified'}"
              f"{', carried by ' + o['carried_by'] if o['carried_by'] else ''})"
              for o in view["objects"]]
    things += [f"{z['name']} at {fmt(z['position'])}" for z in view["zones"]]
    things += [f"waypoint {w['name']} at {fmt(w['position'])}" for w in view["waypoints"]]
    things += [f"{a['agent_id']} at {fmt(a['position'])}" for a in view["agents"]]
    tasks = [f"{t['task_id']} ({t['status']})" for t in view["tasks"]]
    done = sum(t.complete for t in state.tasks)
    return "\n".join([
        f"You are {sim_id} at {fmt(view['position'])} with capabilities: "
        f"{', '.join(view['capabilities'])}.",
        f"You carry {view['carrying'] or 'nothing'}. Step {view['step']}; "
        f"{done} of {len(state.tasks)} tasks complete"
        f"{'; the episode is over' if view['done'] else ''}.",
        f"Within {view_radius} cells you see: {'; '.join(things) or 'nothing'}.",
        f"Tasks in view: {', '.join(tasks) or 'none'}."])


def render(state: WorldState) -> str:
    """The map :meth:`~agoramesh.sim.world.GridWorld.render` documents."""
    grid = state.grid
    marks: dict[Cell, str] = {c: "w" for c in state.waypoints.values()}
    marks.update({c: "Z" for c in state.zones.values()})
    marks.update({o.position: "o" for o in state.objects.values()})
    for index, agent in enumerate(state.agents.values(), start=1):
        marks[agent.position] = str(index) if index <= 9 else "@"
    return "\n".join(
        "".join("#" if (x, y) in grid.walls else marks.get((x, y), ".")
                for x in range(grid.width)) for y in range(grid.height))
