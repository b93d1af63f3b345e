"""``agoramesh trust`` and ``agoramesh up --secure`` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agoramesh.bus.credentials import parse_creds
from agoramesh.security import jwt
from agoramesh.testing import NodeProcess, UpProcess, assert_stopped
from agoramesh.testing.cli import assert_one_line_error, cli

pytestmark = pytest.mark.e2e


@pytest.mark.slow
def test_trust_init_admit_creds_list_revoke(tmp_path: Path) -> None:
    trust = str(tmp_path / "trust")
    created = cli("trust", "init", "--dir", trust, "--json")
    assert created.returncode == 0, created.stderr
    account = json.loads(created.stdout)["account"]
    assert_one_line_error(cli("trust", "init", "--dir", trust), "already exists")

    key = tmp_path / "agent.nk"
    agent_id = json.loads(cli("keys", "generate", "--out", str(key), "--json").stdout)["agent_id"]
    admitted = cli("trust", "admit", agent_id, "--capability", "echo", "--capability",
                   "text.summarize", "--expires", "12h", "--dir", trust, "--json")
    assert admitted.returncode == 0, admitted.stderr
    record = json.loads(admitted.stdout)
    claims = jwt.decode(Path(record["jwt_file"]).read_text().strip(), issuer=account)
    assert claims["sub"] == agent_id and claims["exp"] - claims["iat"] == 12 * 3600
    assert "agora.cap.text.summarize" in claims["nats"]["sub"]["allow"]

    creds = cli("trust", "creds", "ops", "--role", "observer", "--dir", trust, "--json")
    assert creds.returncode == 0, creds.stderr
    creds_file = Path(json.loads(creds.stdout)["creds_file"])
    assert creds_file.stat().st_mode & 0o077 == 0
    token, _ = parse_creds(creds_file.read_text())
    assert jwt.decode(token)["nats"]["sub"]["allow"] == [">"]
    assert jwt.decode(token)["nats"]["pub"]["deny"] == [">"]  # reads, never speaks

    listed = json.loads(cli("trust", "list", "--dir", trust, "--json").stdout)
    assert {m["role"] for m in listed["members"]} == {"agent", "observer"}
    assert cli("trust", "revoke", agent_id, "--dir", trust).returncode == 0
    listed = json.loads(cli("trust", "list", "--dir", trust, "--json").stdout)
    assert agent_id in listed["revoked"]
    assert agent_id not in {m["agent_id"] for m in listed["members"]}


@pytest.mark.slow
def test_trust_errors_are_one_line(tmp_path: Path) -> None:
    trust = str(tmp_path / "trust")
    assert_one_line_error(cli("trust", "list", "--dir", trust), "no trust store")
    assert cli("trust", "init", "--dir", trust).returncode == 0
    assert_one_line_error(cli("trust", "admit", "UNOTANAGENT", "--capability", "echo",
                              "--dir", trust), "not an agent id")
    agent_id = json.loads(cli("keys", "generate", "--json").stdout)["agent_id"]
    assert_one_line_error(cli("trust", "admit", agent_id, "--dir", trust),
                          "at least one --capability")
    assert_one_line_error(cli("trust", "admit", agent_id, "--capability", "bad cap",
                              "--dir", trust), "invalid capability")
    bad_duration = cli("trust", "admit", agent_id, "--capability", "echo", "--expires", "soon",
                       "--dir", trust)
    assert bad_duration.returncode == 2 and "not a duration" in bad_duration.stderr


@pytest.mark.slow
def test_up_secure_admits_only_members(tmp_path: Path) -> None:
    trust = tmp_path / "trust"
    up = UpProcess(tmp_path / "mesh", "--secure", "--trust", str(trust))
    try:
        creds = trust / "client.creds"
        assert creds.exists()
        listed = cli("agents", "--server", up.url, "--creds", str(creds), "--json")
        assert listed.returncode == 0, listed.stderr
        names = {agent["name"] for agent in json.loads(listed.stdout)}
        assert names == {"coder", "runner", "analyst", "pro", "con"}
        submitted = cli("submit", "echo", '{"text": "secure"}', "--server", up.url,
                        "--creds", str(creds), "--json")
        assert submitted.returncode == 0, submitted.stderr
        assert json.loads(submitted.stdout)["status"] == "COMPLETED"
        # No credentials, or someone else's: refused, one line, non-zero.
        assert_one_line_error(cli("agents", "--server", up.url), "[Aa]uthorization")
        foreign = tmp_path / "foreign"
        assert cli("trust", "init", "--dir", str(foreign)).returncode == 0
        assert cli("trust", "creds", "x", "--dir", str(foreign)).returncode == 0
        assert_one_line_error(cli("agents", "--server", up.url, "--creds",
                                  str(foreign / "x.creds")), "[Aa]uthorization")
        members = json.loads(cli("trust", "list", "--dir", str(trust), "--json").stdout)
        assert len([m for m in members["members"] if m["role"] == "agent"]) == 5
        # A node joins as a leaf: its server links with link.creds, the agent admits itself.
        joiner = NodeProcess(tmp_path / "home", "--name", "joiner", "--capability", "echo",
                             "--leaf", up.leaf_addresses[0], "--trust", str(trust))
        try:
            listed = cli("agents", "--server", joiner.ready["client"], "--creds", str(creds),
                         "--json")
            assert "joiner" in {agent["name"] for agent in json.loads(listed.stdout)}
            assert joiner.ready["id"] in {m["agent_id"] for m in json.loads(
                cli("trust", "list", "--dir", str(trust), "--json").stdout)["members"]}
            assert joiner.stop() == 0
        finally:
            joiner.reap()
        # A JWT issued to another key is refused before anything starts.
        other = json.loads(cli("keys", "generate", "--json").stdout)["agent_id"]
        assert cli("trust", "admit", other, "--capability", "echo", "--dir", str(trust),
                   "--out", str(tmp_path / "other.jwt")).returncode == 0
        assert_one_line_error(cli("node", "--name", "thief", "--capability", "echo", "--leaf",
                                  up.leaf_addresses[0], "--trust", str(trust), "--jwt",
                                  str(tmp_path / "other.jwt"), "--key-file",
                                  str(tmp_path / "thief.nk")), "was issued to")
        up.interrupt()
        assert up.process.returncode == 0, up.stderr
        assert "open mesh" not in up.stderr
        assert_stopped(up.pids)
    finally:
        up.reap()


def test_an_open_mesh_says_so_loudly(tmp_path: Path) -> None:
    up = UpProcess(tmp_path / "mesh", "--no-agents", "--seeds", "1")
    try:
        _, stderr = up.interrupt()
        assert "WARNING: open mesh" in stderr
        assert up.process.returncode == 0
    finally:
        up.reap()


def test_up_secure_over_tls(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    assert cli("certs", "--dir", str(certs)).returncode == 0
    trust = tmp_path / "trust"
    up = UpProcess(tmp_path / "mesh", "--secure", "--trust", str(trust), "--tls", str(certs),
                   "--seeds", "2")
    try:
        assert up.url.startswith("tls://")
        creds = str(trust / "client.creds")
        listed = cli("agents", "--server", up.url, "--tls", str(certs), "--creds", creds,
                     "--json")
        assert listed.returncode == 0, listed.stderr
        assert len(json.loads(listed.stdout)) == 5
        done = cli("submit", "text.summarize", '{"text": "One. Two. Three."}', "--server",
                   up.url, "--tls", str(certs), "--creds", creds, "--json")
        assert done.returncode == 0 and json.loads(done.stdout)["status"] == "COMPLETED"
        # Each door shut on its own: no CA, or no credentials.
        assert_one_line_error(cli("agents", "--server", up.url, "--creds", creds),
                              "SSL|certificate|TLS")
        assert_one_line_error(cli("agents", "--server", up.url, "--tls", str(certs)),
                              "[Aa]uthorization")
        up.interrupt()
        assert up.process.returncode == 0, up.stderr
        assert_stopped(up.pids)
    finally:
        up.reap()
