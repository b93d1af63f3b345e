"""CommandBackend: any program, the task as JSON on stdin, the answer as JSON on stdout."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import pytest

from agoramesh.errors import BackendBadResponse, BackendError, BackendUnavailable
from agoramesh.nodes.backends.base import Backend, BackendConfig, collect
from agoramesh.nodes.backends.command import ChildProcess, CommandBackend
from agoramesh.nodes.backends.registry import create_backend
from agoramesh.nodes.task import Chunk, Completion, StreamItem, Task, Usage
from agoramesh.testing.processes import alive

pytestmark = pytest.mark.backends

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
    return Task(task_type="count_words", parameters={"mode": mode, **parameters},
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
