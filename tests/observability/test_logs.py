"""Structured logs: the human and JSON shapes, bound agent fields, and the CLI flags."""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from agoramesh.cli.main import build_parser
from agoramesh.config import Environment, LogFormat, LogLevel
from agoramesh.errors import ConfigError
from agoramesh.observability.logs import (
    BoundLogger,
    HumanFormatter,
    JsonFormatter,
    agent_logger,
    configure_logging,
)

AGENT_ID = "U" + "A" * 55
TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
DEAD_SERVER = "nats://127.0.0.1:1"


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """configure_logging changes process-wide state; put it back for the next test."""
    ours, root = logging.getLogger("agoramesh"), logging.getLogger()
    noisy = {name: logging.getLogger(name).level for name in ("asyncio", "nats", "httpx")}
    saved = (list(ours.handlers), ours.level, ours.propagate, list(root.handlers))
    yield
    ours.handlers[:], ours.level, ours.propagate, root.handlers[:] = saved
    for name, level in noisy.items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture
def out() -> io.StringIO:
    return io.StringIO()


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def records(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in lines(stream)]


def assert_recent(ts: object) -> None:
    assert isinstance(ts, str) and re.fullmatch(TS, ts), ts
    when = datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs(datetime.now(UTC) - when) < timedelta(seconds=30)


# --- the two formats -----------------------------------------------------------------


def test_human_line_shape(out: io.StringIO) -> None:
    configure_logging("info", "human", stream=out)
    log = agent_logger(logging.getLogger("agoramesh.node"), "coder", AGENT_ID)
    log.warning("task %s failed", "t-1", extra={"capability": "code.review", "note": "two words"})
    logging.getLogger("agoramesh.bus").info("plain")
    first, second = lines(out)
    assert re.fullmatch(TS + r" WARNING agoramesh\.node coder: task t-1 failed "
                        r'capability=code\.review note="two words"', first), first
    assert re.fullmatch(TS + r" INFO agoramesh\.bus: plain", second), second
    assert_recent(first.split()[0])


def test_human_shows_agent_id_only_without_a_name(out: io.StringIO) -> None:
    configure_logging("info", "human", stream=out)
    logging.getLogger("agoramesh.bus").info("hello", extra={"agent_id": AGENT_ID})
    assert lines(out)[0].endswith(f"agoramesh.bus: hello agent_id={AGENT_ID}")


def test_json_line_shape(out: io.StringIO) -> None:
    configure_logging("debug", "json", stream=out)
    log = agent_logger(logging.getLogger("agoramesh.auction"), "coder", AGENT_ID)
    log.debug("bid from %s", "UXYZ", extra={"auction_id": "a-1", "capability": "echo",
                                            "bids": 3, "price": 0.5, "tags": ["x"], "ok": None})
    (line,) = lines(out)
    doc = json.loads(line)
    assert list(doc)[:4] == ["ts", "level", "logger", "message"]
    assert_recent(doc["ts"])
    assert doc == {"ts": doc["ts"], "level": "debug", "logger": "agoramesh.auction",
                   "message": "bid from UXYZ", "agent": "coder", "agent_id": AGENT_ID,
                   "auction_id": "a-1", "capability": "echo", "bids": 3, "price": 0.5,
                   "tags": ["x"], "ok": None}


def test_json_keeps_core_keys_when_an_extra_collides(out: io.StringIO) -> None:
    configure_logging("info", "json", stream=out)
    logging.getLogger("agoramesh.x").info("m", extra={"level": "mine", "ts": 1})
    doc = records(out)[0]
    assert doc["level"] == "info" and doc["level_"] == "mine" and doc["ts_"] == 1


def test_timestamp_is_utc_with_milliseconds() -> None:
    record = logging.LogRecord("agoramesh.x", logging.INFO, __file__, 1, "m", None, None)
    record.created = datetime(2026, 11, 21, 10, 0, 0, 123456, tzinfo=UTC).timestamp()
    record.msecs = 123.456
    assert HumanFormatter().format(record) == "2026-11-21T10:00:00.123Z INFO agoramesh.x: m"
    assert json.loads(JsonFormatter().format(record))["ts"] == "2026-11-21T10:00:00.123Z"


# --- the agent adapter ---------------------------------------------------------------


def test_agent_fields_on_every_line_and_call_extras_add_to_them(out: io.StringIO) -> None:
    configure_logging("info", "json", stream=out)
    log = agent_logger(logging.getLogger("agoramesh.node"), "coder", AGENT_ID)
    task_log = log.bind(task_id="t-9")
    log.info("one")
    task_log.info("two", extra={"capability": "echo"})
    log.info("three", extra={"agent": "override"})
    one, two, three = records(out)
    assert (one["agent"], one["agent_id"]) == ("coder", AGENT_ID) and "task_id" not in one
    assert (two["agent"], two["task_id"], two["capability"]) == ("coder", "t-9", "echo")
    assert three["agent"] == "override" and three["agent_id"] == AGENT_ID
    assert isinstance(task_log, BoundLogger) and task_log.fields == {
        "agent": "coder", "agent_id": AGENT_ID, "task_id": "t-9"}
    assert agent_logger(task_log, "runner", "U2").fields["agent"] == "runner"


# --- what must never break a log call -------------------------------------------------


class Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    __str__ = __repr__


@pytest.mark.parametrize("fmt", list(LogFormat))
def test_unserializable_extras_are_written_as_repr(
        fmt: LogFormat, out: io.StringIO, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", fmt, stream=out)
    circular: list[object] = []
    circular.append(circular)
    extras = {"obj": object(), "a_set": {1}, "nan": math.nan, "tuple_keys": {(1, 2): 3},
              "circular": circular, "bytes": b"\x00", "broken": Unprintable()}
    logging.getLogger("agoramesh.x").warning("still logged", extra=extras)
    logging.getLogger("agoramesh.x").warning("bad %d format", "not a number")
    assert capsys.readouterr().err == ""  # no "--- Logging error ---" from the handler
    assert len(lines(out)) == 2
    if fmt is LogFormat.JSON:
        doc, bad_format = records(out)
        assert doc["message"] == "still logged"
        assert str(doc["obj"]).startswith("<object object at")
        assert (doc["a_set"], doc["nan"], doc["bytes"]) == ("{1}", "nan", "b'\\x00'")
        assert doc["tuple_keys"] == "{(1, 2): 3}" and doc["circular"] == "[[...]]"
        assert doc["broken"] == "<unrepresentable Unprintable>"
        assert "bad %d format" in str(bad_format["message"])
    else:
        first, bad_format_line = lines(out)
        assert 'still logged obj="<object object at' in first
        assert first.endswith(' broken="<unrepresentable Unprintable>"')
        assert bad_format_line.endswith("bad %d format % ('not a number',)")


def test_exceptions_are_rendered(out: io.StringIO) -> None:
    configure_logging("info", "json", stream=out)
    log = logging.getLogger("agoramesh.x")
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        log.exception("division failed", extra={"task_id": "t-1"})
    doc = records(out)[0]
    assert doc["level"] == "error" and doc["task_id"] == "t-1"
    assert isinstance(doc["exc"], str)
    assert doc["exc"].startswith("Traceback") and "ZeroDivisionError" in doc["exc"]

    human = io.StringIO()
    configure_logging("info", "human", stream=human)
    try:
        raise ValueError("boom")
    except ValueError:
        log.error("went wrong", exc_info=True)
    first, *rest = lines(human)
    assert first.endswith("ERROR agoramesh.x: went wrong")
    assert rest[0].startswith("Traceback") and rest[-1] == "ValueError: boom"


# --- configuration --------------------------------------------------------------------


def test_configuring_again_replaces_the_handler(out: io.StringIO) -> None:
    configure_logging("info", "human", stream=out)
    configure_logging("info", "json", stream=out)
    configure_logging("info", "json", stream=out)
    logging.getLogger("agoramesh.x").info("once")
    assert len(lines(out)) == 1 and records(out)[0]["message"] == "once"
    ours = logging.getLogger("agoramesh")
    assert len(ours.handlers) == 1 and ours.propagate is False


def test_levels(out: io.StringIO) -> None:
    configure_logging(LogLevel.INFO, stream=out)
    log = logging.getLogger("agoramesh.x")
    log.debug("hidden")
    log.info("shown")
    configure_logging(logging.ERROR, stream=out)
    log.warning("hidden too")
    log.error("shown too")
    assert [line.split(": ", 1)[1] for line in lines(out)] == ["shown", "shown too"]


@pytest.mark.parametrize(("level", "fmt"), [("loud", "human"), (-1, "human"), (True, "human"),
                                            ("info", "xml")])
def test_bad_settings_are_config_errors(level: str | int, fmt: str) -> None:
    with pytest.raises(ConfigError, match=r"log (level|format)"):
        configure_logging(level, fmt)


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=60, check=False, env={**os.environ, **env})


def test_third_party_warnings_share_the_format_when_root_is_unconfigured() -> None:
    result = run_python("""
        import logging
        from agoramesh.observability.logs import configure_logging
        configure_logging("debug", "json")
        logging.getLogger("nats.aio.client").warning("from nats")
        logging.getLogger("nats.aio.client").info("nats chatter")
        logging.getLogger("agoramesh.x").debug("ours")
    """)
    assert result.returncode == 0, result.stderr
    docs = [json.loads(line) for line in result.stderr.splitlines()]
    assert [(d["logger"], d["message"]) for d in docs] == [
        ("nats.aio.client", "from nats"), ("agoramesh.x", "ours")]


# --- the CLI ---------------------------------------------------------------------------


def agoramesh(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agoramesh", *args], capture_output=True,
                          text=True, timeout=60, check=False, env={**os.environ, **env})


def test_parser_defaults_from_the_environment_and_flags_anywhere() -> None:
    parse = build_parser().parse_args
    assert (parse(["agents"]).log_format, parse(["agents"]).log_level) == ("human", "warning")
    env = Environment.read({"AGORAMESH_LOG_FORMAT": "JSON", "AGORAMESH_LOG_LEVEL": "info"})
    args = build_parser(env).parse_args(["agents"])
    assert (args.log_format, args.log_level) == ("json", "info")
    assert parse(["-v", "agents"]).log_level == "debug"
    assert parse(["agents", "-v"]).log_level == "debug"
    assert parse(["--log-level", "error", "-v", "agents"]).log_level == "debug"
    assert parse(["-v", "--log-level", "ERROR", "agents"]).log_level == "error"
    args = parse(["--log-level", "info", "keys", "generate", "--log-format", "json"])
    assert (args.log_format, args.log_level) == ("json", "info")


def test_environment_reads_log_settings() -> None:
    assert Environment.read({"AGORAMESH_LOG_FORMAT": "", "AGORAMESH_LOG_LEVEL": ""}) == \
        Environment()
    env = Environment.read({"AGORAMESH_LOG_FORMAT": "json", "AGORAMESH_LOG_LEVEL": "Debug"})
    assert (env.log_format, env.log_level) == (LogFormat.JSON, LogLevel.DEBUG)
    with pytest.raises(ConfigError, match="AGORAMESH_LOG_LEVEL must be one of debug"):
        Environment.read({"AGORAMESH_LOG_LEVEL": "verbose"})


@pytest.mark.e2e
def test_cli_json_logs_on_stderr_then_the_one_line_error() -> None:
    result = agoramesh("--log-format", "json", "--log-level", "debug",
                       "agents", "--server", DEAD_SERVER, "--json")
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    *log_lines, last = result.stderr.splitlines()
    assert last.startswith("agoramesh: error: cannot connect")
    docs = [json.loads(line) for line in log_lines]
    assert docs and all(d["logger"] == "agoramesh.bus" for d in docs)
    assert {d["level"] for d in docs} <= {"debug", "info"}
    assert_recent(docs[0]["ts"])


@pytest.mark.e2e
def test_cli_log_format_from_the_environment_keeps_stdout_clean() -> None:
    result = agoramesh("keys", "generate", "--json", "-v", AGORAMESH_LOG_FORMAT="json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["agent_id"].startswith("U")
    assert all(json.loads(line) for line in result.stderr.splitlines())


@pytest.mark.e2e
@pytest.mark.parametrize(("args", "env", "message"), [
    (["--log-format", "xml", "keys", "generate"], {}, "argument --log-format: invalid choice"),
    (["keys", "generate", "--log-level", "loud"], {}, "argument --log-level: invalid choice"),
    (["keys", "generate"], {"AGORAMESH_LOG_LEVEL": "loud"},
     "agoramesh: error: AGORAMESH_LOG_LEVEL must be one of debug, info, warning, error"),
])
def test_cli_bad_log_settings_are_usage_errors(args: list[str], env: dict[str, str],
                                               message: str) -> None:
    result = agoramesh(*args, **env)
    assert result.returncode == 2
    assert result.stdout == ""
    assert message in result.stderr.splitlines()[-1], result.stderr
