"""Which capabilities an agent of each type offers by default."""

from __future__ import annotations

from agoramesh.errors import ConfigError
from agoramesh.nodes.backends.offline import OFFLINE_CAPABILITIES
from agoramesh.nodes.capability import Capability

__all__ = ("capabilities_for",)


def capabilities_for(kind: str, names: list[str]) -> tuple[Capability, ...]:
    """The capabilities an agent of ``kind`` offers; the offline catalogue has schemas."""
    if kind == "offline":
        unknown = [name for name in names if name not in OFFLINE_CAPABILITIES]
        if unknown:
            raise ConfigError(f"offline agents offer {', '.join(OFFLINE_CAPABILITIES)}; "
                              f"not {', '.join(unknown)}")
        return tuple(Capability(name=name, **OFFLINE_CAPABILITIES[name])
                     for name in names or list(OFFLINE_CAPABILITIES))
    if kind == "command" and not names:
        raise ConfigError("--type command needs at least one --capability")
    return tuple(Capability(name=name, description=f"{kind} agent")
                 for name in names or ["chat"])
