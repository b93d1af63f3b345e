"""Mesh and transport: identities, envelopes, subjects, the embedded server, the Bus."""

from agoramesh.bus.bus import ERROR_TYPE, Bus, Delivery, Handler, Subscription
from agoramesh.bus.envelope import BROADCAST, Envelope, Guard, parse, seal
from agoramesh.bus.identity import Identity, is_agent_id, verify
from agoramesh.bus.ingress import IngressPolicy
from agoramesh.bus.mesh import Mesh
from agoramesh.bus.server import EmbeddedServer, find_nats_server, render_config
from agoramesh.bus.subjects import (
    Subjects,
    validate_capability,
    validate_capability_pattern,
    validate_subject,
)

__all__ = (
    "BROADCAST",
    "ERROR_TYPE",
    "Bus",
    "Delivery",
    "EmbeddedServer",
    "Envelope",
    "Guard",
    "Handler",
    "Identity",
    "IngressPolicy",
    "Mesh",
    "Subjects",
    "Subscription",
    "find_nats_server",
    "is_agent_id",
    "parse",
    "render_config",
    "seal",
    "validate_capability",
    "validate_capability_pattern",
    "validate_subject",
    "verify",
)
