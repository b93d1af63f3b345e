"""``agoramesh watch`` as a user runs it: against ``agoramesh up``, piped, and in a terminal."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest
from nats.aio.client import Client as NatsClient

from agoramesh.testing import UpProcess
from agoramesh.testing.up import AGORAMESH

pytestmark = pytest.mark.e2e

DEMO = ("coder", "runner", "analyst", "pro", "con")
COLUMNS = 120


def watch(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AGORAMESH, "watch", *args], capture_output=True, text=True,
                          timeout=timeout, check=False,
                          env={**os.environ, "COLUMNS": str(COLUMNS), "LINES": "40"})


async def watch_with_traffic(url: str, *args: str) -> tuple[str, list[dict[str, object]]]:
    """Run ``agoramesh watch *args`` while tasks flow: debates auctioned by a node (what
    ``nats req agora.task.text.debate`` does) and direct echoes, for as long as it runs."""
    process = await asyncio.create_subprocess_exec(
        *AGORAMESH, "watch", "--server", url, *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "COLUMNS": str(COLUMNS)})
    client = NatsClient()
    await client.connect(url, connect_timeout=2, allow_reconnect=False)
    answers = []
    requests = [("agora.task.text.debate", {"topic": "tabs or spaces", "position": "for"}),
                ("agora.cap.echo", {"text": "hello mesh"}),
                ("agora.task.math.evaluate", {"expression": "6*7"})]
    try:
        async with asyncio.timeout(30):
            while process.returncode is None:  # some of it after watch has subscribed
                for subject, body in requests:
                    reply = await client.request(subject, json.dumps(body).encode(), timeout=5)
                    answers.append(json.loads(reply.data))
                await asyncio.sleep(0.2)
            out, err = await process.communicate()
    finally:
        await client.close()
        if process.returncode is None:
            process.kill()
            await process.communicate()
    assert process.returncode == 0, err.decode()
    assert err == b""
    assert answers and all(answer["status"] == "COMPLETED" for answer in answers)
    return out.decode(), answers


async def test_once_prints_one_plain_frame_with_every_agent(up_mesh: UpProcess) -> None:
    async with asyncio.timeout(20):  # --duration bounds it (plus start-up)
        out, _ = await watch_with_traffic(up_mesh.url, "--once", "--duration", "3")
    assert "\x1b" not in out
    print(out)  # the frame, for the record (-s shows it)
    lines = out.rstrip("\n").split("\n")
    assert lines[0].startswith(f"agoramesh watch · {up_mesh.url} · 5 agents · auctions/s ")
    assert all(len(line) <= COLUMNS for line in lines)
    rows = {line.split()[0]: line for line in lines[3:8]}
    assert set(rows) == set(DEMO)
    assert "text.summarize, math.evaluate, echo" in rows["analyst"]
    assert all("/8 " in row for row in rows.values())
    assert any(line.startswith("rejected   ") for line in lines)
    recent = lines[next(i for i, line in enumerate(lines) if line.startswith("RECENT")) + 1:]
    assert any(" task " in line and "echo" in line and "completed" in line
               and line.rstrip().endswith("analyst") for line in recent)
    assert any(" auction " in line and "text.debate" in line and "awarded" in line
               for line in recent)


async def test_json_snapshot_shows_the_traffic_it_saw(up_mesh: UpProcess) -> None:
    out, _ = await watch_with_traffic(up_mesh.url, "--json", "--duration", "3")
    snapshot = json.loads(out)
    assert snapshot["server"] == up_mesh.url
    agents = {agent["name"]: agent for agent in snapshot["agents"]}
    assert set(agents) == set(DEMO)
    assert all(agent["presence"] == "live" and agent["status"]["capacity"] == 8
               for agent in agents.values())
    assert "vote" in agents["pro"]["capabilities"]
    assert agents["analyst"]["status"]["tasks_completed"] >= 1
    assert snapshot["rates"]["tasks_per_s"] > 0 and snapshot["rates"]["auctions_per_s"] > 0
    # Telemetry: what the agents did while watch listened, with names resolved.
    tasks = [e for e in snapshot["recent"] if e["kind"] == "task"]
    auctions = [e for e in snapshot["recent"] if e["kind"] == "auction"]
    assert {(e["capability"], e["outcome"]) for e in tasks} <= {
        ("text.debate", "completed"), ("echo", "completed"), ("math.evaluate", "completed")}
    assert {e["agent_name"] for e in tasks if e["capability"] == "echo"} == {"analyst"}
    assert {e["capability"] for e in auctions} == {"text.debate", "math.evaluate"}
    assert all(e["outcome"] == "awarded" and e["agent_name"] in DEMO for e in auctions)
    assert {e["winner_name"] for e in auctions if e["capability"] == "math.evaluate"} == {
        "analyst"}
    assert snapshot["totals"]["auctions"]["awarded"] >= len(auctions)
    assert snapshot["rejections"] == {}


def test_live_mode_without_a_terminal_stops_after_its_duration(up_mesh: UpProcess) -> None:
    done = watch("--server", up_mesh.url, "--interval", "0.3", "--duration", "1.5")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith("\x1b[?25l\x1b[2J\x1b[H")  # cursor hidden, screen cleared
    assert out.endswith("\x1b[?25h\n")  # and the cursor given back
    assert out.count("\x1b[H") >= 3  # redrawn in place
    assert all(name in out for name in DEMO)


def test_unreachable_mesh_is_a_one_line_error() -> None:
    done = watch("--once", "--server", "nats://127.0.0.1:1")
    assert done.returncode == 1, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("agoramesh: error: cannot connect to "
                                                   "nats://127.0.0.1:1"), done.stderr
    assert done.stdout == ""


def test_bad_options_are_one_line_errors() -> None:
    done = watch("--once", "--interval", "0")
    assert done.returncode == 1
    assert done.stderr.strip() == ("agoramesh: error: --interval and --duration must be "
                                   "positive")


# -- a real terminal ---------------------------------------------------------------------

@pytest.fixture
def tmux() -> Iterator[Callable[..., str]]:
    """``tmux(*args)`` on a private tmux server, killed afterwards."""
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed: the live terminal test needs it")
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed: the live terminal test runs watch under it")
    label = f"agoramesh-watch-{os.getpid()}"
    env = {key: value for key, value in os.environ.items() if key not in ("TMUX", "TMUX_PANE")}
    env["TERM"] = "xterm-256color"

    def run(*args: str) -> str:
        return subprocess.run(["tmux", "-L", label, *args], capture_output=True, text=True,
                              timeout=10, check=True, env=env).stdout

    try:
        yield run
    finally:
        subprocess.run(["tmux", "-L", label, "kill-server"], capture_output=True,
                       timeout=10, check=False, env=env)


def wait_for(check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.1)


def test_live_mode_in_a_terminal_redraws_and_ctrl_c_restores_the_cursor(
        up_mesh: UpProcess, tmux: Callable[..., str]) -> None:
    command = shlex.join([*AGORAMESH, "watch", "--server", up_mesh.url, "--interval", "0.3"])
    # bash reports the exit status once watch has gone; the pane then stays for capture.
    tmux("new-session", "-d", "-x", "120", "-y", "40", "-s", "watch",
         f"bash -c {shlex.quote(command + '; echo watch-exited-with=$?; sleep 60')}")

    def screen() -> str:
        return tmux("capture-pane", "-p", "-t", "watch")

    wait_for(lambda: all(name in screen() for name in DEMO) and "RECENT" in screen(), 20)
    frame = screen()
    lines = frame.rstrip("\n").split("\n")
    assert lines[0].startswith(f"agoramesh watch · {up_mesh.url} · 5 agents")
    assert len(lines) <= 40 and all(len(line) <= 120 for line in lines)
    assert tmux("display", "-p", "-t", "watch", "#{cursor_flag}").strip() == "0"  # hidden
    first_clock = lines[0].split()[-1]
    wait_for(lambda: screen().split("\n")[0].split()[-1] != first_clock, 5)  # it redraws

    tmux("send-keys", "-t", "watch", "C-c")
    wait_for(lambda: "watch-exited-with=" in screen(), 10)
    assert "watch-exited-with=0" in screen()
    assert "Traceback" not in screen() and "interrupted" not in screen()
    assert tmux("display", "-p", "-t", "watch", "#{cursor_flag}").strip() == "1"  # restored
