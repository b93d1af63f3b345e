"""``--discover mdns`` as a user runs it: nodes and ``up`` form one mesh on loopback with no
address given; another mesh's name, or another operator, stays out.

Every test names its own mesh (``--mesh``), so runs on one machine at the same time do
not meet.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from agoramesh.testing import NodeProcess, UpProcess, assert_stopped
from agoramesh.testing.cli import assert_one_line_error, cli

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

LAN = ("--discover", "mdns", "--mdns-interface", "127.0.0.1")


def _mesh() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


def _agents(url: str, expected: set[str], timeout: float = 15.0) -> set[str]:
    """The agent names ``agoramesh agents`` lists at ``url`` once ``expected`` are all there
    (or whatever it lists when ``timeout`` runs out)."""
    deadline = time.monotonic() + timeout
    while True:
        listed = cli("agents", "--server", url, "--json")
        names = {agent["name"] for agent in json.loads(listed.stdout or "[]")}
        if expected <= names or time.monotonic() > deadline:
            return names
        time.sleep(0.5)


def test_nodes_and_up_form_one_mesh_and_another_mesh_stays_out(tmp_path: Path) -> None:
    mesh = _mesh()
    started: list[NodeProcess | UpProcess] = []
    try:
        first = NodeProcess(tmp_path / "a", "--name", "alpha", *LAN, "--mesh", mesh)
        started.append(first)
        assert first.ready["mesh"] == mesh and first.ready["discovered"] == []
        second = NodeProcess(tmp_path / "b", "--name", "beta", *LAN, "--mesh", mesh)
        started.append(second)
        assert second.ready["discovered"] == ["alpha"]
        up = UpProcess(tmp_path / "up", *LAN, "--mesh", mesh, "--seeds", "2")
        started.append(up)
        outsider = NodeProcess(tmp_path / "x", "--name", "outsider", *LAN, "--mesh", _mesh())
        started.append(outsider)
        assert outsider.ready["discovered"] == []

        members = {"alpha", "beta", "coder", "runner", "analyst", "pro", "con"}
        for url in (first.ready["client"], second.ready["client"], up.url):
            listed = _agents(url, members)
            assert members <= listed, f"{url} lists {sorted(listed)}"
            assert "outsider" not in listed
        assert _agents(outsider.ready["client"], {"outsider"}) == {"outsider"}
        assert "mDNS): joined seeds" in up.interrupt()[0] or up.process.returncode == 0
        for node in (outsider, second, first):
            assert node.stop() == 0, node.stderr
        assert_stopped([pid for process in started for pid in process.servers()])
    finally:
        for process in started:
            process.reap()


def test_a_secured_node_ignores_a_seed_of_another_operator(tmp_path: Path) -> None:
    mesh = _mesh()
    trusted, foreign = tmp_path / "trusted", tmp_path / "foreign"
    for store in (trusted, foreign):
        assert cli("trust", "init", "--dir", str(store)).returncode == 0
    started: list[NodeProcess] = []
    try:
        seed = NodeProcess(tmp_path / "s", "--name", "seed", "--trust", str(trusted),
                           *LAN, "--mesh", mesh)
        started.append(seed)
        stranger = NodeProcess(tmp_path / "f", "--name", "stranger", "--trust", str(foreign),
                               *LAN, "--mesh", mesh)
        started.append(stranger)
        assert stranger.ready["discovered"] == []  # heard of, skipped: another operator
        member = NodeProcess(tmp_path / "m", "--name", "member", "--trust", str(trusted),
                             *LAN, "--mesh", mesh)
        started.append(member)
        assert member.ready["discovered"] == ["seed"]
        for node in reversed(started):
            assert node.stop() == 0, node.stderr
    finally:
        for node in started:
            node.reap()


def test_a_leaf_that_finds_no_seed_fails_with_one_line(tmp_path: Path) -> None:
    mesh = _mesh()
    result = cli("node", "--name", "lonely", "--role", "leaf", *LAN, "--mesh", mesh,
                 "--discover-timeout", "0.5", "--key-file", str(tmp_path / "lonely.nk"))
    assert_one_line_error(result, f"nothing heard within 0.5 s from a seed of mesh '{mesh}' "
                                  f"\\(an open mesh\\) announcing _agoramesh._tcp.local. on "
                                  f"127.0.0.1($| \\(skipped: )")


@pytest.mark.parametrize(("flags", "message"), [
    (("--discover", "mdns", "--bootstrap", "127.0.0.1:4248"), "drop --bootstrap"),
    (("--mesh", "m"), "--mesh and --mdns-interface go with --discover mdns"),
    (("--role", "leaf"), "a leaf needs its hubs"),
    (("--role", "seed", "--leaf", "127.0.0.1:7422"), "--role seed does not take --leaf"),
    (("--discover", "mdns", "--mdns-interface", "lo"), "IPv4 address"),
])
def test_discovery_flags_that_do_not_fit_are_one_line_errors(
        tmp_path: Path, flags: tuple[str, ...], message: str) -> None:
    """Refused before anything is created or started (no key file written)."""
    key = tmp_path / "n.nk"
    assert_one_line_error(cli("node", "--name", "n", *flags, "--key-file", str(key)), message)
    assert not key.exists()
    assert_one_line_error(cli("up", "--mesh", "m"), "--mesh and --mdns-interface go with")
