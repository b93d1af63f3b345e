"""Backend types by name, imported only when used (SDKs are optional extras)."""

from __future__ import annotations

import importlib

from agoramesh.errors import ConfigError
from agoramesh.nodes.backends.base import Backend, BackendConfig

__all__ = ("BACKEND_TYPES", "create_backend")

#: agent type → "module:class". Several types may share one implementation.
BACKEND_TYPES: dict[str, str] = {
    "offline": "agoramesh.nodes.backends.offline:OfflineBackend",
    "openai": "agoramesh.nodes.backends.openai:OpenAIBackend",
    "anthropic": "agoramesh.nodes.backends.anthropic:AnthropicBackend",
    "claude": "agoramesh.nodes.backends.anthropic:AnthropicBackend",
    "ollama": "agoramesh.nodes.backends.ollama:OllamaBackend",
    "claude-code": "agoramesh.nodes.backends.cli:ClaudeCodeBackend",
    "codex": "agoramesh.nodes.backends.cli:CodexBackend",
    "command": "agoramesh.nodes.backends.command:CommandBackend",
    "mcp": "agoramesh.nodes.backends.mcp:McpBackend",
    "a2a": "agoramesh.nodes.backends.a2a:A2ABackend",
}


def create_backend(kind: str, config: BackendConfig | None = None) -> Backend:
    """A backend of type ``kind``; ConfigError for unknown types or missing SDKs."""
    target = BACKEND_TYPES.get(kind)
    if target is None:
        raise ConfigError(f"unknown agent type {kind!r}; choose from {', '.join(BACKEND_TYPES)}")
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        extra = {"openai": "openai", "anthropic": "anthropic", "claude": "anthropic",
                 "ollama": "ollama", "mcp": "mcp",
                 "a2a": "a2a"}.get(kind, "all")
        raise ConfigError(f"the {kind} backend needs an extra package: "
                          f"pip install 'agoramesh[{extra}]' ({exc.name} missing)") from exc
    backend_class: type[Backend] = getattr(module, class_name)
    return backend_class(config)
