"""``agoramesh collaborate`` as a user runs it against ``agoramesh up``: every mode, bad input."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from agoramesh.testing.cli import assert_one_line_error, cli

pytestmark = pytest.mark.e2e


def collaborate(*args: str, server: str) -> subprocess.CompletedProcess[str]:
    return cli("collaborate", *args, "--server", server, "--discover-timeout", "0.3")


def test_debate_shows_progress_then_the_consensus(mesh_url: str) -> None:
    result = collaborate("--mode", "debate", "--topic", "remote work", "--agents", "pro,con",
                         "--rounds", "2", server=mesh_url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "debate on 'remote work', 2 round(s): pro (for), con (against)"
    assert [line.split(" (")[0] for line in lines[1:5]] == [
        "round 1  pro", "round 1  con", "round 2  pro", "round 2  con"]
    assert sum(line.startswith("vote  ") for line in lines) == 2
    assert re.fullmatch(r"consensus: (for|against) \(\d for, \d against; decided by "
                        r"(majority|confidence|order)\)", lines[-2])
    position = lines[-2].split()[1]
    assert lines[-1].startswith(f"{position} carries the debate on 'remote work'")


def test_voting_parallel_and_map_reduce_as_json(mesh_url: str) -> None:
    result = collaborate("--mode", "voting", "--topic", "Which parser: rust or python?",
                         "--option", "rust parser", "--option", "python parser", "--json",
                         server=mesh_url)
    assert result.returncode == 0, result.stderr
    voting = json.loads(result.stdout)
    assert sorted(vote["agent"] for vote in voting["votes"]) == ["con", "pro"]
    assert sum(voting["tally"].values()) == 2 and voting["winner"] in voting["options"]

    result = collaborate("--mode", "parallel", "--topic", "hi", "--capability", "echo",
                         "--parameters", '{"text": "${topic}"}', "--json", server=mesh_url)
    assert result.returncode == 0, result.stderr
    parallel = json.loads(result.stdout)
    assert [(r["agent"], r["output"]) for r in parallel["results"]] == [
        ("analyst", {"echo": {"text": "hi"}})]

    result = collaborate("--mode", "map-reduce", "--item", "Solar panels make power. Roofs "
                         "hold panels.", "--item", "Wind turbines make power. Wind is free.",
                         "--requirements", '{"reduce_parameters": {"max_sentences": 1}}',
                         "--json", server=mesh_url)
    assert result.returncode == 0, result.stderr
    mapped = json.loads(result.stdout)
    assert len(mapped["map"]) == 2 and len(mapped["output"]["sentences"]) == 1


def test_sequential_and_a_failed_stage(mesh_url: str) -> None:
    stages = [{"capability": "math.evaluate", "parameters": {"expression": "${topic}"}},
              {"capability": "echo", "parameters": {"answer": "${previous.output.value}"}}]
    result = collaborate("--mode", "sequential", "--topic", "6 * 7", "--requirements",
                         json.dumps({"stages": stages}), server=mesh_url)
    assert result.returncode == 0, result.stderr
    assert "stage 1 (1)  math.evaluate on analyst: COMPLETED" in result.stdout
    assert '"answer": 42' in result.stdout

    result = collaborate("--mode", "sequential", "--topic", "1 / 0", "--requirements",
                         json.dumps({"stages": stages}), server=mesh_url)
    assert_one_line_error(result, r"stage 1 \(1\) failed: InvalidInput: division by zero")
    assert "FAILED" in result.stdout


@pytest.mark.parametrize(("args", "pattern"), [
    (["--mode", "brainstorm", "--topic", "x"], "unknown mode 'brainstorm'"),
    (["--mode", "voting", "--topic", "x", "--requirements", "{bad"],
     "--requirements is not valid JSON"),
    (["--mode", "voting", "--topic", "x", "--option", "only"], "'options' must be a list"),
])
def test_bad_input_fails_on_one_line_before_connecting(args: list[str], pattern: str) -> None:
    assert_one_line_error(collaborate(*args, server="nats://127.0.0.1:1"), pattern)


def test_unknown_agent_is_one_line(mesh_url: str) -> None:
    result = collaborate("--mode", "debate", "--topic", "x", "--agents", "pro,ghost",
                         server=mesh_url)
    assert_one_line_error(result, "no known agent matches 'ghost'")
