"""Backends: one module per provider or program, one interface (base.Backend)."""

from agoramesh.nodes.backends.base import Backend, BackendConfig, ChatMessage
from agoramesh.nodes.backends.registry import BACKEND_TYPES, create_backend

__all__ = ("BACKEND_TYPES", "Backend", "BackendConfig", "ChatMessage", "create_backend")
