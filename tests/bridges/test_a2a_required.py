"""The bridge's required-field check says what a2a-sdk's says, for valid and broken
requests alike (``bridges/a2a_required.py`` keeps the SDK's rules per message type)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from a2a.types import (
    CancelTaskRequest,
    Message,
    Part,
    Role,
    SendMessageConfiguration,
    SendMessageRequest,
    TaskPushNotificationConfig,
)
from a2a.utils.errors import InvalidParamsError
from a2a.utils.proto_utils import validate_proto_required_fields
from google.protobuf.message import Message as ProtoMessage

from agoramesh.bridges.a2a_required import check_required
from agoramesh.nodes.backends.a2a import to_value


def _message(**fields: Any) -> Message:
    base: dict[str, Any] = {"role": Role.ROLE_USER, "message_id": "m1",
                            "parts": [Part(text="hi")]}
    base.update(fields)
    return Message(**{key: value for key, value in base.items() if value is not None})


CASES = {
    "valid": SendMessageRequest(message=_message()),
    "valid, data and metadata": SendMessageRequest(message=_message(
        parts=[Part(data=to_value({"a": [1, {"b": None}]}))], metadata={"skill": "echo"},
        context_id="c1")),
    "no message": SendMessageRequest(),
    "no message id": SendMessageRequest(message=_message(message_id=None)),
    "no parts": SendMessageRequest(message=_message(parts=None)),
    "no role": SendMessageRequest(message=_message(role=None)),
    # No field of a part is REQUIRED: the bridge's plan refuses what it cannot read.
    "valid here, an empty part": SendMessageRequest(
        message=_message(parts=[Part(text="x"), Part()])),
    "nothing at all in the message": SendMessageRequest(message=Message()),
    "a push config without its url": SendMessageRequest(
        message=_message(), configuration=SendMessageConfiguration(
            task_push_notification_config=TaskPushNotificationConfig(id="p1"))),
    "a cancel without an id": CancelTaskRequest(),
    "a cancel": CancelTaskRequest(id="t1"),
}


def _verdict(check: Callable[[ProtoMessage], None], message: ProtoMessage) -> Any:
    """None if ``check`` passes ``message``, else its error's message and data."""
    try:
        check(message)
    except InvalidParamsError as error:
        return error.message, error.data
    return None


@pytest.mark.parametrize("name", list(CASES))
def test_the_same_verdict_as_the_sdks(name: str) -> None:
    message = CASES[name]
    ours = _verdict(check_required, message)
    assert ours == _verdict(validate_proto_required_fields, message)
    if name.startswith("valid") or name == "a cancel":
        assert ours is None
    else:
        assert ours is not None, name  # each broken case is one the SDK refuses
