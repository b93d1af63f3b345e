"""CommandBackend: any program, the task as JSON on stdin, the answer as JSON on stdout."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any

import pytest

from agoramesh.errors import BackendBadResponse, BackendError, BackendUnavailable
from agoramesh.nodes.backends.base import Backend, BackendConfig, collect
from agoramesh.nodes.backends.command import ChildProcess, CommandBackend
from agoramesh.nodes.backends.registry import create_backend
from agoramesh.nodes.task import Chunk, Completion, StreamItem, Task, Usage
from agoramesh.testing.processes import alive
from agoramesh.testing.waiting import wait_until

pytestmark = pytest.mark.backends
linux_only = pytest.mark.skipif(sys.platform != "linux", reason="parent-death signals are Linux's")

# The mode is the task's `mode` parameter (or the last chat message).
PROGRAM = '''
import json, os, sys, time

request = json.load(sys.stdin)
with open(os.environ["FAKE_RECORD"], "w") as fh:
    json.dump({"request": request, "argv": sys.argv[1:], "pid": os.getpid()}, fh)
if "messages" in request:
    mode = request["messages"][-1]["content"]
else:
    mode = request["parameters"].get("mode", "echo")

def say(value):
    print(json.dumps(value), flush=True)

if mode == "echo":
    say({"task_type": request["task_type"], "words": len(request["parameters"]["text"].split())})
elif mode == "usage":
    say({"chunk": "count"})
    say({"chunk": "ing..."})
    say({"output": {"words": 3}, "usage": {"input_tokens": 7, "output_tokens": 2,
                                           "cost_usd": 0.25}})
elif mode == "tokens":
    say({"output": "done", "usage": {"input_tokens": 1000, "output_tokens": 500}})
elif mode == "pretty":
    print(json.dumps({"answer": [1, 2, 3], "note": "pretty"}, indent=2))
elif mode == "bad":
    print("Traceback? no: just text")
elif mode == "bad-usage":
    say({"output": 1, "usage": {"input_tokens": "many"}})
elif mode == "silent":
    pass
elif mode == "exit":
    say({"chunk": "partial"})
    print("loading model", file=sys.stderr)
    print("out of memory", file=sys.stderr)
    sys.exit(2)
elif mode == "hang":
    time.sleep(60)
elif mode == "stall":
    say({"chunk": "first"})
    time.sleep(60)
elif mode == "chat":
    say({"text": f"{len(request['messages'])} messages"})
elif mode == "chat-string":
    say("plain reply")
'''


@pytest.fixture
def program(tmp_path: Path) -> Path:
    path = tmp_path / "wordcount"
    path.write_text(f"#!{sys.executable}\n{PROGRAM}")
    path.chmod(0o755)
    return path


def command(tmp_path: Path, program: Path, **settings: Any) -> Backend:
    env = (("FAKE_RECORD", str(tmp_path / "record.json")),)
    return create_backend("command", BackendConfig(command=(str(program), "--flag"), env=env,
                                                   **settings))


def recorded(tmp_path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((tmp_path / "record.json").read_text())
    return data


def task(mode: str, **parameters: Any) -> Task:
    return Task(capability="count_words", parameters={"mode": mode, **parameters},
                task_id="t-1")


async def items(stream: Any) -> list[StreamItem]:
    return [item async for item in stream]


async def test_the_task_goes_in_as_json_and_the_output_comes_back(
        tmp_path: Path, program: Path) -> None:
    backend = command(tmp_path, program, model="wc-1")
    assert isinstance(backend, CommandBackend)
    got = await items(backend.execute(task("echo", text="one two three"), {"trace": "abc"}))
    assert got == [Completion(output={"task_type": "count_words", "words": 3}, model="wc-1")]
    run = recorded(tmp_path)
    assert run["argv"] == ["--flag"]
    assert run["request"] == {**task("echo", text="one two three").as_dict(),
                              "context": {"trace": "abc"}}
    assert not alive(run["pid"])


async def test_chunk_lines_stream_and_the_usage_form_is_unwrapped(
        tmp_path: Path, program: Path) -> None:
    got = await items(command(tmp_path, program).execute(task("usage")))
    assert got == [Chunk("count"), Chunk("ing..."), Completion(
        output={"words": 3}, usage=Usage(input_tokens=7, output_tokens=2, cost_usd=0.25))]


async def test_usage_without_a_cost_is_priced_from_the_config(
        tmp_path: Path, program: Path) -> None:
    backend = command(tmp_path, program, input_price_per_1k=0.5, output_price_per_1k=2.0)
    completion = await collect(backend.execute(task("tokens")))
    assert completion.output == "done"
    assert completion.usage == Usage(input_tokens=1000, output_tokens=500, cost_usd=1.5)


async def test_a_multi_line_json_answer_is_read_whole(tmp_path: Path, program: Path) -> None:
    completion = await collect(command(tmp_path, program).execute(task("pretty")))
    assert completion.output == {"answer": [1, 2, 3], "note": "pretty"}


async def test_chat_sends_the_messages_and_returns_text(tmp_path: Path, program: Path) -> None:
    backend = command(tmp_path, program)
    messages: list[Any] = [{"role": "system", "content": "be terse"},
                           {"role": "user", "content": "chat"}]
    completion = await collect(backend.chat(messages))
    assert completion.output == "2 messages"
    assert recorded(tmp_path)["request"] == {"messages": messages}
    reply = await collect(backend.chat([{"role": "user", "content": "chat-string"}]))
    assert reply.output == "plain reply"


@pytest.mark.parametrize(("mode", "message"), [
    ("bad", r"wordcount printed invalid JSON .*'Traceback\? no: just text'"),
    ("bad-usage", "wordcount reported invalid usage"),
    ("silent", "wordcount printed no JSON answer on stdout"),
])
async def test_answers_that_do_not_parse_are_bad_responses(
        tmp_path: Path, program: Path, mode: str, message: str) -> None:
    with pytest.raises(BackendBadResponse, match=message):
        await collect(command(tmp_path, program).execute(task(mode)))


async def test_a_failed_exit_quotes_stderr(tmp_path: Path, program: Path) -> None:
    stream = command(tmp_path, program).execute(task("exit"))
    received: list[StreamItem] = []
    with pytest.raises(BackendError) as caught:
        async for item in stream:
            received.append(item)
    assert received == [Chunk("partial")]
    assert str(caught.value) == "wordcount exited with code 2: loading model\nout of memory"


async def test_a_hanging_command_times_out_and_is_killed(tmp_path: Path, program: Path) -> None:
    with pytest.raises(BackendUnavailable, match=r"^wordcount timed out after 0\.5s$"):
        await collect(command(tmp_path, program, timeout=0.5).execute(task("hang")))
    with pytest.raises(ProcessLookupError):
        os.kill(recorded(tmp_path)["pid"], 0)


async def test_stopping_early_kills_the_command(tmp_path: Path, program: Path) -> None:
    stream = command(tmp_path, program).execute(task("stall"))
    assert isinstance(stream, AsyncGenerator)
    assert await anext(stream) == Chunk("first")
    await stream.aclose()
    with pytest.raises(ProcessLookupError):
        os.kill(recorded(tmp_path)["pid"], 0)


async def test_an_empty_command_is_a_backend_error() -> None:
    with pytest.raises(BackendError, match="needs a program to run"):
        await collect(CommandBackend().execute(task("echo")))


async def test_a_missing_program_is_named(tmp_path: Path) -> None:
    backend = create_backend("command", BackendConfig(command=(str(tmp_path / "nope"),)))
    with pytest.raises(BackendError, match=r"^/.*/nope not found; check the backend's command$"):
        await collect(backend.execute(task("echo")))


async def test_a_program_that_is_not_executable_is_named(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text("print('{}')\n")
    backend = create_backend("command", BackendConfig(command=(str(script),)))
    with pytest.raises(BackendError, match=r"script\.py is not executable"):
        await collect(backend.execute(task("echo")))


async def test_child_process_used_directly(tmp_path: Path) -> None:
    config = BackendConfig(env=(("GREETING", "hello"),), workdir=tmp_path)
    code = "import os; print(os.environ['GREETING']); print(); print(os.getcwd())"
    async with ChildProcess([sys.executable, "-c", code], config) as child:
        lines = [line async for line in child]
        await child.finish()
    assert lines == ["hello", str(tmp_path)]
    assert child.pid is not None and not alive(child.pid)


BIG = 4 * 1024 * 1024  # far beyond a pipe's buffer

# The program a node runs in the node tests: it writes its pid to FAKE_PID, and
# FAKE_MARKER only if it ever gets to the end of its work.
WORKER = """
import json, os, sys, time

def note(path, text):
    with open(path + ".tmp", "w") as fh:
        fh.write(text)
    os.replace(path + ".tmp", path)

if os.environ["FAKE_MODE"] == "working":
    request = sys.stdin.read()  # the whole request, then a long job
    note(os.environ["FAKE_PID"], str(os.getpid()))
    time.sleep(30)
else:  # "writing": running, while the node is still writing its stdin
    parent = os.getppid()
    note(os.environ["FAKE_PID"], str(os.getpid()))
    deadline = time.monotonic() + 10
    while os.getppid() == parent and time.monotonic() < deadline:
        time.sleep(0.01)
    request = sys.stdin.read()  # whatever had arrived when the node died
note(os.environ["FAKE_MARKER"], str(len(request)))
print(json.dumps("done"))
"""


@linux_only
@pytest.mark.parametrize("mode", ["working", "writing"])
def test_the_program_dies_with_its_node(tmp_path: Path, kill_node: Callable[..., None],
                                        mode: str) -> None:
    program = tmp_path / "worker"
    program.write_text(f"#!{sys.executable}\n{WORKER}")
    program.chmod(0o755)
    pid_file, marker = tmp_path / "pid", tmp_path / "marker"
    env = {"FAKE_MODE": mode, "FAKE_PID": str(pid_file), "FAKE_MARKER": str(marker)}

    def child_pid() -> int | None:
        return int(pid_file.read_text()) if pid_file.exists() else None

    kill_node("command", program, env, child_pid, size=BIG)
    assert not marker.exists()  # neither finished its job nor ran on a truncated request


# Stages the race parent_death_signal guards against: the parent dies after the
# fork, before the child asks for the signal, so no signal will ever come.
INTERMEDIATE = """
import os, signal, subprocess, sys, time
from agoramesh.bus.server import parent_death_signal

pid_file, started = sys.argv[1], sys.argv[2]
request = parent_death_signal(signal.SIGKILL)
parent = os.getpid()

def late_request():
    fd = os.open(pid_file + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    os.rename(pid_file + ".tmp", pid_file)
    deadline = time.monotonic() + 10
    while os.getppid() == parent and time.monotonic() < deadline:
        time.sleep(0.01)
    request()

program = "import sys, time; open(sys.argv[1], 'w').close(); time.sleep(30)"
subprocess.Popen([sys.executable, "-c", program, started], preexec_fn=late_request)
time.sleep(30)
"""


@linux_only
def test_a_child_whose_parent_died_before_exec_does_not_run(tmp_path: Path) -> None:
    pid_file, started = tmp_path / "pid", tmp_path / "started"
    intermediate = subprocess.Popen(
        [sys.executable, "-c", INTERMEDIATE, str(pid_file), str(started)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    child: int | None = None
    try:
        deadline = time.monotonic() + 30
        while not pid_file.exists():
            assert intermediate.poll() is None, "the intermediate process exited first"
            assert time.monotonic() < deadline, "the child never got between fork and exec"
            time.sleep(0.02)
        child = int(pid_file.read_text())
        intermediate.kill()
        intermediate.wait(timeout=10)
        deadline = time.monotonic() + 10
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not alive(child), "the orphan went on to exec its program"
        assert not started.exists()
    finally:
        if intermediate.poll() is None:
            intermediate.kill()
            intermediate.wait(timeout=10)
        if child is not None and alive(child):
            os.kill(child, signal.SIGKILL)


async def test_a_large_stdin_reaches_the_program_whole() -> None:
    code = "import sys, time; time.sleep(0.2); print(len(sys.stdin.buffer.read()))"
    async with ChildProcess([sys.executable, "-c", code], BackendConfig(),
                            stdin=b"x" * BIG) as child:
        lines = [line async for line in child]
        await child.finish()
    assert lines == [str(BIG)]


@pytest.mark.parametrize("code", [0, 3])
async def test_a_program_may_exit_without_reading_its_stdin(code: int) -> None:
    program = f"import sys; print('ok'); sys.exit({code})"
    async with ChildProcess([sys.executable, "-c", program], BackendConfig(), name="quick",
                            stdin=b"x" * BIG) as child:
        lines = [line async for line in child]
        if code:  # its exit status is the error, not the broken pipe
            with pytest.raises(BackendError, match=r"^quick exited with code 3$"):
                await child.finish()
        else:
            await child.finish()
    assert lines == ["ok"]


async def test_a_program_that_never_reads_its_stdin_times_out() -> None:
    child = ChildProcess([sys.executable, "-c", "import time; time.sleep(60)"],
                         BackendConfig(timeout=0.5), name="sleeper", stdin=b"x" * BIG)
    try:
        with pytest.raises(BackendUnavailable, match=r"^sleeper timed out after 0\.5s$"):
            async with child:
                pytest.fail("started before its stdin was written")
        assert child.pid is not None and not alive(child.pid)
    finally:
        if child.pid is not None and alive(child.pid):
            os.kill(child.pid, signal.SIGKILL)


async def test_cancelling_while_stdin_is_written_kills_the_program(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    code = ("import os, sys, time\n"
            "with open(sys.argv[1], 'w') as fh: fh.write(str(os.getpid()))\n"
            "time.sleep(60)")
    child = ChildProcess([sys.executable, "-c", code, str(pid_file)], BackendConfig(),
                         stdin=b"x" * BIG)

    async def start() -> None:
        async with child:
            pytest.fail("started before its stdin was written")

    task = asyncio.create_task(start())
    try:
        # Spawned (and past asyncio's own setup of the pipes), now writing its stdin.
        await wait_until(lambda: child.pid is not None and pid_file.exists()
                         and pid_file.read_text() != "", timeout=10)
        assert not task.done()
        assert int(pid_file.read_text()) == child.pid
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert child.pid is not None and not alive(child.pid)
    finally:
        task.cancel()
        if child.pid is not None and alive(child.pid):
            os.kill(child.pid, signal.SIGKILL)
