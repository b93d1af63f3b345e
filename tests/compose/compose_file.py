"""The compose deployment (compose/docker-compose.yml) as the tests read it.

Shared by the static checks (test_compose.py) and the run of the topology as
local processes (test_compose_processes.py), so both read the same services,
command lines and mounts. Interpolation uses an empty environment, as
``docker compose config`` does for a user without a ``.env``: ``${X:-default}``
gives the default. Import it from a test in this directory as
``from compose_file import services``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import yaml

__all__ = ("COMPOSE_DIR", "COMPOSE_FILE", "DOCKERFILE", "PROMETHEUS_FILE", "ROOT", "agents",
           "command", "compose", "dockerfile_home", "exporters", "host_path", "interpolate",
           "mounted_file", "nats_servers", "option", "passed_through", "services",
           "variables_used", "volumes")

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
PROMETHEUS_FILE = COMPOSE_DIR / "prometheus" / "prometheus.yml"
DOCKERFILE = ROOT / "Dockerfile"

_VARIABLE = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}"
                       r"|([A-Za-z_][A-Za-z0-9_]*))")


def interpolate(value: str) -> str:
    """Compose interpolation with an empty environment: ``${X:-default}`` gives the default."""
    def substitute(match: re.Match[str]) -> str:
        escaped, _name, operator, default, _bare = match.groups()
        if escaped:
            return "$"
        return default if operator else ""

    if re.search(r"\$\{[^}]*:?\?", value):
        raise AssertionError(f"{value!r}: a required variable would break `config` "
                             f"for users without it; use a default or pass-through")
    return _VARIABLE.sub(substitute, value)


def _interpolated(node: Any) -> Any:
    if isinstance(node, str):
        return interpolate(node)
    if isinstance(node, list):
        return [_interpolated(item) for item in node]
    if isinstance(node, dict):
        return {key: _interpolated(item) for key, item in node.items()}
    return node


@cache
def compose() -> dict[str, Any]:
    """The whole file, anchors and ``<<`` merges resolved, variables interpolated."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(raw, dict) and isinstance(raw.get("services"), dict)
    data: dict[str, Any] = _interpolated(raw)
    return data


def services() -> dict[str, dict[str, Any]]:
    """Every service of every profile, by name."""
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def variables_used() -> set[str]:
    """The names of the variables the file interpolates."""
    return {match.group(2) or match.group(5)
            for match in _VARIABLE.finditer(COMPOSE_FILE.read_text())
            if not match.group(1)}


def command(service: dict[str, Any]) -> list[str]:
    """The service's ``command`` (a list: no shell splitting surprises)."""
    argv = service.get("command", [])
    assert isinstance(argv, list), "write commands as lists: no shell splitting surprises"
    return [str(part) for part in argv]


def agents() -> dict[str, dict[str, Any]]:
    """Services running ``agoramesh node`` from the root Dockerfile."""
    return {name: service for name, service in services().items()
            if "build" in service and command(service)[:1] == ["node"]}


def nats_servers() -> dict[str, dict[str, Any]]:
    """The hubs: services of the official ``nats`` image."""
    return {name: service for name, service in services().items()
            if str(service.get("image", "")).startswith("nats:")}


def exporters() -> dict[str, dict[str, Any]]:
    """The ``prometheus-nats-exporter`` services."""
    return {name: service for name, service in services().items()
            if "prometheus-nats-exporter" in str(service.get("image", ""))}


def option(argv: list[str], flag: str) -> list[str]:
    """Every value of ``flag`` (given as ``--flag value``) in ``argv``."""
    return [argv[index + 1] for index, part in enumerate(argv[:-1]) if part == flag]


def volumes(service: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(source, target) of each mount; source is a host path or a volume name."""
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            yield str(volume.get("source", "")), str(volume["target"])
        else:
            source, target = str(volume).split(":")[:2]
            yield source, target


def host_path(source: str) -> Path | None:
    """The host path a mount's source names, or None for a named volume."""
    if source.startswith((".", "/", "~")):
        return (COMPOSE_DIR / source).resolve()
    return None


def mounted_file(service: dict[str, Any], target: str) -> Path:
    """The host file or directory mounted at ``target`` in the service's container."""
    for source, mount in volumes(service):
        if mount == target and (path := host_path(source)) is not None:
            return path
    raise AssertionError(f"nothing mounted at {target}")


def passed_through(environment: Any) -> set[str]:
    """Variables a service takes from the host environment as they are (``- NAME``)."""
    if isinstance(environment, dict):
        return {name for name, value in environment.items() if value is None}
    return {name for name in environment or [] if "=" not in name}


def dockerfile_home() -> str:
    """``AGORAMESH_HOME`` in the agent image: where each agent's volume is mounted."""
    home = re.search(r"^ENV AGORAMESH_HOME=(\S+)", DOCKERFILE.read_text(), re.M)
    assert home, "the Dockerfile sets AGORAMESH_HOME"
    return home.group(1)
