"""The collaboration modes that pass work along: sequential, parallel, map-reduce.

What each does and returns is in the module docstring of
:mod:`~agoramesh.protocols.collaboration.collaboration`.
"""

from __future__ import annotations

import functools
from typing import Any

from agoramesh.errors import BackendBadResponse, NoResponders, error_to_wire
from agoramesh.nodes.card import AgentCard
from agoramesh.nodes.task import TaskStatus
from agoramesh.protocols.collaboration.crew import COMPLETED, Crew, failure
from agoramesh.protocols.collaboration.request import (
    CollaborationMode,
    _MapReduce,
    _Parallel,
    _render,
    _Sequential,
)

__all__ = ("map_reduce", "parallel", "sequential")


async def sequential(crew: Crew, plan: _Sequential) -> dict[str, Any]:
    """Each stage in order, its output the next one's ``previous``; stops at a failure."""
    cards = [None if stage.agent is None else
             crew.least_loaded(crew.participants([stage.agent], stage.capability))
             for stage in plan.stages]
    crew.emit("started", stages=[stage.name for stage in plan.stages])
    steps: list[dict[str, Any]] = []
    outputs: dict[str, Any] = {}
    previous: Any = None
    for number, (stage, card) in enumerate(zip(plan.stages, cards, strict=True), 1):
        try:
            parameters = _render(stage.parameters, topic=plan.topic, previous=previous,
                                 outputs=outputs)
        except LookupError as exc:  # a FIELD the earlier output does not have
            record = failure(card, stage.capability, BackendBadResponse(str(exc)))
        else:
            record = await crew.submit(stage.capability, parameters, card)
        steps.append({"stage": number, "name": stage.name, **record})
        crew.emit("step", **steps[-1])
        if record["status"] != COMPLETED:
            break
        previous = outputs[stage.name] = record["output"]
    completed = len(outputs) == len(plan.stages)
    crew.emit("finished", completed=completed)
    return {"mode": CollaborationMode.SEQUENTIAL.value, "steps": steps,
            "output": previous if completed else None, "completed": completed}

async def parallel(crew: Crew, plan: _Parallel) -> dict[str, Any]:
    """The same task to every chosen agent at once."""
    capability = plan.capability
    if isinstance(plan.agents, int):
        capable = sorted(crew.dispatcher.select(capability), key=crew.dispatcher.load_order)
        if len(capable) < plan.agents:
            raise NoResponders(f"{plan.agents} agents asked for, but only {len(capable)} "
                               f"known agent(s) offer {capability}")
        cards = capable[:plan.agents]
    else:
        cards = crew.participants(plan.agents, capability)
    parameters = _render(plan.parameters, topic=plan.topic)
    crew.emit("started", capability=capability, agents=[card.name for card in cards])

    async def one(card: AgentCard) -> dict[str, Any]:
        record = await crew.submit(capability, parameters, card)
        crew.emit("step", **record)
        return record

    records = await crew.each([functools.partial(one, card) for card in cards])
    results = [record for record in records if record["status"] == COMPLETED]
    failed = [record for record in records if record["status"] != COMPLETED]
    crew.emit("finished", completed=len(results), failed=len(failed))
    return {"mode": CollaborationMode.PARALLEL.value, "capability": capability,
            "results": results, "failed": failed}

async def map_reduce(crew: Crew, plan: _MapReduce) -> dict[str, Any]:
    """The map tasks, at most ``concurrency`` at once, then the one reduce task."""
    cards = [] if plan.agents is None else crew.participants(plan.agents,
                                                              plan.map_capability)
    base = _render(plan.map_parameters, topic=plan.topic)
    crew.emit("started", items=len(plan.items), map=plan.map_capability,
               reduce=plan.reduce_capability)

    async def one(index: int, item: Any) -> dict[str, Any]:
        parameters = ({**base, **item} if isinstance(item, dict)
                      else {**base, plan.item_field: item})
        card = cards[index % len(cards)] if cards else None
        record = {"index": index, **await crew.submit(plan.map_capability, parameters,
                                                        card)}
        output = record["output"]
        if record["status"] == COMPLETED and plan.collect is not None and not (
                isinstance(output, dict) and plan.collect in output):
            record |= {"status": TaskStatus.FAILED.value, "error": error_to_wire(
                BackendBadResponse(f"the map output has no field {plan.collect!r}"))}
        crew.emit("step", phase="map", **record)
        return record

    records = await crew.each([functools.partial(one, index, item)
                                for index, item in enumerate(plan.items)])
    mapped = [record for record in records if record["status"] == COMPLETED]
    reduced: dict[str, Any] | None = None
    if mapped:
        values = [record["output"] if plan.collect is None
                  else record["output"][plan.collect] for record in mapped]
        combined: Any = ("\n".join(values) if all(isinstance(v, str) for v in values)
                         else values)
        parameters = {**_render(plan.reduce_parameters, topic=plan.topic),
                      plan.reduce_field: combined}
        reduced = await crew.submit(plan.reduce_capability, parameters, None)
        crew.emit("step", phase="reduce", **reduced)
    crew.emit("finished", mapped=len(mapped), failed=len(records) - len(mapped))
    return {"mode": CollaborationMode.MAP_REDUCE.value, "map": mapped,
            "failed": [record for record in records if record["status"] != COMPLETED],
            "reduce": reduced, "output": reduced["output"] if reduced else None}
