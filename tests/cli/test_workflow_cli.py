"""``agoramesh workflow run|check`` as a user runs it, against ``agoramesh up``'s offline agents."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from agoramesh.testing.cli import assert_one_line_error, cli

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).parents[2] / "examples" / "workflows" / "generate_review_run.yaml"
FAST = ("--discover-timeout", "0.3")


def test_example_runs_with_progress(mesh_url: str) -> None:
    result = cli("workflow", "run", str(EXAMPLE), "--server", mesh_url, *FAST)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0] == f"workflow generate-review-run: 3 steps, 5 agents known on {mesh_url}"
    progress = [line.split()[1:3] for line in lines[1:] if re.match(r"\s+\d+\.\d+s ", line)]
    assert progress[0] == ["generate", "started"]
    assert [words for words in progress if words[1] == "COMPLETED"] == [
        ["generate", "COMPLETED"], ["review", "COMPLETED"], ["run", "COMPLETED"]]
    assert any(re.search(r"run\s+COMPLETED\s+by runner in \d+ ms", line) for line in lines)
    assert any(re.search(r"generate\s+awarded\s+coder", line) for line in lines)
    assert re.fullmatch(r"workflow generate-review-run COMPLETED in \d+\.\d\ds",
                        lines[lines.index("outputs:") - 1])
    assert lines[lines.index("outputs:") + 1:] == [
        "  function: fibonacci", "  score: 100", "  review: no issues found",
        "  stdout: [0, 1, 1, 2, 3, 5, 8, 13, 21, 34]", "  exit_code: 0"]


def test_json_lines_and_a_skipped_branch(mesh_url: str) -> None:
    result = cli("workflow", "run", str(EXAMPLE), "--server", mesh_url, "--json", *FAST,
                 "--set", "min_score=101", "--set", "spec=factorial")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    final = records[-1]
    assert final["event"] == "result" and final["status"] == "COMPLETED"
    assert final["inputs"] == {"spec": "factorial", "min_score": 101}
    assert {name: step["status"] for name, step in final["steps"].items()} == {
        "generate": "COMPLETED", "review": "COMPLETED", "run": "SKIPPED"}
    assert final["outputs"]["function"] == "factorial" and final["outputs"]["stdout"] is None
    events = [(record["event"], record["step"]) for record in records[:-1]]
    assert ("skipped", "run") in events and ("started", "run") not in events
    assert events.index(("started", "generate")) < events.index(("finished", "review"))


def test_a_failing_step_exits_1_with_one_line(mesh_url: str, tmp_path: Path) -> None:
    flow = tmp_path / "fails.yaml"
    flow.write_text("name: fails\nsteps:\n"
                    "  - {name: gen, agent: 'capability:code.generate.python', "
                    "parameters: {spec: fizzbuzz}}\n"
                    "  - {name: run, agent: 'name:runner', capability: code.run.python, "
                    "parameters: {code: 5}, depends_on: gen}\n")
    result = cli("workflow", "run", str(flow), "--server", mesh_url, *FAST)
    assert_one_line_error(result, r"workflow 'fails': step 'run' failed after 1 attempt: "
                           r"InvalidInput: .*parameters\.code")
    assert re.search(r"run\s+FAILED\s+by runner", result.stdout)
    assert "workflow fails FAILED in" in result.stdout

    unsatisfiable = tmp_path / "nobody.yaml"
    unsatisfiable.write_text("name: nobody\nsteps:\n  - {name: a, agent: 'type:claude', "
                             "capability: code.review.python, parameters: {code: x}}\n")
    result = cli("workflow", "run", str(unsatisfiable), "--server", mesh_url, *FAST)
    assert_one_line_error(
        result, r"step 'a': no known agent matches 'type:claude' \(5 agents known\)")
    assert result.stdout == ""


def test_bad_files_exit_1_with_one_line_before_connecting(tmp_path: Path) -> None:
    nowhere = ("--server", "nats://127.0.0.1:1")  # never reached: the file is checked first
    assert_one_line_error(cli("workflow", "run", str(tmp_path / "missing.yaml"), *nowhere),
                   r"cannot read workflow file .*missing\.yaml: No such file")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nsteps:\n  - name: a\n   agent: x\n")
    assert_one_line_error(cli("workflow", "run", str(broken), *nowhere),
                   r"broken\.yaml: invalid YAML at line 4")
    cyclic = tmp_path / "cyclic.yaml"
    cyclic.write_text("name: loop\nsteps:\n  - {name: a, agent: x, depends_on: b}\n"
                      "  - {name: b, agent: x, parameters: {v: '${steps.a.output.v}'}}\n")
    assert_one_line_error(cli("workflow", "check", str(cyclic)), r"steps form a cycle: a -> b -> a")
    assert_one_line_error(cli("workflow", "run", str(EXAMPLE), "--set", "spce=x", *nowhere),
                   r"unknown input 'spce' \(did you mean 'spec'\?\)")


def test_check_describes_a_valid_file() -> None:
    result = cli("workflow", "check", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"{EXAMPLE}: workflow generate-review-run is valid: 3 steps in 3 stages",
        "  stage 1: generate", "  stage 2: review",
        "  stage 3: run (when ${steps.review.output.score} >= ${inputs.min_score})",
        "inputs: spec=fibonacci numbers, min_score=50"]
    data = json.loads(cli("workflow", "check", str(EXAMPLE), "--json").stdout)
    assert data["valid"] is True and data["stages"] == [["generate"], ["review"], ["run"]]
