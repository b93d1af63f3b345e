"""OfflineBackend: every skill's exact output, its schemas, its bounds, and the sandbox."""

from __future__ import annotations

import asyncio
import gc
import sys
import tempfile
import textwrap
import uuid
import warnings
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from backend_support import kill_midway

from agoramesh.errors import InvalidInput, UnknownCapability
from agoramesh.nodes.backends.base import BackendConfig, ChatMessage
from agoramesh.nodes.backends.offline import (
    OFFLINE_CAPABILITIES,
    OfflineBackend,
    estimate_tokens,
)
from agoramesh.nodes.backends.registry import create_backend
from agoramesh.nodes.task import Chunk, Completion, StreamItem, Task
from agoramesh.testing import alive, wait_until

pytestmark = pytest.mark.backends

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="resource limits and /proc are Linux-specific")

SOLAR = ("Solar power is growing fast. Many countries now build solar farms. The weather was "
         "nice yesterday. Solar farms need land and solar panels need sun. My cat sleeps a lot.")


async def stream(capability: str, parameters: dict[str, Any],
                 backend: OfflineBackend | None = None) -> list[StreamItem]:
    backend = backend or OfflineBackend()
    return [item async for item in backend.execute(Task(capability=capability,
                                                        parameters=parameters))]


async def run(capability: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """The skill's output, after checking the stream's shape and both schemas."""
    jsonschema.validate(parameters, OFFLINE_CAPABILITIES[capability]["input_schema"])
    items = await stream(capability, parameters)
    assert all(isinstance(item, Chunk) for item in items[:-1]) and len(items) >= 2
    completion = items[-1]
    assert isinstance(completion, Completion)
    assert isinstance(completion.output, dict)
    jsonschema.validate(completion.output, OFFLINE_CAPABILITIES[capability]["output_schema"])
    return completion.output


def exists(path: Path) -> bool:
    return path.exists()


# --- the backend ---------------------------------------------------------------------------

def test_capabilities_are_valid_draft_2020_12_schemas() -> None:
    assert set(OFFLINE_CAPABILITIES) == {
        "echo", "math.evaluate", "text.summarize", "code.review.python", "code.run.python",
        "code.generate.python", "text.debate", "vote"}
    for capability in OFFLINE_CAPABILITIES.values():
        assert set(capability) == {"description", "input_schema", "output_schema"}
        assert capability["description"]
        for schema in (capability["input_schema"], capability["output_schema"]):
            jsonschema.Draft202012Validator.check_schema(schema)
            assert jsonschema.validators.validator_for(schema) is jsonschema.Draft202012Validator


def test_the_registry_builds_it() -> None:
    backend = create_backend("offline")
    assert isinstance(backend, OfflineBackend)
    assert backend.type == "offline" and backend.model == "offline"
    assert OfflineBackend(BackendConfig(model="offline-2")).model == "offline-2"


async def test_a_task_streams_progress_then_one_completion() -> None:
    items = await stream("math.evaluate", {"expression": "6 * 7"})
    assert items[:-1] == [Chunk("math.evaluate: started\n"), Chunk("math.evaluate: value = 42\n")]
    assert items[-1] == Completion(output={"value": 42}, usage=items[-1].usage, model="offline")


async def test_usage_is_a_deterministic_estimate_priced_from_the_config() -> None:
    backend = OfflineBackend(BackendConfig(input_price_per_1k=1.0, output_price_per_1k=2.0))
    completion = (await stream("echo", {"text": "a b c"}, backend))[-1]
    assert isinstance(completion, Completion)
    # input: one key + three words; output: the "echo" key around the same.
    assert (completion.usage.input_tokens, completion.usage.output_tokens) == (4, 5)
    assert completion.usage.cost_usd == pytest.approx(0.014)
    assert estimate_tokens({"a": [1, "two words", None], "b": True}) == 7


def test_estimating_tokens_never_recurses() -> None:
    deep: Any = "two words"
    for level in range(100_000):
        deep = [deep, 1] if level % 2 else {"k": deep}
    assert estimate_tokens(deep) == 2 + 50_000 + 50_000  # words, numbers, keys


async def test_an_unknown_capability_is_refused() -> None:
    with pytest.raises(UnknownCapability, match=r"no capability 'image\.draw'"):
        await stream("image.draw", {})


@pytest.mark.parametrize(("capability", "parameters"), [
    ("math.evaluate", {}),
    ("math.evaluate", {"expression": 42}),
    ("text.summarize", {"text": ["not", "text"]}),
    ("text.summarize", {"text": "Hi.", "max_sentences": 0}),
    ("text.summarize", {"text": "Hi.", "max_sentences": True}),
    ("code.review.python", {"code": None}),
    ("code.run.python", {"code": "pass", "timeout": 11}),
    ("code.run.python", {"code": "pass", "timeout": "2"}),
    ("code.run.python", {"code": "pass", "stdin": 3}),
    ("code.run.python", {"code": "print('\x00')"}),
    ("code.run.python", {"code": "#" * 100_001}),
    ("code.generate.python", {"spec": {"intent": "fibonacci"}}),
    ("text.debate", {"topic": "tabs", "position": "sideways"}),
    ("text.debate", {"topic": "tabs", "round": "1"}),
    ("text.debate", {"topic": "tabs", "history": "none"}),
    ("text.debate", {"topic": "tabs", "round": 1001}),
    ("vote", {"question": "which?", "options": ["a" * 1001]}),
    ("vote", {"question": "which?", "options": []}),
    ("vote", {"question": "which?", "options": ["a", 2]}),
    ("vote", {"question": "which?", "options": "ab"}),
])
async def test_wrong_parameters_are_invalid_input(capability: str,
                                                  parameters: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput):
        await stream(capability, parameters)


async def test_chat_streams_a_summary_of_the_last_user_message() -> None:
    messages: list[ChatMessage] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": SOLAR},
        {"role": "assistant", "content": "Noted."},
    ]
    items = [item async for item in OfflineBackend().chat(messages)]
    assert items[:-1] == [Chunk("offline:"), Chunk(" Many countries now build solar farms."),
                          Chunk(" Solar farms need land and solar panels need sun.")]
    completion = items[-1]
    assert isinstance(completion, Completion)
    assert completion.output == ("offline: Many countries now build solar farms. "
                                 "Solar farms need land and solar panels need sun.")
    assert completion.usage.input_tokens == len(SOLAR.split())
    assert completion.usage.output_tokens == 16
    empty = [item async for item in OfflineBackend().chat([])]
    assert isinstance(empty[-1], Completion) and empty[-1].output == "offline: (nothing to say)"


# --- echo, math.evaluate -------------------------------------------------------------------

async def test_echo_returns_the_parameters() -> None:
    parameters = {"text": "hello", "n": 3, "nested": {"list": [1, None]}}
    assert await run("echo", parameters) == {"echo": parameters}
    assert await run("echo", {}) == {"echo": {}}


@pytest.mark.parametrize(("expression", "value"), [
    ("1 + 2 * 3", 7),
    ("(1 + 2) * 3", 9),
    ("7 / 2", 3.5),
    ("7 // 2", 3),
    ("-7 % 3", 2),
    ("2 ** 10", 1024),
    ("2 ** -2", 0.25),
    ("-(3 - 5)", 2),
    ("+4", 4),
    ("1.5e3 + 0.5", 1500.5),
    ("abs(-4) + round(2.567, 2)", 6.57),
    ("round(7.5)", 8),
    ("min(4, 2, 8) + max(1, 9)", 11),
    ("max(3)", 3),
    ("sqrt(16) + log(e) + log(8, 2)", 8.0),
    ("round(pi, 4)", 3.1416),
    ("2 ** 63", 9.223372036854776e18),  # past 64-bit integers, msgpack needs a float
    ("2 ** 62", 4611686018427387904),
    ("2 ** 4000 // 2 ** 3990", 1024),
    ("(2 ** 4000) % 7", 2),
    ("10 ** 400 / 10 ** 399", 10.0),
    ("round(1e300)", 1e300),
])
async def test_math_evaluates_arithmetic(expression: str, value: float) -> None:
    output = await run("math.evaluate", {"expression": expression})
    assert output == {"value": value}
    assert type(output["value"]) is type(value)


@pytest.mark.parametrize(("expression", "message"), [
    ("9**9**9", "exceed 4096 bits"),
    ("2 ** 100000", "exceed 4096 bits"),
    ("10 ** 10 ** 10", "exceed 4096 bits"),
    ("(2 ** 4000) * (2 ** 4000)", "exceed 4096 bits"),
    ("*".join(["(10**300)"] * 20), "exceed 4096 bits"),
    ("3 ** 4000", "more than 4096 bits"),
    ("round(5, -100000)", "digits must be"),
    ("1e308 * 10", "not a finite number"),
    ("2.0 ** 99999", "too large"),
    ("sqrt(2 ** 4000)", r"sqrt\(\): int too large"),
    ("(-8) ** (1 / 3)", "complex"),
    ("2 ** 4000", "too large to return"),
    ("2 ** 1024 - 1", "too large to return"),
    ("2 ** 4095 + 2 ** 4095", "more than 4096 bits"),
])
async def test_math_bombs_are_refused_before_computing(expression: str, message: str) -> None:
    # Each message is a limit's, checked before the operation runs.
    with pytest.raises(InvalidInput, match=message):
        await run("math.evaluate", {"expression": expression})


@pytest.mark.parametrize(("expression", "message"), [
    ("__import__('os').system('true')", "is not allowed"),
    ("eval('1')", "is not allowed"),
    ("(1).real", "is not allowed"),
    ("'a' * 3", "is not allowed"),
    ("[1, 2]", "is not allowed"),
    ("x + 1", "unknown name 'x'"),
    ("True + 1", "is not allowed"),
    ("1j", "is not allowed"),
    ("lambda: 1", "is not allowed"),
    ("sqrt(x=4)", "is not allowed"),
    ("1 +", "not an arithmetic expression"),
    ("", "not an arithmetic expression"),
    ("1 / 0", "division by zero"),
    ("5 % 0", "division by zero"),
    ("sqrt(-1)", "math domain error"),
    ("log(0)", "math domain error"),
    ("abs(1, 2)", "takes 1 to 1 arguments"),
    ("min()", "takes 1 to 64 arguments"),
    ("1 < 2", "is not allowed"),
    ("(" * 300 + "1" + ")" * 300, "not an arithmetic expression"),
    ("1" + "+1" * 600, "longer than 1000"),
])
async def test_math_explains_what_it_refuses(expression: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        await stream("math.evaluate", {"expression": expression})


# --- text.summarize ------------------------------------------------------------------------

async def test_summarize_keeps_the_top_sentences_in_their_order() -> None:
    assert await run("text.summarize", {"text": SOLAR, "max_sentences": 2}) == {
        "summary": "Many countries now build solar farms. "
                   "Solar farms need land and solar panels need sun.",
        "sentences": ["Many countries now build solar farms.",
                      "Solar farms need land and solar panels need sun."],
    }
    default = await run("text.summarize", {"text": SOLAR})
    assert default["sentences"] == ["Solar power is growing fast.",
                                    "Many countries now build solar farms.",
                                    "Solar farms need land and solar panels need sun."]
    assert [await run("text.summarize", {"text": SOLAR}) for _ in range(3)] == [default] * 3


async def test_summarize_short_and_empty_text() -> None:
    assert await run("text.summarize", {"text": "One.  Two!\n\nThree?", "max_sentences": 5}) == {
        "summary": "One. Two! Three?", "sentences": ["One.", "Two!", "Three?"]}
    assert await run("text.summarize", {"text": ""}) == {"summary": "", "sentences": []}
    # Ties go to the earlier sentence; only stop words score nothing.
    assert (await run("text.summarize", {"text": "It is. Cats nap. Dogs run.",
                                         "max_sentences": 1}))["sentences"] == ["Cats nap."]


# --- code.review.python --------------------------------------------------------------------

TOO_LONG = "def long():\n    \"\"\"Doc.\"\"\"\n" + "    x = 1\n" * 55 + "    return x\n"
BRANCHY = ("def branchy(x):\n    \"\"\"Doc.\"\"\"\n"
           + "".join(f"    if x == {n}:\n        return {n}\n" for n in range(13))
           + "    return -1\n")


@pytest.mark.parametrize(("code", "line", "severity", "kind"), [
    ("try:\n    pass\nexcept:\n    pass\n", 3, "warning", "bare-except"),
    ('def f(items=[]):\n    """Doc."""\n    return items\n', 1, "warning", "mutable-default"),
    ('def f(*, seen=set()):\n    """Doc."""\n    return seen\n', 1, "warning", "mutable-default"),
    ("x = lambda d={}: d\n", 1, "warning", "mutable-default"),
    ("import os\nimport sys\nprint(sys.argv)\n", 1, "warning", "unused-import"),
    ("from os import path as p\n", 1, "warning", "unused-import"),
    ("eval('1 + 1')\n", 1, "error", "eval-exec"),
    ("x = 'pass'\nexec(x)\n", 2, "error", "eval-exec"),
    ("x = 1\nif x == None:\n    pass\n", 2, "warning", "compare-none"),
    ("x = 1\nif None != x:\n    pass\n", 2, "warning", "compare-none"),
    ("list = [1, 2]\n", 1, "warning", "builtin-shadowing"),
    ('def f(id):\n    """Doc."""\n    return id\n', 1, "warning", "builtin-shadowing"),
    ('def input():\n    """Doc."""\n', 1, "warning", "builtin-shadowing"),
    (TOO_LONG, 1, "warning", "too-long"),
    (BRANCHY, 1, "warning", "too-many-branches"),
    ("def f():\n    return 1\n", 1, "info", "missing-docstring"),
    ("class Shape:\n    \"\"\"Doc.\"\"\"\n    def area(self):\n        return 0\n", 3, "info",
     "missing-docstring"),
    ('def f():\n    """Doc."""\n    print(1)\n', 3, "info", "print-call"),
    ("from os.path import *\n", 1, "warning", "wildcard-import"),
    ("def f(:\n    pass\n", 1, "error", "syntax-error"),
])
async def test_review_finds_each_kind_of_issue(code: str, line: int, severity: str,
                                               kind: str) -> None:
    output = await run("code.review.python", {"code": code})
    found = [(issue["line"], issue["severity"]) for issue in output["issues"]
             if issue["code"] == kind]
    assert found == [(line, severity)], output


async def test_review_reports_a_syntax_error_as_an_issue() -> None:
    assert await run("code.review.python", {"code": "x = 1\ny = = 2\n"}) == {
        "issues": [{"line": 2, "severity": "error", "code": "syntax-error",
                    "message": "syntax error: invalid syntax"}],
        "score": 0, "summary": "1 issue(s): 1 error, 0 warning, 0 info"}
    output = await run("code.review.python", {"code": "x = '\x00'"})
    assert output["issues"][0]["code"] == "syntax-error" and output["score"] == 0


async def test_review_orders_issues_and_scores_them() -> None:
    code = textwrap.dedent('''\
        import json
        from os import *


        def load(path, cache={}):
            try:
                return eval(open(path).read())
            except:
                print("failed")
                return None
        ''')
    output = await run("code.review.python", {"code": code})
    assert [(i["line"], i["severity"], i["code"]) for i in output["issues"]] == [
        (1, "warning", "unused-import"),
        (2, "warning", "wildcard-import"),
        (5, "warning", "mutable-default"),
        (5, "info", "missing-docstring"),
        (7, "error", "eval-exec"),
        (8, "warning", "bare-except"),
        (9, "info", "print-call"),
    ]
    assert output["score"] == 100 - 25 - 4 * 8 - 2 * 2
    assert output["summary"] == "7 issue(s): 1 error, 4 warning, 2 info"
    assert await run("code.review.python", {"code": code}) == output


async def test_review_leaves_clean_idioms_alone() -> None:
    code = textwrap.dedent('''\
        """A module."""

        from __future__ import annotations

        import os as os
        from typing import Any, Optional

        __all__ = ("Any", "Shape")


        class Shape:
            """A shape."""

            def id(self) -> str:
                """Methods may reuse builtin names: they are attributes."""
                return "shape"

            def _private(self, value: Optional[int] = None) -> bool:
                return value is None


        def _helper():
            return os.sep


        if __name__ == "__main__":
            print(Shape().id())
        ''')
    assert await run("code.review.python", {"code": code}) == {
        "issues": [], "score": 100, "summary": "no issues found"}


# --- code.generate.python → code.review.python → code.run.python --------------------------

@pytest.mark.parametrize(("spec", "intent", "stdout"), [
    ("Write a function returning the first Fibonacci numbers", "fibonacci",
     "[0, 1, 1, 2, 3, 5, 8, 13, 21, 34]\n"),
    ("the first 12 fibonacci numbers", "fibonacci",
     "[0, 1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89]\n"),
    ("compute the factorial of a number", "factorial", "3628800\n"),
    ("factorial of 5", "factorial", "120\n"),
    ("list all prime numbers", "primes", "[2, 3, 5, 7, 11, 13, 17, 19, 23, 29]\n"),
    ("primes up to 50", "primes", "[2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47]\n"),
    ("reverse a string", "reverse_string", "hsemaroga\n"),
    ("Reverse a string such as \"hello world\"", "reverse_string", "dlrow olleh\n"),
    ("sum of a list", "sum_list", "15\n"),
    ("sum of a list like [3, 4, 10]", "sum_list", "17\n"),
    ("FizzBuzz", "fizzbuzz", "1\n2\nFizz\n4\nBuzz\nFizz\n7\n8\nFizz\nBuzz\n11\nFizz\n13\n14\n"
                             "FizzBuzz\n"),
    ("draw a unicorn", "stub", "draw a unicorn\n"),
    ('tricky """quotes""", \\backslashes\\ and \'single\' ones', "stub",
     'tricky """quotes""", \\backslashes\\ and \'single\' ones\n'),
])
async def test_generated_code_passes_review_and_runs(spec: str, intent: str, stdout: str) -> None:
    generated = await run("code.generate.python", {"spec": spec})
    assert generated["language"] == "python" and generated["intent"] == intent
    review = await run("code.review.python", {"code": generated["code"]})
    assert review == {"issues": [], "score": 100, "summary": "no issues found"}
    result = await run("code.run.python", {"code": generated["code"]})
    assert (result["stdout"], result["stderr"], result["exit_code"]) == (stdout, "", 0)
    assert await run("code.generate.python", {"spec": spec}) == generated


async def test_generated_code_is_a_documented_function() -> None:
    code = (await run("code.generate.python", {"spec": "factorial"}))["code"]
    assert code.startswith('"""factorial\n')
    assert "def factorial(number: int) -> int:\n    \"\"\"Return ``number``!" in code
    assert code.endswith('if __name__ == "__main__":\n    print(factorial(10))\n')


# --- code.run.python -----------------------------------------------------------------------

async def test_run_returns_output_and_reads_stdin() -> None:
    result = await run("code.run.python", {
        "code": "import sys\nprint(sys.stdin.read().upper())\nprint('note', file=sys.stderr)",
        "stdin": "héllo"})
    assert {k: v for k, v in result.items() if k != "duration_ms"} == {
        "stdout": "HÉLLO\n", "stderr": "note\n", "exit_code": 0, "timed_out": False}
    assert 0 < result["duration_ms"] < 5000


async def test_run_reports_a_failing_exit() -> None:
    result = await run("code.run.python", {"code": "print('before')\n1 / 0"})
    assert (result["stdout"], result["exit_code"], result["timed_out"]) == ("before\n", 1, False)
    assert result["stderr"].endswith("ZeroDivisionError: division by zero\n")
    assert (await run("code.run.python", {"code": "raise SystemExit(3)"}))["exit_code"] == 3


async def test_run_is_isolated_from_the_environment() -> None:
    code = "import os, sys\nprint(sorted(os.environ), sys.flags.isolated, sys.flags.no_site)"
    result = await run("code.run.python", {"code": code})
    assert result["stdout"].startswith("['") and result["stdout"].endswith("] 1 1\n")
    variables = result["stdout"].split("]")[0]
    assert "'PATH'" in variables and "HOME" not in variables and "VIRTUAL_ENV" not in variables


async def test_run_kills_an_infinite_loop_at_the_timeout() -> None:
    result = await run("code.run.python", {"code": "while True:\n    pass", "timeout": 1})
    assert result["timed_out"] is True and result["exit_code"] != 0
    assert result["duration_ms"] >= 1000


@linux_only
async def test_run_leaves_no_process_behind() -> None:
    code = textwrap.dedent("""\
        import os, time
        print(os.getpid(), flush=True)
        try:
            child = os.fork()
        except OSError:  # RLIMIT_NPROC refuses it unless we run as root
            child = -1
        if child == 0:
            time.sleep(60)
            os._exit(0)
        print(child, flush=True)
        time.sleep(60)
        """)
    result = await run("code.run.python", {"code": code, "timeout": 1})
    assert result["timed_out"] is True
    pids = [int(pid) for pid in result["stdout"].split() if int(pid) > 0]
    assert pids
    # killpg is asynchronous for processes we do not reap ourselves: wait, bounded.
    await wait_until(lambda: not any(alive(pid) for pid in pids), timeout=5)


@linux_only
async def test_run_kills_descendants_when_the_program_exits() -> None:
    code = textwrap.dedent("""\
        import os, time
        try:
            child = os.fork()
        except OSError:
            child = -1
        if child == 0:
            time.sleep(60)
            os._exit(0)
        print(child, flush=True)
        """)
    result = await run("code.run.python", {"code": code, "timeout": 5})
    # Not timed out: the run ended with the program, not waiting for its sleeping child.
    assert result["timed_out"] is False and result["exit_code"] == 0
    child = int(result["stdout"])
    if child != -1:
        await wait_until(lambda: not alive(child), timeout=5)


@linux_only
async def test_run_refuses_a_memory_bomb() -> None:
    result = await run("code.run.python", {"code": "data = bytearray(1 << 30)\nprint('got it')"})
    assert result["exit_code"] != 0 and result["stdout"] == ""
    assert "MemoryError" in result["stderr"]


@linux_only
async def test_run_limits_file_size() -> None:
    code = textwrap.dedent("""\
        import os
        try:
            with open("big", "wb") as file:
                for _ in range(64):
                    file.write(b"x" * (1 << 20))
        except OSError as exc:
            print("refused", exc.errno)
        print(os.path.getsize("big"))
        """)
    result = await run("code.run.python", {"code": code})
    refused, size = result["stdout"].splitlines()
    assert refused == "refused 27" and int(size) <= 1 << 20  # EFBIG
    assert result["exit_code"] == 0


async def test_run_truncates_long_output() -> None:
    result = await run("code.run.python", {"code": "print('x' * 200_000)"})
    assert result["stdout"] == "x" * 65536 + "\n[output truncated]"
    flood = await run("code.run.python", {"code": "while True:\n    print('y' * 1000)",
                                          "timeout": 5})
    assert flood["stdout"].endswith("[output truncated]") and flood["timed_out"] is False
    assert flood["exit_code"] != 0 and "File too large" in flood["stderr"]


async def test_run_removes_its_directory() -> None:
    code = textwrap.dedent("""\
        import os
        os.makedirs("locked/inner")
        open("locked/inner/file", "w").write("x")
        os.chmod("locked/inner", 0o500)
        os.chmod("locked", 0o500)
        print(os.getcwd())
        """)
    result = await run("code.run.python", {"code": code})
    workdir = Path(result["stdout"].strip())
    assert result["exit_code"] == 0 and workdir.name == "work"
    assert not exists(workdir) and not exists(workdir.parent)


def sandboxes(marker: str) -> list[int]:
    """The PIDs of processes running code that contains ``marker`` (a zombie has no cmdline)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:  # gone meanwhile
                continue
            if marker.encode() in cmdline:
                pids.append(int(entry.name))
    return pids


@linux_only
async def test_a_cancelled_run_leaves_no_open_file_process_or_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cancelled at any point of its start (even twice), a run cleans up before it ends."""
    runs = tmp_path / "runs"
    runs.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(runs))  # where run_python makes its directory
    marker = f"agoramesh-cancel-{uuid.uuid4().hex}"
    started: list[int] = []

    async def cancel(after: int, *, twice: bool = False, mid_run: bool = False) -> None:
        pid_file = tmp_path / f"pid-{after}-{twice}-{mid_run}"
        code = (f"# {marker}\nimport os, time\n"
                f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(30)")
        running = asyncio.ensure_future(stream("code.run.python", {
            "code": code, "stdin": "x" * 100_000, "timeout": 10}))
        for _ in range(after):
            await asyncio.sleep(0)
        if mid_run:
            await wait_until(pid_file.exists, timeout=10)
        running.cancel()
        if twice:  # a second cancel lands while the first is being handled
            await asyncio.sleep(0)
            running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(running, timeout=15)
        # Once the cancel has gone through: no child (not even a zombie), no directory.
        assert sandboxes(marker) == []
        if pid_file.exists() and (written := pid_file.read_text()):
            pid = int(written)
            started.append(pid)
            assert not exists(Path(f"/proc/{pid}")), f"child {pid} was left behind"
        assert list(runs.iterdir()) == []

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for after in range(20):
            await cancel(after)
            await cancel(after, twice=True)
        await cancel(0, mid_run=True)
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []
    assert started  # some cancels did land after the child started


# --- text.debate and vote ------------------------------------------------------------------

async def test_debate_argues_deterministically() -> None:
    assert await run("text.debate", {"topic": "Remote work"}) == {
        "argument": "Rejecting Remote work has a price too: the status quo keeps every cost we "
                    "already pay.",
        "stance": "for", "confidence": 0.6}
    against = {"topic": "Remote work", "position": "against"}
    assert await run("text.debate", against) == {
        "argument": "Remote work solves a narrow problem while creating wider ones that nobody "
                    "has budgeted for.",
        "stance": "against", "confidence": 0.7}
    assert await run("text.debate", against) == await run("text.debate", against)


async def test_debate_answers_the_last_argument() -> None:
    history = [{"argument": "Remote work saves commuting time, and time is what workers value "
                            "most: commuting time."}]
    output = await run("text.debate", {"topic": "Remote work", "position": "against",
                                       "round": 2, "history": history})
    assert output["argument"].endswith(
        "The other side leans on 'time', but that does not settle the matter.")
    plain = await run("text.debate", {"topic": "Remote work", "position": "against", "round": 2,
                                      "history": ["Time, time and time."]})
    assert plain["argument"] == output["argument"]


async def test_vote_prefers_the_option_closest_to_the_question() -> None:
    output = await run("vote", {"question": "Which database should store the events?",
                                "options": ["Postgres database", "a message queue",
                                            "flat files"], "voter": "n1"})
    assert output == {"choice": "Postgres database",
                      "reason": "it shares the most words with the question (database)"}


async def test_vote_breaks_ties_by_a_stable_hash_of_the_voter() -> None:
    choices = [(await run("vote", {"question": "Pick one", "options": ["red", "green", "blue"],
                                   "voter": voter}))["choice"] for voter in ("n1", "n2", "n3")]
    assert choices == ["red", "green", "red"]
    again = await run("vote", {"question": "Pick one", "options": ["red", "green", "blue"],
                               "voter": "n2"})
    assert again["choice"] == "green" and "stable hash" in again["reason"]


# A node in miniature running one code.run.python task, in its own process.
SANDBOX_NODE = """
import asyncio, sys
from agoramesh.nodes.backends.offline import OfflineBackend
from agoramesh.nodes.task import Task

async def main():
    task = Task(capability="code.run.python", parameters={"code": sys.argv[1], "timeout": 10})
    async for _ in OfflineBackend().execute(task):
        pass

asyncio.run(main())
"""


def test_the_sandboxed_program_dies_with_its_node(tmp_path: Path) -> None:
    """SIGKILL of the node kills the sandbox child too (a parent-death signal): no orphan
    runs on, unwatched, until its own limits stop it."""
    pid_file = tmp_path / "pid"
    code = (f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
            f"time.sleep(30)\n")

    def child_pid() -> int | None:
        text = pid_file.read_text() if pid_file.exists() else ""
        return int(text) if text else None

    kill_midway([sys.executable, "-c", SANDBOX_NODE, code], {}, child_pid,
                tmp_path / "node.log")
