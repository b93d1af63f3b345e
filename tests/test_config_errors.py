"""Settings validation (agoramesh.config) and the error tree (agoramesh.errors)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from agoramesh import errors
from agoramesh.config import (
    DEFAULT_PREFIX,
    BusConfig,
    EnvelopePolicy,
    Environment,
    ServerConfig,
    ServerRole,
    parse_hostport,
)
from agoramesh.errors import (
    WIRE_ERRORS,
    AgoraError,
    BusTimeout,
    ConfigError,
    EnvelopeError,
    IdentityError,
    InvalidAllocation,
    InvalidBallot,
    InvalidBid,
    InvalidCollaboration,
    InvalidInput,
    InvalidRequest,
    InvalidTask,
    InvalidWorldCall,
    NotConnected,
    RejectReason,
    RemoteError,
    ServerNotFound,
    TaskError,
    error_from_wire,
    error_to_wire,
)

# --- EnvelopePolicy -------------------------------------------------------------


def test_envelope_policy_defaults() -> None:
    policy = EnvelopePolicy()
    assert policy.max_bytes == 1024 * 1024 + 64 * 1024
    assert policy.default_ttl_ms <= policy.max_ttl_ms
    assert policy.replay_cache_size >= 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_bytes": 127}, "max_bytes must be at least 128, got 127"),
        ({"max_bytes": 0}, "max_bytes"),
        ({"default_ttl_ms": 0}, "default_ttl_ms"),
        ({"default_ttl_ms": -5}, "default_ttl_ms"),
        ({"default_ttl_ms": 2_000, "max_ttl_ms": 1_000}, "max_ttl_ms=1000"),
        ({"max_clock_skew_ms": -1}, "max_clock_skew_ms"),
        ({"replay_cache_size": 0}, "replay_cache_size"),
    ],
)
def test_envelope_policy_validation(kwargs: dict[str, int], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        EnvelopePolicy(**kwargs)  # type: ignore[arg-type]


def test_envelope_policy_limits_accepted() -> None:
    policy = EnvelopePolicy(
        max_bytes=128, default_ttl_ms=5, max_ttl_ms=5, max_clock_skew_ms=0, replay_cache_size=1
    )
    assert (policy.max_bytes, policy.max_ttl_ms, policy.replay_cache_size) == (128, 5, 1)


def test_configs_are_frozen_and_keyword_only() -> None:
    policy = EnvelopePolicy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.max_bytes = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        EnvelopePolicy(1024)  # type: ignore[misc]
    with pytest.raises(TypeError):
        BusConfig(("nats://h:1",))  # type: ignore[misc]


# --- BusConfig ------------------------------------------------------------------


def test_bus_config_defaults() -> None:
    config = BusConfig()
    assert config.prefix == DEFAULT_PREFIX == "agora"
    assert all("://" in url for url in config.servers)
    assert isinstance(config.envelope, EnvelopePolicy)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"servers": ()}, "at least one server"),
        ({"servers": ("127.0.0.1:4222",)}, "needs a scheme"),
        ({"servers": ("nats://a:1", "b:2")}, "'b:2'"),
        ({"connect_timeout": 0}, "timeouts must be positive"),
        ({"connect_timeout": -1.0}, "timeouts must be positive"),
        ({"request_timeout": 0}, "timeouts must be positive"),
    ],
)
def test_bus_config_validation(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        BusConfig(**kwargs)  # type: ignore[arg-type]


# --- ServerConfig ---------------------------------------------------------------


def test_server_config_seed_and_leaf(tmp_path: Path) -> None:
    seed = ServerConfig(name="seed-1", data_dir=tmp_path, bootstrap=("10.0.0.1:6222",))
    assert seed.role is ServerRole.SEED
    leaf = ServerConfig(
        name="leaf_1.x", role=ServerRole.LEAF, data_dir=tmp_path, hubs=("nats-leaf://h:7422",)
    )
    assert leaf.hubs == ("nats-leaf://h:7422",)
    assert ServerConfig(name="p", data_dir=tmp_path, port=65535, http_port=0).port == 65535


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": ""}, "server name"),
        ({"name": "has space"}, "server name"),
        ({"name": "a/b"}, "server name"),
        ({"name": "a:b"}, "server name"),
        ({"role": ServerRole.LEAF}, "needs at least one hub"),
        ({"role": ServerRole.LEAF, "hubs": ("h:1",), "bootstrap": ("h:2",)}, "not --bootstrap"),
        ({"hubs": ("no-port",)}, "expected host:port"),
        ({"bootstrap": ("h:99999",)}, "expected host:port"),
        ({"bootstrap": ("h:1", ":2")}, "expected host:port"),
        ({"port": 65536}, "port out of range"),
        ({"port": -2}, "port out of range"),
        ({"cluster_port": 70000}, "port out of range"),
        ({"leaf_port": -10}, "port out of range"),
        ({"http_port": 100000}, "port out of range"),
    ],
)
def test_server_config_validation(tmp_path: Path, kwargs: dict[str, object], match: str) -> None:
    fields: dict[str, object] = {"name": "node", "data_dir": tmp_path, **kwargs}
    with pytest.raises(ConfigError, match=match):
        ServerConfig(**fields)  # type: ignore[arg-type]


# --- parse_hostport -------------------------------------------------------------


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        ("127.0.0.1:4222", ("127.0.0.1", 4222)),
        ("example.org:1", ("example.org", 1)),
        ("nats://h:4222", ("h", 4222)),
        ("nats-route://h:6222/", ("h", 6222)),
        ("[::1]:4222", ("::1", 4222)),
        ("tls://[fe80::1]:65535", ("fe80::1", 65535)),
    ],
)
def test_parse_hostport(addr: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(addr) == expected


@pytest.mark.parametrize(
    "addr",
    ["", "host", "host:", ":4222", "host:0", "host:65536", "host:-1", "host:abc",
     "host:42 ", "nats://", "host:4.2"],
)
def test_parse_hostport_rejects(addr: str) -> None:
    with pytest.raises(ConfigError, match="expected host:port"):
        parse_hostport(addr)


def test_parse_hostport_rejects_unicode_digits() -> None:
    with pytest.raises(ConfigError):
        parse_hostport("host:²")


# --- Environment ----------------------------------------------------------------


def test_environment_read_empty_mapping_gives_defaults() -> None:
    env = Environment.read({})
    assert env == Environment()
    assert env.nats_server is None and env.server_url is None
    assert env.home == Path(".agoramesh")
    assert env.prefix == DEFAULT_PREFIX


def test_environment_read_values() -> None:
    env = Environment.read(
        {
            "AGORAMESH_NATS_SERVER": "/opt/bin/nats-server",
            "AGORAMESH_SERVER": "nats://10.0.0.1:4222",
            "AGORAMESH_HOME": "/var/lib/agora",
            "AGORAMESH_PREFIX": "mesh2",
            "UNRELATED": "x",
        }
    )
    assert env.nats_server == Path("/opt/bin/nats-server")
    assert env.server_url == "nats://10.0.0.1:4222"
    assert env.home == Path("/var/lib/agora")
    assert env.prefix == "mesh2"


def test_environment_read_empty_strings_mean_unset() -> None:
    env = Environment.read(
        dict.fromkeys(
            ("AGORAMESH_NATS_SERVER", "AGORAMESH_SERVER", "AGORAMESH_HOME", "AGORAMESH_PREFIX"),
            "",
        )
    )
    assert env == Environment()


def test_environment_repr_never_shows_secrets() -> None:
    env = Environment.read({"OPENAI_API_KEY": "sk-provider-secret-1",
                            "ANTHROPIC_API_KEY": "sk-ant-provider-secret-2",
                            "AGORAMESH_API_TOKEN": "http-api-token-secret-3"})
    assert env.api_keys and env.api_token == "http-api-token-secret-3"
    text = repr(env)
    assert "prefix=" in text
    for secret in ("sk-provider-secret-1", "sk-ant-provider-secret-2", "http-api-token-secret-3"):
        assert secret not in text


def test_environment_read_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGORAMESH_PREFIX", "from-os")
    monkeypatch.delenv("AGORAMESH_SERVER", raising=False)
    env = Environment.read()
    assert env.prefix == "from-os"
    assert env.server_url is None


# --- error tree -----------------------------------------------------------------


def test_builtin_bases() -> None:
    assert issubclass(BusTimeout, TimeoutError)
    assert issubclass(NotConnected, ConnectionError)
    assert issubclass(ServerNotFound, FileNotFoundError)
    assert issubclass(ConfigError, ValueError)
    assert issubclass(EnvelopeError, ValueError)
    with pytest.raises(TimeoutError):
        raise BusTimeout("no answer")
    with pytest.raises(OSError):
        raise NotConnected("closed")


def test_each_refusal_says_what_was_invalid() -> None:
    # InvalidInput is for a task's parameters alone; a caller catching ValueError still can.
    for kind in (InvalidTask, InvalidRequest, InvalidWorldCall):
        assert issubclass(kind, ValueError) and not issubclass(kind, InvalidInput)
    assert issubclass(InvalidInput, TaskError) and issubclass(InvalidTask, TaskError)
    for kind in (InvalidBallot, InvalidBid, InvalidAllocation, InvalidCollaboration):
        assert issubclass(kind, InvalidRequest) and not issubclass(kind, TaskError)
    # What a node answers with crosses the bus; the rest is raised where it is made.
    assert {"InvalidInput", "InvalidTask", "InvalidRequest", "InvalidBallot"} <= set(WIRE_ERRORS)
    local = {"InvalidBid", "InvalidAllocation", "InvalidCollaboration", "InvalidWorldCall"}
    assert not local & set(WIRE_ERRORS)


def test_every_exported_error_has_the_one_root() -> None:
    exported = [getattr(errors, name) for name in errors.__all__]
    classes = [obj for obj in exported if isinstance(obj, type) and issubclass(obj, Exception)]
    assert len(classes) > 20
    assert all(issubclass(cls, AgoraError) for cls in classes)
    assert sorted(errors.__all__) == sorted(
        name for name in vars(errors) if not name.startswith("_")
        and name not in {"annotations", "Any", "ClassVar", "StrEnum"}
    )


def test_envelope_error_reasons_are_distinct_and_complete() -> None:
    subclasses = EnvelopeError.__subclasses__()
    reasons = [cls.reason for cls in subclasses]
    assert len(set(reasons)) == len(reasons)
    assert set(reasons) == set(RejectReason)
    assert error_from_wire({"type": "ReplayedEnvelope"}).reason is RejectReason.REPLAYED  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", sorted(WIRE_ERRORS))
def test_wire_round_trip_rebuilds_registered_types(name: str) -> None:
    cls = WIRE_ERRORS[name]
    original = cls(f"details of {name} ✓")

    wire = error_to_wire(original)
    rebuilt = error_from_wire(wire)

    assert wire == {"type": name, "message": f"details of {name} ✓"}
    assert type(rebuilt) is cls
    assert str(rebuilt) == str(original)


@pytest.mark.parametrize(
    "error",
    [ValueError("plain"), KeyError("k"), IdentityError("secret"), AgoraError("root"),
     NotConnected("x"), ServerNotFound("nats-server")],
)
def test_unregistered_types_arrive_as_remote_error(error: BaseException) -> None:
    rebuilt = error_from_wire(error_to_wire(error))
    assert type(rebuilt) is RemoteError
    assert rebuilt.type_name == type(error).__name__
    assert rebuilt.message == str(error)
    assert str(rebuilt) == f"{type(error).__name__}: {error}"


def test_remote_error_is_forwarded_under_its_original_type() -> None:
    remote = RemoteError("ZeroDivisionError", "division by zero")
    assert error_to_wire(remote) == {"type": "ZeroDivisionError", "message": "division by zero"}
    again = error_from_wire(error_to_wire(remote))
    assert isinstance(again, RemoteError)
    assert (again.type_name, again.message) == ("ZeroDivisionError", "division by zero")
    # A remote RemoteError of a registered type is rebuilt as that type.
    assert type(error_from_wire(error_to_wire(RemoteError("BusTimeout", "slow")))) is BusTimeout


@pytest.mark.parametrize("data", [None, "BusTimeout", ["BusTimeout", "x"], 42, b"{}"])
def test_unreadable_wire_error_becomes_remote_error(data: object) -> None:
    rebuilt = error_from_wire(data)
    assert type(rebuilt) is RemoteError
    assert rebuilt.type_name == "RemoteError"
    assert rebuilt.message.startswith("unreadable error:")
    assert len(rebuilt.message) < 250


def test_wire_error_fields_are_defaulted_and_bounded() -> None:
    empty = error_from_wire({})
    assert type(empty) is RemoteError and (empty.type_name, empty.message) == ("RemoteError", "")
    long = error_from_wire({"type": "T" * 500, "message": "m" * 10_000})
    assert type(long) is RemoteError
    assert len(long.type_name) == 100 and len(long.message) == 2000
    odd = error_from_wire({"type": 5, "message": None})
    assert type(odd) is RemoteError and (odd.type_name, odd.message) == ("5", "None")
    rebuilt = error_from_wire({"type": "ConfigError", "message": "x" * 5000})
    assert type(rebuilt) is ConfigError and len(str(rebuilt)) == 2000


def test_wire_registry_never_rebuilds_dangerous_or_generic_types() -> None:
    for name in ("Exception", "SystemExit", "KeyboardInterrupt", "AgoraError", "RemoteError",
                 "__class__", "IdentityError"):
        assert type(error_from_wire({"type": name, "message": "m"})) is RemoteError
    assert all(issubclass(cls, AgoraError) for cls in WIRE_ERRORS.values())
    assert all(name == cls.__name__ for name, cls in WIRE_ERRORS.items())
