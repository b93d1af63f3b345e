"""Every public module declares its surface in a tuple ``__all__`` that matches what it defines."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

import agoramesh


def _modules() -> list[ModuleType]:
    names = ["agoramesh"] + [info.name for info in pkgutil.walk_packages(
        agoramesh.__path__, "agoramesh.") if not info.name.rsplit(".", 1)[-1].startswith("_")]
    return [importlib.import_module(name) for name in names
            if not name.endswith(".__main__") and name != "agoramesh.cli.__main__"]


@pytest.mark.parametrize("module", _modules(), ids=lambda m: m.__name__)
def test_all_is_a_tuple_of_existing_names(module: ModuleType) -> None:
    exported = getattr(module, "__all__", None)
    assert isinstance(exported, tuple), f"{module.__name__} needs a tuple __all__"
    assert len(set(exported)) == len(exported)
    for name in exported:
        assert hasattr(module, name), f"{module.__name__}.__all__ names missing {name}"


@pytest.mark.parametrize("module", _modules(), ids=lambda m: m.__name__)
def test_public_definitions_are_exported(module: ModuleType) -> None:
    defined = {
        name for name, value in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and value.__module__ == module.__name__
    }
    missing = defined - set(module.__all__)
    assert not missing, f"{module.__name__} defines but does not export {sorted(missing)}"


def test_package_init_only_reexports() -> None:
    for module in _modules():
        if module.__file__ and module.__file__.endswith("__init__.py"):
            own = [name for name, value in vars(module).items()
                   if (inspect.isclass(value) or inspect.isfunction(value))
                   and value.__module__ == module.__name__]
            assert own == [], f"{module.__name__} defines code in __init__: {own}"


@pytest.mark.parametrize(("module", "names"), [
    ("agoramesh.bus.envelope", ["VERSION", "FIELDS", "TAG_SIZE", "SIGNATURE_SIZE", "AUTH_SIG",
                                "AUTH_MAC", "PairKeys", "Envelope", "parse", "seal", "mac"]),
    ("agoramesh.bus.admission", ["Guard", "Opener"]),
    ("agoramesh.bus.e2e", ["E2EKeys", "PAIR_LABEL", "pair_key", "x25519_public_key"]),
    ("agoramesh.errors", ["WrongReply", "SignatureRequired", "RejectReason", "WIRE_ERRORS"]),
])
def test_envelope_v2_surface_is_exported(module: str, names: list[str]) -> None:
    # What another implementation, or a test vector, needs to build and check v2 envelopes.
    exported = importlib.import_module(module).__all__
    assert set(names) <= set(exported), sorted(set(names) - set(exported))


def test_envelope_v2_constants() -> None:
    from agoramesh.bus import envelope

    assert envelope.VERSION == 2
    assert envelope.FIELDS == ("v", "id", "type", "from", "to", "subject", "reply", "ts",
                               "exp", "cid", "auth", "body")
    assert envelope.TAG_SIZE == envelope.SIGNATURE_SIZE == 64
    assert (envelope.AUTH_SIG, envelope.AUTH_MAC) == ("sig", "mac")


def test_the_package_exports_what_users_build_with() -> None:
    """A user builds a mesh, agents and a client from the top-level package alone."""
    for name in ("Mesh", "AgentNode", "NodeConfig", "AgentHost", "Capability", "BusConfig",
                 "Identity", "Dispatcher", "Task", "TaskResult", "submit_task", "stream_task",
                 "cancel_task", "Bus", "AgoraError"):
        assert name in agoramesh.__all__ and getattr(agoramesh, name) is not None
    assert agoramesh.AgentNode.__module__ == "agoramesh.agent"
