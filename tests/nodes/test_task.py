"""Task (nodes/task.py): whatever path a request came by, bad fields are InvalidTask and bad
parameters InvalidInput."""

from __future__ import annotations

import math
from typing import Any

import pytest

from agoramesh.bus.ingress import MAX_JSON_DEPTH, decode_json, encode_json
from agoramesh.errors import InvalidInput, InvalidTask, MalformedEnvelope
from agoramesh.nodes.task import MAX_DEADLINE, MAX_PARAMETER_DEPTH, Task


def nested(levels: int) -> Any:
    """A value ``levels`` deep: ``levels - 1`` lists around an empty map."""
    value: Any = {}
    for _ in range(levels - 1):
        value = [value]
    return value


@pytest.mark.parametrize("deadline", [
    10**400, -(10**400), 9 * 10**30, MAX_DEADLINE + 1, MAX_DEADLINE + 0.5, -1, -0.001,
    math.inf, -math.inf, math.nan, 1e308, True, "1700000000", [1]])
def test_a_deadline_out_of_range_or_of_the_wrong_type_is_an_invalid_task(deadline: Any) -> None:
    with pytest.raises(InvalidTask, match="deadline must be a number of Unix seconds from 0 "
                                          f"to {MAX_DEADLINE}"):
        Task.from_dict({"parameters": {}, "deadline": deadline}, capability="echo")


@pytest.mark.parametrize("deadline", [0, 0.0, 1_700_000_000, 1_700_000_000.25, MAX_DEADLINE,
                                      float(MAX_DEADLINE)])
def test_deadlines_in_range_are_kept_as_given(deadline: float) -> None:
    task = Task.from_dict({"parameters": {}, "deadline": deadline}, capability="echo")
    assert task.deadline == deadline and type(task.deadline) is type(deadline)


@pytest.mark.parametrize("priority", [10**400, -1, 11, 5.0, 1e308, math.nan, True, "5", None])
def test_a_priority_out_of_range_or_of_the_wrong_type_is_an_invalid_task(priority: Any) -> None:
    with pytest.raises(InvalidTask, match="priority must be an integer 0-10"):
        Task(capability="echo", priority=priority)


def test_a_huge_value_is_quoted_short_in_the_message() -> None:
    with pytest.raises(InvalidTask) as caught:
        Task(capability="echo", priority=10**400)
    assert len(str(caught.value)) < 100


def test_parameters_nest_at_most_the_ingress_limit() -> None:
    deepest = {"parameters": {"a": nested(MAX_JSON_DEPTH - 2)}}  # as deep as the ingress takes
    Task.from_dict(decode_json(encode_json(deepest), max_bytes=1 << 20), capability="echo")
    with pytest.raises(MalformedEnvelope, match="levels deep"):
        decode_json(encode_json({"parameters": {"a": nested(MAX_JSON_DEPTH - 1)}}),
                    max_bytes=1 << 20)
    Task(capability="echo", parameters={"a": nested(MAX_PARAMETER_DEPTH - 1)})
    Task(capability="echo",
         parameters={"a": [1, "x", None, {"b": nested(MAX_PARAMETER_DEPTH - 3)}]})
    for too_deep in ({"a": nested(MAX_PARAMETER_DEPTH)}, {"a": [1, {"b": nested(5000)}]},
                     {"t": (nested(MAX_PARAMETER_DEPTH),)}):
        with pytest.raises(InvalidInput, match=f"more than {MAX_PARAMETER_DEPTH} levels deep"):
            Task(capability="echo", parameters=too_deep)


def test_a_cyclic_parameter_is_too_deep_not_a_hang() -> None:
    looped: list[Any] = []
    looped.append(looped)
    with pytest.raises(InvalidInput, match="levels deep"):
        Task(capability="echo", parameters={"loop": looped})


def test_the_capability_is_task_type_on_the_wire() -> None:
    task = Task(capability="echo", parameters={"text": "hi"}, task_id="t1")
    body = task.as_dict()
    assert body["task_type"] == "echo" and "capability" not in body
    assert Task.from_dict(body) == task
    assert Task.from_dict({"parameters": {}}, capability="echo").capability == "echo"
    with pytest.raises(InvalidTask, match=r"task_type 'echo' was sent to 'math\.evaluate'"):
        Task.from_dict(body, capability="math.evaluate")
    with pytest.raises(InvalidTask, match=r"unknown task fields: \['capability'\]"):
        Task.from_dict({"capability": "echo", "parameters": {}})
