"""Which capabilities an agent of each type offers by default."""

from __future__ import annotations

from agoramesh.errors import ConfigError
from agoramesh.nodes.backends.offline import OFFLINE_CAPABILITIES
from agoramesh.nodes.capability import Capability

__all__ = ("capabilities_for",)

# Built once: every offline agent of the process shares these frozen objects (nothing
# mutates their schemas), and with them the schema check and input validator they memoise.
_OFFLINE = {name: Capability(name=name, **spec) for name, spec in OFFLINE_CAPABILITIES.items()}


def capabilities_for(kind: str, names: list[str]) -> tuple[Capability, ...]:
    """The capabilities an agent of ``kind`` offers; the offline catalogue has schemas."""
    if kind == "offline":
        unknown = [name for name in names if name not in _OFFLINE]
        if unknown:
            raise ConfigError(f"offline agents offer {', '.join(_OFFLINE)}; "
                              f"not {', '.join(unknown)}")
        return tuple(_OFFLINE[name] for name in names or list(_OFFLINE))
    if kind == "command" and not names:
        raise ConfigError("--type command needs at least one --capability")
    return tuple(Capability(name=name, description=f"{kind} agent")
                 for name in names or ["chat"])
