"""Names across the bridge: tools to capabilities (the MCP backend) and capabilities to
tools (the MCP server), collisions and limits included."""

from __future__ import annotations

import pytest
from mcp import types

from agoramesh.bridges.mcp_catalog import FIXED_TOOLS, capability_tools, object_schema
from agoramesh.bus.subjects import validate_capability
from agoramesh.errors import InvalidRequest
from agoramesh.nodes.backends.mcp import capability_name
from agoramesh.nodes.capability import Capability
from agoramesh.nodes.card import AgentCard


@pytest.mark.parametrize(("tool", "capability"), [
    ("get_weather", "get_weather"),
    ("weather.forecast", "weather.forecast"),
    ("get weather!", "get_weather_"),
    ("a..b", "a._.b"),
    (".hidden.", "_.hidden._"),
    ("ünï/code", "_n__code"),
    ("", "_"),
    (".".join("abcdefghijklmnopqrst"), ".".join("abcdefghijklmno") + ".p_q_r_s_t"),
    ("x" * 200, "x" * 128),
])
def test_tool_names_become_capabilities(tool: str, capability: str) -> None:
    assert capability_name(tool) == capability
    validate_capability(capability)


def card(name: str, *capabilities: Capability) -> AgentCard:
    return AgentCard(id=f"U{name.upper():A<55}", name=name, type="offline", version="1",
                     endpoint="", capabilities=capabilities)


def test_capabilities_become_tools() -> None:
    long = "very.long." + "x" * 70
    cards = [card("b", Capability(name="text.summarize", description="Summarize.",
                                  input_schema={"type": "object", "required": ["text"]}),
                  Capability(name="mesh_submit"), Capability(name=long)),
             card("a", Capability(name="text.summarize", input_schema={"required": ["x"]}),
                  Capability(name="text_summarize"))]
    tools = capability_tools(cards, reserved=[spec.name for spec in FIXED_TOOLS])
    named = {spec.capability: name for name, spec in tools.items()}
    assert set(named) == {"text.summarize", "text_summarize", "mesh_submit", long}
    assert named["text.summarize"] == "text_summarize"  # sorted, "text.summarize" comes first
    assert named["text_summarize"].startswith("text_summarize_")
    assert named["mesh_submit"].startswith("mesh_submit_")  # a fixed tool's name is taken
    assert named[long].startswith("very_long_xxx") and len(named[long]) == 64
    assert all(len(name) == len(named[cap]) for cap, name in named.items())
    first = tools["text_summarize"]
    assert first.input_schema == {"type": "object", "required": ["x"]}  # agent "a" first
    assert "'text.summarize'" in first.description
    assert all(types.Tool(name=spec.name, input_schema=dict(spec.input_schema)).name
               for spec in tools.values())


def test_object_schemas_and_argument_checks() -> None:
    assert object_schema({}) == {"type": "object"}
    assert object_schema({"type": "string", "minLength": 1}) == {"type": "object",
                                                                 "minLength": 1}
    submit = next(spec for spec in FIXED_TOOLS if spec.name == "mesh_submit")
    submit.check({"capability": "echo", "priority": 3})
    with pytest.raises(InvalidRequest, match=r"^mesh_submit: arguments.priority: 11 is greater "
                                           r"than the maximum of 10$"):
        submit.check({"capability": "echo", "priority": 11})
    with pytest.raises(InvalidRequest, match=r"^mesh_submit: arguments: 'capability' is a "
                                           r"required property$"):
        submit.check({})
