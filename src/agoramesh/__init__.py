"""agoramesh: a decentralized runtime for heterogeneous AI agents on a brokerless NATS mesh."""

from agoramesh._version import __version__
from agoramesh.bus import Bus, EmbeddedServer, Envelope, Identity, IngressPolicy, Mesh, Subjects
from agoramesh.config import BusConfig, EnvelopePolicy, Role, ServerConfig
from agoramesh.errors import AgoraError

__all__ = (
    "AgoraError",
    "Bus",
    "BusConfig",
    "EmbeddedServer",
    "Envelope",
    "EnvelopePolicy",
    "Identity",
    "IngressPolicy",
    "Mesh",
    "Role",
    "ServerConfig",
    "Subjects",
    "__version__",
)
