"""Workflows: parsing and validation (unit), and runs on real servers (integration)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from agoramesh.agent import AgentNode
from agoramesh.bus.server import EmbeddedServer
from agoramesh.cli.workflow import parse_inputs
from agoramesh.errors import (
    BackendUnavailable,
    ConfigError,
    StepFailed,
    WorkflowError,
    WorkflowInvalid,
)
from agoramesh.nodes.backends.base import Backend, ChatMessage
from agoramesh.nodes.capability import Capability
from agoramesh.nodes.task import Completion, StreamItem, Task
from agoramesh.protocols.allocation.dispatch import Dispatcher
from agoramesh.protocols.workflow.engine import (
    EventKind,
    StepStatus,
    WorkflowEvent,
    WorkflowStatus,
    run_workflow,
)
from agoramesh.protocols.workflow.expr import Condition, Reference, references, render
from agoramesh.protocols.workflow.workflow import Step, Workflow
from agoramesh.testing import wait_until
from agoramesh.testing.plugin import AgentFactory

EXAMPLE = Path(__file__).parents[3] / "examples" / "workflows" / "generate_review_run.yaml"


def _yaml(steps: str, head: str = "name: t\n") -> str:
    return head + "steps:\n" + "\n".join("  " + line for line in steps.strip().splitlines())


# -- the model ------------------------------------------------------------------------------

def test_example_file_parses_into_a_chain() -> None:
    workflow = Workflow.from_file(EXAMPLE)
    assert workflow.name == "generate-review-run"
    assert workflow.order == ("generate", "review", "run")
    assert workflow.stages() == [["generate"], ["review"], ["run"]]
    run = workflow.step("run")
    assert run.needs == {"generate", "review"}  # review only through the condition
    assert run.task_capability == "code.run.python" and run.retries == 1 and run.timeout == 20
    assert workflow.resolve_inputs() == {"spec": "fibonacci numbers", "min_score": 50}
    assert workflow.resolve_inputs({"min_score": 80})["min_score"] == 80


def test_python_api_matches_yaml_and_round_trips() -> None:
    built = Workflow("w", [
        Step("a", agent="capability:echo", parameters={"text": "${inputs.word}"}),
        Step("b", agent="type:special", capability="echo", depends_on="a", retries=2),
        Step("c", capability="echo", parameters={"x": "${steps.a.output.echo.text}"},
             when="${steps.b.status} == 'COMPLETED'", timeout=3),
    ], inputs={"word": "hi"})
    assert Workflow.from_dict(built.as_dict()) == built
    assert Workflow.from_yaml(_yaml("""
a: {agent: "capability:echo", parameters: {text: "${inputs.word}"}}
b: {agent: "type:special", capability: echo, depends_on: a, retries: 2}
c: {capability: echo, parameters: {x: "${steps.a.output.echo.text}"},
    when: "${steps.b.status} == 'COMPLETED'", timeout: 3}
""", head="name: w\ninputs: {word: hi}\n")) == built
    assert built.stages() == [["a"], ["b"], ["c"]]
    assert built.step("c").decides_on == {"b"} and built.step("c").selector == "capability:echo"


def test_independent_steps_share_a_stage() -> None:
    workflow = Workflow("fan", [Step("a", agent="x"), Step("b", agent="x"),
                                Step("join", agent="x", depends_on=["b", "a"])])
    assert workflow.stages() == [["a", "b"], ["join"]]


@pytest.mark.parametrize(("text", "message"), [
    ("- {name: a, agent: x, depends_on: c}\n- {name: b, agent: x, depends_on: a}\n"
     "- {name: c, agent: x, parameters: {v: '${steps.b.output}'}}",
     r"steps form a cycle: a -> c -> b -> a"),
    ("- {name: a, agent: x, parameters: {v: '${steps.a.output}'}}", r"cycle: a -> a"),
    ("- {name: a, agent: x}\n- {name: b, agent: x, parameters: {v: '${steps.gen.output}'}}",
     r"step 'b': a reference names unknown step 'gen'"),
    ("- {name: build, agent: x}\n- {name: b, agent: x, depends_on: [biuld]}",
     r"depends_on names unknown step 'biuld' \(did you mean 'build'\?\)"),
    ("- {name: a, agent: x}\n- {name: a, agent: y}", r"two steps are named 'a'"),
    ("- {name: a, agent: x, retry: 2}", r"step 'a': unknown field 'retry' \(did you mean"),
    ("- {name: a, agent: 'tpye:claude'}", r"unknown selector kind 'tpye'"),
    ("- {name: a, agent: 'type:claude'}", r"picks agents, not a task: add capability"),
    ("- {name: a, agent: 'capability:code.*'}", r"is a pattern: name the capability"),
    ("- {name: a, agent: 'capability:code.*', capability: text.x}", r"does not match"),
    ("- {name: a, agent: x, parameters: {v: '${steps.a.outptu}'}}", r"bad reference"),
    ("- {name: a, agent: x, parameters: {v: '${inputs.x'}}", r"unterminated"),
    ("- {name: a, agent: x, when: '__import__(\"os\").system(\"true\")'}",
     r"not allowed|only function"),
    ("- {name: a, agent: x, when: 'open(1)'}", r"the only function is len"),
    ("- {name: a, agent: x, when: 'score > 1'}", r"unknown name 'score'"),
    ("- {name: a, agent: x, when: '(1).real'}", r"Attribute is not allowed"),
    ("- {name: a, agent: x, when: '\"${inputs.q}\" == \"y\"'}", r"bare, not inside quotes"),
    ("- {name: a, agent: x, when: '1 >'}", r"not an expression"),
    ("- {name: a, agent: x, retries: 11}", r"retries must be an integer from 0 to 10"),
    ("- {name: a, agent: x, timeout: -1}", r"timeout must be a positive number"),
    ("- {name: a, agent: x, parameters: {day: 2024-01-01}}", r"date is not a JSON value"),
    ("- {name: 'bad name', agent: x}", r"step name 'bad name'"),
    ("a: {agent: x}\na: {agent: y}", r"invalid YAML at line 4, column 3: duplicate key 'a'"),
    ("- {name: a, agent: x\n", r"invalid YAML at line"),
])
def test_invalid_workflows_are_one_clear_line(text: str, message: str) -> None:
    with pytest.raises(WorkflowInvalid, match=message) as caught:
        Workflow.from_yaml(_yaml(text))
    assert "\n" not in str(caught.value)


_USAGE = "use ${steps.NAME.output[.FIELD…]}, ${steps.NAME.status} or ${inputs.NAME[.FIELD…]}"


@pytest.mark.parametrize(("step", "message"), [
    ({"parameters": {"v": "x ${inputs.n"}},
     "step 'a': unterminated or nested reference in 'x ${inputs.n'"),
    ({"when": "${inputs.n > 1"}, "step 'a': unterminated or nested reference in '${inputs.n > 1'"),
    ({"parameters": {"v": "${input.n}"}}, f"step 'a': bad reference ${{input.n}}: {_USAGE}"),
    ({"parameters": {"v": "${steps.a.status.x}"}},
     f"step 'a': bad reference ${{steps.a.status.x}}: {_USAGE}"),
    ({"parameters": {"v": "${inputs\n.n}"}},
     f"step 'a': bad reference '${{inputs\\n.n}}': {_USAGE}"),
])
def test_reference_errors_are_exact_single_lines(step: dict[str, Any], message: str) -> None:
    with pytest.raises(WorkflowInvalid) as caught:
        Step("a", agent="x", **step)
    assert str(caught.value) == message


@pytest.mark.parametrize(("text", "message"), [
    ("- just a string", r"bad|must be a mapping"),
    ("[1, 2]", r"must be a mapping with name and steps"),
    ("name: x\nsteps: 3", r"needs steps"),
    ("name: x\nsteps: []", r"non-empty list"),
    ("name: x\nsteps: [{agent: x}]", r"every step needs a name"),
    ("name: x\nstep: []", r"unknown workflow field 'step' \(did you mean 'steps'\?\)"),
    ("name: x\noutputs: {o: '${steps.nope.output}'}\nsteps: [{name: a, agent: x}]",
     r"outputs: \$\{steps.nope.output\} names unknown step"),
])
def test_invalid_documents(text: str, message: str) -> None:
    with pytest.raises(WorkflowInvalid, match=message):
        Workflow.from_yaml(text if "name:" in text or text.startswith("[") else _yaml(text))


def test_inputs_missing_unknown_and_required() -> None:
    workflow = Workflow.from_yaml(_yaml(
        "- {name: a, agent: x, parameters: {spec: '${inputs.spec}', n: '${inputs.n}'}}",
        head="name: t\ninputs: {spec: ~, n: 3}\n"))
    with pytest.raises(WorkflowInvalid, match=r"missing input 'spec' \(give it with --set"):
        workflow.validate()
    with pytest.raises(WorkflowInvalid, match=r"unknown input 'spce' \(did you mean 'spec'\?\)"):
        workflow.validate(inputs={"spce": "x"})
    assert workflow.validate(inputs={"spec": "x"}) == {"spec": "x", "n": 3}
    undeclared = Workflow("u", [Step("a", agent="x", parameters={"v": "${inputs.v}"})])
    assert undeclared.input_names == ("v",)
    with pytest.raises(WorkflowInvalid, match="missing input 'v'"):
        undeclared.validate()


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read workflow file .*missing\.yaml"):
        Workflow.from_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsteps: [\n")
    with pytest.raises(WorkflowInvalid, match=r"bad\.yaml: invalid YAML at line 3"):
        Workflow.from_file(bad)
    unnamed = tmp_path / "my-flow.yaml"
    unnamed.write_text("steps: [{name: a, agent: x}]\n")
    assert Workflow.from_file(unnamed).name == "my-flow"


def test_references_keep_types_or_stringify() -> None:
    values = {"inputs.n": 3, "steps.a.output": {"code": "x = 1", "issues": [{"line": 4}],
                                                "ok": True, "none": None}}

    def lookup(ref: Reference) -> Any:
        if ref.source == "inputs":
            return ref.follow(values["inputs." + ref.name])
        return ref.follow(values["steps.a.output"])

    template = {"n": "${inputs.n}", "issues": "${steps.a.output.issues}",
                "line": "${ steps.a.output.issues.0.line }", "text": "n=${inputs.n}!",
                "mixed": "${steps.a.output.ok}/${steps.a.output.none}/${steps.a.output.issues}",
                "nested": [{"code": "${steps.a.output.code}"}], "escaped": "$${inputs.n}",
                "plain": 7}
    assert render(template, lookup) == {
        "n": 3, "issues": [{"line": 4}], "line": 4, "text": "n=3!",
        "mixed": 'true/null/[{"line":4}]', "nested": [{"code": "x = 1"}],
        "escaped": "${inputs.n}", "plain": 7}
    assert [ref.text for ref in references(template)][:2] == ["${inputs.n}",
                                                               "${steps.a.output.issues}"]
    with pytest.raises(LookupError, match=r"no field 'cdoe' in output \(fields: code, issues"):
        render("${steps.a.output.cdoe}", lookup)
    with pytest.raises(LookupError, match=r"issues has only 1 item"):
        render("${steps.a.output.issues.5}", lookup)
    with pytest.raises(LookupError, match=r"code is a str, not an object with field 'x'"):
        render("${steps.a.output.code.x}", lookup)


@pytest.mark.parametrize(("when", "expected"), [
    ("${inputs.s} >= 50", True), ("${inputs.s} < 50", False),
    ("${steps.r.output.score} >= 50 and ${steps.r.output.issues} == []", True),
    ("not ${steps.r.output.issues}", True), ("len(${steps.r.output.issues}) == 0 or false", True),
    ("${steps.r.status} in ['COMPLETED', 'SKIPPED']", True),
    ("${steps.r.status} != \"COMPLETED\"", False),
    ("${inputs.none} is null", True), ("${inputs.none} == None", True),
    ("-${inputs.s} < 0 < ${inputs.s}", True), ("{'a': 90} == {'a': ${inputs.s}}", True),
    ("${inputs.s} > 100 or ${inputs.s} < 10", False), (True, True), (False, False),
])
def test_conditions(when: str | bool, expected: bool) -> None:
    values = {"s": 90, "score": 90, "issues": [], "none": None}

    def lookup(ref: Reference) -> Any:
        if ref.attribute == "status":
            return "COMPLETED"
        return ref.follow({"score": 90, "issues": []}) if ref.step else values[ref.name]

    assert Condition.parse(when).evaluate(lookup) is expected


def test_impossible_comparison_is_a_type_error() -> None:
    condition = Condition.parse("${inputs.x} > 3")
    with pytest.raises(TypeError, match=r"cannot compare a str \('high'\) with a int"):
        condition.evaluate(lambda ref: "high")
    with pytest.raises(TypeError, match=r"len\(\) of a int"):
        Condition.parse("len(${inputs.x}) > 0").evaluate(lambda ref: 3)


def test_cli_inputs_are_json_or_text() -> None:
    assert parse_inputs(["n=80", "ok=true", "xs=[1, 2]", "spec=first primes", "q=\"8\"",
                         "empty="]) == {"n": 80, "ok": True, "xs": [1, 2],
                                        "spec": "first primes", "q": "8", "empty": ""}
    with pytest.raises(ConfigError, match="NAME=VALUE"):
        parse_inputs(["novalue"])


# -- runs on real servers ----------------------------------------------------------------------

SLEEP = Capability(name="probe.sleep", input_schema={
    "type": "object", "properties": {"label": {"type": "string"}, "seconds": {"type": "number"}},
    "required": ["label"], "additionalProperties": False})
FLAKY = Capability(name="probe.flaky", input_schema={"type": "object"})
BROKEN = Capability(name="probe.broken", input_schema={"type": "object"})


class Probe(Backend):
    """Sleeps and records when; ``probe.flaky`` fails its first ``flaky`` calls; broken fails."""

    type = "probe"

    def __init__(self, *, flaky: int = 1) -> None:
        super().__init__()
        self.flaky = flaky
        self.calls: Counter[str] = Counter()
        self.intervals: dict[str, tuple[float, float]] = {}

    async def execute(self, task: Task, context: dict[str, Any] | None = None
                      ) -> AsyncIterator[StreamItem]:
        self.calls[task.capability] += 1
        if task.capability == "probe.broken" or (
                task.capability == "probe.flaky" and self.calls[task.capability] <= self.flaky):
            calls = self.calls[task.capability]
            raise BackendUnavailable(f"{task.capability} is down (call {calls})")
        label = str(task.parameters.get("label", task.capability))
        start = time.monotonic()
        await asyncio.sleep(float(task.parameters.get("seconds", 0)))
        self.intervals[label] = (start, time.monotonic())
        yield Completion(output={"label": label, "calls": self.calls[task.capability]})

    async def chat(self, messages: Sequence[ChatMessage]) -> AsyncIterator[StreamItem]:
        yield Completion(output=messages[-1]["content"])  # pragma: no cover - never chatted


async def _acquainted(driver: AgentNode, *others: AgentNode) -> Dispatcher:
    await wait_until(lambda: all(other.agent_id in driver.directory for other in others),
                     timeout=3)
    return driver.dispatcher


def _tasks_done(*nodes: AgentNode) -> int:
    return sum(node.status.tasks_completed + node.status.tasks_failed for node in nodes)


@pytest.fixture
async def offline(nats_server: EmbeddedServer, agent_factory: AgentFactory
                  ) -> tuple[Dispatcher, list[AgentNode]]:
    """A driver (echo) and the offline coder and runner the example needs."""
    url = nats_server.client_url
    driver = await agent_factory(url, "driver", ["echo"])
    coder = await agent_factory(url, "coder", ["code.generate.python", "code.review.python"])
    runner = await agent_factory(url, "runner", ["code.run.python"])
    return await _acquainted(driver, coder, runner), [driver, coder, runner]


@pytest.mark.integration
async def test_example_runs_end_to_end_from_python(
        offline: tuple[Dispatcher, list[AgentNode]]) -> None:
    dispatcher, (_, coder, runner) = offline
    events: list[WorkflowEvent] = []
    result = await run_workflow(Workflow.from_file(EXAMPLE), dispatcher, on_event=events.append)
    assert result.ok and result.error is None
    assert result.outputs == {"function": "fibonacci", "score": 100, "review": "no issues found",
                              "stdout": "[0, 1, 1, 2, 3, 5, 8, 13, 21, 34]\n", "exit_code": 0}
    steps = result.steps
    assert [steps[name].agent_name for name in ("generate", "review", "run")] == [
        "coder", "coder", "runner"]
    assert steps["run"].agent_id == runner.agent_id and steps["generate"].attempts == 1
    assert all(step.status is StepStatus.COMPLETED for step in steps.values())
    finished = [e.step for e in events if e.kind is EventKind.FINISHED]
    assert finished == ["generate", "review", "run"]
    started = {e.step: e.at for e in events if e.kind is EventKind.STARTED}
    assert started["review"] >= next(e.at for e in events if e.kind is EventKind.FINISHED)
    assert _tasks_done(coder) == 2 and _tasks_done(runner) == 1
    direct = await run_workflow(Workflow.from_file(EXAMPLE), dispatcher, strategy="direct")
    assert direct.outputs == result.outputs  # the queue-group route gives the same answer


@pytest.mark.integration
async def test_condition_false_skips_and_the_skip_propagates(
        offline: tuple[Dispatcher, list[AgentNode]]) -> None:
    dispatcher, (driver, _, runner) = offline
    workflow = Workflow.from_yaml(EXAMPLE.read_text().replace("outputs:", """\
  - name: after_run
    agent: capability:echo
    parameters: {text: "${steps.run.output.stdout}"}
  - name: otherwise
    agent: capability:echo
    when: ${steps.run.status} == "SKIPPED"
    parameters: {text: "score ${steps.review.output.score} is below ${inputs.min_score}"}
outputs:"""))
    result = await run_workflow(workflow, dispatcher, inputs={"min_score": 101})
    status = {name: step.status for name, step in result.steps.items()}
    assert status == {"generate": StepStatus.COMPLETED, "review": StepStatus.COMPLETED,
                      "run": StepStatus.SKIPPED, "after_run": StepStatus.SKIPPED,
                      "otherwise": StepStatus.COMPLETED}
    assert result.steps["run"].reason == (
        "condition is false: ${steps.review.output.score} >= ${inputs.min_score}")
    assert result.steps["after_run"].reason == "step run skipped"
    assert result.steps["otherwise"].output == {"echo": {"text": "score 100 is below 101"}}
    assert result.outputs["stdout"] is None and result.outputs["score"] == 100
    assert _tasks_done(runner) == 0 and _tasks_done(driver) == 1

    passed = await run_workflow(workflow, dispatcher)  # the condition true: the other branch
    assert passed.steps["run"].status is StepStatus.COMPLETED
    assert passed.steps["after_run"].output == {"echo": {"text": passed.outputs["stdout"]}}
    assert passed.steps["otherwise"].status is StepStatus.SKIPPED


@pytest.mark.integration
async def test_references_are_typed_or_embedded(
        offline: tuple[Dispatcher, list[AgentNode]]) -> None:
    dispatcher, _ = offline
    workflow = Workflow("refs", [
        Step("review", agent="capability:code.review.python", parameters={"code": "x = (1"}),
        Step("echo", agent="capability:echo", parameters={
            "issues": "${steps.review.output.issues}", "score": "${steps.review.output.score}",
            "line": "first issue on line ${steps.review.output.issues.0.line}",
            "status": "${steps.review.status}", "n": "${inputs.n}"}),
    ])
    result = await run_workflow(workflow, dispatcher, inputs={"n": [1, 2]})
    review = result.steps["review"].output
    echoed = result.steps["echo"].output["echo"]
    assert review["issues"] and isinstance(echoed["issues"], list)
    assert echoed["issues"] == review["issues"] and echoed["score"] == review["score"]
    assert isinstance(echoed["score"], int)
    assert echoed["line"] == f"first issue on line {review['issues'][0]['line']}"
    assert echoed["status"] == "COMPLETED" and echoed["n"] == [1, 2]


@pytest.mark.integration
@pytest.mark.parametrize(("steps", "message"), [
    ([Step("a", agent="capability:text.translate")],
     r"step 'a': no known agent offers capability 'text.translate' \(3 agents known\)"),
    ([Step("a", agent="type:claude", capability="echo")],
     r"no known agent matches 'type:claude'"),
    ([Step("a", agent="name:runner", capability="code.review.python")],
     r"the agents matching 'name:runner' \(runner\) do not offer capability"),
    ([Step("a", agent="capability:code.run.python", parameters={"cdoe": "print(1)"})],
     r"code.run.python: missing parameter 'code'"),
    ([Step("a", agent="capability:code.run.python", parameters={"code": "1", "tiemout": 1})],
     r"unknown parameter 'tiemout' \(did you mean 'timeout'\?\)"),
    ([Step("g", agent="capability:code.generate.python", parameters={"spec": "x"}),
      Step("r", agent="capability:code.run.python",
           parameters={"code": "${steps.g.output.cdoe}"})],
     r"step 'r': \$\{steps.g.output.cdoe\}: code.generate.python has no output field 'cdoe' "
     r"\(did you mean 'code'\?\)"),
])
async def test_unsatisfiable_workflows_fail_before_any_task(
        offline: tuple[Dispatcher, list[AgentNode]], steps: list[Step], message: str) -> None:
    dispatcher, nodes = offline
    events: list[WorkflowEvent] = []
    workflow = Workflow("w", [Step("first", agent="capability:echo"), *steps])
    with pytest.raises(WorkflowInvalid, match=message):
        await run_workflow(workflow, dispatcher, on_event=events.append)
    assert events == [] and _tasks_done(*nodes) == 0


@pytest.mark.integration
@pytest.mark.parametrize(("text", "inputs", "message"), [
    ("- {name: a, agent: echo, depends_on: b}\n- {name: b, agent: echo, depends_on: a}", None,
     "cycle: a -> b -> a"),
    ("- {name: a, agent: echo, parameters: {t: '${steps.z.output}'}}", None, "unknown step 'z'"),
    ("- {name: a, agent: echo, depends_on: [z]}", None, "depends_on names unknown step 'z'"),
    ("- {name: a, agent: echo, parameters: {t: '${inputs.word}'}}", None, "missing input 'word'"),
    ("- {name: a, agent: echo}", {"wrod": 1}, "unknown input 'wrod'"),
    ("- {name: a, agent: echo\n", None, "invalid YAML"),
])
async def test_invalid_documents_and_inputs_fail_before_any_task(
        offline: tuple[Dispatcher, list[AgentNode]], text: str, inputs: dict[str, Any] | None,
        message: str) -> None:
    dispatcher, nodes = offline
    with pytest.raises(WorkflowInvalid, match=message):
        await run_workflow(Workflow.from_yaml(_yaml("- {name: ok, agent: echo}\n" + text)),
                           dispatcher, inputs=inputs)
    assert _tasks_done(*nodes) == 0


@pytest.mark.integration
async def test_independent_steps_overlap_and_the_join_waits(
        nats_server: EmbeddedServer, agent_factory: AgentFactory) -> None:
    probe = Probe()
    worker = await agent_factory(nats_server.client_url, "worker", [SLEEP], backend=probe,
                                 agent_type="probe")
    driver = await agent_factory(nats_server.client_url, "driver", ["echo"])
    dispatcher = await _acquainted(driver, worker)
    workflow = Workflow("fan", [
        Step("a", agent="capability:probe.sleep", parameters={"label": "a", "seconds": 0.3}),
        Step("b", agent="name:worker", capability="probe.sleep",
             parameters={"label": "b", "seconds": 0.3}),
        Step("join", agent="capability:probe.sleep", parameters={"label": "join"},
             depends_on=["a", "b"]),
    ])
    result = await run_workflow(workflow, dispatcher)
    assert result.ok
    (a_start, a_end), (b_start, b_end) = probe.intervals["a"], probe.intervals["b"]
    assert a_start < b_end and b_start < a_end  # the two intervals overlap
    assert probe.intervals["join"][0] >= max(a_end, b_end)
    assert result.steps["b"].agent_id == worker.agent_id


@pytest.mark.integration
async def test_retries_then_success(nats_server: EmbeddedServer,
                                    agent_factory: AgentFactory) -> None:
    probe = Probe(flaky=2)
    worker = await agent_factory(nats_server.client_url, "worker", [FLAKY], backend=probe,
                                 agent_type="probe")
    driver = await agent_factory(nats_server.client_url, "driver", ["echo"])
    dispatcher = await _acquainted(driver, worker)
    events: list[WorkflowEvent] = []
    workflow = Workflow("retry", [Step("flaky", agent="capability:probe.flaky", retries=2)])
    result = await run_workflow(workflow, dispatcher, on_event=events.append)
    step = result.steps["flaky"]
    assert step.status is StepStatus.COMPLETED and step.attempts == 3 and probe.calls[
        "probe.flaky"] == 3
    assert step.output == {"label": "probe.flaky", "calls": 3}
    retries = [e for e in events if e.kind is EventKind.RETRYING]
    assert [e.attempt for e in retries] == [2, 3]
    assert retries[0].detail and "BackendUnavailable: probe.flaky is down (call 1)" in (
        retries[0].detail)


@pytest.mark.integration
async def test_a_failed_step_fails_fast(nats_server: EmbeddedServer,
                                        agent_factory: AgentFactory) -> None:
    probe = Probe()
    worker = await agent_factory(nats_server.client_url, "worker", [SLEEP, BROKEN],
                                 backend=probe, agent_type="probe")
    driver = await agent_factory(nats_server.client_url, "driver", ["echo"])
    dispatcher = await _acquainted(driver, worker)
    workflow = Workflow("doomed", [
        Step("broken", agent="capability:probe.broken", retries=1),
        Step("slow", agent="capability:probe.sleep", parameters={"label": "s", "seconds": 1}),
        Step("after", agent="capability:echo", depends_on="broken"),
    ])
    with pytest.raises(StepFailed, match=r"workflow 'doomed': step 'broken' failed after 2 "
                                         r"attempts: BackendUnavailable: probe.broken is down"):
        await run_workflow(workflow, dispatcher)
    assert probe.calls["probe.broken"] == 2

    result = await run_workflow(workflow, dispatcher, check=False)
    assert result.status is WorkflowStatus.FAILED and isinstance(result.error, StepFailed)
    assert {name: step.status for name, step in result.steps.items()} == {
        "broken": StepStatus.FAILED, "slow": StepStatus.CANCELLED, "after": StepStatus.NOT_RUN}
    assert result.steps["broken"].error and "down (call 4)" in result.steps["broken"].error
    assert _tasks_done(driver) == 0


@pytest.mark.integration
async def test_missing_field_at_run_time_names_the_path(
        offline: tuple[Dispatcher, list[AgentNode]]) -> None:
    dispatcher, _ = offline
    workflow = Workflow("w", [
        Step("a", agent="capability:echo", parameters={"text": "hi"}),
        Step("b", agent="capability:echo", parameters={"text": "${steps.a.output.echo.txt}"}),
    ])
    with pytest.raises(StepFailed, match=r"step 'b' failed: parameters: "
                                         r"\$\{steps.a.output.echo.txt\}: no field 'txt' in "
                                         r"echo \(fields: text\)"):
        await run_workflow(workflow, dispatcher)


@pytest.mark.integration
async def test_type_selector_excludes_other_capable_agents(
        nats_server: EmbeddedServer, agent_factory: AgentFactory) -> None:
    url = nats_server.client_url
    special = [await agent_factory(url, name, [SLEEP], backend=Probe(), agent_type="special")
               for name in ("alpha", "beta")]
    plain = await agent_factory(url, "gamma", [SLEEP], backend=Probe(), agent_type="probe")
    driver = await agent_factory(url, "driver", ["echo"])
    dispatcher = await _acquainted(driver, *special, plain)
    workflow = Workflow("typed", [
        *(Step(f"s{i}", agent="type:special", capability="probe.sleep",
               parameters={"label": f"s{i}", "seconds": 0.05}) for i in range(4)),
        Step("by_id", agent=f"id:{special[1].agent_id}", capability="probe.sleep",
             parameters={"label": "by_id"})])
    result = await run_workflow(workflow, dispatcher)
    assert {result.steps[f"s{i}"].agent_name for i in range(4)} <= {"alpha", "beta"}
    assert result.steps["by_id"].agent_name == "beta"
    assert _tasks_done(plain) == 0 and _tasks_done(*special) == 5


@pytest.mark.integration
async def test_the_whole_run_is_bounded(nats_server: EmbeddedServer,
                                        agent_factory: AgentFactory) -> None:
    worker = await agent_factory(nats_server.client_url, "worker", [SLEEP], backend=Probe(),
                                 agent_type="probe", stop_grace=0.2)
    driver = await agent_factory(nats_server.client_url, "driver", ["echo"])
    dispatcher = await _acquainted(driver, worker)
    workflow = Workflow("slow", [
        Step("nap", agent="capability:probe.sleep", parameters={"label": "n", "seconds": 0.5}),
        Step("after", agent="capability:echo", depends_on="nap")], timeout=0.2)
    result = await run_workflow(workflow, dispatcher, check=False)
    assert isinstance(result.error, WorkflowError)
    assert str(result.error) == ("workflow 'slow' did not finish within 0.2s "
                                 "(still running: nap)")
    assert result.steps["nap"].status is StepStatus.CANCELLED
    assert result.steps["after"].status is StepStatus.NOT_RUN
