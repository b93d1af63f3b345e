"""Workflows (M-3.5): a DAG of steps, defined in YAML or Python, checked before it runs.

A workflow is named steps; each step sends one task to an agent chosen by a
selector, with parameters that may refer to inputs and to earlier outputs::

    name: generate-review-run
    inputs:                     # name: default (null: must be given at run time)
      spec: fibonacci numbers
    steps:
      - name: generate
        agent: capability:code.generate.python
        parameters: {spec: "${inputs.spec}"}
      - name: review
        agent: capability:code.review.python
        parameters: {code: "${steps.generate.output.code}"}
      - name: run
        agent: capability:code.run.python
        when: ${steps.review.output.score} >= 50
        parameters: {code: "${steps.generate.output.code}"}
        retries: 1
        timeout: 20
    outputs:                    # optional: what the run returns (default: every output)
      stdout: ${steps.run.output.stdout}

``steps`` may also be a mapping of name → step. The same in Python::

    Workflow("generate-review-run", [
        Step("generate", agent="capability:code.generate.python",
             parameters={"spec": "${inputs.spec}"}),
        Step("review", agent="capability:code.review.python",
             parameters={"code": "${steps.generate.output.code}"}), ...],
        inputs={"spec": "fibonacci numbers"})

Rules
- ``agent`` is a selector: ``capability:<name or pattern>``, ``type:<agent
  type>``, ``id:<agent id>``, ``name:<agent name>`` (a bare word is a
  capability). ``capability`` is the task to send; it defaults to the value
  of an exact ``capability:`` selector and is required with the others.
  ``agent`` defaults to ``capability:<capability>``.
- A step depends on its ``depends_on`` steps and on every step its
  ``parameters`` or ``when`` refer to; steps with no path between them run
  in parallel.
- Branches: a step whose ``when`` is false is SKIPPED, and a skip propagates
  to the steps that depend on it — except to a step whose ``when`` reads the
  skipped step's ``${steps.NAME.status}``: it decides for itself (an "else"
  branch or a join: ``when: ${steps.fix.status} == "SKIPPED"``).
- ``retries`` (0 to 10): more attempts after a failure; ``timeout``: seconds per
  attempt. The workflow's ``timeout`` bounds the whole run.

Everything that can be known before a task is sent is checked by
:meth:`Workflow.validate` and raised as one-line
:class:`~agoramesh.errors.WorkflowInvalid`: unknown fields, duplicate names,
malformed selectors, references and conditions (at construction), unknown
steps in references or ``depends_on``, cycles (named by their path), unknown
or missing inputs, and — given a dispatcher — selectors no known agent
satisfies, capabilities the selected agents lack, parameters their input
schema cannot accept, and output fields their output schema does not have.
:class:`Step` lives in :mod:`.step`, references and conditions in
:mod:`.expr`, running in :mod:`.engine`.
YAML is read with a safe loader (``yaml.SafeLoader``) that also rejects
duplicate keys, which ``yaml.safe_load`` would silently drop.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agoramesh.errors import ConfigError, WorkflowInvalid
from agoramesh.protocols.allocation.dispatch import Dispatcher
from agoramesh.protocols.workflow.expr import NAME_PATTERN, references
from agoramesh.protocols.workflow.step import (
    Step,
    _check_json,
    _did_you_mean,
    _invalid,
    _positive,
)

__all__ = ("MAX_STEPS", "Step", "Workflow")

MAX_STEPS = 500
_WORKFLOW_FIELDS = ("name", "description", "inputs", "outputs", "steps", "timeout")


@dataclass(frozen=True)
class Workflow:
    """A checked DAG of steps. Constructing one checks its structure (see module doc)."""

    name: str
    steps: Sequence[Step]
    _: KW_ONLY
    inputs: Mapping[str, Any] = field(default_factory=dict)
    outputs: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    timeout: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise WorkflowInvalid("a workflow needs a name")
        where = f"workflow {self.name!r}"
        steps: object = self.steps
        if not isinstance(steps, list | tuple) or not steps or not all(
                isinstance(step, Step) for step in steps):
            raise _invalid(where, "steps must be a non-empty list of steps")
        if len(steps) > MAX_STEPS:
            raise _invalid(where, f"{len(steps)} steps is more than the {MAX_STEPS} allowed")
        object.__setattr__(self, "steps", tuple(self.steps))
        object.__setattr__(self, "timeout", _positive(self.timeout, where))
        names = [step.name for step in self.steps]
        duplicate = next((name for name in names if names.count(name) > 1), None)
        if duplicate:
            raise _invalid(where, f"two steps are named {duplicate!r}")
        for kind, mapping in (("inputs", self.inputs), ("outputs", self.outputs)):
            if not isinstance(mapping, Mapping) or not all(
                    isinstance(key, str) and NAME_PATTERN.fullmatch(key) for key in mapping):
                raise _invalid(where, f"{kind} must map names to values")
            _check_json(mapping, f"{where}: {kind}")
        for step in self.steps:
            for needed in sorted(step.needs):
                if needed not in names:
                    via = "depends_on" if needed in step.depends_on else "a reference"
                    raise _invalid(f"step {step.name!r}", f"{via} names unknown step "
                                   f"{needed!r}{_did_you_mean(needed, names)}")
        try:
            output_refs = references(self.outputs)
        except WorkflowInvalid as exc:
            raise _invalid(f"{where}: outputs", exc) from None
        for ref in output_refs:
            if ref.step and ref.name not in names:
                raise _invalid(f"{where}: outputs", f"{ref.text} names unknown step "
                               f"{ref.name!r}{_did_you_mean(ref.name, names)}")
        object.__setattr__(self, "_order", self._topological_order())

    def _topological_order(self) -> tuple[str, ...]:
        """Steps in an order that respects dependencies (declaration order among equals)."""
        needs = {step.name: step.needs for step in self.steps}
        order: list[str] = []
        state: dict[str, int] = {}  # 1: on the current path, 2: done
        path: list[str] = []

        def visit(name: str) -> None:
            if state.get(name) == 2:
                return
            if state.get(name) == 1:
                cycle = [*path[path.index(name):], name]
                raise WorkflowInvalid(f"workflow {self.name!r}: steps form a cycle: "
                                      f"{' -> '.join(cycle)}")
            state[name] = 1
            path.append(name)
            for needed in sorted(needs[name], key=list(needs).index):
                visit(needed)
            path.pop()
            state[name] = 2
            order.append(name)

        for name in needs:
            visit(name)
        return tuple(order)

    # -- the graph ---------------------------------------------------------------

    @property
    def order(self) -> tuple[str, ...]:
        """Step names, each after every step it needs."""
        return self.__dict__["_order"]  # type: ignore[no-any-return]

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def stages(self) -> list[list[str]]:
        """Steps grouped by depth: the steps of one stage never depend on each other."""
        depth: dict[str, int] = {}
        for name in self.order:
            depth[name] = 1 + max((depth[n] for n in self.step(name).needs), default=-1)
        stages: list[list[str]] = [[] for _ in range(max(depth.values()) + 1)]
        for name in self.order:
            stages[depth[name]].append(name)
        return stages

    # -- inputs and checks -------------------------------------------------------

    @property
    def input_names(self) -> tuple[str, ...]:
        """Declared inputs, then inputs referred to but not declared."""
        refs = [r.name for step in self.steps for r in step.references if r.source == "inputs"]
        refs += [r.name for r in references(self.outputs) if r.source == "inputs"]
        return tuple(dict.fromkeys([*self.inputs, *refs]))

    def resolve_inputs(self, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Defaults overridden by ``given``; WorkflowInvalid for unknown or missing ones."""
        given = dict(given or {})
        known = self.input_names
        for name in given:
            if name not in known:
                listing = ", ".join(known) or "none"
                raise WorkflowInvalid(f"workflow {self.name!r}: unknown input {name!r}"
                                      f"{_did_you_mean(name, known)}; its inputs: {listing}")
        _check_json(given, f"workflow {self.name!r}: inputs")
        values: dict[str, Any] = {}
        for name in known:
            value = given[name] if name in given else self.inputs.get(name)
            if value is None and name not in given:  # declared null, or never declared
                raise WorkflowInvalid(f"workflow {self.name!r}: missing input {name!r} "
                                      f"(give it with --set {name}=… or inputs=)")
            values[name] = value
        return values

    def validate(self, dispatcher: Dispatcher | None = None,
                 inputs: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Raise WorkflowInvalid for anything that would fail before a task could succeed.

        Returns the resolved inputs. With a ``dispatcher``, every selector must
        pick at least one known agent offering the step's capability, and the
        agents' schemas must accept the parameter names and referenced fields.
        """
        values = self.resolve_inputs(inputs)
        if dispatcher is None:
            return values
        for step in self.steps:
            step.check_agents(dispatcher)
        for step in self.steps:
            for ref in step.references:
                if not (ref.step and ref.attribute == "output" and ref.path):
                    continue
                producer = self.step(ref.name)
                fields = producer.output_fields(dispatcher)
                if fields is not None and ref.path[0] not in fields:
                    raise _invalid(f"step {step.name!r}", f"{ref.text}: "
                                   f"{producer.task_capability} has no output field "
                                   f"{ref.path[0]!r}{_did_you_mean(ref.path[0], fields)} "
                                   f"(fields: {', '.join(sorted(fields))})")
        return values

    # -- reading -------------------------------------------------------------------

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name}
        if self.description:
            data["description"] = self.description
        if self.inputs:
            data["inputs"] = dict(self.inputs)
        data["steps"] = [step.as_dict() for step in self.steps]
        if self.outputs:
            data["outputs"] = dict(self.outputs)
        if self.timeout is not None:
            data["timeout"] = self.timeout
        return data

    @classmethod
    def from_dict(cls, data: Any, *, name: str | None = None) -> Workflow:
        """A workflow from parsed YAML/JSON; ``name`` is used when ``data`` has none."""
        if not isinstance(data, Mapping):
            raise WorkflowInvalid(f"a workflow must be a mapping with name and steps, got "
                                  f"{type(data).__name__}")
        unknown = sorted(str(key) for key in data if key not in _WORKFLOW_FIELDS)
        if unknown:
            raise WorkflowInvalid(f"unknown workflow field {unknown[0]!r}"
                                  f"{_did_you_mean(unknown[0], _WORKFLOW_FIELDS)}; fields "
                                  f"are {', '.join(_WORKFLOW_FIELDS)}")
        raw = data.get("steps")
        if isinstance(raw, Mapping):
            steps = [Step.from_dict(value, str(key)) for key, value in raw.items()]
        elif isinstance(raw, list):
            steps = [Step.from_dict(value) for value in raw]
        else:
            raise WorkflowInvalid("a workflow needs steps: a list of steps (or a mapping of "
                                  "name: step)")
        description = data.get("description") or ""
        return cls(str(data.get("name") or name or ""), steps, inputs=data.get("inputs") or {},
                   outputs=data.get("outputs") or {}, description=str(description),
                   timeout=data.get("timeout"))

    @classmethod
    def from_yaml(cls, text: str, *, name: str | None = None) -> Workflow:
        try:
            data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise WorkflowInvalid(f"invalid YAML{at}: {exc.problem or exc.context}") from None
        except yaml.YAMLError as exc:
            raise WorkflowInvalid(f"invalid YAML: {' '.join(str(exc).split())}") from None
        return cls.from_dict(data, name=name)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Workflow:
        """Read a YAML workflow (named after the file if it has no name); errors name the file."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise ConfigError(f"cannot read workflow file {os.fspath(path)}: {reason}") from None
        try:
            return cls.from_yaml(text, name=Path(path).stem)
        except WorkflowInvalid as exc:
            raise WorkflowInvalid(f"{os.fspath(path)}: {exc}") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping."""


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Hashable] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if isinstance(key, Hashable):
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)
