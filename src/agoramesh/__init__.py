"""agoramesh: a decentralized runtime for heterogeneous AI agents on a brokerless NATS mesh.

What users build with is exported here: a mesh of embedded servers (:class:`Mesh`),
agents (:class:`AgentNode` with a :class:`NodeConfig`, a backend and a
:class:`BusConfig`; many in one process under an :class:`AgentHost`), the client
API (:func:`submit_task`, :func:`stream_task`, :func:`cancel_task`, or a
:class:`Dispatcher` for auctions and strategies), and the authenticated
:class:`Bus` underneath.
"""

from agoramesh._version import __version__
from agoramesh.agent import AgentNode
from agoramesh.bus import Bus, EmbeddedServer, Envelope, Identity, IngressPolicy, Mesh, Subjects
from agoramesh.config import BusConfig, EnvelopePolicy, JobsConfig, ServerConfig, ServerRole
from agoramesh.errors import AgoraError
from agoramesh.nodes.capability import Capability
from agoramesh.nodes.client import cancel_task, stream_task, submit_task
from agoramesh.nodes.host import AgentHost
from agoramesh.nodes.node import NodeConfig
from agoramesh.nodes.task import Task, TaskResult, TaskStatus
from agoramesh.protocols import Dispatcher

__all__ = (
    "AgentHost",
    "AgentNode",
    "AgoraError",
    "Bus",
    "BusConfig",
    "Capability",
    "Dispatcher",
    "EmbeddedServer",
    "Envelope",
    "EnvelopePolicy",
    "Identity",
    "IngressPolicy",
    "JobsConfig",
    "Mesh",
    "NodeConfig",
    "ServerConfig",
    "ServerRole",
    "Subjects",
    "Task",
    "TaskResult",
    "TaskStatus",
    "__version__",
    "cancel_task",
    "stream_task",
    "submit_task",
)
