"""Mesh and transport: identities, envelopes, subjects, the embedded server, the Bus."""

from agoramesh.bus.admission import Guard
from agoramesh.bus.bus import ERROR_TYPE, Bus, Delivery, Handler
from agoramesh.bus.envelope import BROADCAST, Envelope, parse, seal
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
from agoramesh.bus.subscription import Subscription

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
