"""The MCP tools the mesh offers: the fixed ``mesh_*`` tools, and one per capability.

A capability tool is named after its capability with every ``.`` made ``_``
(``text.summarize`` → ``text_summarize``): SEP-986 allows dots in a tool
name, but the hosts that hand tools to a model (Claude Code, Codex, the
OpenAI and Anthropic APIs) take only letters, digits, ``_`` and ``-``, in
at most 64 characters. A name that would collide with a fixed tool or with
another capability's (``a.b`` and ``a_b``), or that is too long, gets
``_`` and six hex digits of its capability's BLAKE2b instead (capabilities in
sorted order, so the first keeps the plain name); the tool's description
always names the capability.

Its input schema is the capability's input schema as the agents advertise it
(the first agent by name, then id, when they differ), with ``"type":
"object"`` at its root always: task parameters are an object, and MCP clients
refuse the whole tool list if one tool's schema says otherwise or nothing.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jsonschema

from agoramesh.errors import InvalidInput, InvalidRequest
from agoramesh.nodes.capability import Capability
from agoramesh.nodes.card import AgentCard

__all__ = ("FIXED_TOOLS", "MAX_TOOL_NAME", "ToolSpec", "capability_tools", "object_schema",
           "tool_name")

#: The longest tool name the model APIs behind MCP hosts accept.
MAX_TOOL_NAME = 64
_HASH_DIGITS = 6


@dataclass(frozen=True, kw_only=True)
class ToolSpec:
    """One tool: its name, description and input schema; ``capability``: the capability it
    runs (None for a fixed tool); ``read_only``: it changes nothing on the mesh."""

    name: str
    description: str
    input_schema: Mapping[str, Any]
    capability: str | None = None
    read_only: bool = False

    def check(self, arguments: Mapping[str, Any]) -> None:
        """The first problem named: ``InvalidInput`` for a capability's tool (its schema is
        the capability's), ``InvalidRequest`` for the mesh's own tools, e.g.
        ``mesh_submit: arguments.timeout: …``.

        A schema that names no ``$schema`` is read as draft 7, which checks what tool
        schemas use (types, properties, required, enums, bounds, patterns) in half the time
        of the latest draft; the agent that takes the task checks its parameters again.
        """
        validator = self.__dict__.get("_validator")
        if validator is None:  # built on first use, kept for the tool's life
            kind = jsonschema.validators.validator_for(self.input_schema,
                                                       default=jsonschema.Draft7Validator)
            validator = kind(self.input_schema)
            object.__setattr__(self, "_validator", validator)  # frozen; its schema never changes
        error = jsonschema.exceptions.best_match(validator.iter_errors(arguments))
        if error is not None:
            where = ".".join(str(part) for part in error.absolute_path)
            invalid = InvalidInput if self.capability is not None else InvalidRequest
            raise invalid(f"{self.name}: arguments{'.' + where if where else ''}: "
                          f"{error.message}")


def tool_name(capability: str) -> str:
    """The plain tool name of ``capability`` (before collisions are resolved)."""
    return capability.replace(".", "_")


def _hashed(name: str, capability: str) -> str:
    digest = hashlib.blake2b(capability.encode(), digest_size=8).hexdigest()[:_HASH_DIGITS]
    return f"{name[:MAX_TOOL_NAME - _HASH_DIGITS - 1]}_{digest}"


def object_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """``schema`` (a copy) with ``"type": "object"`` at its root."""
    copied = copy.deepcopy(dict(schema))
    copied["type"] = "object"
    return copied


def capability_tools(cards: Iterable[AgentCard], reserved: Iterable[str] = ()
                     ) -> dict[str, ToolSpec]:
    """The capability tools of the agents ``cards`` name, by tool name (see the module doc)."""
    offered: dict[str, Capability] = {}
    for card in sorted(cards, key=lambda card: (card.name, card.id)):
        for capability in card.capabilities:
            offered.setdefault(capability.name, capability)
    taken = set(reserved)
    tools: dict[str, ToolSpec] = {}
    for name in sorted(offered):
        capability = offered[name]
        plain = tool_name(name)
        chosen = plain if plain not in taken and len(plain) <= MAX_TOOL_NAME else (
            _hashed(plain, name))
        taken.add(chosen)
        about = capability.description.strip()
        description = (f"{about}\n\n" if about else "") + (
            f"Runs the agoramesh capability {name!r}: the agents that offer it bid, the best "
            f"bid does the task, and its output is the result.")
        tools[chosen] = ToolSpec(name=chosen, description=description,
                                 input_schema=object_schema(capability.input_schema),
                                 capability=name)
    return tools


_STRATEGY = {"type": "string", "enum": ["auction", "direct"],
             "description": "auction (default): the capable agents bid and the best bid wins; "
                            "direct: one capable agent takes it through the capability's queue"}
_TIMEOUT = {"type": "number", "exclusiveMinimum": 0,
            "description": "seconds to wait for the result (default: the server's)"}

#: The tools every mesh offers, whatever its agents.
FIXED_TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec(
        name="mesh_agents", read_only=True,
        description="List the agents on the agoramesh mesh: their name, id, type, "
                    "capabilities and current load. Filters combine.",
        input_schema={"type": "object", "additionalProperties": False, "properties": {
            "capability": {"type": "string",
                           "description": "only agents offering this capability; wildcards: "
                                          "'code.*' (one level), 'code.>' (the rest)"},
            "type": {"type": "string", "description": "only agents of this type (offline, "
                                                      "claude-code, codex, mcp, ...)"},
            "name": {"type": "string", "description": "only agents of this name"}}}),
    ToolSpec(
        name="mesh_submit",
        description="Submit one task to the agoramesh mesh and return its result. By default "
                    "the agents offering the capability bid and the best bid does it; "
                    "'strategy': 'direct' gives it to one capable agent at once; 'agent' "
                    "sends it to that agent. 'durable': true (or a 'task_id') stores it as a "
                    "durable job any node runs, even if this client goes away; read its "
                    "result later with mesh_result.",
        input_schema={"type": "object", "additionalProperties": False,
                      "required": ["capability"], "properties": {
            "capability": {"type": "string", "description": "the task's capability, e.g. "
                                                            "text.summarize (see mesh_agents)"},
            "parameters": {"type": "object", "description": "the task's inputs (the "
                                                            "capability's input schema)"},
            "strategy": _STRATEGY,
            "agent": {"type": "string", "description": "send the task to this agent (its "
                                                       "name or id) and no other"},
            "durable": {"type": "boolean", "description": "store it as a durable job"},
            "task_id": {"type": "string", "pattern": "^[A-Za-z0-9_=-]{1,128}$",
                        "description": "a durable job's id, its idempotency key"},
            "wait": {"type": "boolean", "description": "a durable job: wait for its result "
                                                      "(default true)"},
            "timeout": _TIMEOUT,
            "priority": {"type": "integer", "minimum": 0, "maximum": 10,
                         "description": "0 (low) to 10 (default 5)"},
            "callback": {"type": "string", "description": "a NATS subject the agent that "
                                                          "runs the task also publishes its "
                                                          "final result on"}}}),
    ToolSpec(
        name="mesh_result", read_only=True,
        description="The result of a durable job submitted earlier (mesh_submit with "
                    "'durable' or a 'task_id'); an error while it is queued or running.",
        input_schema={"type": "object", "additionalProperties": False,
                      "required": ["task_id"], "properties": {
            "task_id": {"type": "string", "pattern": "^[A-Za-z0-9_=-]{1,128}$"},
            "wait": {"type": "number", "minimum": 0,
                     "description": "seconds to wait for a result not stored yet (default 0)"}}}),
    ToolSpec(
        name="mesh_collaborate",
        description="Run a collaboration among agents of the mesh. mode 'sequential': "
                    "requirements {stages: [{capability, agent?, parameters?, name?}]}, each "
                    "stage may use ${previous.output} or ${steps.NAME.output.FIELD}; "
                    "'parallel': requirements {capability, parameters?}, agents: selectors, "
                    "a count or null (all capable); 'map-reduce': requirements {items, map?, "
                    "reduce?}; 'debate': topic, rounds, agents (text.debate); 'voting': "
                    "topic, requirements {options}.",
        input_schema={"type": "object", "additionalProperties": False, "required": ["mode"],
                      "properties": {
            "mode": {"type": "string", "enum": ["sequential", "parallel", "map-reduce",
                                                "map_reduce", "debate", "voting"]},
            "topic": {"type": "string"},
            "agents": {"type": ["array", "integer", "null"], "items": {"type": "string"},
                       "description": "names, ids or selectors (name:x, type:y, "
                                      "capability:z), or a count"},
            "rounds": {"type": "integer", "minimum": 1, "maximum": 20},
            "requirements": {"type": "object"}}}),
    ToolSpec(
        name="mesh_workflow",
        description="Run a workflow (a DAG of steps) on the mesh from this server and return "
                    "every step's result and the outputs. 'workflow' is the workflow as an "
                    "object {name, steps: [{name, agent (selector), capability, parameters, "
                    "depends_on?, when?, retries?, timeout?}], inputs?, outputs?} or its YAML "
                    "text; parameters may use ${inputs.NAME} and ${steps.NAME.output.FIELD}.",
        input_schema={"type": "object", "additionalProperties": False,
                      "required": ["workflow"], "properties": {
            "workflow": {"type": ["object", "string"]},
            "inputs": {"type": "object", "description": "values of the workflow's inputs"},
            "strategy": _STRATEGY,
            "timeout": _TIMEOUT}}),
)
