"""The A2A agent cards the bridge serves: the whole mesh as one agent, and each agent.

A card is built when it is asked for, from what the dispatcher knows then, so
its skills follow agents joining and leaving. The mesh's card has one skill per
capability on the mesh (described by the first agent offering it, by name); an
agent's card has one skill per capability of that agent. Both declare
streaming, text and JSON in and out, the JSON-RPC interface at the card's base
URL in A2A 1.0 and 0.3 (a2a-sdk serves both there), the bearer token when the
bridge needs one, and each skill's input schema under the
:data:`~agoramesh.nodes.backends.a2a.INPUT_SCHEMAS` extension, so an agoramesh
node joining through ``--type a2a`` validates what this mesh validates.
"""

from __future__ import annotations

from collections.abc import Iterable

from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentExtension,
    AgentInterface,
    AgentProvider,
    AgentSkill,
    HTTPAuthSecurityScheme,
    SecurityRequirement,
    SecurityScheme,
    StringList,
)
from a2a.utils.constants import PROTOCOL_VERSION_0_3, PROTOCOL_VERSION_1_0, TransportProtocol
from google.protobuf import struct_pb2

from agoramesh._version import __version__
from agoramesh.nodes.backends.a2a import INPUT_SCHEMAS, to_value
from agoramesh.nodes.capability import Capability
from agoramesh.nodes.card import AgentCard as MeshCard

__all__ = ("BEARER", "MODES", "agent_card", "mesh_card", "skills_of")

#: The name of the bearer-token security scheme in the cards.
BEARER = "bearer"
#: The media types every skill takes and gives.
MODES = ("text/plain", "application/json")


def skills_of(cards: Iterable[MeshCard]) -> dict[str, Capability]:
    """Each capability the agents offer, once (the first agent's, in the order given)."""
    skills: dict[str, Capability] = {}
    for card in cards:
        for capability in card.capabilities:
            skills.setdefault(capability.name, capability)
    return dict(sorted(skills.items()))


def mesh_card(cards: Iterable[MeshCard], url: str, *, secured: bool) -> AgentCard:
    """The whole mesh as one agent at ``url``: a skill per capability, won by auction."""
    skills = skills_of(cards)
    return _card("agoramesh", "The agents of an agoramesh mesh as one A2A agent: each "
                 "message goes to an auction among the agents offering the skill it names "
                 "(message metadata {\"skill\": <capability>}, or the only skill).",
                 __version__, skills.values(), url, secured=secured)


def agent_card(card: MeshCard, url: str, *, secured: bool) -> AgentCard:
    """One mesh agent at ``url``: a skill per capability, each message sent to it."""
    return _card(card.name, f"{card.type} agent {card.id} on an agoramesh mesh",
                 card.version or __version__, card.capabilities, url, secured=secured)


def _card(name: str, description: str, version: str, capabilities: Iterable[Capability],
          url: str, *, secured: bool) -> AgentCard:
    offered = list(capabilities)
    schemas = struct_pb2.Struct()
    for capability in offered:
        schemas.fields[capability.name].CopyFrom(to_value(dict(capability.input_schema)))
    card = AgentCard(
        name=name or "agent", description=description, version=version,
        provider=AgentProvider(organization="agoramesh", url=url),
        supported_interfaces=[
            AgentInterface(url=url, protocol_binding=TransportProtocol.JSONRPC,
                           protocol_version=version_)
            for version_ in (PROTOCOL_VERSION_1_0, PROTOCOL_VERSION_0_3)],
        capabilities=AgentCapabilities(streaming=True, push_notifications=False, extensions=[
            AgentExtension(uri=INPUT_SCHEMAS, description="each skill's input JSON schema",
                           params=schemas)]),
        default_input_modes=MODES, default_output_modes=MODES,
        skills=[AgentSkill(id=cap.name, name=cap.name,
                           description=cap.description or f"the {cap.name} capability",
                           tags=cap.name.split("."), input_modes=MODES, output_modes=MODES)
                for cap in offered])
    if secured:
        card.security_schemes[BEARER].CopyFrom(SecurityScheme(
            http_auth_security_scheme=HTTPAuthSecurityScheme(
                scheme="bearer", description="the token of the agoramesh HTTP API")))
        card.security_requirements.append(SecurityRequirement(schemes={BEARER: StringList()}))
    return card
