"""The agoramesh CLI as a user runs it: subprocesses, exit codes, one-line errors."""

from __future__ import annotations

import asyncio
import json
import stat
import time
from pathlib import Path

import pytest
from nats.aio.client import Client as NatsClient

from agoramesh.bus import Identity, seal
from agoramesh.bus.e2e import E2EKeys
from agoramesh.testing import UpProcess, alive, assert_stopped
from agoramesh.testing.cli import assert_one_line_error, cli

pytestmark = pytest.mark.e2e


def test_help_lists_commands() -> None:
    result = cli("--help")
    assert result.returncode == 0
    for command in ("up", "demo", "keys", "decode"):
        assert command in result.stdout


def test_unknown_command_is_a_usage_error() -> None:
    result = cli("frobnicate")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def test_keys_generate_json_and_file(tmp_path: Path) -> None:
    result = cli("keys", "generate", "--json")
    assert result.returncode == 0
    data = json.loads(result.stdout)
    assert Identity(data["seed"]).agent_id == data["agent_id"]

    seed_file = tmp_path / "agent.nk"
    result = cli("keys", "generate", "--out", str(seed_file), "--json")
    assert result.returncode == 0
    agent_id = json.loads(result.stdout)["agent_id"]
    assert stat.S_IMODE(seed_file.stat().st_mode) == 0o600
    assert Identity.load(seed_file).agent_id == agent_id
    assert cli("keys", "show", str(seed_file)).stdout.strip() == agent_id

    assert_one_line_error(cli("keys", "generate", "--out", str(seed_file)), "refusing to overwrite")
    seed_file.chmod(0o644)
    assert_one_line_error(cli("keys", "show", str(seed_file)), "chmod 600")


def test_decode_valid_tampered_and_garbage(tmp_path: Path) -> None:
    identity = Identity.generate()
    wire = seal(identity, type="task_request", subject="agora.cap.echo",
                body={"text": "hi", "blob": b"\x00\x01"})
    raw_file = tmp_path / "env.bin"
    raw_file.write_bytes(wire)
    result = cli("decode", str(raw_file), "--json")
    assert result.returncode == 0, result.stderr
    decoded = json.loads(result.stdout)
    assert decoded["from"] == identity.agent_id and decoded["tag_valid"] is True
    assert decoded["auth"] == "sig" and decoded["reply"] == ""
    assert decoded["body"] == {"text": "hi", "blob": "0001"}

    human = cli("decode", stdin=wire.hex().encode())  # hex text on stdin
    assert human.returncode == 0 and "signature: valid" in human.stdout
    assert "agora.cap.echo" in human.stdout

    tampered = bytearray(wire)
    tampered[-1] ^= 1
    raw_file.write_bytes(bytes(tampered))
    result = cli("decode", str(raw_file))
    assert "signature: INVALID" in result.stdout
    assert_one_line_error(result, "signature does not match")

    raw_file.write_bytes(wire)
    assert_one_line_error(cli("decode", str(raw_file), "--subject", "agora.cap.other"),
                          "made for 'agora.cap.echo'")
    raw_file.write_bytes(b"\x93\x01\x02\x03" + b"\x00" * 64)
    assert_one_line_error(cli("decode", str(raw_file)), "msgpack map")
    assert_one_line_error(cli("decode", str(tmp_path / "missing")), "cannot read")
    assert_one_line_error(cli("decode", stdin=b"abc"), "looks like hex but is not valid hex")


def test_decode_shows_an_encrypted_body_and_opens_it_with_key(tmp_path: Path) -> None:
    sender, recipient, other = Identity.generate(), Identity.generate(), Identity.generate()
    keys = {name: tmp_path / f"{name}.nk" for name in ("sender", "recipient", "other")}
    for name, identity in zip(keys, (sender, recipient, other), strict=True):
        identity.save(keys[name])
    box = E2EKeys(sender).seal_body
    wire = seal(sender, type="chat.message", subject=f"agora.agent.{recipient.agent_id}",
                body={"text": "for your eyes only"}, to=recipient.agent_id, box=box)
    raw_file = tmp_path / "env.bin"
    raw_file.write_bytes(wire)

    shut = cli("decode", str(raw_file))
    assert shut.returncode == 0, shut.stderr
    assert "encrypted: yes ($box, " in shut.stdout and "for your eyes only" not in shut.stdout
    as_json = json.loads(cli("decode", str(raw_file), "--json").stdout)
    assert as_json["encrypted"] is True and as_json["opened"] is False
    assert list(as_json["body"]) == ["$box"]

    for end in ("recipient", "sender"):  # a box opens for both of its ends
        result = cli("decode", str(raw_file), "--key", str(keys[end]), "--json")
        assert result.returncode == 0, result.stderr
        decoded = json.loads(result.stdout)
        assert decoded["body"] == {"text": "for your eyes only"} and decoded["opened"] is True
    human = cli("decode", str(raw_file), "--key", str(keys["recipient"]))
    assert "opened with --key" in human.stdout and "for your eyes only" in human.stdout


def test_decode_checks_a_mac_with_either_ends_key(tmp_path: Path) -> None:
    sender, recipient, other = Identity.generate(), Identity.generate(), Identity.generate()
    keys = {name: tmp_path / f"{name}.nk" for name in ("sender", "recipient", "other")}
    for name, identity in zip(keys, (sender, recipient, other), strict=True):
        identity.save(keys[name])
    inbox = f"_INBOX.{sender.agent_id}.reply"
    wire = seal(sender, type="task_response", subject=inbox, reply="",
                body={"status": "COMPLETED"}, to=recipient.agent_id,
                pair_key=E2EKeys(sender).pair_key)
    raw_file = tmp_path / "env.bin"
    raw_file.write_bytes(wire)

    unchecked = cli("decode", str(raw_file))  # nobody but the two ends can check a MAC
    assert unchecked.returncode == 0, unchecked.stderr
    assert "mac:       not checked" in unchecked.stdout and "reply:     (none)" in unchecked.stdout
    assert json.loads(cli("decode", str(raw_file), "--json").stdout)["tag_valid"] is None
    for end in ("recipient", "sender"):  # both ends hold the pair key
        result = cli("decode", str(raw_file), "--key", str(keys[end]), "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["tag_valid"] is True
    assert_one_line_error(cli("decode", str(raw_file), "--key", str(keys["other"])),
                          "neither the recipient")
    tampered = bytearray(wire)
    tampered[-1] ^= 1
    raw_file.write_bytes(bytes(tampered))
    result = cli("decode", str(raw_file), "--key", str(keys["recipient"]))
    assert "mac:       INVALID" in result.stdout
    assert_one_line_error(result, "MAC does not match")

    assert_one_line_error(cli("decode", str(raw_file), "--key", str(keys["other"])),
                          "neither the recipient")
    keys["other"].chmod(0o644)
    assert_one_line_error(cli("decode", str(raw_file), "--key", str(keys["other"])),
                          "chmod 600")

    # A box made with another key, signed by the sender: the signature holds, the box does not.
    forged = seal(sender, type="chat.message", subject="agora.agent.x", body={"text": "x"},
                  to=recipient.agent_id, box=E2EKeys(other).seal_body)
    raw_file.write_bytes(forged)
    result = cli("decode", str(raw_file), "--key", str(keys["recipient"]))
    assert "signature: valid" in result.stdout
    assert_one_line_error(result, "does not open with our key")


async def _json_request(url: str, subject: str, payload: bytes) -> object:
    client = NatsClient()
    await client.connect(url, connect_timeout=2, allow_reconnect=False)
    try:
        return json.loads((await client.request(subject, payload, timeout=3)).data)
    finally:
        await client.close()


def test_up_serves_until_sigint_and_leaves_nothing_behind(tmp_path: Path) -> None:
    up = UpProcess(tmp_path / "mesh")
    try:
        assert len(up.pids) == 3 and all(alive(pid) for pid in up.pids)
        reply = asyncio.run(_json_request(up.url, "agora.cap.echo", b'{"text": "hi"}'))
        assert isinstance(reply, dict)
        assert reply["status"] == "COMPLETED" and reply["result"] == {"echo": {"text": "hi"}}

        out, err = up.interrupt()
        assert up.process.returncode == 0, err
        assert "mesh stopped" in out
        assert_stopped(up.pids)
        assert not list((tmp_path / "mesh").glob("*/*.ports"))
    finally:
        up.reap()


def test_servers_die_with_a_sigkilled_node(tmp_path: Path) -> None:
    up = UpProcess(tmp_path / "mesh")
    try:
        up.process.kill()  # SIGKILL: no chance to stop its servers in order
        up.process.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in up.pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert_stopped(up.pids)  # the kernel sent them SIGTERM (PR_SET_PDEATHSIG)
    finally:
        up.reap()


