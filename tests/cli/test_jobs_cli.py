"""Durable jobs through the CLI, as a user runs it: submit, kill the client, read later;
a job that waits for an agent; a whole mesh stopped and started from its data dir."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from agoramesh.testing import NodeProcess, UpProcess, assert_stopped
from agoramesh.testing.cli import assert_one_line_error, cli
from agoramesh.testing.processes import AGORAMESH, LineReader

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


def result_of(url: str, task_id: str, wait: float = 30) -> dict[str, object]:
    done = cli("jobs", "result", task_id, "--wait", str(wait), "--server", url, "--json",
               timeout=wait + 30)
    assert done.returncode == 0, done.stderr
    record: dict[str, object] = json.loads(done.stdout)
    return record


@pytest.mark.slow
def test_a_durable_task_outlives_its_killed_client(tmp_path: Path) -> None:
    up = UpProcess(tmp_path / "mesh")
    try:
        client = subprocess.Popen(
            [*AGORAMESH, "submit", "code.run.python",
             json.dumps({"code": "import time\ntime.sleep(1.5)\nprint(6 * 7)"}),
             "--durable", "--wait", "--task-id", "outlives-1", "--server", up.url],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert client.stderr is not None
            line = LineReader(client.stderr).readline(time.monotonic() + 30)
            assert "job outlives-1 stored" in line, line
            client.send_signal(signal.SIGKILL)  # the job is in the mesh: nobody waits
        finally:
            if client.poll() is None:
                client.kill()
            client.communicate(timeout=10)
        record = result_of(up.url, "outlives-1")
        assert record["status"] == "COMPLETED"
        assert record["result"]["stdout"].strip() == "42"  # type: ignore[index]
        # Submitted again, the same id is the same job: nothing runs again.
        again = cli("submit", "code.run.python", '{"code": "print(7)"}', "--durable",
                    "--task-id", "outlives-1", "--server", up.url, "--json")
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["duplicate"] is True
        assert result_of(up.url, "outlives-1") == record
        listed = cli("jobs", "--server", up.url, "--json")
        assert listed.returncode == 0, listed.stderr
        assert "outlives-1" in [r["task_id"] for r in json.loads(listed.stdout)["recent"]]
        up.interrupt()
        assert up.process.returncode == 0, up.stderr
        assert_stopped(up.pids)
    finally:
        up.reap()


@pytest.mark.slow
def test_a_job_waits_for_an_agent_and_survives_a_mesh_restart(tmp_path: Path) -> None:
    data = tmp_path / "mesh"
    up = UpProcess(data, "--no-agents")
    try:
        submitted = [cli("submit", "echo", json.dumps({"text": f"kept {n}"}), "--durable",
                         "--task-id", f"kept-{n}", "--server", up.url) for n in range(3)]
        assert [s.stdout.strip() for s in submitted] == ["kept-0", "kept-1", "kept-2"], \
            [s.stderr for s in submitted]
        missing = cli("jobs", "result", "kept-0", "--server", up.url)
        assert_one_line_error(missing, "no result for kept-0 yet")
        listed = json.loads(cli("jobs", "--server", up.url, "--json").stdout)
        assert listed["queued"] + listed["running"] == 3
        up.interrupt()  # the whole mesh stops with its jobs queued
        assert up.process.returncode == 0, up.stderr
        assert_stopped(up.pids)
    finally:
        up.reap()
    up = UpProcess(data, "--no-agents")  # from the same directory
    try:
        listed = json.loads(cli("jobs", "--server", up.url, "--json").stdout)
        assert listed["queued"] + listed["running"] == 3
        # An agent that can do them joins as a leaf: they run.
        node = NodeProcess(tmp_path / "home", "--name", "latecomer", "--capability", "echo",
                           "--leaf", up.leaf_addresses[0])
        try:
            for n in range(3):
                record = result_of(up.url, f"kept-{n}")
                assert record["result"] == {"echo": {"text": f"kept {n}"}}
                assert record["agent_id"] == node.id
        finally:
            node.stop()
            node.reap()
        up.interrupt()
        assert up.process.returncode == 0, up.stderr
        assert_stopped(up.pids)
    finally:
        up.reap()


@pytest.mark.slow
def test_durable_errors_are_one_line(tmp_path: Path) -> None:
    up = UpProcess(tmp_path / "mesh", "--no-agents", "--no-jetstream")
    try:
        assert_one_line_error(cli("submit", "echo", "{}", "--durable", "--server", up.url),
                              "no JetStream answers")
        assert_one_line_error(cli("submit", "echo", "{}", "--durable", "--task-id", "a.b",
                                  "--server", up.url), "durable task id")
        assert_one_line_error(cli("submit", "echo", "{}", "--wait", "--server", up.url),
                              "add --durable")
        assert_one_line_error(cli("jobs", "--server", up.url), "no JetStream answers")
        up.interrupt()
        assert up.process.returncode == 0, up.stderr
    finally:
        up.reap()


def test_a_lone_first_seed_says_why_it_takes_no_durable_job_yet(tmp_path: Path) -> None:
    """`agoramesh node` alone is a clustered JetStream seed with no leader until a second
    seed joins: a durable submit says so in its one line, instead of only 'unavailable'."""
    node = NodeProcess(tmp_path / "lone", "--name", "lone")
    try:
        assert_one_line_error(
            cli("submit", "echo", "{}", "--durable", "--timeout", "2", "--server",
                node.ready["client"]),
            "a lone first seed has none until a second joins")
    finally:
        node.reap()
    # and the node said so when it started
    assert "note: this first seed's JetStream is clustered and has no leader until a " \
           "second seed joins" in node.stderr, node.stderr
