"""The decentralized mode's settings: ``config/baseline/decentralized_config.yaml``.

The file has the four sections M-7 specifies; :func:`load_config` reads it
and :meth:`DecentralizedConfig.from_mapping` checks a mapping already loaded
(M-7's usage loop passes the YAML's dict to each agent). Every bad value is a
one-line :class:`~agoramesh.errors.ConfigError` naming the key, as
``section.key``.

Two optional keys and one optional section are ours, absent from the
baseline file: ``llm_config.backend`` (an agent type such as ``openai``,
``anthropic`` or ``ollama``; without it the agents use their deterministic
policy and ``model_name`` is only recorded) with ``llm_config.base_url`` and
``llm_config.api_key_env``; and ``mesh`` — ``connect`` (a NATS URL to join
instead of embedding servers), ``team`` (the subject scope; default a fresh
id per process), ``prefix`` and ``heartbeat_interval``.

Keys we do not know are tolerated, since another framework's configs carry its
own (``max_history``, ``environment_description``…), except a key that looks
like a misspelling of one of ours: ``negotation_strategy`` is an error that
says ``did you mean negotiation_strategy``.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from agoramesh.bus.subjects import validate_subject
from agoramesh.config import DEFAULT_PREFIX, read_settings_file
from agoramesh.errors import AgoraError, ConfigError
from agoramesh.nodes.backends.registry import BACKEND_TYPES
from agoramesh.protocols.allocation.strategies import NegotiationStrategy

__all__ = ("AGENT_CLASS", "AgentSettings", "CommunicationProtocol", "CommunicationSettings",
           "CooperationLevel", "DecentralizedConfig", "ExecutionSettings", "LLMSettings",
           "MeshSettings", "load_config")

#: Our agent class, as ``agent_config.agent_class`` names it.
AGENT_CLASS = "agoramesh.modes.decentralized.autonomous_agent.AutonomousAgent"

_E = TypeVar("_E", bound=StrEnum)


class CooperationLevel(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class CommunicationProtocol(StrEnum):
    DIRECT = "direct"
    BROADCAST = "broadcast"
    GOSSIP = "gossip"


def _section(raw: Mapping[str, Any], name: str, known: tuple[str, ...]) -> Mapping[str, Any]:
    value = raw.get(name) or {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{name} must be a mapping of settings, got {type(value).__name__}")
    _check_spelling(value, known, prefix=f"{name}.")
    return value


def _check_spelling(raw: Mapping[str, Any], known: tuple[str, ...], *, prefix: str = "") -> None:
    for key in raw:
        if not isinstance(key, str):
            raise ConfigError(f"{prefix}{key!r}: setting names must be strings")
        if key in known:
            continue
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.8)
        if close:
            raise ConfigError(f"unknown setting {prefix}{key}: did you mean {prefix}{close[0]}?")


def _choice(raw: Mapping[str, Any], key: str, kind: type[_E], default: _E, where: str) -> _E:
    value = raw.get(key, default)
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(member.value for member in kind)
        raise ConfigError(f"{where}.{key} must be one of {choices}, got {value!r:.40}") from None


def _number(raw: Mapping[str, Any], key: str, default: float, where: str, *,
            integer: bool = False, low: float = 0.0, high: float = math.inf,
            low_open: bool = False) -> Any:
    value = raw.get(key, default)
    kind = "an integer" if integer else "a number"
    if (isinstance(value, bool) or not isinstance(value, int if integer else int | float)
            or not math.isfinite(value)):
        raise ConfigError(f"{where}.{key} must be {kind}, got {value!r:.40}")
    if value < low or (low_open and value == low) or value > high:
        bound = f"{'>' if low_open else '>='} {low:g}" + (f" and <= {high:g}"
                                                           if math.isfinite(high) else "")
        raise ConfigError(f"{where}.{key} must be {bound}, got {value!r:.40}")
    return value


def _text(raw: Mapping[str, Any], key: str, default: str | None, where: str) -> str | None:
    value = raw.get(key, default)
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ConfigError(f"{where}.{key} must be a non-empty string, got {value!r:.40}")
    return value


@dataclass(frozen=True, kw_only=True, slots=True)
class AgentSettings:
    agent_class: str = AGENT_CLASS
    num_agents: int = 3
    negotiation_strategy: NegotiationStrategy = NegotiationStrategy.AUCTION_BASED
    cooperation_level: CooperationLevel = CooperationLevel.HIGH

    KEYS = ("agent_class", "num_agents", "negotiation_strategy", "cooperation_level")

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> AgentSettings:
        where = "agent_config"
        agent_class = _text(raw, "agent_class", AGENT_CLASS, where)
        assert agent_class is not None
        if not all(part.isidentifier() for part in agent_class.split(".")) or \
                "." not in agent_class:
            raise ConfigError(f"{where}.agent_class must be a dotted path module.Class, "
                              f"got {agent_class!r:.80}")
        return cls(agent_class=agent_class,
                   num_agents=_number(raw, "num_agents", 3, where, integer=True, low=1,
                                      high=26),
                   negotiation_strategy=_choice(raw, "negotiation_strategy", NegotiationStrategy,
                                                NegotiationStrategy.AUCTION_BASED, where),
                   cooperation_level=_choice(raw, "cooperation_level", CooperationLevel,
                                             CooperationLevel.HIGH, where))


@dataclass(frozen=True, kw_only=True, slots=True)
class CommunicationSettings:
    protocol: CommunicationProtocol = CommunicationProtocol.DIRECT
    timeout: float = 5.0  # seconds: every wait of a send, a broadcast or a negotiation
    max_message_queue: int = 100  # an agent's inbox; a full inbox refuses new messages
    retry_attempts: int = 3  # extra tries of a send that got no answer

    KEYS = ("protocol", "timeout", "max_message_queue", "retry_attempts")

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> CommunicationSettings:
        where = "communication_config"
        return cls(protocol=_choice(raw, "protocol", CommunicationProtocol,
                                    CommunicationProtocol.DIRECT, where),
                   timeout=float(_number(raw, "timeout", 5.0, where, low=0, high=600,
                                         low_open=True)),
                   max_message_queue=_number(raw, "max_message_queue", 100, where,
                                             integer=True, low=1, high=1_000_000),
                   retry_attempts=_number(raw, "retry_attempts", 3, where, integer=True,
                                          high=100))


@dataclass(frozen=True, kw_only=True, slots=True)
class LLMSettings:
    model_name: str = "gpt-4"
    temperature: float = 0.2
    backend: str | None = None  # an agent type (nodes/backends); None: the deterministic policy
    base_url: str | None = None
    api_key_env: str | None = None  # the environment variable holding the API key

    KEYS = ("model_name", "temperature", "backend", "base_url", "api_key_env")

    def api_key(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The key from ``api_key_env``, read when an agent is built (never at import)."""
        if self.api_key_env is None:
            return None
        return (os.environ if environ is None else environ).get(self.api_key_env)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> LLMSettings:
        where = "llm_config"
        backend = _text(raw, "backend", None, where)
        if backend is not None and backend not in BACKEND_TYPES:
            raise ConfigError(f"{where}.backend must be one of {', '.join(BACKEND_TYPES)}, "
                              f"got {backend!r:.40}")
        return cls(model_name=_text(raw, "model_name", "gpt-4", where) or "gpt-4",
                   temperature=float(_number(raw, "temperature", 0.2, where, high=2.0)),
                   backend=backend, base_url=_text(raw, "base_url", None, where),
                   api_key_env=_text(raw, "api_key_env", None, where))


@dataclass(frozen=True, kw_only=True, slots=True)
class ExecutionSettings:
    max_total_steps: int = 400  # rounds of the episode loop
    max_steps_per_task: int = 60  # an agent past this on one task gives it up and asks for help
    negotiation_rounds: int = 3  # announce → bids → award rounds before a task stays open

    KEYS = ("max_total_steps", "max_steps_per_task", "negotiation_rounds")

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> ExecutionSettings:
        where = "execution"
        return cls(max_total_steps=_number(raw, "max_total_steps", 400, where, integer=True,
                                           low=1, high=1_000_000),
                   max_steps_per_task=_number(raw, "max_steps_per_task", 60, where,
                                              integer=True, low=1, high=1_000_000),
                   negotiation_rounds=_number(raw, "negotiation_rounds", 3, where,
                                              integer=True, low=1, high=100))


@dataclass(frozen=True, kw_only=True, slots=True)
class MeshSettings:
    connect: str | None = None  # join this NATS URL; None: embed a server per agent
    team: str | None = None  # subject scope of one team; None: one fresh id per process
    prefix: str = DEFAULT_PREFIX
    heartbeat_interval: float = 1.0

    KEYS = ("connect", "team", "prefix", "heartbeat_interval")

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> MeshSettings:
        where = "mesh"
        connect = _text(raw, "connect", None, where)
        if connect is not None and not connect.startswith(("nats://", "tls://", "ws://",
                                                           "wss://")):
            raise ConfigError(f"{where}.connect must be a nats:// URL, got {connect!r:.80}")
        team = _text(raw, "team", None, where)
        prefix = _text(raw, "prefix", DEFAULT_PREFIX, where) or DEFAULT_PREFIX
        for key, value in (("team", team), ("prefix", prefix)):
            if value is not None:
                try:
                    validate_subject(value)
                except AgoraError as exc:
                    raise ConfigError(f"{where}.{key}: {exc}") from None
                if "." in value or not value.replace("-", "").replace("_", "").isalnum():
                    raise ConfigError(f"{where}.{key} must be one subject token of letters, "
                                      f"digits, - and _, got {value!r:.60}")
        return cls(connect=connect, team=team, prefix=prefix,
                   heartbeat_interval=float(_number(raw, "heartbeat_interval", 1.0, where,
                                                    low=0, high=60, low_open=True)))


@dataclass(frozen=True, kw_only=True, slots=True)
class DecentralizedConfig:
    """The whole file, checked. ``raw`` keeps the mapping it came from."""

    agent: AgentSettings = field(default_factory=AgentSettings)
    communication: CommunicationSettings = field(default_factory=CommunicationSettings)
    llm: LLMSettings = field(default_factory=LLMSettings)
    execution: ExecutionSettings = field(default_factory=ExecutionSettings)
    mesh: MeshSettings = field(default_factory=MeshSettings)
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False)

    SECTIONS = ("agent_config", "communication_config", "llm_config", "execution", "mesh")

    @classmethod
    def from_mapping(cls, raw: Any) -> DecentralizedConfig:
        """Check a loaded mapping (missing sections and keys take the baseline's values)."""
        if isinstance(raw, DecentralizedConfig):
            return raw
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise ConfigError(f"the configuration must be a mapping of sections, "
                              f"got {type(raw).__name__}")
        _check_spelling(raw, cls.SECTIONS)
        return cls(
            agent=AgentSettings.from_mapping(_section(raw, "agent_config", AgentSettings.KEYS)),
            communication=CommunicationSettings.from_mapping(
                _section(raw, "communication_config", CommunicationSettings.KEYS)),
            llm=LLMSettings.from_mapping(_section(raw, "llm_config", LLMSettings.KEYS)),
            execution=ExecutionSettings.from_mapping(
                _section(raw, "execution", ExecutionSettings.KEYS)),
            mesh=MeshSettings.from_mapping(_section(raw, "mesh", MeshSettings.KEYS)),
            raw=dict(raw))

    def as_dict(self) -> dict[str, Any]:
        """The settings as the file spells them (M-7's sections, then ours)."""
        return {
            "agent_config": {"agent_class": self.agent.agent_class,
                             "num_agents": self.agent.num_agents,
                             "negotiation_strategy": self.agent.negotiation_strategy.value,
                             "cooperation_level": self.agent.cooperation_level.value},
            "communication_config": {"protocol": self.communication.protocol.value,
                                     "timeout": self.communication.timeout,
                                     "max_message_queue": self.communication.max_message_queue,
                                     "retry_attempts": self.communication.retry_attempts},
            "llm_config": {key: getattr(self.llm, key) for key in LLMSettings.KEYS
                           if getattr(self.llm, key) is not None},
            "execution": {key: getattr(self.execution, key) for key in ExecutionSettings.KEYS},
            "mesh": {key: getattr(self.mesh, key) for key in MeshSettings.KEYS
                     if getattr(self.mesh, key) is not None},
        }


def load_config(path: str | Path) -> DecentralizedConfig:
    """Read and check a YAML file; ConfigError (one line) for anything unusable."""
    file = Path(path)
    raw = read_settings_file(file)
    try:
        return DecentralizedConfig.from_mapping(raw)
    except ConfigError as exc:
        raise ConfigError(f"{file}: {exc}") from None
